//! Time-limited links to stored objects for the local store:
//! `<base>/<key>?expires=<unix>&kid=<key id>&signature=<hex>`, where the
//! signature is HMAC-SHA256, under the key named by `kid`, over
//! `genfleet-signed-url/v1\n<kid>\n<key>\n<expires>`. The object key is the
//! whole `<org>/<workspace>/<job_id>/<name>`, so a link changed to another
//! tenant, job or file no longer verifies; the key id is signed too, so a
//! link cannot be moved to another key. `genfleet serve-files`
//! ([`crate::serve`]) checks links with [`UrlSigner::verify`]; S3 signs with
//! its own scheme (SigV4, [`crate::Store::presign_get`]).
//!
//! Key rotation: a [`Keyring`] holds one current key, which signs and
//! verifies, and retired keys, which only verify, each until its own
//! `verify_until` (Unix seconds) and never after. Rotating is: add the new
//! key, make it current, keep the old one with `verify_until` at least the
//! rotation time plus the link lifetime, so every link signed before the
//! rotation keeps working until it expires; after `verify_until` the old key
//! can be removed from the configuration (until then it is ignored anyway).
//!
//! Secrets never leave this module: `Debug` shows key ids only, and a
//! refusal says why in a few words, never the key, the signature or the URL.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use url::Url;

type HmacSha256 = Hmac<Sha256>;

/// The longest a link may live: S3's own limit for SigV4 presigned URLs, so
/// both backends promise the same. Longer TTLs are refused in the
/// configuration and clamped here; a link claiming a later expiry is
/// refused by [`UrlSigner::verify`].
pub const MAX_SIGNED_URL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The key id of a keyring built from a single key ([`UrlSigner::new`], and
/// the worker's `storage.signing_key`).
pub const DEFAULT_KEY_ID: &str = "default";

/// Tells verifying which string it is signing, so a MAC made under the same
/// secret for some other purpose can never pass as a link's.
const DOMAIN: &str = "genfleet-signed-url/v1";

/// The current Unix time in seconds; injectable so tests can move past an
/// expiry without waiting for it.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock(Arc::new(crate::unix_now))
    }

    /// Always `unix` (tests).
    pub fn fixed(unix: u64) -> Clock {
        Clock(Arc::new(move || unix))
    }

    /// Whatever `now` answers (tests that move time along).
    pub fn from_fn(now: impl Fn() -> u64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    pub fn now(&self) -> u64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// A keyring that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("key id {0:?} is not 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.'")]
    InvalidId(String),
    #[error("key {0:?} is empty")]
    EmptySecret(String),
    #[error("key {0:?} cannot key HMAC-SHA256")]
    UnusableSecret(String),
    #[error("key id {0:?} appears twice")]
    Duplicate(String),
}

/// A key id and the HMAC state keyed with its secret (the secret itself is
/// not kept apart from it).
#[derive(Clone)]
struct SigningKey {
    id: String,
    keyed: HmacSha256,
}

impl SigningKey {
    fn new(id: &str, secret: &[u8]) -> Result<SigningKey, KeyringError> {
        if !is_valid_key_id(id) {
            return Err(KeyringError::InvalidId(id.to_string()));
        }
        if secret.is_empty() {
            return Err(KeyringError::EmptySecret(id.to_string()));
        }
        // HMAC takes keys of any length, so this does not fail today.
        let keyed = HmacSha256::new_from_slice(secret)
            .map_err(|_| KeyringError::UnusableSecret(id.to_string()))?;
        Ok(SigningKey {
            id: id.to_string(),
            keyed,
        })
    }

    fn mac(&self, key: &str, expires: u64) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(format!("{DOMAIN}\n{}\n{key}\n{expires}", self.id).as_bytes());
        mac
    }
}

