//! Semantic checks of a decoded job: required fields, enum values that are
//! not UNSPECIFIED, id syntax, bounds. A job that passes is a [`ValidJob`],
//! the only thing the worker's lifecycle accepts.

use crate::v1;
use crate::DecodeError;

/// Most images one job may ask a provider for; bounds the credits and storage
/// a single message can commit.
pub const MAX_COUNT: u32 = 8;
/// Most inputs one job may reference.
pub const MAX_INPUTS: usize = 8;
/// Most pre-processing steps: a real job resizes, upscales, or both; a long
/// chain is a way to hold a worker, not a product feature.
pub const MAX_PREPROCESS_STEPS: usize = 4;
/// Longest prompt and negative prompt, in bytes (providers take less).
pub const MAX_PROMPT_BYTES: usize = 8 * 1024;
/// Largest `generation.parameters`, serialised as JSON, and its deepest
/// nesting: model options are a handful of scalars.
pub const MAX_PARAMETERS_BYTES: usize = 16 * 1024;
pub const MAX_PARAMETERS_DEPTH: usize = 8;
/// Longest input URI; a presigned URL is well under this.
pub const MAX_URI_BYTES: usize = 2048;
/// Longest short text field (model, aspect ratio, user id, account, preset
/// and provider names, content types).
pub const MAX_NAME_BYTES: usize = 256;
/// Most entries in a list of names (providers, presets, formats).
pub const MAX_LIST_ENTRIES: usize = 16;
/// Longest credit hold a job may ask for: a week covers any parked render.
pub const MAX_HOLD_TTL_SECONDS: i64 = 7 * 24 * 3600;
/// Timestamps must lie between 1970 and 9999 (RFC 3339's range), so time
/// arithmetic on them cannot overflow.
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// A job that passed [`validate_job`]: `job_id` and the tenant ids are safe
/// to use as keys, `kind` and every enum are specified, every field is
/// within its bound.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    job: v1::Job,
    /// The job id in canonical case, the key of everything stored for it.
    key: String,
}

impl ValidJob {
    pub fn job(&self) -> &v1::Job {
        &self.job
    }
    /// The job id in canonical case (ULID upper, UUID lower): the key of
    /// the job's hold, outcome, outputs and provider requests, so that the
    /// same id in another case is the same job.
    pub fn job_id(&self) -> &str {
        &self.key
    }
    /// The job id as the publisher wrote it, for the messages it gets back
    /// (result `job_id`, `message_id`, `correlation_id`).
    pub fn job_id_as_sent(&self) -> &str {
        &self.job.job_id
    }
    /// `org/workspace`: the owner of the job's id in the ledger.
    pub fn owner(&self) -> String {
        format!("{}/{}", self.tenant().org, self.tenant().workspace)
    }
    pub fn kind(&self) -> v1::JobKind {
        // Checked in validate_job: the value is a known, specified kind.
        v1::JobKind::try_from(self.job.kind).unwrap_or(v1::JobKind::Unspecified)
    }
    pub fn tenant(&self) -> &v1::Tenant {
        // validate_job guarantees presence; the default is unreachable.
        static EMPTY: v1::Tenant = v1::Tenant {
            org: String::new(),
            workspace: String::new(),
            user: String::new(),
        };
        self.job.tenant.as_ref().unwrap_or(&EMPTY)
    }
    /// Ledger account for the job's credits.
    pub fn credit_account(&self) -> String {
        match &self.job.credits {
            Some(c) if !c.account.is_empty() => c.account.clone(),
            _ => format!("{}/{}", self.tenant().org, self.tenant().workspace),
        }
    }
    pub fn credit_amount(&self) -> i64 {
        self.job.credits.as_ref().map_or(0, |c| c.amount)
    }
    pub fn into_job(self) -> v1::Job {
        self.job
    }
}

/// Checks a decoded job. `message_id` is the AMQP message id, used as the job
/// id when the body has none.
///
/// # Errors
/// The first problem found, naming the field; `job_id` is set on the error
/// whenever the id itself was usable.
pub fn validate_job(mut job: v1::Job, message_id: Option<&str>) -> Result<ValidJob, DecodeError> {
    if job.job_id.is_empty() {
        if let Some(id) = message_id.filter(|id| crate::is_valid_job_id(id)) {
            job.job_id = id.to_string();
        }
    }
    if job.job_id.is_empty() {
        return Err(DecodeError::new(
            "missing required field `job_id` (and the message has no usable message_id)",
            None,
        ));
    }
    if !crate::is_valid_job_id(&job.job_id) {
        return Err(DecodeError::new(
            "field `job_id`: expected a ULID or UUID, found something else",
            None,
        ));
    }
    let job_id = job.job_id.clone();
    check(&job).map_err(|message| DecodeError::new(message, Some(job_id)))?;
    let key = crate::canonical_job_id(&job.job_id);
    Ok(ValidJob { job, key })
}

