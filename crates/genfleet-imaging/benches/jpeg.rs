//! The JPEG stages on one 12 MP corpus photo, for comparing the two JPEG
//! backends: the pure-Rust default (zune-jpeg, jpeg-encoder) and `simd-c`
//! (libjpeg-turbo).
//!
//! ```sh
//! cargo bench -p genfleet-imaging --bench jpeg                      # pure Rust
//! cargo bench -p genfleet-imaging --bench jpeg --features simd-c    # libjpeg-turbo
//! cargo bench -p genfleet-imaging --bench jpeg -- encode            # names containing "encode"
//! ```
//!
//! The photo is `photos/p01_foliage_sky_4000x3000.jpg` of the shared corpus
//! (`GENFLEET_CORPUS`, default `../shared/corpus` beside the workspace);
//! `GENFLEET_BENCH_RUNS` timed runs per stage (default 15) after one
//! untimed, median and minimum printed. Results are in `benches/README.md`
//! of this crate. No criterion: nothing beyond the crate's own dependencies.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use genfleet_imaging::{ChromaSubsampling, DynamicImage, Encoding, JpegOptions, Limits};

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runs: usize = std::env::var("GENFLEET_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let corpus = std::env::var_os("GENFLEET_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/corpus"
            ))
        });
    let path = corpus.join("photos/p01_foliage_sky_4000x3000.jpg");
    let Ok(photo) = std::fs::read(&path) else {
        println!("skipped: no {}", path.display());
        return;
    };
    let backend = if cfg!(feature = "simd-c") {
        "simd-c (libjpeg-turbo)"
    } else {
        "pure Rust (zune-jpeg, jpeg-encoder)"
    };
    println!("JPEG backend: {backend}; {runs} runs per stage");
    println!(
        "{:<52} {:>10} {:>10} {:>10}",
        "stage", "median ms", "min ms", "bytes"
    );

    let limits = Limits::default();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let bench = |name: &str, f: &mut dyn FnMut() -> usize| {
        if !wanted(name) {
            return;
        }
        let bytes = f();
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                black_box(f());
                start.elapsed()
            })
            .collect();
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{name:<52} {:>10.1} {:>10.1} {:>10}",
            ms(times[times.len() / 2]),
            ms(times[0]),
            if bytes > 0 {
                bytes.to_string()
            } else {
                String::new()
            }
        );
    };

    let decode =
        |fit: Option<u32>| match genfleet_imaging::decode_to_fit(black_box(&photo), &limits, fit) {
            Ok(s) => s.image,
            Err(e) => panic!("corpus photo must decode: {e}"),
        };
    bench("decode_sanitised 4000x3000 (full decode)", &mut || {
        black_box(decode(None));
        0
    });
    bench(
        "decode_to_fit 2048 (no shrink-on-load possible)",
        &mut || {
            black_box(decode(Some(2048)));
            0
        },
    );
    bench("decode_to_fit 1024 (turbo: 1/2 on load)", &mut || {
        black_box(decode(Some(1024)));
        0
    });
    bench("decode_to_fit 512 (turbo: 1/4 on load)", &mut || {
        black_box(decode(Some(512)));
        0
    });

    let full = decode(None);
    let small = decode(Some(2048));
    let encode = |image: &DynamicImage, options: JpegOptions| match genfleet_imaging::encode(
        black_box(image),
        Encoding::Jpeg(options),
    ) {
        Ok(bytes) => bytes.len(),
        Err(e) => panic!("encode: {e}"),
    };
    let progressive = |quality| JpegOptions {
        progressive: true,
        ..JpegOptions::new(quality)
    };
    let full_chroma = |quality| JpegOptions {
        subsampling: ChromaSubsampling::Yuv444,
        ..JpegOptions::new(quality)
    };
    let cases = [
        ("encode 4000x3000 q85 4:2:0", &full, JpegOptions::new(85)),
        ("encode 4000x3000 q92 4:2:0", &full, JpegOptions::new(92)),
        ("encode 2048x1536 q85 4:2:0", &small, JpegOptions::new(85)),
        ("encode 2048x1536 q92 4:2:0", &small, JpegOptions::new(92)),
        ("encode 2048x1536 q85 4:4:4", &small, full_chroma(85)),
        ("encode 2048x1536 q85 progressive", &small, progressive(85)),
    ];
    for (name, image, options) in cases {
        bench(name, &mut || encode(image, options));
    }

    let many_scans = progressive_with_scans(4000, 3000, 500);
    bench("decode 4000x3000 flat progressive, 500 scans", &mut || {
        match genfleet_imaging::decode_sanitised(black_box(&many_scans), &limits) {
            Ok(_) => 0,
            Err(e) => panic!("500 scans are within the limit: {e}"),
        }
    });
    let hostile = baseline_with_tiny_scans(4000, 3000, 100_000);
    bench(
        "refuse 4000x3000 baseline, 100,000 1-byte scans",
        &mut || match genfleet_imaging::decode_sanitised(black_box(&hostile), &limits) {
            Ok(_) => panic!("100,000 scans must be refused"),
            Err(_) => 0,
        },
    );
}

