//! The genfleet wire contract (`proto/genfleet/v1`): prost types, the
//! canonical proto3 JSON mapping (pbjson), and the checks a job must pass
//! before a worker touches it.
//!
//! This crate knows the shape of messages and nothing of brokers, databases
//! or images. Conversions from contract types to domain calls happen once, in
//! the worker.
#![forbid(unsafe_code)]

mod codec;
mod ids;
mod validate;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/genfleet.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/genfleet.v1.serde.rs"));
}

pub use codec::{decode_cancel, decode_job, encode_json, ContentType, DecodeError};
pub use ids::{canonical_job_id, format_ulid, is_valid_job_id, is_valid_tenant_id, new_job_id};
pub use pbjson_types;
pub use validate::{validate_job, ValidJob};

/// The major contract version this build reads and writes.
pub const CONTRACT_VERSION: u32 = 1;

/// Largest job message a worker accepts. Jobs carry URIs, not image bytes, so
/// anything near this is a publisher bug or an attack.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Stable error codes of `JobResult.error.code`, also used as metric labels.
/// The set is closed: adding one is a contract change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidInput,
    UnsupportedType,
    TooLarge,
    Malware,
    ProviderRejected,
    ProviderUnavailable,
    InsufficientCredits,
    DeadlineExceeded,
    Cancelled,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::InvalidInput,
        ErrorCode::UnsupportedType,
        ErrorCode::TooLarge,
        ErrorCode::Malware,
        ErrorCode::ProviderRejected,
        ErrorCode::ProviderUnavailable,
        ErrorCode::InsufficientCredits,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Cancelled,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::UnsupportedType => "unsupported_type",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Malware => "malware",
            ErrorCode::ProviderRejected => "provider_rejected",
            ErrorCode::ProviderUnavailable => "provider_unavailable",
            ErrorCode::InsufficientCredits => "insufficient_credits",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn parse(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl v1::JobStatus {
    /// Lower-case status used in routing keys and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            v1::JobStatus::Unspecified => "unspecified",
            v1::JobStatus::Succeeded => "succeeded",
            v1::JobStatus::Failed => "failed",
            v1::JobStatus::Cancelled => "cancelled",
            v1::JobStatus::Expired => "expired",
        }
    }
}

impl v1::JobKind {
    /// Lower-case kind used in metric labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            v1::JobKind::Unspecified => "unspecified",
            v1::JobKind::ProductPhoto => "product_photo",
            v1::JobKind::BackgroundRemoval => "background_removal",
            v1::JobKind::Upscale => "upscale",
            v1::JobKind::Inpaint => "inpaint",
            v1::JobKind::VirtualTryOn => "virtual_try_on",
            v1::JobKind::ImageToVideo => "image_to_video",
            v1::JobKind::BatchEdit => "batch_edit",
        }
    }
}

impl v1::Stage {
    pub fn label(self) -> &'static str {
        match self {
            v1::Stage::Unspecified => "unspecified",
            v1::Stage::Received => "received",
            v1::Stage::Fetch => "fetch",
            v1::Stage::Validate => "validate",
            v1::Stage::Preprocess => "preprocess",
            v1::Stage::Reserve => "reserve",
            v1::Stage::Generate => "generate",
            v1::Stage::Postprocess => "postprocess",
            v1::Stage::Store => "store",
            v1::Stage::Settle => "settle",
            v1::Stage::Publish => "publish",
        }
    }
}

/// Routing key of a result on `genfleet.results`:
/// `result.<org>.<workspace>.<status>`. Ids were validated to
/// `[A-Za-z0-9_-]` before any result is routed by them; an id that is not
/// (a result for an unreadable tenant) is routed as `_`.
pub fn result_routing_key(tenant: Option<&v1::Tenant>, status: v1::JobStatus) -> String {
    let (org, workspace) = routable_tenant(tenant);
    format!("result.{org}.{workspace}.{}", status.label())
}

/// Routing key of a progress event on `genfleet.events`.
pub fn event_routing_key(tenant: Option<&v1::Tenant>, stage: v1::Stage) -> String {
    let (org, workspace) = routable_tenant(tenant);
    format!("event.{org}.{workspace}.{}", stage.label())
}

fn routable_tenant(tenant: Option<&v1::Tenant>) -> (&str, &str) {
    fn pick(id: &str) -> &str {
        if is_valid_tenant_id(id) {
            id
        } else {
            "_"
        }
    }
    match tenant {
        Some(t) => (pick(&t.org), pick(&t.workspace)),
        None => ("_", "_"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }

    #[test]
    fn routing_keys_use_only_safe_ids() {
        let tenant = v1::Tenant {
            org: "acme".into(),
            workspace: "shop-1".into(),
            user: String::new(),
        };
        assert_eq!(
            result_routing_key(Some(&tenant), v1::JobStatus::Succeeded),
            "result.acme.shop-1.succeeded"
        );
        let hostile = v1::Tenant {
            org: "a.#".into(),
            workspace: "ws".into(),
            user: String::new(),
        };
        assert_eq!(
            result_routing_key(Some(&hostile), v1::JobStatus::Failed),
            "result._.ws.failed"
        );
        assert_eq!(event_routing_key(None, v1::Stage::Fetch), "event._._.fetch");
    }
}
