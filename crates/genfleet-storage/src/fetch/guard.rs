//! The SSRF guard's address table: which destination addresses a fetch may
//! never connect to unless its host is allow-listed.
//!
//! One table for every URL the worker fetches (inputs by URL and provider
//! outputs), so the two cannot drift apart. It is a deny-list over IPv4
//! (everything not listed is public) and an allow-list over IPv6 (only
//! global unicast, `2000::/3`, minus the ranges below): IPv6 keeps growing
//! special-purpose ranges, and an unknown one is safer refused.
//!
//! IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`,
//! IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are
//! judged by the IPv4 address they carry: a kernel, a NAT64 gateway or a
//! 6to4 relay turns them into a connection to that address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused, for an error message: "a private address
/// (10.0.0.0/8)", "an IPv4-mapped IPv6 address of a link-local address
/// (169.254.0.0/16)".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The class: `private`, `loopback`, `link-local`, ...
    pub class: &'static str,
    /// The range it was found in, in CIDR notation.
    pub range: &'static str,
    /// The IPv6 form that carried the IPv4 address judged, if any.
    pub carried_by: Option<&'static str>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(form) = self.carried_by {
            write!(f, "{} of ", with_article(form))?;
        }
        write!(f, "{} address ({})", with_article(self.class), self.range)
    }
}

fn with_article(word: &str) -> String {
    let vowel = word
        .chars()
        .next()
        .is_some_and(|c| "aeiouAEIOU".contains(c));
    // "an IPv4-mapped", "a unique-local"
    let an = vowel && !word.starts_with("uni");
    format!("{} {word}", if an { "an" } else { "a" })
}

/// IPv4 ranges no fetch may reach, most specific first.
const V4: &[(u32, u8, &str, &str)] = &[
    (0x0000_0000, 32, "unspecified", "0.0.0.0/32"),
    (0x0000_0000, 8, "reserved (\"this network\")", "0.0.0.0/8"),
    (0x0a00_0000, 8, "private", "10.0.0.0/8"),
    (0x6440_0000, 10, "carrier-grade NAT", "100.64.0.0/10"),
    (0x7f00_0000, 8, "loopback", "127.0.0.0/8"),
    // The cloud metadata services (169.254.169.254) live here.
    (0xa9fe_0000, 16, "link-local", "169.254.0.0/16"),
    (0xac10_0000, 12, "private", "172.16.0.0/12"),
    (
        0xc000_0000,
        24,
        "reserved (IETF protocol assignments)",
        "192.0.0.0/24",
    ),
    (0xc000_0200, 24, "documentation", "192.0.2.0/24"),
    (
        0xc058_6300,
        24,
        "reserved (6to4 relay anycast)",
        "192.88.99.0/24",
    ),
    (0xc0a8_0000, 16, "private", "192.168.0.0/16"),
    (0xc612_0000, 15, "benchmarking", "198.18.0.0/15"),
    (0xc633_6400, 24, "documentation", "198.51.100.0/24"),
    (0xcb00_7100, 24, "documentation", "203.0.113.0/24"),
    (0xe000_0000, 4, "multicast", "224.0.0.0/4"),
    (0xffff_ffff, 32, "broadcast", "255.255.255.255/32"),
    (0xf000_0000, 4, "reserved", "240.0.0.0/4"),
];

/// IPv6 ranges no fetch may reach (besides everything outside
/// `2000::/3`), most specific first.
const V6: &[(u128, u8, &str, &str)] = &[
    (0, 128, "unspecified", "::/128"),
    (1, 128, "loopback", "::1/128"),
    (
        0x0064_ff9b_0001_0000_0000_0000_0000_0000,
        48,
        "reserved (local-use NAT64)",
        "64:ff9b:1::/48",
    ),
    (
        0x0100_0000_0000_0000_0000_0000_0000_0000,
        64,
        "reserved (discard-only)",
        "100::/64",
    ),
    (
        0x2001_0db8_0000_0000_0000_0000_0000_0000,
        32,
        "documentation",
        "2001:db8::/32",
    ),
    // Teredo (2001::/32) hides its client's IPv4 address XOR-ed; the
    // whole protocol-assignment block is refused rather than decoded.
    (
        0x2001_0000_0000_0000_0000_0000_0000_0000,
        23,
        "reserved (IETF protocol assignments, Teredo)",
        "2001::/23",
    ),
    (
        0x3fff_0000_0000_0000_0000_0000_0000_0000,
        20,
        "documentation",
        "3fff::/20",
    ),
    (
        0xfc00_0000_0000_0000_0000_0000_0000_0000,
        7,
        "unique-local",
        "fc00::/7",
    ),
    (
        0xfe80_0000_0000_0000_0000_0000_0000_0000,
        10,
        "link-local",
        "fe80::/10",
    ),
    (
        0xfec0_0000_0000_0000_0000_0000_0000_0000,
        10,
        "site-local",
        "fec0::/10",
    ),
    (
        0xff00_0000_0000_0000_0000_0000_0000_0000,
        8,
        "multicast",
        "ff00::/8",
    ),
];

