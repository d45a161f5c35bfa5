//! Tests of [`summary`](super::summary) and [`label`](super::label).

use super::*;

const KEY: &str = "fal-key-id:0123456789abcdef0123456789abcdef";
const PROMPT: &str = "a red sneaker on white marble, studio light";

fn secrets() -> Secrets<'static> {
    Secrets {
        credential: Some(KEY),
        prompts: [PROMPT, "blurry"],
    }
}

fn clean(text: &str) -> String {
    let out = summary(text, &secrets());
    assert!(!out.contains("0123456789abcdef"), "{out}");
    assert!(!out.to_lowercase().contains("white marble"), "{out}");
    assert!(out.chars().count() <= DETAIL_CHARS + 1, "{out}");
    out
}

#[test]
fn keys_and_prompts_are_redacted() {
    assert_eq!(
        clean(&format!("invalid key {KEY} for prompt {PROMPT}")),
        "invalid key [redacted] for prompt [prompt]"
    );
    // The secret part alone, a cut-off echo, another case.
    assert_eq!(
        clean("key 0123456789abcdef0123… is revoked"),
        "key [redacted]… is revoked"
    );
    assert_eq!(
        clean("prompt 'A RED SNEAKER ON WHITE MAR' is unsafe"),
        "prompt '[prompt]' is unsafe"
    );
    assert_eq!(clean("too blurry"), "too [prompt]");
    // A short negative prompt is only replaced whole.
    let out = summary(
        "negative prompt: blurry",
        &Secrets {
            credential: None,
            prompts: ["", "blurry"],
        },
    );
    assert_eq!(out, "negative prompt: [prompt]");
}

#[test]
fn secret_shapes_are_redacted() {
    let out = clean(
        "Incorrect API key provided: sk-proj-abcdefgh1234. Authorization: Bearer ya29_abc \
         api_key=hunter2 \"token\": \"opaque\" see https://files.example/x?sig=1 \
         id 4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c",
    );
    assert_eq!(
        out,
        "Incorrect API key provided: [redacted] Authorization: Bearer [redacted] \
         api_key=[redacted] \"token\": [redacted] see [url] id [redacted]"
    );
}

#[test]
fn ordinary_messages_are_kept() {
    for text in [
        "runner_scheduling_failure: no runner could be scheduled",
        "prompt: prompt is too long; image_size.0: bad size",
        "The model can't process images larger than 4096 pixels",
        "Quota exceeded for aiplatform.googleapis.com/generate_requests_per_minute",
    ] {
        assert_eq!(summary(text, &secrets()), text);
    }
}

#[test]
fn long_quotes_are_dropped_and_text_is_one_bounded_line() {
    assert_eq!(
        clean("input \"some very long echoed user input here\" rejected"),
        "input \"[quoted]\" rejected"
    );
    let out = clean(&format!("line one\n\tline\u{7}two {}", "word ".repeat(500)));
    assert!(out.starts_with("line one line two word"), "{out}");
    assert!(out.ends_with('…'), "{out}");
}

#[test]
fn labels_are_plain() {
    assert_eq!(label("RESOURCE_EXHAUSTED"), "RESOURCE_EXHAUSTED");
    assert_eq!(label("bad\ntype<script>"), "badtypescript");
    assert_eq!(label("sk0123456789abcdefghij"), "[redacted]");
    assert_eq!(label(&"x".repeat(100)).len(), 64);
}
