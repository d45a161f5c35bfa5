//! `[storage]`: where inputs and outputs live and how outputs are linked.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Where inputs and outputs live: `local` (the folder `root`, one
    /// machine) or `s3` (the bucket `bucket` on an S3-protocol service,
    /// see `[storage.s3]`; what a fleet of workers shares).
    pub backend: StorageBackend,
    /// Directory backing the local object store (`backend = "local"`).
    pub root: PathBuf,
    /// Bucket name the store answers to in `s3://<bucket>/<key>` URIs; with
    /// `backend = "s3"`, the S3 bucket itself.
    pub bucket: String,
    /// The S3 service (`backend = "s3"`).
    pub s3: S3Section,
    /// Base URL under which the local store's outputs are served by
    /// `genfleet serve-files` (e.g. `https://files.example.com/files`: a
    /// link is `<base>/<org>/<workspace>/<job_id>/<name>?expires=..&kid=..&signature=..`);
    /// empty means results carry no signed URL (on S3 they carry presigned
    /// ones instead).
    pub public_base_url: String,
    /// HMAC key for signed URLs; it is the key whose id is `default`
    /// (a key with one of `signing_keys` is required with `public_base_url`).
    /// Use at least 32 random bytes (`openssl rand -hex 32`).
    pub signing_key: Secret,
    /// File holding the signing key (a mounted secret); wins over `signing_key`.
    pub signing_key_file: Option<PathBuf>,
    /// Id of the key that signs new links: `default` (`signing_key`) or the
    /// `id` of one of `signing_keys`. Every other configured key only
    /// verifies, until its `verify_until`.
    pub signing_key_id: String,
    /// Signing keys with ids, for rotation without breaking links:
    /// `[[storage.signing_keys]]` tables of `id` (1-64 of `A-Za-z0-9-_.`,
    /// carried in links as `kid`), `key` or `key_file` (a mounted secret,
    /// wins), and, for every key but the current one, `verify_until`
    /// (RFC 3339, e.g. `2025-07-01T12:00:00Z`): links signed with a retired
    /// key are accepted until then and never after. To rotate: add the new
    /// key, set `signing_key_id` to it, and give the old key a
    /// `verify_until` at least `signed_url_ttl_seconds` after the moment the
    /// workers restart with the new key; remove it once that time passed.
    pub signing_keys: Vec<SigningKeyEntry>,
    /// Address `genfleet serve-files` listens on (its `--listen` wins).
    pub serve_files_listen: String,
    /// Lifetime of signed URLs, in seconds: 1 to 604800 (7 days, also S3's
    /// limit for presigned URLs).
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
    /// Hosts an input URL may reach although they resolve to a loopback,
    /// private, link-local or otherwise non-public address, and over plain
    /// `http://` (every other input URL must be `https://` to a host whose
    /// every address is public): `host`, `host:port`, an IP address,
    /// `ip:port` or `[ipv6]:port`. Names match exactly as written in the
    /// URL (case and a trailing dot aside; no wildcards, no subdomains), IP
    /// addresses by value (`127.0.0.1` does not allow `[::ffff:127.0.0.1]`),
    /// and an entry without a port allows every port. Checked again on
    /// every redirect. Empty by default.
    pub fetch_allow: Vec<String>,
    /// Longest a URL input's name resolution or connect (TCP and TLS) may
    /// take, in seconds; the same bound applies to provider output
    /// downloads.
    pub fetch_connect_timeout_seconds: u64,
    /// Longest the whole fetch of one URL input may take, redirects and
    /// body included, in seconds. Too slow: the job is retried later.
    pub fetch_timeout_seconds: u64,
    /// Redirects a URL input (and a provider output download) may follow;
    /// one more fails the job `invalid_input` (a download, the attempt).
    pub fetch_max_redirects: u32,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            backend: StorageBackend::Local,
            root: PathBuf::from("./genfleet-data/store"),
            bucket: "genfleet".into(),
            s3: S3Section::default(),
            public_base_url: String::new(),
            signing_key: Secret::default(),
            signing_key_file: None,
            signing_key_id: genfleet_storage::DEFAULT_KEY_ID.into(),
            signing_keys: Vec::new(),
            serve_files_listen: "0.0.0.0:8090".into(),
            signed_url_ttl_seconds: 3600,
            input_prefixes: genfleet_storage::DEFAULT_INPUT_PREFIXES
                .iter()
                .map(|p| (*p).to_string())
                .collect(),
            file_input_root: None,
            fetch_allow: Vec::new(),
            fetch_connect_timeout_seconds: 10,
            fetch_timeout_seconds: 60,
            fetch_max_redirects: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    #[default]
    Local,
    S3,
}