const GLOBAL_UNICAST: (u128, u8) = (0x2000_0000_0000_0000_0000_0000_0000_0000, 3);
const MAPPED: (u128, u8) = (0x0000_0000_0000_0000_0000_ffff_0000_0000, 96);
const COMPATIBLE: (u128, u8) = (0, 96);
const NAT64: (u128, u8) = (0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96);
const SIX_TO_FOUR: (u128, u8) = (0x2002_0000_0000_0000_0000_0000_0000_0000, 16);

/// Why `ip` may not be connected to, or `None` for a public address.
pub fn refusal(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<Refusal> {
    let bits = u32::from(ip);
    V4.iter()
        .find(|(net, len, _, _)| in_v4(bits, *net, *len))
        .map(|(_, _, class, range)| Refusal {
            class,
            range,
            carried_by: None,
        })
}

fn refusal_v6(ip: Ipv6Addr) -> Option<Refusal> {
    let bits = u128::from(ip);
    // `::` and `::1` are in the ::/96 block too: the table decides them
    // first, so they are not read as IPv4-compatible 0.0.0.0 and 0.0.0.1.
    let listed = |bits: u128| {
        V6.iter()
            .find(|(net, len, _, _)| in_v6(bits, *net, *len))
            .map(|(_, _, class, range)| Refusal {
                class,
                range,
                carried_by: None,
            })
    };
    if bits <= 1 {
        return listed(bits);
    }
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    let carried = if in_v6(bits, MAPPED.0, MAPPED.1) {
        Some(("IPv4-mapped IPv6", low32))
    } else if in_v6(bits, COMPATIBLE.0, COMPATIBLE.1) {
        Some(("IPv4-compatible IPv6", low32))
    } else if in_v6(bits, NAT64.0, NAT64.1) {
        Some(("NAT64 IPv6", low32))
    } else if in_v6(bits, SIX_TO_FOUR.0, SIX_TO_FOUR.1) {
        // 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
        Some((
            "6to4 IPv6",
            Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32),
        ))
    } else {
        None
    };
    if let Some((form, v4)) = carried {
        return refusal_v4(v4).map(|inner| Refusal {
            carried_by: Some(form),
            ..inner
        });
    }
    if let Some(refused) = listed(bits) {
        return Some(refused);
    }
    if !in_v6(bits, GLOBAL_UNICAST.0, GLOBAL_UNICAST.1) {
        return Some(Refusal {
            class: "reserved (not global unicast)",
            range: "outside 2000::/3",
            carried_by: None,
        });
    }
    None
}

fn in_v4(bits: u32, net: u32, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    bits & mask == net & mask
}

