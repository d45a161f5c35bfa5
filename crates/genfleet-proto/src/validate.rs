//! Semantic checks of a decoded job: required fields, enum values that are
//! not UNSPECIFIED, id syntax, bounds. A job that passes is a [`ValidJob`],
//! the only thing the worker's lifecycle accepts.

use crate::v1;
use crate::DecodeError;

/// Most images one job may ask a provider for; bounds the credits and storage
/// a single message can commit.
pub const MAX_COUNT: u32 = 8;
/// Most inputs one job may reference.
pub const MAX_INPUTS: usize = 8;

/// A job that passed [`validate_job`]: `job_id` and the tenant ids are safe
/// to use as keys, `kind` and every enum are specified.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    job: v1::Job,
}

impl ValidJob {
    pub fn job(&self) -> &v1::Job {
        &self.job
    }
    pub fn job_id(&self) -> &str {
        &self.job.job_id
    }
    pub fn kind(&self) -> v1::JobKind {
        // Checked in validate_job: the value is a known, specified kind.
        v1::JobKind::try_from(self.job.kind).unwrap_or(v1::JobKind::Unspecified)
    }
    pub fn tenant(&self) -> &v1::Tenant {
        // validate_job guarantees presence; the default is unreachable.
        static EMPTY: v1::Tenant = v1::Tenant {
            org: String::new(),
            workspace: String::new(),
            user: String::new(),
        };
        self.job.tenant.as_ref().unwrap_or(&EMPTY)
    }
    /// Ledger account for the job's credits.
    pub fn credit_account(&self) -> String {
        match &self.job.credits {
            Some(c) if !c.account.is_empty() => c.account.clone(),
            _ => format!("{}/{}", self.tenant().org, self.tenant().workspace),
        }
    }
    pub fn credit_amount(&self) -> i64 {
        self.job.credits.as_ref().map_or(0, |c| c.amount)
    }
    pub fn into_job(self) -> v1::Job {
        self.job
    }
}

/// Checks a decoded job. `message_id` is the AMQP message id, used as the job
/// id when the body has none.
///
/// # Errors
/// The first problem found, naming the field; `job_id` is set on the error
/// whenever the id itself was usable.
pub fn validate_job(mut job: v1::Job, message_id: Option<&str>) -> Result<ValidJob, DecodeError> {
    if job.job_id.is_empty() {
        if let Some(id) = message_id.filter(|id| crate::is_valid_job_id(id)) {
            job.job_id = id.to_string();
        }
    }
    if job.job_id.is_empty() {
        return Err(DecodeError::new(
            "missing required field `job_id` (and the message has no usable message_id)",
            None,
        ));
    }
    if !crate::is_valid_job_id(&job.job_id) {
        return Err(DecodeError::new(
            "field `job_id`: expected a ULID or UUID, found something else",
            None,
        ));
    }
    let job_id = job.job_id.clone();
    check(&job).map_err(|message| DecodeError::new(message, Some(job_id)))?;
    Ok(ValidJob { job })
}

fn check(job: &v1::Job) -> Result<(), String> {
    if job.contract_version > crate::CONTRACT_VERSION {
        return Err(format!(
            "field `contract_version`: this worker reads version {}, the job was written for version {}",
            crate::CONTRACT_VERSION,
            job.contract_version
        ));
    }
    let tenant = job
        .tenant
        .as_ref()
        .ok_or("missing required field `tenant`")?;
    for (name, value) in [
        ("tenant.org", &tenant.org),
        ("tenant.workspace", &tenant.workspace),
    ] {
        if value.is_empty() {
            return Err(format!("missing required field `{name}`"));
        }
        if !crate::is_valid_tenant_id(value) {
            return Err(format!(
                "field `{name}`: expected 1 to 64 characters of [A-Za-z0-9_-]"
            ));
        }
    }
    let kind = specified::<v1::JobKind>(job.kind, "kind", v1::JobKind::Unspecified as i32)?;

    if job.inputs.is_empty() {
        return Err(
            "missing required field `inputs`: every job kind needs at least one input".into(),
        );
    }
    if job.inputs.len() > MAX_INPUTS {
        return Err(format!(
            "field `inputs`: {} inputs, at most {MAX_INPUTS} are allowed",
            job.inputs.len()
        ));
    }
    let mut roles = Vec::with_capacity(job.inputs.len());
    for (i, input) in job.inputs.iter().enumerate() {
        let role = specified::<v1::InputRole>(
            input.role,
            &format!("inputs[{i}].role"),
            v1::InputRole::Unspecified as i32,
        )?;
        roles.push(role);
        if input.uri.is_empty() {
            return Err(format!("missing required field `inputs[{i}].uri`"));
        }
        let sha256_ok = input.sha256.is_empty()
            || (input.sha256.len() == 64 && input.sha256.bytes().all(|c| c.is_ascii_hexdigit()));
        if !sha256_ok {
            return Err(format!(
                "field `inputs[{i}].sha256`: expected 64 hex characters"
            ));
        }
    }
    if kind == v1::JobKind::VirtualTryOn {
        for needed in [v1::InputRole::Person, v1::InputRole::Garment] {
            if !roles.contains(&needed) {
                return Err(format!(
                    "field `inputs`: a virtual try-on needs a {} input",
                    needed
                        .as_str_name()
                        .trim_start_matches("INPUT_ROLE_")
                        .to_lowercase()
                ));
            }
        }
    }

    for (i, step) in job.preprocess.iter().enumerate() {
        match &step.step {
            None => return Err(format!("field `preprocess[{i}]`: no step is set")),
            Some(v1::preprocess_step::Step::Resize(r)) => {
                if !(16..=16384).contains(&r.long_side) {
                    return Err(format!(
                        "field `preprocess[{i}].resize.longSide`: expected 16..=16384, found {}",
                        r.long_side
                    ));
                }
            }
            Some(v1::preprocess_step::Step::Upscale(u)) => {
                if u.factor != 2 && u.factor != 4 {
                    return Err(format!(
                        "field `preprocess[{i}].upscale.factor`: expected 2 or 4, found {}",
                        u.factor
                    ));
                }
            }
        }
    }

    if let Some(generation) = &job.generation {
        if generation.count > MAX_COUNT {
            return Err(format!(
                "field `generation.count`: at most {MAX_COUNT} images per job, found {}",
                generation.count
            ));
        }
    }
    if let Some(outputs) = &job.outputs {
        for (i, format) in outputs.formats.iter().enumerate() {
            specified::<v1::OutputFormat>(
                *format,
                &format!("outputs.formats[{i}]"),
                v1::OutputFormat::Unspecified as i32,
            )?;
        }
        if outputs.quality > 100 {
            return Err(format!(
                "field `outputs.quality`: expected 0..=100, found {}",
                outputs.quality
            ));
        }
    }
    if let Some(credits) = &job.credits {
        if credits.amount < 0 {
            return Err(format!(
                "field `credits.amount`: expected 0 or more, found {}",
                credits.amount
            ));
        }
        if let Some(ttl) = &credits.hold_ttl {
            if ttl.seconds < 0 || ttl.nanos < 0 {
                return Err("field `credits.holdTtl`: must not be negative".into());
            }
        }
    }
    v1::Priority::try_from(job.priority)
        .map_err(|_| format!("field `priority`: unknown value {}", job.priority))?;
    Ok(())
}

