//! The first stage: decode the message and check it against the contract.
//! Runs once per delivery, when the consumer takes it (the dispatcher needs
//! the job's workspace to schedule it fairly); the job then travels decoded.

use genfleet_broker::Incoming;
use genfleet_proto::{v1, ContentType, DecodeError, ValidJob};

/// A delivery's message, decoded and checked.
pub(crate) type Decoded = Result<ValidJob, Rejected>;

/// A message that is not a valid job.
#[derive(Debug)]
pub(crate) struct Rejected {
    pub(crate) error: DecodeError,
    /// The tenant the message names, if it decoded far enough to name one.
    tenant: Option<v1::Tenant>,
}

impl Rejected {
    /// The named tenant, only when its ids are valid (they become routing
    /// keys of the failed result).
    pub(crate) fn valid_tenant(&self) -> Option<&v1::Tenant> {
        self.tenant.as_ref().filter(|t| {
            genfleet_proto::is_valid_tenant_id(&t.org)
                && genfleet_proto::is_valid_tenant_id(&t.workspace)
        })
    }
}

/// Decodes (JSON or protobuf by content type; none means JSON) and
/// validates the message; a body without a job id takes a valid AMQP
/// `message_id`.
pub(crate) fn decode(incoming: &Incoming) -> Decoded {
    let content_type = ContentType::from_header(incoming.content_type());
    let job =
        genfleet_proto::decode_job(incoming.body(), &content_type).map_err(|error| Rejected {
            error,
            tenant: None,
        })?;
    let tenant = job.tenant.clone();
    genfleet_proto::validate_job(job, incoming.message_id())
        .map_err(|error| Rejected { error, tenant })
}

/// `org/workspace` of a decoded delivery, for fairness; `None` when the
/// message names no valid tenant (it is rejected when it runs).
pub(crate) fn workspace_of(decoded: &Decoded) -> Option<String> {
    let tenant = match decoded {
        Ok(job) => Some(job.tenant()),
        Err(rejected) => rejected.valid_tenant(),
    }?;
    Some(format!("{}/{}", tenant.org, tenant.workspace))
}