/// `[storage.s3]`. Credentials: `access_key_id`/`secret_access_key` (or
/// their `_file` twins, mounted secrets), else the standard AWS chain —
/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, a web identity token
/// (EKS IRSA), the ECS container endpoint, the instance role.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Section {
    /// Region requests are signed for (`us-east-1` suits most services
    /// other than AWS).
    pub region: String,
    /// Endpoint of a service other than AWS (`https://minio.internal:9000`);
    /// empty for AWS.
    pub endpoint: String,
    /// Path-style requests (`endpoint/bucket/key`), which most self-hosted
    /// services need; AWS takes virtual-hosted style (`bucket.endpoint/key`).
    pub path_style: bool,
    /// Accept a plain-http `endpoint` (a sidecar that terminates TLS, tests).
    pub allow_http: bool,
    pub access_key_id: Secret,
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key: Secret,
    pub secret_access_key_file: Option<PathBuf>,
    /// Temporary credentials' session token, with the key pair above.
    pub session_token: Secret,
    pub session_token_file: Option<PathBuf>,
}

impl Default for S3Section {
    fn default() -> Self {
        S3Section {
            region: "us-east-1".into(),
            endpoint: String::new(),
            path_style: false,
            allow_http: false,
            access_key_id: Secret::default(),
            access_key_id_file: None,
            secret_access_key: Secret::default(),
            secret_access_key_file: None,
            session_token: Secret::default(),
            session_token_file: None,
        }
    }
}

impl S3Section {
    /// The key pair (and token) from config, or none: the AWS chain.
    pub fn credentials(&self) -> genfleet_storage::S3Credentials {
        let given = |secret: &Secret| (!secret.is_empty()).then(|| secret.expose().to_string());
        genfleet_storage::S3Credentials {
            access_key_id: given(&self.access_key_id),
            secret_access_key: given(&self.secret_access_key),
            session_token: given(&self.session_token),
        }
    }
}

/// One of `storage.signing_keys`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningKeyEntry {
    /// The key id links carry as `kid`.
    pub id: String,
    /// The HMAC key.
    pub key: Secret,
    /// File holding the key (a mounted secret); wins over `key`.
    pub key_file: Option<PathBuf>,
    /// RFC 3339 time after which links signed with this key are refused;
    /// required for every key but the current one (`signing_key_id`).
    pub verify_until: Option<String>,
}

impl StorageSection {
    /// Reads `signing_keys`' `key_file`s (`signing_key_file` is read with
    /// the other secrets).
    pub(super) fn read_signing_key_files(&mut self) -> Result<(), super::ConfigError> {
        for entry in &mut self.signing_keys {
            if let Some(path) = &entry.key_file {
                let key = std::fs::read_to_string(path).map_err(|e| {
                    super::ConfigError::Invalid(format!(
                        "storage.signing_keys ({}): cannot read key_file {}: {e}",
                        entry.id,
                        path.display()
                    ))
                })?;
                entry.key = Secret::new(key.trim());
            }
        }
        Ok(())
    }

    /// `signed_url_ttl_seconds` in range and, with `public_base_url`, a
    /// keyring that builds.
    pub(super) fn validate_signing(&self) -> Result<(), super::ConfigError> {
        let max = genfleet_storage::MAX_SIGNED_URL_TTL.as_secs();
        if self.signed_url_ttl_seconds == 0 || self.signed_url_ttl_seconds > max {
            return Err(super::ConfigError::Invalid(format!(
                "storage.signed_url_ttl_seconds must be 1 to {max} (7 days), not {}",
                self.signed_url_ttl_seconds
            )));
        }
        if !self.public_base_url.is_empty() {
            self.keyring()?;
        }
        Ok(())
    }