/// A hostile baseline JPEG: three components, then `scans` scans of one
/// component and one byte of data each (a zero bit is a whole block with
/// the tables here). Without a scan limit, zune-jpeg spends a row of
/// blocks on each.
fn baseline_with_tiny_scans(width: u16, height: u16, scans: usize) -> Vec<u8> {
    fn segment(out: &mut Vec<u8>, marker: u8, data: &[u8]) {
        out.extend_from_slice(&[0xFF, marker]);
        out.extend_from_slice(&(data.len() as u16 + 2).to_be_bytes());
        out.extend_from_slice(data);
    }
    let mut bytes = vec![0xFF, 0xD8];
    let mut dqt = vec![0];
    dqt.extend_from_slice(&[1; 64]);
    segment(&mut bytes, 0xDB, &dqt);
    let mut sof = vec![8];
    sof.extend_from_slice(&height.to_be_bytes());
    sof.extend_from_slice(&width.to_be_bytes());
    sof.push(3);
    for id in 1..=3 {
        sof.extend_from_slice(&[id, 0x11, 0]);
    }
    segment(&mut bytes, 0xC0, &sof);
    let mut dht = vec![0x00, 1];
    dht.extend_from_slice(&[0; 15]);
    dht.extend_from_slice(&[0x00, 0x10, 1]);
    dht.extend_from_slice(&[0; 15]);
    dht.push(0x00);
    segment(&mut bytes, 0xC4, &dht);
    for _ in 0..scans {
        segment(&mut bytes, 0xDA, &[1, 1, 0x00, 0, 63, 0]);
        bytes.push(0x00);
    }
    bytes.extend_from_slice(&[0xFF, 0xD9]);
    bytes
}

/// The most CPU the scan limit lets through: a flat grey 4:4:4 progressive
/// JPEG whose last scan (an AC band over every block of a component) is
/// repeated until the file holds `scans` scans. Each repeat costs the
/// decoder a pass over the component's blocks for one bit of data per
/// block (a hostile file would use end-of-band runs to make the scans
/// tiny; the decoder's work per scan is the same).
fn progressive_with_scans(width: u16, height: u16, scans: usize) -> Vec<u8> {
    let pixels = vec![128u8; usize::from(width) * usize::from(height) * 3];
    let mut bytes = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, 85);
    encoder.set_progressive(true);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_4_4);
    if let Err(e) = encoder.encode(&pixels, width, height, jpeg_encoder::ColorType::Rgb) {
        panic!("encode: {e}");
    }
    let sos: Vec<usize> = (0..bytes.len() - 1)
        .filter(|&i| bytes[i] == 0xFF && bytes[i + 1] == 0xDA)
        .collect();
    let eoi = bytes.len() - 2;
    let last = bytes[sos[sos.len() - 1]..eoi].to_vec();
    bytes.truncate(eoi);
    for _ in sos.len()..scans {
        bytes.extend_from_slice(&last);
    }
    bytes.extend_from_slice(&[0xFF, 0xD9]);
    bytes
}
