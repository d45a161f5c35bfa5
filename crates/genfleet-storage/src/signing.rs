//! Time-limited URLs for stored outputs: `<base>/<key>?expires=<unix>&signature=<hex>`
//! where the signature is HMAC-SHA256 over `<key>\n<expires>`. The edge that
//! serves the files (nginx secure_link, a CDN function, or a small proxy)
//! checks it with [`UrlSigner::verify`]. Cloud backends sign with their own
//! scheme (`object_store::signer::Signer`) behind the same call.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use url::Url;

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone)]
pub struct UrlSigner {
    base: Url,
    key: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner")
            .field("base", &self.base.as_str())
            .field("key", &"[redacted]")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl UrlSigner {
    /// `base` must end in `/` to act as a directory; one is added if missing.
    pub fn new(mut base: Url, key: &[u8], ttl: Duration) -> UrlSigner {
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        UrlSigner {
            base,
            key: key.to_vec(),
            ttl,
        }
    }

    /// Returns the signed URL and its expiry (Unix seconds).
    pub fn sign(&self, key: &str) -> Option<(String, u64)> {
        let expires = crate::unix_now() + self.ttl.as_secs();
        let mut url = self.base.join(key).ok()?;
        url.query_pairs_mut()
            .append_pair("expires", &expires.to_string())
            .append_pair("signature", &self.signature(key, expires));
        Some((url.to_string(), expires))
    }

    /// Whether `signature` is valid for `key` and has not expired.
    pub fn verify(&self, key: &str, expires: u64, signature: &str) -> bool {
        if expires < crate::unix_now() {
            return false;
        }
        let Ok(given) = hex::decode(signature) else {
            return false;
        };
        let Ok(mut mac) = HmacSha256::new_from_slice(&self.key) else {
            return false;
        };
        mac.update(format!("{key}\n{expires}").as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&given).is_ok()
    }

    fn signature(&self, key: &str, expires: u64) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let Ok(mut mac) = HmacSha256::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(format!("{key}\n{expires}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let signer = UrlSigner::new(
            Url::parse("https://cdn.example.com/files").unwrap(),
            b"secret",
            Duration::from_secs(600),
        );
        let (url, expires) = signer.sign("acme/ws/job/0.jpg").unwrap();
        assert!(url.starts_with("https://cdn.example.com/files/acme/ws/job/0.jpg?expires="));
        let url = Url::parse(&url).unwrap();
        let signature = url
            .query_pairs()
            .find(|(k, _)| k == "signature")
            .map(|(_, v)| v.to_string())
            .unwrap();
        assert!(signer.verify("acme/ws/job/0.jpg", expires, &signature));
        assert!(!signer.verify("acme/ws/job/1.jpg", expires, &signature));
        assert!(!signer.verify("acme/ws/job/0.jpg", expires + 1, &signature));
        assert!(!signer.verify("acme/ws/job/0.jpg", 1, &signature));
        assert!(!format!("{signer:?}").contains("secret"));
    }
}