/// The keys links are signed and verified with; see the module docs.
#[derive(Clone)]
pub struct Keyring {
    current: SigningKey,
    /// `(key, verify_until)`: verifies while `now <= verify_until`.
    retired: Vec<(SigningKey, u64)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field(
                "retired",
                &self
                    .retired
                    .iter()
                    .map(|(k, until)| (k.id.as_str(), *until))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// A keyring whose current key (the one that signs) is `secret`, named `id`.
    ///
    /// # Errors
    /// An invalid id or an empty secret.
    pub fn new(id: &str, secret: &[u8]) -> Result<Keyring, KeyringError> {
        Ok(Keyring {
            current: SigningKey::new(id, secret)?,
            retired: Vec::new(),
        })
    }

    /// Adds a retired key: links signed with it verify while the time is at
    /// or before `verify_until` (Unix seconds), never after.
    ///
    /// # Errors
    /// An invalid id, an empty secret, or an id already in the keyring.
    pub fn with_retired(
        mut self,
        id: &str,
        secret: &[u8],
        verify_until: u64,
    ) -> Result<Keyring, KeyringError> {
        let key = SigningKey::new(id, secret)?;
        if self.ids().any(|known| known == id) {
            return Err(KeyringError::Duplicate(id.to_string()));
        }
        self.retired.push((key, verify_until));
        Ok(self)
    }

    /// The id of the key that signs.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Every key id, current first (ids are not secret).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.current.id.as_str())
            .chain(self.retired.iter().map(|(k, _)| k.id.as_str()))
    }

    /// The key that verifies links naming `id` at `now`, if any.
    fn verifying(&self, id: &str, now: u64) -> Option<&SigningKey> {
        if self.current.id == id {
            return Some(&self.current);
        }
        self.retired
            .iter()
            .find(|(key, until)| key.id == id && now <= *until)
            .map(|(key, _)| key)
    }
}

/// Why a link was refused; [`Refusal::reason`] is safe to show the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `expires`, `kid` or `signature` parameter.
    Missing,
    /// A parameter is repeated, not a number, not hex, or of the wrong length.
    Malformed,
    /// The key id is not in the keyring, or its `verify_until` has passed.
    UnknownKey,
    /// The signature does not match the key id, object key and expiry.
    BadSignature,
    /// A genuine link past its expiry.
    Expired,
    /// A genuine link whose expiry lies further ahead than any link may live
    /// ([`MAX_SIGNED_URL_TTL`]): signed by a misconfigured signer.
    TooLong,
}

impl Refusal {
    /// A short reason for the response body and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "link is not signed",
            Refusal::Malformed => "link signature is malformed",
            Refusal::UnknownKey => "link was signed with a key that is not accepted",
            Refusal::BadSignature => "link signature is not valid",
            Refusal::Expired => "link has expired",
            Refusal::TooLong => "link lives longer than allowed",
        }
    }
}

/// Signs links to objects under a base URL and checks them.
#[derive(Clone)]
pub struct UrlSigner {
    base: Url,
    keys: Keyring,
    ttl: Duration,
    clock: Clock,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner")
            .field("base", &self.base.as_str())
            .field("keys", &self.keys)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl UrlSigner {
    /// A signer with one key, id [`DEFAULT_KEY_ID`]. `base` must end in `/`
    /// to act as a directory; one is added if missing. `ttl` above
    /// [`MAX_SIGNED_URL_TTL`] is clamped to it. An empty key signs with a
    /// fixed all-zero key: callers check for one (the worker's config does).
    pub fn new(base: Url, key: &[u8], ttl: Duration) -> UrlSigner {
        let keys = Keyring::new(DEFAULT_KEY_ID, key).unwrap_or_else(|_| Keyring {
            current: SigningKey {
                id: DEFAULT_KEY_ID.into(),
                // `KeyInit::new` takes a block-sized key and cannot fail.
                keyed: <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default()),
            },
            retired: Vec::new(),
        });
        UrlSigner::with_keyring(base, keys, ttl)
    }

    /// A signer that signs with the keyring's current key and verifies with
    /// any key it accepts. `base` and `ttl` as in [`UrlSigner::new`].
    pub fn with_keyring(mut base: Url, keys: Keyring, ttl: Duration) -> UrlSigner {
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        // A query or fragment on the base would end up inside every link.
        base.set_query(None);
        base.set_fragment(None);
        UrlSigner {
            base,
            keys,
            ttl: ttl.min(MAX_SIGNED_URL_TTL),
            clock: Clock::system(),
        }
    }