fn in_v6(bits: u128, net: u128, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    bits & mask == net & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(text: &str) -> Option<String> {
        let ip: IpAddr = text.parse().unwrap();
        refusal(ip).map(|r| r.to_string())
    }

    /// Every refused class, in its IPv4 and IPv6 forms, with the range the
    /// message names; and public addresses, also inside the IPv6 forms that
    /// carry IPv4, let through.
    #[test]
    fn the_address_table() {
        let refused = [
            ("0.0.0.0", "an unspecified address (0.0.0.0/32)"),
            (
                "0.1.2.3",
                "a reserved (\"this network\") address (0.0.0.0/8)",
            ),
            ("10.0.0.1", "a private address (10.0.0.0/8)"),
            ("10.255.255.255", "a private address (10.0.0.0/8)"),
            ("100.64.0.1", "a carrier-grade NAT address (100.64.0.0/10)"),
            (
                "100.127.255.254",
                "a carrier-grade NAT address (100.64.0.0/10)",
            ),
            ("127.0.0.1", "a loopback address (127.0.0.0/8)"),
            ("127.255.0.9", "a loopback address (127.0.0.0/8)"),
            ("169.254.169.254", "a link-local address (169.254.0.0/16)"),
            ("172.16.0.1", "a private address (172.16.0.0/12)"),
            ("172.31.255.255", "a private address (172.16.0.0/12)"),
            (
                "192.0.0.8",
                "a reserved (IETF protocol assignments) address (192.0.0.0/24)",
            ),
            ("192.0.2.1", "a documentation address (192.0.2.0/24)"),
            (
                "192.88.99.1",
                "a reserved (6to4 relay anycast) address (192.88.99.0/24)",
            ),
            ("192.168.1.1", "a private address (192.168.0.0/16)"),
            ("198.18.0.1", "a benchmarking address (198.18.0.0/15)"),
            ("198.19.255.1", "a benchmarking address (198.18.0.0/15)"),
            ("198.51.100.7", "a documentation address (198.51.100.0/24)"),
            ("203.0.113.7", "a documentation address (203.0.113.0/24)"),
            ("224.0.0.1", "a multicast address (224.0.0.0/4)"),
            ("239.255.255.250", "a multicast address (224.0.0.0/4)"),
            ("240.0.0.1", "a reserved address (240.0.0.0/4)"),
            (
                "255.255.255.255",
                "a broadcast address (255.255.255.255/32)",
            ),
            ("::", "an unspecified address (::/128)"),
            ("::1", "a loopback address (::1/128)"),
            ("fe80::1", "a link-local address (fe80::/10)"),
            ("febf::1", "a link-local address (fe80::/10)"),
            ("fec0::1", "a site-local address (fec0::/10)"),
            ("fc00::1", "a unique-local address (fc00::/7)"),
            ("fd12:3456::1", "a unique-local address (fc00::/7)"),
            ("ff02::1", "a multicast address (ff00::/8)"),
            ("2001:db8::1", "a documentation address (2001:db8::/32)"),
            (
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                "a reserved (IETF protocol assignments, Teredo) address (2001::/23)",
            ),
            ("3fff::1", "a documentation address (3fff::/20)"),
            ("100::1", "a reserved (discard-only) address (100::/64)"),
            (
                "64:ff9b:1::a00:1",
                "a reserved (local-use NAT64) address (64:ff9b:1::/48)",
            ),
            (
                "::ffff:0:a00:1",
                "a reserved (not global unicast) address (outside 2000::/3)",
            ),
            (
                "4000::1",
                "a reserved (not global unicast) address (outside 2000::/3)",
            ),
            // The IPv6 forms that carry an IPv4 address, judged by it.
            (
                "::ffff:10.0.0.1",
                "an IPv4-mapped IPv6 of a private address (10.0.0.0/8)",
            ),
            (
                "::ffff:127.0.0.1",
                "an IPv4-mapped IPv6 of a loopback address (127.0.0.0/8)",
            ),
            (
                "::ffff:169.254.169.254",
                "an IPv4-mapped IPv6 of a link-local address (169.254.0.0/16)",
            ),
            (
                "::ffff:0.0.0.0",
                "an IPv4-mapped IPv6 of an unspecified address (0.0.0.0/32)",
            ),
            (
                "::10.0.0.1",
                "an IPv4-compatible IPv6 of a private address (10.0.0.0/8)",
            ),
            (
                "::127.0.0.1",
                "an IPv4-compatible IPv6 of a loopback address (127.0.0.0/8)",
            ),
            (
                "64:ff9b::192.168.0.1",
                "a NAT64 IPv6 of a private address (192.168.0.0/16)",
            ),
            (
                "64:ff9b::169.254.169.254",
                "a NAT64 IPv6 of a link-local address (169.254.0.0/16)",
            ),
            (
                "2002:a00:1::1",
                "a 6to4 IPv6 of a private address (10.0.0.0/8)",
            ),
            (
                "2002:7f00:1::",
                "a 6to4 IPv6 of a loopback address (127.0.0.0/8)",
            ),
            (
                "2002:a9fe:a9fe::1",
                "a 6to4 IPv6 of a link-local address (169.254.0.0/16)",
            ),
        ];
        for (address, expected) in refused {
            assert_eq!(judged(address).as_deref(), Some(expected), "{address}");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ] {
            assert_eq!(judged(public), None, "{public}");
        }
    }
}
