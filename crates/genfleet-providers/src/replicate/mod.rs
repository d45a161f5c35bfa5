//! Replicate's predictions API: create a prediction (holding the request
//! open with `Prefer: wait` while it runs), poll `urls.get` until it
//! finishes, copy the output files out of Replicate's short-lived URLs.
//!
//! One [`ReplicateProvider::generate`](crate::Provider::generate) call is
//! one attempt; it never creates twice (Replicate has no idempotency key, so
//! a second create may be billed twice). With a
//! [`SubmissionLog`](crate::SubmissionLog), each prediction is recorded
//! under the job id as soon as create answers, and a later attempt of the
//! same job (its worker died) resumes it instead of creating another (see
//! [`crate::resume`]). With a submission log, create is sent without
//! `Prefer: wait`, whatever [`ReplicateConfig::wait_seconds`] says: the
//! record can only be written once create answers, and a worker that died
//! while create held the request open would leave nothing to resume (the
//! next attempt would create, and pay, again). The id is recorded at once
//! and the prediction polled instead.
//!
//! Once the prediction exists, a failed poll or download (reset, truncated
//! or malformed body, 5xx, 429, timeout) is tried again on the same
//! prediction until the deadline (see `reread`); only Replicate's verdict
//! (`failed`, `canceled`, `aborted`, an unknown id, an expired file) ends
//! it.
//!
//! The model name picks the endpoint: `owner/name` creates through
//! `POST /v1/models/{owner}/{name}/predictions` (the model's latest
//! version), `owner/name:version` through `POST /v1/predictions`.
//!
//! The input JSON, per job kind (images as base64 data URIs; then
//! `request.parameters` added to it, which may replace the seed or aspect
//! ratio but no field the worker owns, below):
//!
//! | kind                | fields                                                                  |
//! |---------------------|-------------------------------------------------------------------------|
//! | `ProductPhoto`      | prompt, negative_prompt, seed, num_outputs, aspect_ratio, `image` if any |
//! | `BatchEdit`         | the same, `image` required                                              |
//! | `Inpaint`           | the same, `image` and `mask` required                                   |
//! | `BackgroundRemoval` | `image` only                                                            |
//! | `Upscale`           | `image` only (`scale` comes from parameters)                            |
//! | `VirtualTryOn`      | `human_img`, `garm_img` (IDM-VTON's names), prompt, negative_prompt, seed |
//! | `ImageToVideo`      | `image`, prompt, negative_prompt, seed, aspect_ratio                    |
//!
//! prompt, negative_prompt and aspect_ratio are sent only when non-empty.
//! Utility models (background removal, upscalers) get no generation fields
//! and try-on/video models no `num_outputs`: their schemas have none, and a
//! field a model does not declare is at best ignored.
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
//! | the request's frame    | `input`, `version`, `model`                                            |
//! | an input image         | `image`, `mask`, `human_img`, `garm_img`                               |
//! | the prompt             | `prompt`, `negative_prompt`                                            |
//! | the output count       | `num_images`, `num_outputs`, `number_of_images`, `num_samples`, `sample_count`, `candidate_count`, `batch_size`, `n` |
//! | safety                 | `enable_safety_checker`, `disable_safety_checker`, `safety_checker`, `enable_safety_checks`, `safety_tolerance`, `safety_filter_level`, `safety_setting(s)`, `person_generation`, `moderation` |
//! | delivery               | `sync_mode`, `webhook`, `webhook_url`, `fal_webhook`, `webhook_events_filter`, `response_format`, `storage_uri`, `output_uri`, `stream` |
//!
//! A succeeded prediction with more output files than `count` has the extra
//! ones dropped, never downloaded.
//!
//! A prediction's end state is classified in [`client`]:
//!
//! | status      | outcome                                                          |
//! |-------------|------------------------------------------------------------------|
//! | `succeeded` | outputs downloaded; none at all is `Malformed`                    |
//! | `failed`    | `Rejected`: a safety message (NSFW, safety, sensitive) or the model failing on this input; see `client::failure` |
//! | `canceled`  | `Rejected` ("canceled at the provider")                          |
//! | `aborted`   | `Unavailable`: stopped before it ran, not billed, worth a retry   |
//!
//! The token goes only to URLs on the configured base URL's origin, never
//! to the file host. Logs carry the provider, prediction id and status codes
//! only: never the token, prompt, bytes or URLs.
//!
//! [`resume`] is the [`Resumable`](crate::Resumable) face the worker parks
//! long renders on; `fake` (tests and the `fake` feature) is a loopback
//! server shaped like Replicate's API.

mod client;
mod resume;

#[cfg(any(test, feature = "fake"))]
pub mod fake;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;

pub use client::{ReplicateConfig, ReplicateProvider};
