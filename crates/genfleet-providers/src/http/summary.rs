//! Making a provider's free text fit for an error message.

use super::{truncate, DETAIL_CHARS, SUMMARY_INPUT_CHARS};

/// What a provider's text may echo of ours: the credential sent with the
/// request and the prompts. Some providers quote part of a refused key or
/// the input in their error messages, and those messages end up in a job's
/// result.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Secrets<'a> {
    pub(crate) credential: Option<&'a str>,
    pub(crate) prompts: [&'a str; 2],
}

impl<'a> Secrets<'a> {
    /// The credential, and the prompts of `request` when there is one.
    pub(crate) fn new(
        credential: Option<&'a str>,
        request: Option<&'a crate::GenerationRequest>,
    ) -> Secrets<'a> {
        Secrets {
            credential,
            prompts: request.map_or(["", ""], |request| {
                [request.prompt.as_str(), request.negative_prompt.as_str()]
            }),
        }
    }
}

/// A provider's free text (an error message, a failure reason) made fit
/// for an error message that customers and logs see: one line of printable
/// characters, at most [`DETAIL_CHARS`] of them, with
/// - the credential (whole, its `:`-separated parts, or any echo of its
///   first 8 characters on) replaced by `[redacted]`;
/// - the prompts (whole, or any echo of their first 20 characters on)
///   replaced by `[prompt]`;
/// - what looks like a secret replaced by `[redacted]`: the word after
///   `Bearer` or `Basic`, `name=value` and `"name": value` where the name
///   ends in key, token, secret, signature, sig, password or credential,
///   words starting like well-known keys (`sk-`, `r8_`, `ya29.`, `AIza`,
///   `ghp_`, `xox`), and long runs of base64 or hex (20 characters with
///   letters and digits, or 32 with both cases);
/// - URLs (they may be signed) replaced by `[url]`;
/// - quoted text longer than 24 characters (an echoed input) replaced by
///   `[quoted]`.
pub(crate) fn summary(text: &str, secrets: &Secrets<'_>) -> String {
    let mut chars = one_line(text, SUMMARY_INPUT_CHARS);
    if let Some(credential) = secrets.credential {
        let whole = one_line(credential, SUMMARY_INPUT_CHARS);
        redact_echoes(&mut chars, &whole, 8, "[redacted]");
        for part in credential.split(':') {
            let part = one_line(part, SUMMARY_INPUT_CHARS);
            if part.len() >= 8 {
                redact_echoes(&mut chars, &part, 8, "[redacted]");
            }
        }
    }
    for prompt in secrets.prompts {
        let prompt = one_line(prompt, SUMMARY_INPUT_CHARS);
        redact_echoes(&mut chars, &prompt, 20, "[prompt]");
    }
    let text: String = chars.into_iter().collect();
    let text = redact_words(&text);
    let text = redact_quoted(&text);
    truncate(text.trim(), DETAIL_CHARS)
}

/// A provider's code or type field (`RESOURCE_EXHAUSTED`,
/// `runner_scheduling_failure`) for an error message: letters, digits and
/// `_.:-` only, at most 64 characters, and `[redacted]` if it looks like a
/// secret.
pub(crate) fn label(text: &str) -> String {
    let kept: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_.:-".contains(*c))
        .take(64)
        .collect();
    if secret_like(&kept) {
        "[redacted]".to_owned()
    } else {
        kept
    }
}

