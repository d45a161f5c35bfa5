//! How a job kind maps onto the rest of the system: the provider that
//! serves it by default, the queue class it is published to, the lane of its
//! priority, and its name in configuration. A leaf: configuration, the
//! CLI and the job stages all read it, and it reads none of them.

use genfleet_broker::{JobClass, Lane};
use genfleet_proto::v1;
use genfleet_providers::{InputRole, JobKind};

/// Every job kind a job may carry (the unspecified value is refused by
/// validation before any of this is asked).
const KINDS: [v1::JobKind; 7] = [
    v1::JobKind::ProductPhoto,
    v1::JobKind::BackgroundRemoval,
    v1::JobKind::Upscale,
    v1::JobKind::Inpaint,
    v1::JobKind::VirtualTryOn,
    v1::JobKind::ImageToVideo,
    v1::JobKind::BatchEdit,
];

/// Kinds the worker can do itself go to `local`; the rest to fal.
pub fn default_provider(kind: v1::JobKind) -> &'static str {
    match kind {
        v1::JobKind::Upscale | v1::JobKind::BatchEdit => "local",
        _ => "fal",
    }
}

/// Queue class of a job kind: local CPU work or provider-bound.
pub fn default_class(kind: v1::JobKind) -> JobClass {
    match default_provider(kind) {
        "local" => JobClass::Cpu,
        _ => JobClass::Remote,
    }
}

/// Lane of a job's priority: publishers route a job to
/// `<class>.<lane>` (`cpu.high`, `remote`, `remote.low`, ...).
pub fn lane_of(priority: i32) -> Lane {
    match v1::Priority::try_from(priority) {
        Ok(v1::Priority::High) => Lane::High,
        Ok(v1::Priority::Low) => Lane::Low,
        Ok(v1::Priority::Normal) | Err(_) => Lane::Normal,
    }
}

/// A job kind by its label (`image_to_video`), for configuration.
pub fn kind_from_label(label: &str) -> Option<v1::JobKind> {
    KINDS.into_iter().find(|kind| kind.label() == label)
}

/// The provider-neutral kind of a contract kind.
pub(crate) fn provider_kind(kind: v1::JobKind) -> JobKind {
    match kind {
        v1::JobKind::ProductPhoto | v1::JobKind::Unspecified => JobKind::ProductPhoto,
        v1::JobKind::BackgroundRemoval => JobKind::BackgroundRemoval,
        v1::JobKind::Upscale => JobKind::Upscale,
        v1::JobKind::Inpaint => JobKind::Inpaint,
        v1::JobKind::VirtualTryOn => JobKind::VirtualTryOn,
        v1::JobKind::ImageToVideo => JobKind::ImageToVideo,
        v1::JobKind::BatchEdit => JobKind::BatchEdit,
    }
}

/// The provider-neutral role of a contract input.
pub(crate) fn provider_role(input: &v1::Input) -> InputRole {
    match v1::InputRole::try_from(input.role) {
        Ok(v1::InputRole::Person) => InputRole::Person,
        Ok(v1::InputRole::Garment) => InputRole::Garment,
        Ok(v1::InputRole::Mask) => InputRole::Mask,
        Ok(v1::InputRole::Reference) => InputRole::Reference,
        _ => InputRole::Product,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_pick_lanes() {
        assert_eq!(lane_of(v1::Priority::High as i32), Lane::High);
        assert_eq!(lane_of(v1::Priority::Normal as i32), Lane::Normal);
        assert_eq!(lane_of(v1::Priority::Low as i32), Lane::Low);
        // An unknown value from a newer publisher runs at normal priority.
        assert_eq!(lane_of(42), Lane::Normal);
    }

    #[test]
    fn every_kind_has_a_label_that_reads_back() {
        for kind in KINDS {
            assert_eq!(kind_from_label(kind.label()), Some(kind));
        }
        assert_eq!(kind_from_label("unspecified"), None);
        assert_eq!(kind_from_label("video"), None);
    }
}