fn check(job: &v1::Job) -> Result<(), String> {
    if job.contract_version > crate::CONTRACT_VERSION {
        return Err(format!(
            "field `contract_version`: this worker reads version {}, the job was written for version {}",
            crate::CONTRACT_VERSION,
            job.contract_version
        ));
    }
    let tenant = job
        .tenant
        .as_ref()
        .ok_or("missing required field `tenant`")?;
    for (name, value) in [
        ("tenant.org", &tenant.org),
        ("tenant.workspace", &tenant.workspace),
    ] {
        if value.is_empty() {
            return Err(format!("missing required field `{name}`"));
        }
        if !crate::is_valid_tenant_id(value) {
            return Err(format!(
                "field `{name}`: expected 1 to 64 characters of [A-Za-z0-9_-]"
            ));
        }
    }
    bounded("tenant.user", &tenant.user, MAX_NAME_BYTES)?;
    let kind = specified::<v1::JobKind>(job.kind, "kind", v1::JobKind::Unspecified as i32)?;

    if job.inputs.is_empty() {
        return Err(
            "missing required field `inputs`: every job kind needs at least one input".into(),
        );
    }
    if job.inputs.len() > MAX_INPUTS {
        return Err(format!(
            "field `inputs`: {} inputs, at most {MAX_INPUTS} are allowed",
            job.inputs.len()
        ));
    }
    let mut roles = Vec::with_capacity(job.inputs.len());
    for (i, input) in job.inputs.iter().enumerate() {
        let role = specified::<v1::InputRole>(
            input.role,
            &format!("inputs[{i}].role"),
            v1::InputRole::Unspecified as i32,
        )?;
        roles.push(role);
        if input.uri.is_empty() {
            return Err(format!("missing required field `inputs[{i}].uri`"));
        }
        bounded(&format!("inputs[{i}].uri"), &input.uri, MAX_URI_BYTES)?;
        bounded(
            &format!("inputs[{i}].contentType"),
            &input.content_type,
            MAX_NAME_BYTES,
        )?;
        let sha256_ok = input.sha256.is_empty()
            || (input.sha256.len() == 64 && input.sha256.bytes().all(|c| c.is_ascii_hexdigit()));
        if !sha256_ok {
            return Err(format!(
                "field `inputs[{i}].sha256`: expected 64 hex characters"
            ));
        }
    }
    if kind == v1::JobKind::VirtualTryOn {
        for needed in [v1::InputRole::Person, v1::InputRole::Garment] {
            if !roles.contains(&needed) {
                return Err(format!(
                    "field `inputs`: a virtual try-on needs a {} input",
                    needed
                        .as_str_name()
                        .trim_start_matches("INPUT_ROLE_")
                        .to_lowercase()
                ));
            }
        }
    }

    if job.preprocess.len() > MAX_PREPROCESS_STEPS {
        return Err(format!(
            "field `preprocess`: {} steps, at most {MAX_PREPROCESS_STEPS} are allowed",
            job.preprocess.len()
        ));
    }
    for (i, step) in job.preprocess.iter().enumerate() {
        match &step.step {
            None => return Err(format!("field `preprocess[{i}]`: no step is set")),
            Some(v1::preprocess_step::Step::Resize(r)) => {
                if !(16..=16384).contains(&r.long_side) {
                    return Err(format!(
                        "field `preprocess[{i}].resize.longSide`: expected 16..=16384, found {}",
                        r.long_side
                    ));
                }
            }
            Some(v1::preprocess_step::Step::Upscale(u)) => {
                if u.factor != 2 && u.factor != 4 {
                    return Err(format!(
                        "field `preprocess[{i}].upscale.factor`: expected 2 or 4, found {}",
                        u.factor
                    ));
                }
            }
        }
    }

    if let Some(generation) = &job.generation {
        if generation.count > MAX_COUNT {
            return Err(format!(
                "field `generation.count`: at most {MAX_COUNT} images per job, found {}",
                generation.count
            ));
        }
        bounded("generation.prompt", &generation.prompt, MAX_PROMPT_BYTES)?;
        bounded(
            "generation.negativePrompt",
            &generation.negative_prompt,
            MAX_PROMPT_BYTES,
        )?;
        bounded("generation.model", &generation.model, MAX_NAME_BYTES)?;
        bounded(
            "generation.aspectRatio",
            &generation.aspect_ratio,
            MAX_NAME_BYTES,
        )?;
        names("generation.providers", &generation.providers)?;
        if let Some(parameters) = &generation.parameters {
            check_parameters(parameters)?;
        }
    }
    if let Some(outputs) = &job.outputs {
        names("outputs.presets", &outputs.presets)?;
        if outputs.formats.len() > MAX_LIST_ENTRIES {
            return Err(format!(
                "field `outputs.formats`: at most {MAX_LIST_ENTRIES} entries"
            ));
        }
        for (i, format) in outputs.formats.iter().enumerate() {
            specified::<v1::OutputFormat>(
                *format,
                &format!("outputs.formats[{i}]"),
                v1::OutputFormat::Unspecified as i32,
            )?;
        }
        if outputs.quality > 100 {
            return Err(format!(
                "field `outputs.quality`: expected 0..=100, found {}",
                outputs.quality
            ));
        }
    }
    if let Some(credits) = &job.credits {
        if credits.amount < 0 {
            return Err(format!(
                "field `credits.amount`: expected 0 or more, found {}",
                credits.amount
            ));
        }
        if let Some(ttl) = &credits.hold_ttl {
            if ttl.seconds < 0 || ttl.nanos < 0 {
                return Err("field `credits.holdTtl`: must not be negative".into());
            }
            if ttl.seconds > MAX_HOLD_TTL_SECONDS || ttl.nanos >= 1_000_000_000 {
                return Err(format!(
                    "field `credits.holdTtl`: at most {MAX_HOLD_TTL_SECONDS}s, with nanos below one second"
                ));
            }
        }
        // The paying account is the tenant's own: its workspace or its
        // organisation. The refused name is not repeated back.
        if !credits.account.is_empty() {
            let workspace_account = format!("{}/{}", tenant.org, tenant.workspace);
            if credits.account != workspace_account && credits.account != tenant.org {
                return Err(format!(
                    "field `credits.account`: a job may only charge its own workspace's account \
                     (`{workspace_account}`) or its organisation's (`{}`)",
                    tenant.org
                ));
            }
        }
    }
    for (name, timestamp) in [("deadline", &job.deadline), ("createdAt", &job.created_at)] {
        if let Some(t) = timestamp {
            if !(0..=MAX_TIMESTAMP_SECONDS).contains(&t.seconds)
                || !(0..1_000_000_000).contains(&t.nanos)
            {
                return Err(format!(
                    "field `{name}`: not a time between 1970 and 9999 with nanos below one second"
                ));
            }
        }
    }
    v1::Priority::try_from(job.priority)
        .map_err(|_| format!("field `priority`: unknown value {}", job.priority))?;
    Ok(())
}