    /// The signing keys: `signing_key` as id `default` (when set) and
    /// `signing_keys`, `signing_key_id` current.
    ///
    /// # Errors
    /// No key named `signing_key_id`, a key without a secret, a bad or
    /// repeated id, a retired key without `verify_until`, or the current
    /// key with one.
    pub fn keyring(&self) -> Result<genfleet_storage::Keyring, super::ConfigError> {
        use genfleet_storage::DEFAULT_KEY_ID;
        let invalid = |msg: String| super::ConfigError::Invalid(msg);
        let mut keys: Vec<(&str, &Secret, Option<&str>)> = Vec::new();
        if !self.signing_key.is_empty() {
            keys.push((DEFAULT_KEY_ID, &self.signing_key, None));
        }
        for entry in &self.signing_keys {
            if entry.key.is_empty() {
                return Err(invalid(format!(
                    "storage.signing_keys ({}): key or key_file is required",
                    entry.id
                )));
            }
            keys.push((&entry.id, &entry.key, entry.verify_until.as_deref()));
        }
        let current = self.signing_key_id.as_str();
        let Some(&(_, current_key, current_until)) = keys.iter().find(|(id, _, _)| *id == current)
        else {
            return Err(invalid(if current == DEFAULT_KEY_ID {
                "storage.signing_key (or signing_key_file, or signing_keys with signing_key_id) is required when storage.public_base_url is set".into()
            } else {
                format!("storage.signing_key_id: no key {current:?} in storage.signing_keys")
            }));
        };
        if current_until.is_some() {
            return Err(invalid(format!(
                "storage.signing_keys ({current}): the current key (signing_key_id) has no verify_until"
            )));
        }
        let keyring_error =
            |e: genfleet_storage::KeyringError| invalid(format!("storage.signing_keys: {e}"));
        let mut keyring = genfleet_storage::Keyring::new(current, current_key.expose().as_bytes())
            .map_err(keyring_error)?;
        for (id, key, until) in keys {
            if id == current && std::ptr::eq(key, current_key) {
                continue;
            }
            let until = until.ok_or_else(|| {
                invalid(format!(
                    "storage.signing_keys ({id}): verify_until is required for a key that is not signing_key_id"
                ))
            })?;
            let until = parse_rfc3339(until).ok_or_else(|| {
                invalid(format!(
                    "storage.signing_keys ({id}): verify_until {until:?} is not an RFC 3339 time"
                ))
            })?;
            keyring = keyring
                .with_retired(id, key.expose().as_bytes(), until)
                .map_err(keyring_error)?;
        }
        Ok(keyring)
    }

    /// The signer for the local store's links; `None` without
    /// `public_base_url`.
    ///
    /// # Errors
    /// As [`StorageSection::keyring`], or a `public_base_url` that is not a URL.
    pub fn url_signer(&self) -> Result<Option<genfleet_storage::UrlSigner>, super::ConfigError> {
        if self.public_base_url.is_empty() {
            return Ok(None);
        }
        let base = url::Url::parse(&self.public_base_url)
            .map_err(|e| super::ConfigError::Invalid(format!("storage.public_base_url: {e}")))?;
        Ok(Some(genfleet_storage::UrlSigner::with_keyring(
            base,
            self.keyring()?,
            std::time::Duration::from_secs(self.signed_url_ttl_seconds),
        )))
    }
}

