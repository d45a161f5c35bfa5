//! What a job's `parameters` may add to a provider request, and what they
//! may not touch.
//!
//! `GenerationRequest::parameters` come from the job's
//! `generation.parameters`, which a platform backend publishes; the trust
//! model (`shared/DESIGN.md`) trusts a backend to name the tenant and
//! nothing more. So parameters may tune a model (steps, guidance, a seed,
//! a scale), but they cannot replace what the worker decides: the inputs
//! it fetched and checked, the prompt it was given, how many outputs are
//! made (and billed), the safety settings, where and how outputs are
//! delivered (sync mode, webhooks, a bucket we do not own), the model and
//! the request's own framing. Each client names its owned keys (its
//! folder's module docs list them); [`check`] refuses a request whose
//! parameters contain one, before anything is sent.
//!
//! Keys are compared loosely, because providers are loose: protobuf JSON
//! (Vertex) takes both `sampleCount` and `sample_count`, some model servers
//! accept aliases in any case, and a multipart field `image[]` is an
//! `image`. A key is therefore reduced to its ASCII letters and digits,
//! lower-cased (`Num-Images`, `numImages` and `NUM_IMAGES` are all
//! `numimages`), and a key that is a path (`parameters.sampleCount`,
//! `input[image]`, `a/b`) is also compared segment by segment. Keys inside
//! nested objects and arrays are compared too, at every depth: a nested
//! `input` or `upscaleConfig` is refused like a top-level one.
//!
//! Parameters are also bounded, whatever the worker checked before:
//! [`MAX_BYTES`] serialised and [`MAX_DEPTH`] levels of nesting.
//!
//! A refusal is [`ProviderError::Unsupported`] (`invalid_input`: the job
//! asked for it, and sending it again changes nothing). Its message names
//! the key, never a value.

use serde_json::{Map, Value};

use crate::http::truncate;
use crate::ProviderError;

/// Most bytes the parameters may take serialised as JSON.
pub(crate) const MAX_BYTES: usize = 16 * 1024;
/// Deepest nesting allowed: a parameter's scalar value is level 1, a value
/// inside an object or array one level more.
pub(crate) const MAX_DEPTH: usize = 8;

/// The prompt fields the clients map from the request.
pub(crate) const PROMPT_KEYS: &[&str] = &["prompt", "negative_prompt"];

/// Output counts, in the spellings providers use.
pub(crate) const COUNT_KEYS: &[&str] = &[
    "num_images",
    "num_outputs",
    "number_of_images",
    "num_samples",
    "sample_count",
    "candidate_count",
    "batch_size",
    "n",
];

/// Safety checkers and content-policy settings.
pub(crate) const SAFETY_KEYS: &[&str] = &[
    "enable_safety_checker",
    "disable_safety_checker",
    "safety_checker",
    "enable_safety_checks",
    "safety_tolerance",
    "safety_filter_level",
    "safety_setting",
    "safety_settings",
    "person_generation",
    "moderation",
];

/// How and where outputs are delivered.
pub(crate) const DELIVERY_KEYS: &[&str] = &[
    "sync_mode",
    "webhook",
    "webhook_url",
    "fal_webhook",
    "webhook_events_filter",
    "response_format",
    "storage_uri",
    "output_uri",
    "stream",
];

/// The keys one provider's client owns: shared groups plus its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owned {
    /// The provider, for the message.
    pub(crate) provider: &'static str,
    /// Groups of keys, in any spelling [`normalize`] folds together.
    pub(crate) groups: &'static [&'static [&'static str]],
}

impl Owned {
    fn owns(&self, normalized: &str, extra: &[&str]) -> bool {
        !normalized.is_empty()
            && (self
                .groups
                .iter()
                .flat_map(|group| group.iter())
                .any(|key| normalize(key) == normalized)
                || extra.iter().any(|key| normalize(key) == normalized))
    }

    /// Whether `key`, or a segment of it, is owned.
    fn refuses(&self, key: &str, extra: &[&str]) -> bool {
        self.owns(&normalize(key), extra)
            || key
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .any(|segment| self.owns(&normalize(segment), extra))
    }
}

/// `key` reduced to its ASCII letters and digits, lower-cased.
pub(crate) fn normalize(key: &str) -> String {
    key.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Refuses `parameters` that set a key `owned` (or one of `extra`, names
/// known only at run time, such as KServe's tensor names) or that exceed
/// [`MAX_DEPTH`] or [`MAX_BYTES`].
///
/// # Errors
///
/// [`ProviderError::Unsupported`] naming the key, or the bound.
pub(crate) fn check(
    parameters: &Map<String, Value>,
    owned: &Owned,
    extra: &[&str],
) -> Result<(), ProviderError> {
    // Iterative, so a value nested beyond any bound cannot exhaust the
    // stack before the bound is seen: (value, its depth, its top-level key).
    let mut stack: Vec<(&Value, usize, &str)> = Vec::new();
    for (key, value) in parameters {
        if owned.refuses(key, extra) {
            return Err(refused(owned.provider, key, None));
        }
        stack.push((value, 1, key));
    }
    while let Some((value, depth, top)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(ProviderError::Unsupported {
                message: format!(
                    "parameter {:?} is nested deeper than {MAX_DEPTH} levels",
                    shown(top)
                ),
            });
        }
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    if owned.refuses(key, extra) {
                        return Err(refused(owned.provider, key, Some(top)));
                    }
                    stack.push((inner, depth + 1, top));
                }
            }
            Value::Array(items) => stack.extend(items.iter().map(|item| (item, depth + 1, top))),
            _ => {}
        }
    }
    let mut counter = Counter {
        written: 0,
        limit: MAX_BYTES,
    };
    if serde_json::to_writer(&mut counter, parameters).is_err() {
        return Err(ProviderError::Unsupported {
            message: format!("parameters are larger than {MAX_BYTES} bytes as JSON"),
        });
    }
    Ok(())
}