/// A text field within `max` bytes; the value is never quoted back.
fn bounded(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "field `{field}`: {} bytes, at most {max} are allowed",
            value.len()
        ));
    }
    Ok(())
}

/// A list of short names.
fn names(field: &str, values: &[String]) -> Result<(), String> {
    if values.len() > MAX_LIST_ENTRIES {
        return Err(format!(
            "field `{field}`: {} entries, at most {MAX_LIST_ENTRIES} are allowed",
            values.len()
        ));
    }
    for (i, value) in values.iter().enumerate() {
        bounded(&format!("{field}[{i}]"), value, MAX_NAME_BYTES)?;
    }
    Ok(())
}

/// `generation.parameters` within its size and depth: a provider gets a
/// handful of model options, not a document.
fn check_parameters(parameters: &pbjson_types::Struct) -> Result<(), String> {
    fn depth(value: &pbjson_types::Value, level: usize) -> usize {
        use pbjson_types::value::Kind;
        match &value.kind {
            Some(Kind::StructValue(s)) => s
                .fields
                .values()
                .map(|v| depth(v, level + 1))
                .max()
                .unwrap_or(level + 1),
            Some(Kind::ListValue(l)) => l
                .values
                .iter()
                .map(|v| depth(v, level + 1))
                .max()
                .unwrap_or(level + 1),
            _ => level,
        }
    }
    let deepest = parameters
        .fields
        .values()
        .map(|v| depth(v, 1))
        .max()
        .unwrap_or(0);
    if deepest > MAX_PARAMETERS_DEPTH {
        return Err(format!(
            "field `generation.parameters`: nested {deepest} levels deep, at most {MAX_PARAMETERS_DEPTH} are allowed"
        ));
    }
    let size = serde_json::to_vec(parameters).map_or(usize::MAX, |v| v.len());
    if size > MAX_PARAMETERS_BYTES {
        return Err(format!(
            "field `generation.parameters`: {size} bytes as JSON, at most {MAX_PARAMETERS_BYTES} are allowed"
        ));
    }
    Ok(())
}