    /// The same signer reading time from `clock` (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> UrlSigner {
        self.clock = clock;
        self
    }

    /// The base URL, ending in `/`; its path is where links' keys begin.
    pub fn base(&self) -> &Url {
        &self.base
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keys
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Returns the signed URL of `key` and its expiry (Unix seconds); `None`
    /// when `key` does not make a URL under the base.
    pub fn sign(&self, key: &str) -> Option<(String, u64)> {
        let expires = self.clock.now().checked_add(self.ttl.as_secs())?;
        let mut url = self.base.join(key).ok()?;
        // `join` resolves `..` and absolute paths: the link must still name
        // `key` under the base, or it would verify for one path and point at
        // another.
        if url.path() != format!("{}{key}", self.base.path()) || url.query().is_some() {
            return None;
        }
        let signature = hex::encode(self.keys.current.mac(key, expires).finalize().into_bytes());
        url.query_pairs_mut()
            .append_pair("expires", &expires.to_string())
            .append_pair("kid", &self.keys.current.id)
            .append_pair("signature", &signature);
        Some((url.to_string(), expires))
    }

    /// Checks the query string of a link to `key` (the object key, as
    /// signed). Returns the link's expiry (Unix seconds).
    ///
    /// The signature is checked before the expiry, so only a genuine link is
    /// told that it expired, and compared in constant time.
    ///
    /// # Errors
    /// The [`Refusal`].
    pub fn verify(&self, key: &str, query: Option<&str>) -> Result<u64, Refusal> {
        let link = LinkParams::parse(query.unwrap_or(""))?;
        let now = self.clock.now();
        let signing_key = self
            .keys
            .verifying(&link.kid, now)
            .ok_or(Refusal::UnknownKey)?;
        signing_key
            .mac(key, link.expires)
            .verify_slice(&link.signature)
            .map_err(|_| Refusal::BadSignature)?;
        if now > link.expires {
            return Err(Refusal::Expired);
        }
        if link.expires - now > MAX_SIGNED_URL_TTL.as_secs() {
            return Err(Refusal::TooLong);
        }
        Ok(link.expires)
    }

    /// Checks a whole link made by [`UrlSigner::sign`]: its path must lie
    /// under the base's path. Returns the object key and the expiry.
    ///
    /// # Errors
    /// The [`Refusal`]; a URL outside the base is [`Refusal::BadSignature`].
    pub fn verify_url(&self, url: &str) -> Result<(String, u64), Refusal> {
        let url = Url::parse(url).map_err(|_| Refusal::Malformed)?;
        let key = url
            .path()
            .strip_prefix(self.base.path())
            .ok_or(Refusal::BadSignature)?
            .to_string();
        let expires = self.verify(&key, url.query())?;
        Ok((key, expires))
    }
}

/// The three parameters of a link, each exactly once.
struct LinkParams {
    expires: u64,
    kid: String,
    signature: Vec<u8>,
}

impl LinkParams {
    fn parse(query: &str) -> Result<LinkParams, Refusal> {
        let (mut expires, mut kid, mut signature) = (None, None, None);
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match name.as_ref() {
                "expires" => &mut expires,
                "kid" => &mut kid,
                "signature" => &mut signature,
                // Other parameters (a cache buster) are not signed and mean
                // nothing here.
                _ => continue,
            };
            // A repeated parameter could be read one way here and another
            // way by a proxy in front: refuse it.
            if slot.replace(value.into_owned()).is_some() {
                return Err(Refusal::Malformed);
            }
        }
        let (Some(expires), Some(kid), Some(signature)) = (expires, kid, signature) else {
            return Err(Refusal::Missing);
        };
        // Digits only: `u64::from_str` also takes a leading `+`, which
        // would give one expiry two spellings.
        if expires.is_empty() || expires.len() > 20 || !expires.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Refusal::Malformed);
        }
        let expires = expires.parse().map_err(|_| Refusal::Malformed)?;
        if !is_valid_key_id(&kid) {
            return Err(Refusal::Malformed);
        }
        if signature.len() != 64 {
            return Err(Refusal::Malformed);
        }
        let signature = hex::decode(signature).map_err(|_| Refusal::Malformed)?;
        Ok(LinkParams {
            expires,
            kid,
            signature,
        })
    }
}

