//! The S3-protocol backend: AWS S3 or any service that speaks it (MinIO,
//! Ceph RGW, SeaweedFS, moto in the tests), so that every worker of a fleet
//! reads and writes the same bucket.
//!
//! Credentials, in order: the ones given here (from config or mounted
//! secret files), else what `AmazonS3Builder::from_env` finds — the
//! `AWS_*` variables, a web identity token (EKS IRSA), the container
//! credentials endpoint (ECS), then the instance metadata service.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;

use crate::file_input::file_input_root;
use crate::{InputPolicy, StorageError, Store};

/// Where an S3 store lives and how to reach it.
#[derive(Clone, Debug)]
pub struct S3StoreConfig {
    /// The bucket that holds inputs and outputs; `s3://` URIs name it.
    pub bucket: String,
    /// Region used to sign requests (`us-east-1` for most non-AWS services).
    pub region: String,
    /// Custom endpoint (`https://minio.internal:9000`); `None` for AWS.
    pub endpoint: Option<String>,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`
    /// (most self-hosted services need it).
    pub path_style: bool,
    /// Allow a plain-http endpoint (tests, a service mesh that terminates
    /// TLS in a sidecar); refused otherwise.
    pub allow_http: bool,
    pub credentials: S3Credentials,
    pub inputs: InputPolicy,
}

/// Static credentials; all `None` means "from the environment".
#[derive(Clone, Default)]
pub struct S3Credentials {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field(
                "access_key_id",
                &self.access_key_id.as_ref().map(|_| "[set]"),
            )
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "[redacted]"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl Store {
    /// Opens an S3-protocol store. Nothing is contacted here: a bucket
    /// that does not exist or credentials that do not work show up on the
    /// first request, as [`StorageError::Unavailable`] (retryable) — so a
    /// worker started before its storage answers still starts.
    ///
    /// # Errors
    /// [`StorageError::InvalidConfig`] for an unusable configuration (no
    /// bucket, half a key pair, an http endpoint without `allow_http`).
    pub fn open_s3(config: S3StoreConfig) -> Result<Store, StorageError> {
        if config.bucket.is_empty() {
            return Err(StorageError::InvalidConfig("the S3 bucket is empty".into()));
        }
        let credentials = &config.credentials;
        if credentials.access_key_id.is_some() != credentials.secret_access_key.is_some() {
            return Err(StorageError::InvalidConfig(
                "S3 access key id and secret access key must be given together".into(),
            ));
        }
        if let Some(endpoint) = &config.endpoint {
            let url = url::Url::parse(endpoint).map_err(|e| {
                StorageError::InvalidConfig(format!("S3 endpoint is not a URL: {e}"))
            })?;
            match url.scheme() {
                "https" => {}
                "http" if config.allow_http => {}
                "http" => {
                    return Err(StorageError::InvalidConfig(
                        "the S3 endpoint is plain http; set storage.s3.allow_http to accept that"
                            .into(),
                    ))
                }
                other => {
                    return Err(StorageError::InvalidConfig(format!(
                        "S3 endpoint scheme {other:?} is not http(s)"
                    )))
                }
            }
        }
        // object_store's reqwest client is built here; the workspace's
        // reqwest has TLS without a crypto provider, so install ring (the
        // binary does the same; a second install is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(!config.path_style)
            .with_allow_http(config.allow_http);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let (Some(id), Some(secret)) =
            (&credentials.access_key_id, &credentials.secret_access_key)
        {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
            if let Some(token) = &credentials.session_token {
                builder = builder.with_token(token);
            }
        }
        let s3 = Arc::new(
            builder
                .build()
                .map_err(|e| StorageError::InvalidConfig(format!("S3 store: {e}")))?,
        );
        Ok(Store {
            inner: s3.clone(),
            file_root: file_input_root(&config.inputs)?,
            bucket: config.bucket,
            inputs: config.inputs,
            local_root: None,
            presigner: Some(s3),
        })
    }
}