/// An enum field must hold a known value other than UNSPECIFIED: the zero
/// value never silently selects a default behaviour.
fn specified<E: TryFrom<i32>>(value: i32, field: &str, unspecified: i32) -> Result<E, String> {
    if value == unspecified {
        return Err(format!(
            "missing required field `{field}` (the UNSPECIFIED value is not accepted)"
        ));
    }
    E::try_from(value).map_err(|_| format!("field `{field}`: unknown value {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> v1::Job {
        v1::Job {
            job_id: "01JD3XQ6Z8M5V9K2T4W7Y1B0CE".into(),
            tenant: Some(v1::Tenant {
                org: "acme".into(),
                workspace: "shop-1".into(),
                user: "u1".into(),
            }),
            kind: v1::JobKind::Upscale as i32,
            inputs: vec![v1::Input {
                role: v1::InputRole::Product as i32,
                uri: "s3://uploads/acme/a.jpg".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn check_err(job: v1::Job, expected: &str) {
        let err = validate_job(job, None).unwrap_err();
        assert!(
            err.message.contains(expected),
            "expected {expected:?} in {:?}",
            err.message
        );
    }

    #[test]
    fn minimal_job_is_valid() {
        let job = validate_job(minimal(), None).unwrap();
        assert_eq!(job.kind(), v1::JobKind::Upscale);
        assert_eq!(job.credit_account(), "acme/shop-1");
    }

    #[test]
    fn job_id_falls_back_to_message_id() {
        let mut job = minimal();
        job.job_id.clear();
        let valid =
            validate_job(job.clone(), Some("0190f3b2-7c1e-7a4b-9f00-1234567890ab")).unwrap();
        assert_eq!(valid.job_id(), "0190f3b2-7c1e-7a4b-9f00-1234567890ab");
        let err = validate_job(job, Some("not-an-id")).unwrap_err();
        assert_eq!(err.job_id, None);
    }

    #[test]
    fn each_problem_names_its_field() {
        let mut j = minimal();
        j.kind = 0;
        check_err(j, "`kind`");
        let mut j = minimal();
        j.tenant = None;
        check_err(j, "`tenant`");
        let mut j = minimal();
        j.tenant.as_mut().unwrap().org = "a.b".into();
        check_err(j, "`tenant.org`");
        let mut j = minimal();
        j.inputs.clear();
        check_err(j, "`inputs`");
        let mut j = minimal();
        j.inputs[0].role = 0;
        check_err(j, "`inputs[0].role`");
        let mut j = minimal();
        j.inputs[0].uri.clear();
        check_err(j, "`inputs[0].uri`");
        let mut j = minimal();
        j.kind = v1::JobKind::VirtualTryOn as i32;
        check_err(j, "person");
        let mut j = minimal();
        j.preprocess.push(v1::PreprocessStep {
            step: Some(v1::preprocess_step::Step::Upscale(v1::Upscale {
                factor: 3,
            })),
        });
        check_err(j, "upscale.factor");
        let mut j = minimal();
        j.credits = Some(v1::CreditRequest {
            amount: -1,
            ..Default::default()
        });
        check_err(j, "`credits.amount`");
        let mut j = minimal();
        j.contract_version = 2;
        check_err(j, "`contract_version`");
        let mut j = minimal();
        j.outputs = Some(v1::OutputSpec {
            formats: vec![0],
            ..Default::default()
        });
        check_err(j, "`outputs.formats[0]`");
    }
}