/// Key ids travel in URLs and logs: short, and nothing that needs escaping.
pub fn is_valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::testing::with_query_param as with_param;

    const T0: u64 = 1_750_000_000;
    const KEY: &str = "acme/shop-1/01JXAMPLE/0.jpg";

    fn base() -> Url {
        Url::parse("https://files.example.com/files").unwrap()
    }

    fn signer(keys: Keyring, clock: Clock) -> UrlSigner {
        UrlSigner::with_keyring(base(), keys, Duration::from_secs(3600)).with_clock(clock)
    }

    /// A clock the test moves.
    fn moving(start: u64) -> (Arc<AtomicU64>, Clock) {
        let now = Arc::new(AtomicU64::new(start));
        let read = now.clone();
        (now, Clock::from_fn(move || read.load(Ordering::SeqCst)))
    }

    fn param(url: &str, name: &str) -> String {
        Url::parse(url)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    }

    #[test]
    fn signs_with_the_current_key_and_verifies() {
        let keys = Keyring::new("k2", b"second secret").unwrap();
        let signer = signer(keys, Clock::fixed(T0));
        let (url, expires) = signer.sign(KEY).unwrap();
        assert_eq!(expires, T0 + 3600);
        assert!(url.starts_with(&format!(
            "https://files.example.com/files/{KEY}?expires={expires}&kid=k2&signature="
        )));
        assert_eq!(signer.verify_url(&url), Ok((KEY.to_string(), expires)));
        // The last second of the link still counts.
        let at_expiry = signer.clone().with_clock(Clock::fixed(expires));
        assert_eq!(at_expiry.verify_url(&url), Ok((KEY.to_string(), expires)));
    }

    #[test]
    fn a_link_signed_before_a_rotation_verifies_until_its_key_is_retired() {
        let (now, clock) = moving(T0);
        let before = signer(Keyring::new("k1", b"first secret").unwrap(), clock.clone());
        let (old_url, _) = before.sign(KEY).unwrap();

        // Rotation at T0 + 60: k2 signs, k1 verifies until T0 + 1800 (a
        // short window, so that it ends before the link does).
        now.store(T0 + 60, Ordering::SeqCst);
        let keys = Keyring::new("k2", b"second secret")
            .unwrap()
            .with_retired("k1", b"first secret", T0 + 1800)
            .unwrap();
        let after = signer(keys, clock.clone());
        assert_eq!(after.verify_url(&old_url).map(|(k, _)| k), Ok(KEY.into()));
        let (new_url, _) = after.sign(KEY).unwrap();
        assert_eq!(param(&new_url, "kid"), "k2");
        assert!(after.verify_url(&new_url).is_ok());

        now.store(T0 + 1800, Ordering::SeqCst);
        assert!(
            after.verify_url(&old_url).is_ok(),
            "k1 accepted through verify_until"
        );
        now.store(T0 + 1801, Ordering::SeqCst);
        assert_eq!(after.verify_url(&old_url), Err(Refusal::UnknownKey));
        // The new key's link is untouched by k1's retirement.
        assert!(after.verify_url(&new_url).is_ok());

        // Without k1 in the keyring at all, the old link is refused too.
        let only_k2 = signer(Keyring::new("k2", b"second secret").unwrap(), clock);
        now.store(T0 + 61, Ordering::SeqCst);
        assert_eq!(only_k2.verify_url(&old_url), Err(Refusal::UnknownKey));
    }

    #[test]
    fn changed_links_are_refused() {
        let keys = Keyring::new("k2", b"second secret")
            .unwrap()
            .with_retired("k1", b"first secret", T0 + 7200)
            .unwrap();
        let signer = signer(keys, Clock::fixed(T0));
        let (url, expires) = signer.sign(KEY).unwrap();
        let signature = param(&url, "signature");
        let mut flipped = signature.clone().into_bytes();
        flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();

        let cases: Vec<(String, Refusal)> = vec![
            // Another key id: unknown, and a known one the link was not signed with.
            (with_param(&url, "kid", "k9"), Refusal::UnknownKey),
            (with_param(&url, "kid", "k1"), Refusal::BadSignature),
            // Another file, job, workspace, org.
            (url.replace("/0.jpg?", "/1.jpg?"), Refusal::BadSignature),
            (
                url.replace("/01JXAMPLE/", "/01JOTHER/"),
                Refusal::BadSignature,
            ),
            (url.replace("/shop-1/", "/shop-2/"), Refusal::BadSignature),
            (url.replace("/acme/", "/globex/"), Refusal::BadSignature),
            // A later expiry, and an earlier one.
            (
                with_param(&url, "expires", &(expires + 1).to_string()),
                Refusal::BadSignature,
            ),
            (
                with_param(&url, "expires", &(expires - 1).to_string()),
                Refusal::BadSignature,
            ),
            (
                with_param(&url, "signature", &flipped),
                Refusal::BadSignature,
            ),
            (
                with_param(
                    &url,
                    "signature",
                    &signature
                        .to_uppercase()
                        .replace(|c: char| c.is_ascii_digit(), "A"),
                ),
                Refusal::BadSignature,
            ),
            (
                with_param(&url, "signature", &signature[..62]),
                Refusal::Malformed,
            ),
            (
                with_param(&url, "signature", &"z".repeat(64)),
                Refusal::Malformed,
            ),
            (
                with_param(&url, "expires", &format!("+{expires}")),
                Refusal::Malformed,
            ),
            (with_param(&url, "kid", "k 2"), Refusal::Malformed),
            (format!("{url}&kid=k2"), Refusal::Malformed),
            (url.split('?').next().unwrap().to_string(), Refusal::Missing),
            (url.replace("kid=k2&", ""), Refusal::Missing),
            // Outside the base path.
            (url.replace("/files/", "/other/"), Refusal::BadSignature),
        ];
        for (changed, refusal) in &cases {
            assert_ne!(changed, &url);
            assert_eq!(
                signer.verify_url(changed).map(|_| ()),
                Err(*refusal),
                "{changed}"
            );
        }
        // The untouched link passes, and an extra parameter does not matter.
        assert!(signer.verify_url(&url).is_ok());
        assert!(signer.verify_url(&format!("{url}&cb=1")).is_ok());
    }

    #[test]
    fn expired_links_are_refused_and_only_genuine_ones_are_told_so() {
        let (now, clock) = moving(T0);
        let signer = signer(Keyring::new("k1", b"first secret").unwrap(), clock);
        let (url, expires) = signer.sign(KEY).unwrap();
        now.store(expires + 1, Ordering::SeqCst);
        assert_eq!(signer.verify_url(&url), Err(Refusal::Expired));
        let forged = url.replace("/0.jpg?", "/1.jpg?");
        assert_eq!(signer.verify_url(&forged), Err(Refusal::BadSignature));
    }

    #[test]
    fn links_never_live_past_the_maximum() {
        let keys = Keyring::new("k1", b"first secret").unwrap();
        let long = UrlSigner::with_keyring(base(), keys.clone(), Duration::from_secs(30 * 86_400))
            .with_clock(Clock::fixed(T0));
        assert_eq!(long.ttl(), MAX_SIGNED_URL_TTL);
        let (url, expires) = long.sign(KEY).unwrap();
        assert_eq!(expires, T0 + MAX_SIGNED_URL_TTL.as_secs());
        assert!(long.verify_url(&url).is_ok());
        // Seen a second earlier, the same link is one second too long.
        let earlier = long.with_clock(Clock::fixed(T0 - 1));
        assert_eq!(earlier.verify_url(&url), Err(Refusal::TooLong));
    }

    #[test]
    fn keys_that_would_not_name_the_object_are_not_signed() {
        let signer = signer(Keyring::new("k1", b"s").unwrap(), Clock::fixed(T0));
        for key in [
            "../etc/passwd",
            "/abs/0.jpg",
            "a/../b",
            "a?b",
            "https://evil.example/x",
        ] {
            assert_eq!(signer.sign(key), None, "{key}");
        }
    }

    #[test]
    fn keyring_rules_and_no_secret_in_debug() {
        assert_eq!(
            Keyring::new("", b"s").unwrap_err(),
            KeyringError::InvalidId(String::new())
        );
        assert!(matches!(
            Keyring::new("a/b", b"s"),
            Err(KeyringError::InvalidId(_))
        ));
        assert!(matches!(
            Keyring::new("k", b""),
            Err(KeyringError::EmptySecret(_))
        ));
        let dup = Keyring::new("k1", b"one")
            .unwrap()
            .with_retired("k1", b"two", T0);
        assert!(matches!(dup, Err(KeyringError::Duplicate(_))));
        let keys = Keyring::new("k2", b"super-secret-two")
            .unwrap()
            .with_retired("k1", b"super-secret-one", T0)
            .unwrap();
        assert_eq!(keys.ids().collect::<Vec<_>>(), ["k2", "k1"]);
        let signer = signer(keys, Clock::fixed(T0));
        let shown = format!("{signer:?}");
        assert!(shown.contains("k1") && shown.contains("k2"), "{shown}");
        assert!(!shown.contains("super-secret"), "{shown}");
        // The single-key constructor keeps working for existing callers.
        let single = UrlSigner::new(base(), b"secret", Duration::from_secs(600));
        assert_eq!(single.keyring().current_id(), DEFAULT_KEY_ID);
        let (url, _) = single.sign(KEY).unwrap();
        assert!(single.verify_url(&url).is_ok());
    }
}
