//! Untrusted upload bytes through everything that reads them before a job
//! trusts them: sniff, the header-only limit check, and the sanitising
//! decode (with shrink-on-load, orientation and colour conversion).
//!
//! What must hold for any input: no panic, no abort, no allocation beyond
//! the limits (libFuzzer's -rss_limit_mb catches that), and a decoded image
//! that respects the limits it was decoded under.

#![no_main]

use genfleet_imaging::{Limits, Sniffed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small limits keep each execution fast; the checks are the same code.
    let limits = Limits {
        max_bytes: 4 * 1024 * 1024,
        max_width: 4096,
        max_height: 4096,
        max_pixels: 4_000_000,
        max_decode_alloc_bytes: 64 * 1024 * 1024,
        max_frames: 100,
        // Small enough that metadata bombs trip it quickly, big enough for
        // the real profiles in the seed corpus (a few kB to 600 kB).
        max_metadata_bytes: 4 * 1024 * 1024,
    };
    let sniffed = genfleet_imaging::sniff(data);
    let inspected = genfleet_imaging::inspect(data, &limits);
    if let (Ok(info), Sniffed::Other(found)) = (&inspected, sniffed) {
        panic!("inspect accepted {info:?} that sniff called {found}");
    }
    for fit in [None, Some(64)] {
        if let Ok(s) = genfleet_imaging::decode_to_fit(data, &limits, fit) {
            let (w, h) = (s.image.width(), s.image.height());
            assert!(w > 0 && h > 0, "empty image decoded");
            assert!(
                u64::from(w) * u64::from(h) <= limits.max_pixels,
                "{w}x{h} decoded past the pixel limit"
            );
            if let Some(side) = fit {
                assert!(w.max(h) <= side, "{w}x{h} does not fit {side}");
            }
            assert!(inspected.is_ok(), "decoded what inspect rejected");
        }
    }
});
