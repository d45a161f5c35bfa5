//! Bytes on the wire to contract types and back: proto3 JSON (the default,
//! also when a publisher sends no content type, as Node's amqplib does) and
//! protobuf binary.

use prost::Message as _;
use serde::Serialize;

use crate::v1;

/// How a message body is encoded, read from the AMQP `content_type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentType {
    Json,
    Protobuf,
    Other(String),
}

impl ContentType {
    /// A missing content type is JSON; parameters such as `; charset=utf-8`
    /// are ignored.
    pub fn from_header(value: Option<&str>) -> ContentType {
        let Some(value) = value else {
            return ContentType::Json;
        };
        let essence = value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "" | "application/json" | "text/json" => ContentType::Json,
            "application/x-protobuf"
            | "application/protobuf"
            | "application/vnd.google.protobuf" => ContentType::Protobuf,
            _ => ContentType::Other(essence),
        }
    }
}

/// Why a message is not a usable job. `job_id` is set when an id could be
/// read all the same, so that the publisher still gets a failed result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub message: String,
    pub job_id: Option<String>,
}

impl DecodeError {
    pub(crate) fn new(message: impl Into<String>, job_id: Option<String>) -> Self {
        DecodeError {
            message: message.into(),
            job_id,
        }
    }
}

/// Parses a job message body. Performs no semantic checks: see
/// [`crate::validate_job`].
///
/// # Errors
/// Oversized bodies, unknown content types, malformed JSON or protobuf, and
/// JSON whose fields have the wrong type or enum value; the message names the
/// field path (`inputs[0].role: unknown variant ...`).
pub fn decode_job(body: &[u8], content_type: &ContentType) -> Result<v1::Job, DecodeError> {
    if body.len() > crate::MAX_MESSAGE_BYTES {
        return Err(DecodeError::new(
            format!(
                "message is {} bytes, above the {} byte limit for a job",
                body.len(),
                crate::MAX_MESSAGE_BYTES
            ),
            None,
        ));
    }
    match content_type {
        ContentType::Json => decode_json(body),
        ContentType::Protobuf => v1::Job::decode(body).map_err(|e| {
            DecodeError::new(format!("body is not a valid protobuf Job: {e}"), None)
        }),
        ContentType::Other(other) => Err(DecodeError::new(
            format!(
                "content type {} is not supported, expected application/json or application/x-protobuf",
                clip(other, 64)
            ),
            job_id_hint(body),
        )),
    }
}

fn decode_json(body: &[u8]) -> Result<v1::Job, DecodeError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, v1::Job>(&mut deserializer) {
        Ok(job) => {
            deserializer.end().map_err(|e| {
                DecodeError::new(
                    format!("trailing data after the job JSON: {e}"),
                    job_id_hint(body),
                )
            })?;
            Ok(job)
        }
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let syntax = inner.is_syntax() || inner.is_eof();
            let inner = withhold_values(&inner.to_string());
            let message = if syntax || path == "." {
                format!("body is not valid job JSON: {inner}")
            } else {
                format!("field `{}`: {inner}", clip(&path, 200))
            };
            Err(DecodeError::new(message, job_id_hint(body)))
        }
    }
}

/// Parses a cancel request and checks its job id.
///
/// # Errors
/// Unknown content types, bodies that are not a `CancelJob`, and a missing
/// or malformed job id.
pub fn decode_cancel(
    body: &[u8],
    content_type: &ContentType,
) -> Result<v1::CancelJob, DecodeError> {
    const MAX_CANCEL_BYTES: usize = 4096;
    if body.len() > MAX_CANCEL_BYTES {
        return Err(DecodeError::new(
            format!(
                "message is {} bytes, above the {MAX_CANCEL_BYTES} byte limit for a cancel request",
                body.len()
            ),
            None,
        ));
    }
    let mut cancel = match content_type {
        ContentType::Json => serde_json::from_slice::<v1::CancelJob>(body).map_err(|e| {
            DecodeError::new(
                format!(
                    "body is not valid CancelJob JSON: {}",
                    withhold_values(&e.to_string())
                ),
                None,
            )
        })?,
        ContentType::Protobuf => v1::CancelJob::decode(body).map_err(|e| {
            DecodeError::new(format!("body is not a valid protobuf CancelJob: {e}"), None)
        })?,
        ContentType::Other(other) => {
            return Err(DecodeError::new(
                format!(
                    "content type {} is not supported, expected application/json or application/x-protobuf",
                    clip(other, 64)
                ),
                None,
            ))
        }
    };
    if !crate::is_valid_job_id(&cancel.job_id) {
        return Err(DecodeError::new(
            "field `job_id`: missing or not a valid job id (a ULID or UUID)",
            None,
        ));
    }
    let tenant_ok = cancel.tenant.as_ref().is_some_and(|t| {
        crate::is_valid_tenant_id(&t.org) && crate::is_valid_tenant_id(&t.workspace)
    });
    if !tenant_ok {
        return Err(DecodeError::new(
            "field `tenant`: missing, or its org or workspace is not 1 to 64 characters of \
             [A-Za-z0-9_-] (a cancel names the tenant whose job it cancels)",
            Some(cancel.job_id),
        ));
    }
    cancel.job_id = crate::canonical_job_id(&cancel.job_id);
    Ok(cancel)
}