fn refused(provider: &str, key: &str, inside: Option<&str>) -> ProviderError {
    let place = match inside {
        Some(top) => format!("parameter key {:?} (inside {:?})", shown(key), shown(top)),
        None => format!("parameter {:?}", shown(key)),
    };
    ProviderError::Unsupported {
        message: format!(
            "{place} is set by the worker for {provider} and cannot be overridden by a job"
        ),
    }
}

/// A key as shown in a message: printable, and short.
fn shown(key: &str) -> String {
    let printable: String = key
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    truncate(&printable, 64)
}

/// Counts serialised bytes and fails once past `limit`.
struct Counter {
    written: usize,
    limit: usize,
}

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written = self.written.saturating_add(buf.len());
        if self.written > self.limit {
            return Err(std::io::Error::other("over the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// For the providers' tests: every key `owned` (and `extra`) in the
/// spellings a hostile job might try, each with the key its refusal must
/// name: as it is, upper-cased, camelCased, as a dotted path and nested
/// two levels down.
#[cfg(test)]
pub(crate) fn hostile_parameters(
    owned: &Owned,
    extra: &[&str],
) -> Vec<(String, Map<String, Value>)> {
    let one = |key: &str, value: Value| {
        let mut map = Map::new();
        map.insert(key.to_owned(), value);
        map
    };
    let keys = owned
        .groups
        .iter()
        .flat_map(|group| group.iter())
        .chain(extra)
        .copied();
    let mut out = Vec::new();
    for key in keys {
        let camel: String = key
            .split('_')
            .enumerate()
            .map(|(i, part)| {
                let mut chars = part.chars();
                match (i, chars.next()) {
                    (0, Some(first)) => first.to_string() + chars.as_str(),
                    (_, Some(first)) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                    (_, None) => String::new(),
                }
            })
            .collect();
        let dotted = format!("settings.{key}");
        for spelling in [key.to_owned(), key.to_ascii_uppercase(), camel, dotted] {
            out.push((spelling.clone(), one(&spelling, Value::from(1))));
        }
        out.push((
            key.to_owned(),
            one(
                "settings",
                serde_json::json!({"nested": [one(key, Value::from("x"))]}),
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const OWNED: Owned = Owned {
        provider: "test",
        groups: &[PROMPT_KEYS, COUNT_KEYS, &["image_url", "input"]],
    };

    fn params(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn refused_key(value: Value) -> Option<String> {
        match check(&params(value), &OWNED, &["TENSOR_X"]) {
            Ok(()) => None,
            Err(ProviderError::Unsupported { message }) => Some(message),
            Err(other) => panic!("unexpected class: {other:?}"),
        }
    }

    #[test]
    fn harmless_parameters_pass() {
        assert_eq!(
            refused_key(
                json!({"guidance": 3.5, "steps": 28, "seed": 1, "loras": [{"path": "a", "scale": 1}]})
            ),
            None
        );
        assert_eq!(refused_key(json!({})), None);
    }

    #[test]
    fn owned_keys_are_refused_in_any_spelling() {
        for key in [
            "num_images",
            "numImages",
            "NUM-IMAGES",
            "Num Images",
            "num_images\u{200b}",
            "image_url",
            "imageUrl",
            "n",
            "N",
            "prompt",
            "PROMPT",
            "input.image",
            "parameters.num_images",
            "input[image]",
            "tensor_x",
        ] {
            let message = refused_key(json!({ key: 1 })).unwrap_or_else(|| panic!("{key}"));
            assert!(message.contains("set by the worker for test"), "{message}");
        }
    }

    #[test]
    fn nested_owned_keys_are_refused() {
        let message = refused_key(json!({"extra": {"deeper": [{"imageUrl": "x"}]}})).unwrap();
        assert_eq!(
            message,
            "parameter key \"imageUrl\" (inside \"extra\") is set by the worker for test and cannot be overridden by a job"
        );
        assert!(refused_key(json!({"x": {"input": {}}})).is_some());
    }

    #[test]
    fn the_message_names_the_key_never_the_value() {
        let message = refused_key(json!({"prompt": "SECRET VALUE"})).unwrap();
        assert!(message.contains("\"prompt\""), "{message}");
        assert!(!message.contains("SECRET"), "{message}");
        let long = "k".repeat(500);
        let message = refused_key(json!({ format!("n.{long}"): 1 })).unwrap();
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn depth_is_bounded() {
        let mut value = json!(1);
        for _ in 0..MAX_DEPTH - 1 {
            value = json!([value]);
        }
        assert_eq!(refused_key(json!({ "deep": value.clone() })), None);
        let message = refused_key(json!({ "deep": [value] })).unwrap();
        assert!(message.contains("nested deeper than 8"), "{message}");
        // Far deeper than serde_json would parse: still no recursion.
        let mut value = json!(1);
        for _ in 0..100_000 {
            value = Value::Array(vec![value]);
        }
        let mut map = Map::new();
        map.insert("deep".into(), value);
        assert!(check(&map, &OWNED, &[]).is_err());
        // Dropping a deeply nested Value recurses: leak it instead.
        std::mem::forget(map);
    }

    #[test]
    fn size_is_bounded() {
        assert_eq!(
            refused_key(json!({"text": "a".repeat(MAX_BYTES - 20)})),
            None
        );
        let message = refused_key(json!({"text": "a".repeat(MAX_BYTES)})).unwrap();
        assert_eq!(message, "parameters are larger than 16384 bytes as JSON");
    }
}
