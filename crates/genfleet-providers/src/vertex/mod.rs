//! Google Vertex AI's synchronous image APIs: Imagen and Virtual Try-On
//! through `:predict`, Gemini image models through `:generateContent`.
//!
//! One [`VertexProvider::generate`](crate::Provider::generate) call is one HTTP exchange: Vertex
//! answers with the images inline (base64), so there is nothing to poll and
//! no [`Resumable`](crate::Resumable) face. Veo (video) is a long-running
//! operation with a different lifecycle and is out of scope here:
//! [`JobKind::ImageToVideo`] is [`ProviderError::Unsupported`].
//!
//! # Routing
//!
//! `request.model` is a bare Vertex model id such as
//! `imagen-4.0-generate-001`, `imagen-3.0-capability-001`,
//! `virtual-try-on-preview-08-04` or `gemini-2.5-flash-image`. It must match
//! `[A-Za-z0-9._-]+`, so it cannot change the URL path (and since `:method`
//! always follows it, it is never a `.`/`..` segment). Ids starting with
//! `gemini` go to `:generateContent`, all others to `:predict`, at
//! `{base}/v1/projects/{project}/locations/{region}/publishers/google/models/{model}:{method}`.
//!
//! # Kind → request (predict)
//!
//! | kind | inputs | instance | parameters |
//! |---|---|---|---|
//! | ProductPhoto | no image | `{prompt}` | `sampleCount`, `aspectRatio`, `negativePrompt`, `seed` |
//! | ProductPhoto, BatchEdit | image, optional mask | `{prompt, referenceImages: [RAW, MASK]}` | `editMode: EDIT_MODE_BGSWAP`; mask `MASK_MODE_USER_PROVIDED` with a mask input, else `MASK_MODE_BACKGROUND` |
//! | BackgroundRemoval | image | as above, mask `MASK_MODE_BACKGROUND` (no user mask) | `editMode: EDIT_MODE_BGSWAP`; an empty prompt becomes a plain white studio background |
//! | Inpaint | image + mask | `{prompt, referenceImages: [RAW, MASK]}` | `editMode: EDIT_MODE_INPAINT_INSERTION`, mask `MASK_MODE_USER_PROVIDED` |
//! | Upscale | image | `{prompt, image}` | `mode: "upscale"`, `upscaleConfig.upscaleFactor` `x2`/`x4` from `parameters.scale` (default x2; `scale` itself is not sent) |
//! | VirtualTryOn | person + garment | `{personImage: {image}, productImages: [{image}]}` | `sampleCount`, `seed` (`baseSteps` etc. via `parameters`) |
//! | ImageToVideo | | Unsupported | |
//!
//! "image" is the first Product, else Person, else Reference input; images
//! travel as `bytesBase64Encoded`. `sampleCount` is `count` clamped to 1..4
//! (Imagen's limit). Imagen has no transparent output, so BackgroundRemoval
//! swaps the background for a plain one rather than cutting it out. With a
//! `seed`, `addWatermark: false` is sent too: Vertex refuses a seed on
//! watermarked output. `request.parameters` is merged into `parameters`
//! last: it can set `outputOptions`, `baseSteps`, `enhancePrompt`, the seed
//! or the aspect ratio, never a key the worker owns (below).
//!
//! Gemini gets `{contents: [{role: "user", parts: [{text: prompt},
//! {inlineData} per input image]}], generationConfig: {responseModalities:
//! ["TEXT", "IMAGE"], seed, imageConfig.aspectRatio}}` with
//! `request.parameters` merged into `generationConfig`. It has no negative
//! prompt or sample count; kinds other than ProductPhoto need an input
//! image (VirtualTryOn a person and a garment).
//!
//! # What parameters cannot set
//!
//! `request.parameters` may not set a key the worker owns; such a job is
//! refused (`Unsupported`, i.e. `invalid_input`) before anything is sent,
//! as is one whose parameters are over 16 KiB or nested deeper than 8
//! levels. Keys are compared in any case with `_`/`-` ignored, path
//! segments (`a.b`, `a[b]`) and nested keys included (see `crate::params`).
//!
//! Protobuf JSON takes `sample_count` for `sampleCount`, so each key below
//! is refused in either spelling.
//!
//! | owned because it is…   | keys                                                                   |
//! |------------------------|------------------------------------------------------------------------|
//! | the request's frame    | `instances`, `parameters`, `contents`, `generationConfig`              |
//! | an input image         | `image`, `referenceImages`, `referenceImage`, `personImage`, `productImages`, `mask`, `inlineData`, `fileData`, `parts` |
//! | the prompt             | `prompt`, `negativePrompt`                                             |
//! | built here             | `editMode`, `mode`, `upscaleConfig`, `addWatermark` (SynthID), `responseModalities`, `responseMimeType` |
//! | the output count       | `num_images`, `num_outputs`, `number_of_images`, `num_samples`, `sampleCount`, `candidateCount`, `batch_size`, `n` |
//! | safety                 | `enable_safety_checker`, `disable_safety_checker`, `safety_checker`, `enable_safety_checks`, `safety_tolerance`, `safety_filter_level`, `safetySetting(s)`, `personGeneration`, `moderation` |
//! | delivery               | `sync_mode`, `webhook`, `webhook_url`, `fal_webhook`, `webhook_events_filter`, `response_format`, `storageUri` (a bucket we do not own), `output_uri`, `stream` |
//!
//! An answer with more images than asked for (`sampleCount`, or `count`
//! for Gemini) has the extra ones dropped undecoded.
//!
//! # Answers
//!
//! Predict: each `{mimeType, bytesBase64Encoded}` prediction is an
//! artifact. `{raiFilteredReason}` predictions are a safety outcome: when
//! every output was filtered the attempt is [`ProviderError::Rejected`] with
//! the reason; when only some were, the rest are kept and the job gets fewer
//! artifacts than it asked for (logged). No predictions at all is also
//! Rejected: Imagen answers so when the prompt itself was filtered.
//! Predictions with neither field (safety attributes) are ignored.
//!
//! Gemini: every `inlineData` part of every candidate is an artifact; text
//! parts are ignored (and never logged: they may echo the prompt). No image
//! and a `promptFeedback.blockReason`, or a safety `finishReason`, is
//! Rejected; no image otherwise is [`ProviderError::Malformed`].
//!
//! Errors (`{"error": {code, message, status, details}}`) are classified in
//! [`client`]; a 401 first goes through the token rule in [`auth`]. The
//! token is sent only to URLs built from the configured base URL. Logs carry
//! the model, job id and status codes, never the token, prompt, bytes or
//! URLs.
//!
//! [`auth`] holds the token cache; `fake` (tests and the `fake` feature) is
//! a loopback server shaped like Vertex AI and its token endpoint.
//!
//! [`JobKind::ImageToVideo`]: crate::JobKind::ImageToVideo
//! [`ProviderError::Unsupported`]: crate::ProviderError::Unsupported
//! [`ProviderError::Rejected`]: crate::ProviderError::Rejected
//! [`ProviderError::Malformed`]: crate::ProviderError::Malformed

mod auth;
mod client;

#[cfg(any(test, feature = "fake"))]
pub mod fake;
#[cfg(test)]
mod tests;

pub use auth::TokenSource;
pub use client::{VertexConfig, VertexProvider};
