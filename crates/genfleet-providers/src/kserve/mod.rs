//! The Open Inference Protocol (KServe v2) as Triton speaks it: the GPU
//! pool's co-located server for our own models (matting, upscaling,
//! inpainting, try-on).
//!
//! # Tensor contract
//!
//! This crate does not decode pixels, so the contract with every model is
//! encoded image bytes in, encoded image bytes out (a Triton ensemble whose
//! first step decodes, DALI or python, and whose last encodes). Each input
//! is a `BYTES` tensor of shape `[1]` holding one element; the configured
//! output is a `BYTES` tensor of one element per image, shape `[1]`, `[N]`
//! or `[1, N]`. A model with `max_batch_size > 0` reports its inputs as
//! `[-1, 1]` and wants a batch dimension this client does not send:
//! [`KServeProvider::check_contract`] says so.
//!
//! | job kind                         | inputs sent (names from [`KServeConfig`])                 |
//! |----------------------------------|-----------------------------------------------------------|
//! | BackgroundRemoval, Upscale, BatchEdit | `image_input` (required)                             |
//! | Inpaint                          | `image_input`, `mask_input` (both required)               |
//! | VirtualTryOn                     | `image_input` = the Person, `second_image_input` = the Garment (both required) |
//! | ProductPhoto, ImageToVideo       | `image_input` when there is one; without one, Unsupported |
//! | any, prompt non-empty            | plus `prompt_input`: the prompt as UTF-8                  |
//!
//! The image is the first Product or Person input, else the first Reference.
//! Request-level `parameters` are the request's own (for example `scale`),
//! plus `priority` from the config, `num_images` when `count` is over 1,
//! and `timeout` in microseconds when the job has a deadline (the time
//! left, at most `request_timeout`), so Triton drops a request still
//! queued when nobody waits for it any more. Triton takes string, integer
//! and boolean parameter values only; it answers 400 for others. An answer
//! with more images than `count` has the extra ones dropped.
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
//! | the request's frame    | `id`, `inputs`, `outputs`, `parameters`, and the configured tensor names (`image_input`, `mask_input`, `second_image_input`, `prompt_input`, `output`) |
//! | set here or Triton's   | `timeout`, `priority` (a job cannot raise its own), `binary_data_output`, `binary_data`, `binary_data_size`, `shared_memory_region`, `shared_memory_byte_size`, `shared_memory_offset` |
//! | the prompt             | `prompt`, `negative_prompt`                                            |
//! | the output count       | `num_images`, `num_outputs`, `number_of_images`, `num_samples`, `sample_count`, `candidate_count`, `batch_size`, `n` |
//! | safety                 | `enable_safety_checker`, `disable_safety_checker`, `safety_checker`, `enable_safety_checks`, `safety_tolerance`, `safety_filter_level`, `safety_setting(s)`, `person_generation`, `moderation` |
//! | delivery               | `sync_mode`, `webhook`, `webhook_url`, `fal_webhook`, `webhook_events_filter`, `response_format`, `storage_uri`, `output_uri`, `stream` |

//!
//! # Binary and JSON forms
//!
//! With `binary` (the default) the body is the JSON header, then each
//! input's bytes in input order (Triton's binary tensor data extension): a
//! BYTES element is a 4-byte little-endian length followed by its bytes.
//! Outputs are requested with `binary_data: true`; an answer in either form
//! is read (a server may answer JSON anyway).
//!
//! Without it, everything travels in JSON. Triton takes each JSON string of
//! a BYTES tensor verbatim as the element's bytes (its UTF-8 encoding,
//! no decoding of any kind), and writes output elements back the same way,
//! so raw image bytes (not UTF-8) cannot travel in JSON at all. The
//! convention here is therefore standard base64 text for images, both ways:
//! image inputs are sent as base64 strings (the model's decode step must
//! base64-decode them first) and JSON output elements are base64-decoded.
//! The prompt is sent as itself. Use JSON only for a model built for it.
//!
//! # Errors
//!
//! Failures come as `{"error": "..."}`. A message containing "exceeds
//! maximum queue size" (Triton's full queue, 503 without Retry-After) is
//! retryable backpressure whatever the code:
//! [`ProviderError::RateLimited`](crate::ProviderError::RateLimited), which
//! slows the guard's bucket and never opens a breaker. A 404 (model not found) and a
//! 400 saying the model is unknown, unavailable or not ready are
//! [`ProviderError::Unavailable`] too: a model missing from our own server
//! is an operator's problem, not the job's, and a retryable class lets the
//! job fail over to a remote provider. Other 400s are rejections (bad
//! input), 401/403 credentials, 5xx and timeouts transient. Triton's "request
//! timeout expired" is [`ProviderError::DeadlineExceeded`] when the timeout
//! sent was the job's deadline.
//!
//! Nothing here logs or puts into a message the bearer token, the prompt,
//! image bytes or URLs.
//!
//! [`tensor`] holds the wire forms of tensors that the client and `fake`
//! (tests and the `fake` feature, a loopback server shaped like Triton)
//! share.
//!
//! [`ProviderError::Unavailable`]: crate::ProviderError::Unavailable
//! [`ProviderError::DeadlineExceeded`]: crate::ProviderError::DeadlineExceeded

mod client;
mod tensor;

#[cfg(any(test, feature = "fake"))]
pub mod fake;
#[cfg(test)]
mod tests;

pub use client::{Contract, KServeConfig, KServeProvider, ModelMetadata, TensorMetadata};