/// At most `max` characters of `text`, control characters and runs of
/// whitespace folded into single spaces.
fn one_line(text: &str, max: usize) -> Vec<char> {
    let mut out = Vec::with_capacity(text.len().min(max));
    let mut space = false;
    for c in text.chars().take(max) {
        if c.is_whitespace() || c.is_control() {
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push(c);
    }
    out
}

/// Replaces in `text` every echo of `secret`: a run that matches its first
/// `prefix` characters (ASCII case aside), or all of it when shorter, and
/// as much of the rest as follows. Secrets under 4 characters are left
/// alone: matching them would mangle ordinary words.
fn redact_echoes(text: &mut Vec<char>, secret: &[char], prefix: usize, mark: &str) {
    if secret.len() < 4 {
        return;
    }
    let need = prefix.min(secret.len());
    let same = |a: char, b: char| a.eq_ignore_ascii_case(&b);
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let matches_prefix = text.len() - i >= need
            && text[i..i + need]
                .iter()
                .zip(&secret[..need])
                .all(|(a, b)| same(*a, *b));
        if matches_prefix {
            let mut len = need;
            while i + len < text.len() && len < secret.len() && same(text[i + len], secret[len]) {
                len += 1;
            }
            out.extend(mark.chars());
            i += len;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    *text = out;
}

/// Names whose value is a secret in `name=value` or `"name": value`.
const SECRET_NAMES: [&str; 7] = [
    "key",
    "token",
    "secret",
    "signature",
    "sig",
    "password",
    "credential",
];

/// Starts of well-known key formats.
const KEY_PREFIXES: [&str; 7] = ["sk-", "sk_", "r8_", "ya29.", "aiza", "ghp_", "xox"];

fn redact_words(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    // The previous word says this one is a secret: `Bearer x`, `key: x`.
    let mut next_is_secret = false;
    for word in text.split(' ') {
        let bare = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        let lower = bare.to_ascii_lowercase();
        let mut value_follows = false;
        let redacted = if next_is_secret && !bare.is_empty() {
            "[redacted]".to_owned()
        } else if word.contains("://") {
            "[url]".to_owned()
        } else if KEY_PREFIXES.iter().any(|p| {
            word.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_ascii_lowercase()
                .starts_with(p)
        }) {
            "[redacted]".to_owned()
        } else if let Some((kept, empty)) = named_secret(word) {
            value_follows = empty;
            kept
        } else {
            redact_runs(word)
        };
        next_is_secret = value_follows || matches!(lower.as_str(), "bearer" | "basic");
        out.push(redacted);
    }
    out.join(" ")
}

/// For `name=value` (or `"name": value`) whose name is one of
/// [`SECRET_NAMES`] (or ends in one after `_`, `-` or `.`): the word with
/// its value redacted, and whether the value is the next word instead.
fn named_secret(word: &str) -> Option<(String, bool)> {
    let at = word.find(['=', ':'])?;
    let name = word[..at]
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_ascii_lowercase();
    let last = name.rsplit(['_', '-', '.']).next().unwrap_or_default();
    let secret = SECRET_NAMES.contains(&last)
        || SECRET_NAMES
            .iter()
            .any(|s| name.ends_with(&format!("api{s}")));
    if !secret {
        return None;
    }
    let value = word[at + 1..].trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if value.is_empty() {
        return Some((word.to_owned(), true));
    }
    Some((format!("{}[redacted]", &word[..=at]), false))
}

/// `word` with its long runs of base64 or hex characters redacted.
fn redact_runs(word: &str) -> String {
    let is_run = |c: char| c.is_ascii_alphanumeric() || "+/=_-.".contains(c);
    let mut out = String::with_capacity(word.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if secret_like(run) {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in word.chars() {
        if is_run(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// 20 characters or more with letters and digits, or 32 with upper and
/// lower case letters: a key, a token, a signature or base64 data rather
/// than a word or a host name.
fn secret_like(run: &str) -> bool {
    let len = run.chars().count();
    let digits = run.chars().any(|c| c.is_ascii_digit());
    let letters = run.chars().any(|c| c.is_ascii_alphabetic());
    let upper = run.chars().any(|c| c.is_ascii_uppercase());
    let lower = run.chars().any(|c| c.is_ascii_lowercase());
    (len >= 20 && digits && letters) || (len >= 32 && upper && lower)
}

/// `text` with the inside of long quotations replaced by `[quoted]`.
fn redact_quoted(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let close = match c {
            '"' | '`' => Some(c),
            '\'' => Some('\''),
            '“' => Some('”'),
            '‘' => Some('’'),
            _ => None,
        };
        // A single quote opens a quotation only at a word's start, not
        // as an apostrophe inside one ("can't").
        let opens = close.is_some() && (c != '\'' || i == 0 || !chars[i - 1].is_alphanumeric());
        if let (true, Some(close)) = (opens, close) {
            if let Some(end) = chars[i + 1..].iter().position(|x| *x == close) {
                let inner = &chars[i + 1..i + 1 + end];
                out.push(c);
                if inner.len() > 24 {
                    out.push_str("[quoted]");
                } else {
                    out.extend(inner);
                }
                out.push(close);
                i += end + 2;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}
