//! `[storage]`: where inputs and outputs live and how outputs are linked.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Directory backing the local object store.
    pub root: PathBuf,
    /// Bucket name the store answers to in `s3://<bucket>/<key>` URIs.
    pub bucket: String,
    /// Base URL under which outputs are served; empty means results carry no
    /// signed URL.
    pub public_base_url: String,
    /// HMAC key for signed URLs (required with `public_base_url`).
    pub signing_key: Secret,
    /// File holding the signing key (a mounted secret); wins over `signing_key`.
    pub signing_key_file: Option<PathBuf>,
    /// Lifetime of signed URLs, in seconds.
    pub signed_url_ttl_seconds: u64,
    /// Key prefixes a job may read inputs from and delete them under, with
    /// `{org}` and `{workspace}` standing for the job's tenant: where the
    /// products upload, and the tenant's own outputs (chained jobs). A name
    /// that is a fixed segment of one pattern where another has a
    /// placeholder (`uploads`) cannot be an org (or workspace).
    pub input_prefixes: Vec<String>,
    /// The folder `file://` inputs may come from (their path below it must
    /// lie under the tenant's prefixes); unset: `file://` is refused.
    pub file_input_root: Option<PathBuf>,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            root: PathBuf::from("./genfleet-data/store"),
            bucket: "genfleet".into(),
            public_base_url: String::new(),
            signing_key: Secret::default(),
            signing_key_file: None,
            signed_url_ttl_seconds: 3600,
            input_prefixes: genfleet_storage::DEFAULT_INPUT_PREFIXES
                .iter()
                .map(|p| (*p).to_string())
                .collect(),
            file_input_root: None,
        }
    }
}
