//! fal's queue API: submit, poll the status URL, fetch the result, copy the
//! output files out of fal's short-lived URLs.
//!
//! One [`FalProvider::generate`](crate::Provider::generate) call is one
//! attempt; it never resubmits (fal has no idempotency key, so a resubmit
//! may be billed twice). Once a request id exists, every failure to read
//! its status, result or outputs (reset, truncated or malformed body, a 5xx
//! without fal's error body, 429, timeout) is read again on the same
//! request until the deadline (see `reread`): giving up there would make
//! the caller resubmit, and pay for, a request that is fine. Only fal's
//! verdict (a result that answers with fal's error body, an unknown
//! request, an expired output) allows a new submit. With a
//! [`SubmissionLog`](crate::SubmissionLog), each submission is recorded
//! under the job id before it is polled, and a later attempt of the same job
//! (its worker died) resumes the recorded request instead of submitting
//! again (see [`crate::resume`]).
//!
//! Each HTTP answer is classified in [`client`], where its meaning is known.
//! The key goes only to URLs on the configured base URL's origin, never to
//! the file host. Logs carry the provider, request id and status codes only:
//! never the key, prompt, bytes or URLs.
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
//! | an input image         | `image_url`, `image_urls`, `mask_url`, `human_image_url`, `garment_image_url` |
//! | the prompt             | `prompt`, `negative_prompt`                                            |
//! | the output count       | `num_images`, `num_outputs`, `number_of_images`, `num_samples`, `sample_count`, `candidate_count`, `batch_size`, `n` |
//! | safety                 | `enable_safety_checker`, `disable_safety_checker`, `safety_checker`, `enable_safety_checks`, `safety_tolerance`, `safety_filter_level`, `safety_setting(s)`, `person_generation`, `moderation` |
//! | delivery               | `sync_mode`, `webhook`, `webhook_url`, `fal_webhook`, `webhook_events_filter`, `response_format`, `storage_uri`, `output_uri`, `stream` |
//!
//! `seed` and `aspect_ratio` are the job's own choices, not the worker's:
//! a parameter may set them. A result with more files than `count` has the
//! extra ones dropped, unread.
//!
//! [`resume`] is the [`Resumable`](crate::Resumable) face the worker parks
//! long renders on; `fake` (tests and the `fake` feature) is a loopback
//! server shaped like `queue.fal.run`.

mod client;
mod resume;

#[cfg(any(test, feature = "fake"))]
pub mod fake;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod resume_tests;
#[cfg(test)]
mod tests;

pub use client::{FalConfig, FalProvider};
