//! How a job kind maps onto the rest of the system: the provider that
//! serves it by default, the queue class it is published to, the lane of its
//! priority, and its name in configuration. A leaf: configuration, the
//! CLI and the job stages all read it, and it reads none of them (only the
//! parameter parser of `methods`, itself a leaf).

use genfleet_broker::{JobClass, Lane};
use genfleet_proto::pbjson_types;
use genfleet_proto::v1;
use genfleet_providers::{InputRole, JobKind};

use crate::methods::{MatteMethod, UpscaleMethod};

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
/// Background removal is local since the worker runs its own matting model
/// (`[inference]`); a job that wants fal's names it in
/// `generation.providers`.
pub fn default_provider(kind: v1::JobKind) -> &'static str {
    match kind {
        v1::JobKind::Upscale | v1::JobKind::BatchEdit | v1::JobKind::BackgroundRemoval => "local",
        _ => "fal",
    }
}

/// Queue class of a job of `kind` with its default provider and default
/// parameters: [`default_class_of`] for a job that says nothing more.
pub fn default_class(kind: v1::JobKind) -> JobClass {
    class_for(kind, default_provider(kind), |_| None)
}

/// Queue class of `job`: `remote` when its first provider is a remote one;
/// for the local provider, `gpu` when it may run a model (a background
/// removal unless `parameters.method` is `classical`, an upscale whose
/// `parameters.model` is a Real-ESRGAN one, any local job that asks for
/// `method` `model` or `auto` for its `remove_background` presets), `cpu`
/// otherwise. What `genfleet enqueue` routes by, and README's publishing
/// guide describes.
///
/// A value the worker would refuse (an unknown method) routes as the
/// default would: the worker that takes the job fails it `invalid_input`,
/// naming the parameter.
pub fn default_class_of(job: &v1::Job) -> JobClass {
    let kind = v1::JobKind::try_from(job.kind).unwrap_or(v1::JobKind::Unspecified);
    let generation = job.generation.as_ref();
    let provider = generation
        .and_then(|g| g.providers.first())
        .map_or(default_provider(kind), String::as_str);
    let parameter = |key: &str| -> Option<&str> {
        let value = generation?.parameters.as_ref()?.fields.get(key)?;
        match value.kind.as_ref()? {
            pbjson_types::value::Kind::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    };
    class_for(kind, provider, parameter)
}

/// The class rule of [`default_class_of`], over a parameter lookup.
fn class_for<'a>(
    kind: v1::JobKind,
    provider: &str,
    parameter: impl Fn(&str) -> Option<&'a str>,
) -> JobClass {
    if provider != "local" {
        return JobClass::Remote;
    }
    let method = parameter(MatteMethod::KEY).and_then(|m| MatteMethod::parse(m).ok());
    let needs_model = match kind {
        // Absent means `auto`, which runs the model unless the classical
        // matte is confident: decided per image, so on a worker that has it.
        v1::JobKind::BackgroundRemoval => method.unwrap_or(MatteMethod::Auto).may_use_model(),
        v1::JobKind::Upscale => parameter(UpscaleMethod::KEY)
            .and_then(|m| UpscaleMethod::parse(m).ok())
            .is_some_and(UpscaleMethod::uses_model),
        _ => method.is_some_and(MatteMethod::may_use_model),
    };
    if needs_model {
        JobClass::Gpu
    } else {
        JobClass::Cpu
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

    /// The routing table README's publishing guide states.
    #[test]
    fn jobs_route_by_kind_provider_and_parameters() {
        use genfleet_proto::pbjson_types::{value::Kind, Struct, Value};
        let job = |kind: v1::JobKind, providers: &[&str], params: &[(&str, &str)]| v1::Job {
            kind: kind as i32,
            generation: Some(v1::Generation {
                providers: providers.iter().map(|p| p.to_string()).collect(),
                parameters: (!params.is_empty()).then(|| Struct {
                    fields: params
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.to_string(),
                                Value {
                                    kind: Some(Kind::StringValue(v.to_string())),
                                },
                            )
                        })
                        .collect(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        use v1::JobKind as K;
        let table: &[(v1::Job, JobClass)] = &[
            (job(K::BackgroundRemoval, &[], &[]), JobClass::Gpu),
            (
                job(K::BackgroundRemoval, &[], &[("method", "auto")]),
                JobClass::Gpu,
            ),
            (
                job(K::BackgroundRemoval, &[], &[("method", "model")]),
                JobClass::Gpu,
            ),
            (
                job(K::BackgroundRemoval, &[], &[("method", "classical")]),
                JobClass::Cpu,
            ),
            // An unknown method routes as the default; the worker refuses it.
            (
                job(K::BackgroundRemoval, &[], &[("method", "magic")]),
                JobClass::Gpu,
            ),
            (job(K::BackgroundRemoval, &["fal"], &[]), JobClass::Remote),
            (
                job(K::BackgroundRemoval, &["local", "fal"], &[]),
                JobClass::Gpu,
            ),
            (job(K::Upscale, &[], &[]), JobClass::Cpu),
            (job(K::Upscale, &[], &[("model", "lanczos")]), JobClass::Cpu),
            (
                job(K::Upscale, &[], &[("model", "realesrgan-fast")]),
                JobClass::Gpu,
            ),
            (
                job(K::Upscale, &[], &[("model", "realesrgan")]),
                JobClass::Gpu,
            ),
            (
                job(K::Upscale, &["fal"], &[("model", "realesrgan")]),
                JobClass::Remote,
            ),
            (job(K::BatchEdit, &[], &[]), JobClass::Cpu),
            (
                job(K::BatchEdit, &[], &[("method", "model")]),
                JobClass::Gpu,
            ),
            (job(K::ProductPhoto, &[], &[]), JobClass::Remote),
            (job(K::ImageToVideo, &[], &[]), JobClass::Remote),
        ];
        for (job, class) in table {
            assert_eq!(default_class_of(job), *class, "{job:?}");
        }
        assert_eq!(default_class(K::BackgroundRemoval), JobClass::Gpu);
        assert_eq!(default_class(K::Upscale), JobClass::Cpu);
        assert_eq!(default_class(K::Inpaint), JobClass::Remote);
        assert_eq!(default_provider(K::BackgroundRemoval), "local");
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