/// Best effort: the job id of a body that failed to parse as a `Job`, when
/// it is at least a JSON object with a valid id.
/// A decoder's message with the values it quotes withheld: serde quotes
/// the offending string (`invalid type: string "..."`, ``unknown variant
/// `...` ``), and that string can be a prompt or a signed URL. Our own
/// names (fields, the expected variants) stay, so the message still says
/// what to fix. Clipped to a readable length.
pub(crate) fn withhold_values(message: &str) -> String {
    const VARIANT: &str = "unknown variant `";
    const WITHHELD: &str = "(value withheld)";
    let mut out = String::with_capacity(message.len().min(400));
    let mut rest = message;
    loop {
        let quote = rest.find('"');
        let variant = rest.find(VARIANT);
        let quote_first = match (quote, variant) {
            (Some(q), Some(v)) => q < v,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if let (true, Some(q)) = (quote_first, quote) {
            out.push_str(&rest[..q]);
            out.push_str(WITHHELD);
            // Skip to the closing quote, past escaped ones.
            let after = &rest[q + 1..];
            let mut escaped = false;
            let end = after.char_indices().find_map(|(i, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes.then_some(i)
            });
            match end {
                Some(end) => rest = &after[end + 1..],
                None => break,
            }
        } else if let Some(v) = variant {
            let start = v + VARIANT.len();
            out.push_str(&rest[..start]);
            out.push_str(WITHHELD);
            out.push('`');
            match rest[start..].find('`') {
                Some(end) => rest = &rest[start + end + 1..],
                None => break,
            }
        } else {
            out.push_str(rest);
            break;
        }
    }
    clip(&out, 300)
}

/// At most `max` characters of `text`, marked when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut clipped: String = text.chars().take(max).collect();
    clipped.push('…');
    clipped
}

fn job_id_hint(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    let id = object
        .get("jobId")
        .or_else(|| object.get("job_id"))?
        .as_str()?;
    crate::is_valid_job_id(id).then(|| id.to_string())
}

