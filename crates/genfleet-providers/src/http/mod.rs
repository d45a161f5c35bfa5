//! HTTP plumbing every provider client shares: sending with a timeout cut
//! short by the job's deadline, reading bodies with a size cap, classifying
//! transport failures and generic status codes, copying outputs out of
//! short-lived URLs or data URIs, and the base64 data URIs inputs travel in.
//!
//! Nothing here ever puts a URL, key or body into an error message: URLs
//! may carry signed query strings, bodies may echo a prompt.

/// Error bodies are small JSON documents; anything longer is not worth
/// reading into memory just to build a message.
pub(crate) const ERROR_BODY_LIMIT: u64 = 64 * 1024;
/// Submit, status and other control-plane answers are a few KB.
pub(crate) const CONTROL_BODY_LIMIT: u64 = 1024 * 1024;
/// Room for the JSON around the outputs of an answer (or around the
/// output URLs and the echoed input of one): what is not image bytes is
/// never more than this.
pub(crate) const JSON_BODY_LIMIT: u64 = 16 * 1024 * 1024;
/// Most outputs any answer's limit is sized for, whatever a request says
/// (the contract allows 8 a job): an answer's limit never grows without
/// bound with a count.
const MAX_SIZED_OUTPUTS: u64 = 16;
/// Longest provider detail kept in an error message (see [`summary`]).
pub(crate) const DETAIL_CHARS: usize = 200;
/// Longest provider text [`summary`] looks at.
const SUMMARY_INPUT_CHARS: usize = 4096;

mod body;
mod downloads;
mod encoding;
mod send;
mod summary;
#[cfg(test)]
mod summary_tests;

pub(crate) use body::{check_size, oversized, read_body, too_large_output, truncate};
pub(crate) use downloads::{fetch_output, keep};
pub use downloads::{DirectDownloads, DownloadError, Downloads};
pub(crate) use encoding::{
    credential_header, data_uri, decode_base64, decode_data_uri, encode_base64, input_bytes,
};
pub(crate) use send::{
    classify_status, describe_transport, error_body, inline_answer_limit, json_problem, keep_asked,
    read_json, retry_after_header, send, transport_error,
};
pub(crate) use summary::{label, summary, Secrets};
