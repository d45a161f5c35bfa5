//! Identifier syntax: job ids (ULID or UUID) and tenant ids (routing-key safe).

/// A job id is a ULID (26 Crockford base32 characters) or a UUID in its
/// canonical 8-4-4-4-12 hex form. Anything else could not have come from a
/// well-behaved publisher and is not used as an idempotency key.
pub fn is_valid_job_id(id: &str) -> bool {
    is_ulid(id) || is_uuid(id)
}

/// The canonical case of a valid job id: a ULID in upper case (Crockford
/// base32 is case-insensitive), a UUID in lower case. Anything else is
/// returned as it is. Every key derived from a job id uses this form, so
/// `01jd...` and `01JD...` are one job, not two.
pub fn canonical_job_id(id: &str) -> String {
    if is_ulid(id) {
        id.to_ascii_uppercase()
    } else if is_uuid(id) {
        id.to_ascii_lowercase()
    } else {
        id.to_string()
    }
}

fn is_ulid(id: &str) -> bool {
    const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZabcdefghjkmnpqrstvwxyz";
    // The first character encodes the top 3 bits of a 128-bit value, so it
    // cannot exceed '7'.
    id.len() == 26
        && id
            .as_bytes()
            .first()
            .is_some_and(|c| (b'0'..=b'7').contains(c))
        && id.bytes().all(|c| CROCKFORD.contains(&c))
}

fn is_uuid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    groups.len() == lengths.len()
        && groups
            .iter()
            .zip(lengths)
            .all(|(g, n)| g.len() == n && g.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// Tenant ids go into routing keys and storage paths, so they are limited to
/// `[A-Za-z0-9_-]{1,64}`: no dots (routing-key separators), no slashes, no
/// wildcards.
pub fn is_valid_tenant_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids() {
        for ok in [
            "01JD3XQ6Z8M5V9K2T4W7Y1B0CE",
            "0190f3b2-7c1e-7a4b-9f00-1234567890ab",
        ] {
            assert!(is_valid_job_id(ok), "{ok}");
        }
        for bad in [
            "",
            "job-1",
            "81JD3XQ6Z8M5V9K2T4W7Y1B0CE",
            "01JD3XQ6Z8M5V9K2T4W7Y1B0CU",
            "0190f3b2-7c1e-7a4b-9f00-1234567890a",
            "../../etc/passwd",
        ] {
            assert!(!is_valid_job_id(bad), "{bad}");
        }
    }

    #[test]
    fn canonical_case() {
        assert_eq!(
            canonical_job_id("01jd3xq6z8m5v9k2t4w7y1b0ce"),
            "01JD3XQ6Z8M5V9K2T4W7Y1B0CE"
        );
        assert_eq!(
            canonical_job_id("0190F3B2-7C1E-7A4B-9F00-1234567890AB"),
            "0190f3b2-7c1e-7a4b-9f00-1234567890ab"
        );
        assert_eq!(canonical_job_id("job-1"), "job-1");
    }

    #[test]
    fn tenant_ids() {
        assert!(is_valid_tenant_id("acme"));
        assert!(is_valid_tenant_id("shop-1_A"));
        for bad in ["", "a.b", "a/b", "*", "#", &"x".repeat(65)] {
            assert!(!is_valid_tenant_id(bad), "{bad}");
        }
    }
}

/// A fresh job id: a ULID of the current time and 80 random bits.
pub fn new_job_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    format_ulid(ms, fastrand::u128(..))
}

/// Formats a ULID from its parts: 48 bits of Unix milliseconds and 80 random
/// bits.
pub fn format_ulid(unix_ms: u64, random: u128) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let value: u128 =
        (u128::from(unix_ms & 0xFFFF_FFFF_FFFF) << 80) | (random & ((1u128 << 80) - 1));
    (0..26)
        .rev()
        .map(|i| char::from(ALPHABET[((value >> (i * 5)) & 0x1F) as usize]))
        .collect()
}

#[cfg(test)]
mod ulid_tests {
    #[test]
    fn formatted_ulids_are_valid_and_sort_by_time() {
        let a = super::format_ulid(1_700_000_000_000, 0xFFFF_FFFF_FFFF_FFFF_FFFF);
        let b = super::format_ulid(1_700_000_000_001, 0);
        assert!(
            super::is_valid_job_id(&a) && super::is_valid_job_id(&b),
            "{a} {b}"
        );
        assert!(a < b);
        assert_eq!(super::format_ulid(0, 0), "00000000000000000000000000");
        let (a, b) = (super::new_job_id(), super::new_job_id());
        assert!(super::is_valid_job_id(&a) && a != b);
    }
}
