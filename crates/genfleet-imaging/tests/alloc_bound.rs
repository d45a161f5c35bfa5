//! Peak heap of decoding each hostile fixture, counted by a global
//! allocator: every file in `tests/fixtures/hostile/` must be answered
//! (decoded or refused with its expected code) without the heap ever
//! holding more than [`PEAK_BOUND`], and without any single allocation
//! above it. RSS would undercount: a calloc'd 4 GiB buffer that is never
//! written costs no resident pages, yet a worker under a memory limit or
//! strict overcommit dies of it, so allocations are what is measured.
//!
//! One test function on purpose: the counters are process-wide, and
//! `cargo test` runs the functions of a binary on parallel threads.

// The counting allocator must implement `GlobalAlloc`, an unsafe trait. The
// crate's own code forbids unsafe code; this test binary is a separate
// crate, and this is the only unsafe code in it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use genfleet_imaging::{decode_sanitised, Limits};

/// What one decode may hold at once: well above what a 1x1 to 640x480
/// fixture needs, far below the 64 MiB to 4 GiB the bombs claimed.
const PEAK_BOUND: usize = 64 * 1024 * 1024;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

impl Counting {
    fn grew(by: usize, single: usize) {
        let now = CURRENT.fetch_add(by, Relaxed) + by;
        PEAK.fetch_max(now, Relaxed);
        LARGEST.fetch_max(single, Relaxed);
    }
}

// SAFETY: every call is passed unchanged to the system allocator; the
// wrapper only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size(), layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size(), layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as the new block arriving before the old one leaves,
            // which is what a moving realloc holds at its peak.
            Self::grew(new_size, new_size);
            CURRENT.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const HOSTILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/hostile/");

/// The expected code for each fixture; `None` means it decodes.
fn expected(name: &str) -> Option<Option<&'static str>> {
    Some(match name {
        "eicar.jpg" | "h05_script.svg" | "h09_html_named_jpg.jpg" => Some("unsupported_type"),
        "h01_truncated.jpg" | "h06_empty.jpg" => Some("invalid_input"),
        "h02_bomb_60000x60000.png"
        | "h02b_bomb_header_only_60000x60000_rgba.png"
        | "h08_jpeg_header_65500x65500.jpg" => Some("too_large"),
        "h03_polyglot_html_zip.jpg" | "h04_gif_named_jpg.jpg" => None,
        "h10_png_iccp_inflates_64mib.png" => Some("too_large"),
        "h11_png_ztxt_inflates_64mib.png" => None,
        "h12_webp_iccp_claims_4gib.webp" | "h13_webp_exif_claims_4gib.webp" => Some("too_large"),
        "h14_tiff_8m_strip_offsets.tif" => Some("too_large"),
        "h15_tiff_jpeg_strip_16000x16000.tif" => Some("invalid_input"),
        _ => return None,
    })
}

#[test]
fn every_hostile_fixture_decodes_within_the_bound() {
    let limits = Limits::default();
    let mut names: Vec<String> = std::fs::read_dir(HOSTILE)
        .expect("hostile fixture directory")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| !n.ends_with(".md") && !n.ends_with(".py"))
        .collect();
    names.sort();
    let mut report = Vec::new();
    for name in &names {
        let want = expected(name)
            .unwrap_or_else(|| panic!("{name}: add its expected outcome to this table"));
        let bytes = std::fs::read(format!("{HOSTILE}{name}")).expect("fixture");
        let base = CURRENT.load(Relaxed);
        PEAK.store(base, Relaxed);
        LARGEST.store(0, Relaxed);
        let got = decode_sanitised(&bytes, &limits).err().map(|e| e.code());
        let peak = PEAK.load(Relaxed) - base;
        let largest = LARGEST.load(Relaxed);
        report.push(format!(
            "{name}: {got:?}, peak {peak} B, largest {largest} B"
        ));
        assert_eq!(got, want, "{name}");
        assert!(
            peak <= PEAK_BOUND && largest <= PEAK_BOUND,
            "{name}: peak {peak} B, largest single allocation {largest} B, bound {PEAK_BOUND} B"
        );
    }
    // Shown with --nocapture: the figures behind the bound.
    println!("{}", report.join("\n"));
}