/// Unix seconds of an RFC 3339 time; `None` for anything else or a time
/// before 1970.
fn parse_rfc3339(text: &str) -> Option<u64> {
    let time =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(time.unix_timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> StorageSection {
        let mut section: StorageSection = figment::Figment::from(
            figment::providers::Serialized::defaults(StorageSection::default()),
        )
        .merge(<figment::providers::Toml as figment::providers::Format>::string(toml_text))
        .extract()
        .unwrap();
        section.read_signing_key_files().unwrap();
        section
    }

    fn error(section: &StorageSection) -> String {
        match section.validate_signing() {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_single_key_is_the_default_id() {
        let s =
            section("public_base_url = \"https://f.example/files\"\nsigning_key = \"only-key\"");
        let signer = s.url_signer().unwrap().unwrap();
        assert_eq!(signer.keyring().current_id(), "default");
        let (url, _) = signer.sign("acme/ws/j/0.png").unwrap();
        assert!(url.contains("kid=default"));
        // No base URL: no links, and no key needed.
        let none = section("");
        assert!(none.url_signer().unwrap().is_none());
        assert_eq!(error(&none), "ok");
    }

    #[test]
    fn a_rotation_from_mounted_key_files() {
        let dir = std::env::temp_dir().join(format!("genfleet-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k1"), "first-key-material\n").unwrap();
        std::fs::write(dir.join("k2"), "second-key-material\n").unwrap();
        let s = section(&format!(
            r#"
public_base_url = "https://f.example/files"
signing_key_id = "k2"
[[signing_keys]]
id = "k2"
key_file = "{dir}/k2"
[[signing_keys]]
id = "k1"
key_file = "{dir}/k1"
verify_until = "2100-01-01T00:00:00Z"
"#,
            dir = dir.display()
        ));
        assert_eq!(error(&s), "ok");
        let signer = s.url_signer().unwrap().unwrap();
        assert_eq!(signer.keyring().ids().collect::<Vec<_>>(), ["k2", "k1"]);
        // The key files' contents never show.
        let shown = format!("{s:?} {signer:?}");
        assert!(!shown.contains("key-material"), "{shown}");
        // A link signed by the k1-only configuration of before verifies.
        let before = section(&format!(
            "public_base_url = \"https://f.example/files\"\nsigning_key_id = \"k1\"\n[[signing_keys]]\nid = \"k1\"\nkey_file = \"{}/k1\"",
            dir.display()
        ));
        let (old, _) = before
            .url_signer()
            .unwrap()
            .unwrap()
            .sign("a/b/c/0.png")
            .unwrap();
        assert!(signer.verify_url(&old).is_ok());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn unusable_key_configurations_are_refused() {
        let base = "public_base_url = \"https://f.example/files\"\n";
        for (toml_text, expected) in [
            ("", "storage.signing_key (or signing_key_file"),
            ("signing_key_id = \"k9\"\nsigning_key = \"x\"", "no key \"k9\""),
            (
                "signing_key = \"x\"\n[[signing_keys]]\nid = \"old\"\nkey = \"y\"",
                "verify_until is required",
            ),
            (
                "signing_key = \"x\"\n[[signing_keys]]\nid = \"old\"\nkey = \"y\"\nverify_until = \"tomorrow\"",
                "not an RFC 3339 time",
            ),
            (
                "signing_key_id = \"k1\"\n[[signing_keys]]\nid = \"k1\"\nkey = \"y\"\nverify_until = \"2100-01-01T00:00:00Z\"",
                "the current key (signing_key_id) has no verify_until",
            ),
            (
                "signing_key = \"x\"\n[[signing_keys]]\nid = \"default\"\nkey = \"y\"\nverify_until = \"2100-01-01T00:00:00Z\"",
                "appears twice",
            ),
            ("signing_key_id = \"k1\"\n[[signing_keys]]\nid = \"k1\"", "key or key_file is required"),
            (
                "signing_key_id = \"a/b\"\n[[signing_keys]]\nid = \"a/b\"\nkey = \"y\"",
                "is not 1 to 64 characters",
            ),
            ("signing_key = \"x\"\nsigned_url_ttl_seconds = 0", "must be 1 to 604800"),
            ("signing_key = \"x\"\nsigned_url_ttl_seconds = 604801", "must be 1 to 604800"),
        ] {
            let got = error(&section(&format!("{base}{toml_text}")));
            assert!(got.contains(expected), "{toml_text}: {got}");
        }
        assert_eq!(
            error(&section(&format!(
                "{base}signing_key = \"x\"\nsigned_url_ttl_seconds = 604800"
            ))),
            "ok"
        );
    }
}