/// Serialises a contract message as canonical proto3 JSON.
pub fn encode_json<T: Serialize>(message: &T) -> Vec<u8> {
    // Serialising generated pbjson types to a Vec cannot fail: every map key
    // is a string and no impl returns a custom error.
    serde_json::to_vec(message).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(ContentType::from_header(None), ContentType::Json);
        assert_eq!(
            ContentType::from_header(Some("application/json; charset=utf-8")),
            ContentType::Json
        );
        assert_eq!(
            ContentType::from_header(Some("application/x-protobuf")),
            ContentType::Protobuf
        );
        assert_eq!(
            ContentType::from_header(Some("text/plain")),
            ContentType::Other("text/plain".into())
        );
    }

    #[test]
    fn decode_errors_never_quote_the_values_they_refuse() {
        let secret = "SECRET-prompt-https://bucket/x?X-Amz-Signature=abc";
        let bodies = [
            format!(r#"{{"jobId":"01JD3XQ6Z8M5V9K2T4W7Y1B0CE","kind":"{secret}"}}"#),
            format!(r#"{{"jobId":"01JD3XQ6Z8M5V9K2T4W7Y1B0CE","seed":"{secret}"}}"#),
            format!(r#"{{"jobId":"01JD3XQ6Z8M5V9K2T4W7Y1B0CE","deadline":"{secret}"}}"#),
            format!(
                r#"{{"jobId":"01JD3XQ6Z8M5V9K2T4W7Y1B0CE","generation":{{"count":"{secret}"}}}}"#
            ),
            format!(r#"{{"jobId":"01JD3XQ6Z8M5V9K2T4W7Y1B0CE","inputs":[{{"role":"{secret}"}}]}}"#),
            format!(r#"{{"jobId":"01JD3XQ6Z8M5V9K2T4W7Y1B0CE","inputs":"{secret}"}}"#),
            format!(
                r#"{{"jobId":"01JD3XQ6Z8M5V9K2T4W7Y1B0CE","credits":{{"holdTtl":"{secret}"}}}}"#
            ),
            format!(
                r#"{{"jobId":"01JD3XQ6Z8M5V9K2T4W7Y1B0CE","tenant":{{"org":7, "workspace":"{secret}"}}}}"#
            ),
        ];
        for body in &bodies {
            // Unknown enum names decode as UNSPECIFIED, which the checks
            // refuse; either way the refusal must not repeat the value.
            let err = match decode_job(body.as_bytes(), &ContentType::Json) {
                Err(err) => err,
                Ok(job) => crate::validate_job(job, None).unwrap_err(),
            };
            assert!(!err.message.contains("SECRET"), "{body}: {}", err.message);
            assert!(
                err.message.starts_with("field `")
                    || err.message.starts_with("body")
                    || err.message.starts_with("missing required field"),
                "{}",
                err.message
            );
        }
        // What to fix is still said.
        let err = decode_job(bodies[0].as_bytes(), &ContentType::Json).unwrap_err();
        assert!(
            err.message.contains("JOB_KIND_BACKGROUND_REMOVAL"),
            "{}",
            err.message
        );
        let err = decode_cancel(
            format!(r#"{{"jobId":"{secret}"}}"#).as_bytes(),
            &ContentType::Json,
        )
        .unwrap_err();
        assert!(!err.message.contains("SECRET"), "{}", err.message);
        let err = decode_cancel(
            format!(r#"{{"jobId":7,"reason":"{secret}"}}"#).as_bytes(),
            &ContentType::Json,
        )
        .unwrap_err();
        assert!(!err.message.contains("SECRET"), "{}", err.message);
        assert_eq!(
            withhold_values(r#"invalid type: string "a\"b", expected u32 and "c""#),
            "invalid type: string (value withheld), expected u32 and (value withheld)"
        );
    }

    #[test]
    fn a_cancel_names_its_tenant() {
        let ok =
            br#"{"jobId":"01jd3xq6z8m5v9k2t4w7y1b0ce","tenant":{"org":"acme","workspace":"ws"}}"#;
        let cancel = decode_cancel(ok, &ContentType::Json).unwrap();
        // Canonical case, as the job's keys are.
        assert_eq!(cancel.job_id, "01JD3XQ6Z8M5V9K2T4W7Y1B0CE");
        for bad in [
            br#"{"jobId":"01JD3XQ6Z8M5V9K2T4W7Y1B0CE"}"#.as_slice(),
            br#"{"jobId":"01JD3XQ6Z8M5V9K2T4W7Y1B0CE","tenant":{"org":"acme"}}"#,
            br#"{"jobId":"01JD3XQ6Z8M5V9K2T4W7Y1B0CE","tenant":{"org":"a.b","workspace":"ws"}}"#,
        ] {
            let err = decode_cancel(bad, &ContentType::Json).unwrap_err();
            assert!(err.message.starts_with("field `tenant`"), "{}", err.message);
        }
    }

    #[test]
    fn errors_name_the_field() {
        let body = br#"{"jobId":"01JD3XQ6Z8M5V9K2T4W7Y1B0CE","kind":"JOB_KIND_NOPE"}"#;
        let err = decode_job(body, &ContentType::Json).unwrap_err();
        assert!(err.message.starts_with("field `kind`"), "{}", err.message);
        assert_eq!(err.job_id.as_deref(), Some("01JD3XQ6Z8M5V9K2T4W7Y1B0CE"));

        let body = br#"{"job_id":"01JD3XQ6Z8M5V9K2T4W7Y1B0CE","inputs":[{"role":7}]}"#;
        let err = decode_job(body, &ContentType::Json).unwrap_err();
        assert!(err.message.contains("inputs[0].role"), "{}", err.message);

        let err = decode_job(b"{not json", &ContentType::Json).unwrap_err();
        assert!(
            err.message.starts_with("body is not valid job JSON"),
            "{}",
            err.message
        );
        assert_eq!(err.job_id, None);
    }

    #[test]
    fn protobuf_round_trip() {
        let job = v1::Job {
            job_id: "01JD3XQ6Z8M5V9K2T4W7Y1B0CE".into(),
            kind: v1::JobKind::Upscale as i32,
            ..Default::default()
        };
        let bytes = job.encode_to_vec();
        assert_eq!(decode_job(&bytes, &ContentType::Protobuf).unwrap(), job);
        assert!(decode_job(&[0xff, 0xff, 0xff], &ContentType::Protobuf).is_err());
    }

    #[test]
    fn oversized_is_rejected_before_parsing() {
        let body = vec![b' '; crate::MAX_MESSAGE_BYTES + 1];
        let err = decode_job(&body, &ContentType::Json).unwrap_err();
        assert!(err.message.contains("byte limit"));
    }
}
