//! OpenAI-compatible image APIs: `POST /v1/images/generations` (JSON) and
//! `POST /v1/images/edits` (multipart), both synchronous: one exchange
//! answers with the images, inline as base64 or as short-lived URLs. There
//! is no queue to resume or cancel, so this provider is not [`Resumable`].
//!
//! | kind                                  | call                                      |
//! |---------------------------------------|-------------------------------------------|
//! | `ProductPhoto` without an input image | generations `{model, prompt, n, size?, response_format}` |
//! | `ProductPhoto` with one, `BatchEdit`  | edits: `model, prompt, n, image, size?, response_format` |
//! | `Inpaint` (the magic eraser)          | edits with a `mask` part: its transparent pixels are repainted; no mask is `Unsupported` |
//! | anything else                         | `Unsupported`                             |
//!
//! `n` is `count` (0 meaning 1); `size` comes from `aspect_ratio` (1:1 →
//! 1024x1024; 16:9, 3:2, 4:3 → 1536x1024; 9:16, 2:3, 3:4 → 1024x1536; else
//! none, the model's default); `response_format` is `b64_json` except for
//! `gpt-image*` models, which always answer base64 and refuse the field.
//! `request.parameters` are merged last (`size`, `quality`, `background`,
//! ...); a parameter set to null removes a field built here (`size`). In
//! an edit, parameters become text parts; `image` and `mask` come from the
//! inputs only. The API has no negative prompt or seed.
//!
//! # What parameters cannot set
//!
//! `request.parameters` may not set a key the worker owns; such a job is
//! refused (`Unsupported`, i.e. `invalid_input`) before anything is sent,
//! as is one whose parameters are over 16 KiB or nested deeper than 8
//! levels. Keys are compared in any case with `_`/`-` ignored, path
//! segments (`a.b`, `a[b]`) and nested keys included (see `crate::params`).
//!
//! | owned because it is…   | keys                                                                   |
//! |------------------------|------------------------------------------------------------------------|
//! | built here             | `model`, `partial_images`                                              |
//! | an input image         | `image` (`image[]` too), `mask`                                        |
//! | the prompt             | `prompt`, `negative_prompt`                                            |
//! | the output count       | `num_images`, `num_outputs`, `number_of_images`, `num_samples`, `sample_count`, `candidate_count`, `batch_size`, `n` |
//! | safety                 | `enable_safety_checker`, `disable_safety_checker`, `safety_checker`, `enable_safety_checks`, `safety_tolerance`, `safety_filter_level`, `safety_setting(s)`, `person_generation`, `moderation` |
//! | delivery               | `sync_mode`, `webhook`, `webhook_url`, `fal_webhook`, `webhook_events_filter`, `response_format`, `storage_uri`, `output_uri`, `stream` |
//!
//! An answer with more images than `n` has the extra ones dropped, never
//! decoded or downloaded.
//!
//! The multipart body is built by hand (in [`client`]): reqwest's
//! `multipart` feature would add crates (mime_guess, unicase) to the
//! workspace for what is a few lines of framing here.
//!
//! Errors are `{"error": {"message", "type", "code"}}` and classified in
//! [`client`]. The key goes only to the configured base URL; output
//! URLs are fetched without it.
//!
//! `fake` (tests and the `fake` feature) is a loopback server shaped like
//! the images API.
//!
//! [`Resumable`]: crate::Resumable

mod client;

#[cfg(any(test, feature = "fake"))]
pub mod fake;
#[cfg(test)]
mod tests;

pub use client::{OpenAiConfig, OpenAiProvider};