/// An enum field must hold a known value other than UNSPECIFIED: the zero
/// value never silently selects a default behaviour.
fn specified<E: TryFrom<i32>>(value: i32, field: &str, unspecified: i32) -> Result<E, String> {
    if value == unspecified {
        return Err(format!(
            "missing required field `{field}` (the UNSPECIFIED value is not accepted)"
        ));
    }
    E::try_from(value).map_err(|_| format!("field `{field}`: unknown value {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> v1::Job {
        v1::Job {
            job_id: "01JD3XQ6Z8M5V9K2T4W7Y1B0CE".into(),
            tenant: Some(v1::Tenant {
                org: "acme".into(),
                workspace: "shop-1".into(),
                user: "u1".into(),
            }),
            kind: v1::JobKind::Upscale as i32,
            inputs: vec![v1::Input {
                role: v1::InputRole::Product as i32,
                uri: "s3://uploads/acme/a.jpg".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn check_err(job: v1::Job, expected: &str) {
        let err = validate_job(job, None).unwrap_err();
        assert!(
            err.message.contains(expected),
            "expected {expected:?} in {:?}",
            err.message
        );
    }

    #[test]
    fn bounds_and_foreign_accounts_are_refused_without_quoting_values() {
        let long = "S".repeat(MAX_PROMPT_BYTES + 1);
        type Edit = Box<dyn Fn(&mut v1::Job)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "`generation.prompt`",
                Box::new(move |j| {
                    j.generation.get_or_insert_with(Default::default).prompt = long.clone()
                }),
            ),
            (
                "`generation.negativePrompt`",
                Box::new(|j| {
                    j.generation
                        .get_or_insert_with(Default::default)
                        .negative_prompt = "S".repeat(MAX_PROMPT_BYTES + 1)
                }),
            ),
            (
                "`generation.model`",
                Box::new(|j| {
                    j.generation.get_or_insert_with(Default::default).model = "S".repeat(300)
                }),
            ),
            (
                "`generation.providers`",
                Box::new(|j| {
                    j.generation.get_or_insert_with(Default::default).providers =
                        vec!["fal".into(); 17]
                }),
            ),
            (
                "`generation.parameters`",
                Box::new(|j| {
                    let big = pbjson_types::Value::from("S".repeat(MAX_PARAMETERS_BYTES));
                    let mut params = pbjson_types::Struct::default();
                    params.fields.insert("style".into(), big);
                    j.generation.get_or_insert_with(Default::default).parameters = Some(params);
                }),
            ),
            (
                "nested",
                Box::new(|j| {
                    let mut value = pbjson_types::Value::from("S");
                    for _ in 0..MAX_PARAMETERS_DEPTH + 1 {
                        value = pbjson_types::Value::from(vec![value]);
                    }
                    let mut params = pbjson_types::Struct::default();
                    params.fields.insert("deep".into(), value);
                    j.generation.get_or_insert_with(Default::default).parameters = Some(params);
                }),
            ),
            (
                "`inputs[0].uri`",
                Box::new(|j| {
                    j.inputs[0].uri = format!("s3://genfleet/{}", "S".repeat(MAX_URI_BYTES))
                }),
            ),
            (
                "`tenant.user`",
                Box::new(|j| j.tenant.as_mut().unwrap().user = "S".repeat(300)),
            ),
            (
                "`preprocess`",
                Box::new(|j| {
                    j.preprocess = vec![
                        v1::PreprocessStep {
                            step: Some(v1::preprocess_step::Step::Resize(v1::Resize {
                                long_side: 64,
                            })),
                        };
                        MAX_PREPROCESS_STEPS + 1
                    ]
                }),
            ),
            (
                "`outputs.presets[0]`",
                Box::new(|j| {
                    j.outputs.get_or_insert_with(Default::default).presets = vec!["S".repeat(300)]
                }),
            ),
            (
                "`credits.account`",
                Box::new(|j| {
                    j.credits = Some(v1::CreditRequest {
                        account: "globex/SECRETSHOP".into(),
                        amount: 1,
                        hold_ttl: None,
                    })
                }),
            ),
            (
                "`credits.account`",
                Box::new(|j| {
                    j.credits = Some(v1::CreditRequest {
                        account: "acme/SECRETSHOP".into(),
                        amount: 1,
                        hold_ttl: None,
                    })
                }),
            ),
            (
                "`credits.holdTtl`",
                Box::new(|j| {
                    j.credits = Some(v1::CreditRequest {
                        account: String::new(),
                        amount: 1,
                        hold_ttl: Some(pbjson_types::Duration {
                            seconds: i64::MAX,
                            nanos: 0,
                        }),
                    })
                }),
            ),
            (
                "`deadline`",
                Box::new(|j| {
                    j.deadline = Some(pbjson_types::Timestamp {
                        seconds: 1,
                        nanos: 2_000_000_000,
                    })
                }),
            ),
            (
                "`deadline`",
                Box::new(|j| {
                    j.deadline = Some(pbjson_types::Timestamp {
                        seconds: i64::MAX,
                        nanos: 0,
                    })
                }),
            ),
            (
                "`createdAt`",
                Box::new(|j| {
                    j.created_at = Some(pbjson_types::Timestamp {
                        seconds: -1,
                        nanos: 0,
                    })
                }),
            ),
        ];
        for (expected, edit) in cases {
            let mut job = minimal();
            edit(&mut job);
            let err = validate_job(job, None).unwrap_err();
            assert!(
                err.message.contains(expected),
                "{expected}: {}",
                err.message
            );
            assert!(!err.message.contains("SS"), "{expected}: {}", err.message);
            assert!(
                !err.message.contains("SECRET"),
                "{expected}: {}",
                err.message
            );
        }
        // The tenant's own accounts are fine.
        for account in ["", "acme/shop-1", "acme"] {
            let mut job = minimal();
            job.credits = Some(v1::CreditRequest {
                account: account.into(),
                amount: 1,
                hold_ttl: None,
            });
            assert!(validate_job(job, None).is_ok(), "{account}");
        }
    }

    #[test]
    fn job_ids_are_keyed_in_canonical_case_and_answered_as_sent() {
        let mut job = minimal();
        job.job_id = "01jd3xq6z8m5v9k2t4w7y1b0ce".into();
        let valid = validate_job(job, None).unwrap();
        assert_eq!(valid.job_id(), "01JD3XQ6Z8M5V9K2T4W7Y1B0CE");
        assert_eq!(valid.job_id_as_sent(), "01jd3xq6z8m5v9k2t4w7y1b0ce");
        assert_eq!(valid.owner(), "acme/shop-1");
    }

    #[test]
    fn minimal_job_is_valid() {
        let job = validate_job(minimal(), None).unwrap();
        assert_eq!(job.kind(), v1::JobKind::Upscale);
        assert_eq!(job.credit_account(), "acme/shop-1");
    }

    #[test]
    fn job_id_falls_back_to_message_id() {
        let mut job = minimal();
        job.job_id.clear();
        let valid =
            validate_job(job.clone(), Some("0190f3b2-7c1e-7a4b-9f00-1234567890ab")).unwrap();
        assert_eq!(valid.job_id(), "0190f3b2-7c1e-7a4b-9f00-1234567890ab");
        let err = validate_job(job, Some("not-an-id")).unwrap_err();
        assert_eq!(err.job_id, None);
    }

    #[test]
    fn each_problem_names_its_field() {
        let mut j = minimal();
        j.kind = 0;
        check_err(j, "`kind`");
        let mut j = minimal();
        j.tenant = None;
        check_err(j, "`tenant`");
        let mut j = minimal();
        j.tenant.as_mut().unwrap().org = "a.b".into();
        check_err(j, "`tenant.org`");
        let mut j = minimal();
        j.inputs.clear();
        check_err(j, "`inputs`");
        let mut j = minimal();
        j.inputs[0].role = 0;
        check_err(j, "`inputs[0].role`");
        let mut j = minimal();
        j.inputs[0].uri.clear();
        check_err(j, "`inputs[0].uri`");
        let mut j = minimal();
        j.kind = v1::JobKind::VirtualTryOn as i32;
        check_err(j, "person");
        let mut j = minimal();
        j.preprocess.push(v1::PreprocessStep {
            step: Some(v1::preprocess_step::Step::Upscale(v1::Upscale {
                factor: 3,
            })),
        });
        check_err(j, "upscale.factor");
        let mut j = minimal();
        j.credits = Some(v1::CreditRequest {
            amount: -1,
            ..Default::default()
        });
        check_err(j, "`credits.amount`");
        let mut j = minimal();
        j.contract_version = 2;
        check_err(j, "`contract_version`");
        let mut j = minimal();
        j.outputs = Some(v1::OutputSpec {
            formats: vec![0],
            ..Default::default()
        });
        check_err(j, "`outputs.formats[0]`");
    }
}
