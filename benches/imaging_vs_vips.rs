//! The imaging pipeline beside libvips on the 12 MP photos of the shared
//! corpus, in one run, on the same machine.
//!
//! ```sh
//! cargo bench --bench imaging_vs_vips            # needs libvips-tools (vipsthumbnail, vips)
//! GENFLEET_CORPUS=/path/to/corpus GENFLEET_BENCH_RUNS=7 cargo bench --bench imaging_vs_vips
//! ```
//!
//! What it prints (see benches/README.md for a recorded run):
//! 1. In process, one thread: per photo, the median time of decode ->
//!    orient -> strip (re-encode) -> sRGB -> fit 2048 -> JPEG q85, its
//!    megapixels per second (input MP: the per-core figure), and the peak
//!    memory above the process's size with the file read (measured in a
//!    fresh child process per photo) against the decoded source (width x
//!    height x 3).
//! 2. Whole batch as processes, interleaved A B A B: `genfleet batch
//!    --threads 1` against `VIPS_CONCURRENCY=1 vipsthumbnail -s 2048
//!    [Q=85,strip]` over the same 12 files; then both multi-threaded (2
//!    threads, vips' default). Medians of the runs and the median of the
//!    per-pair ratios with min and max; genfleet's scaling from 1 to 2
//!    threads.
//! 3. Upscale 2x (2048 -> 4096) + JPEG q85: in process against `vips
//!    resize 2 --kernel lanczos3` (one process per image, so vips' start-up
//!    is measured too and printed beside it).
//!
//! Not a timed test: nothing here fails on a slow machine. The machine is
//! shared and noisy, so only medians are quoted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use genfleet_imaging::{Encoding, Limits};

const LONG_SIDE: u32 = 2048;

fn main() {
    if let Some(path) = std::env::var_os("GENFLEET_BENCH_PEAK_OF") {
        peak_of_one(Path::new(&path));
        return;
    }
    let corpus = std::env::var_os("GENFLEET_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"));
    let photos_dir = corpus.join("photos");
    let mut photos: Vec<PathBuf> = match std::fs::read_dir(&photos_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .collect(),
        Err(e) => {
            println!(
                "imaging_vs_vips: no corpus at {} ({e}); set GENFLEET_CORPUS",
                photos_dir.display()
            );
            return;
        }
    };
    photos.sort();
    let runs: usize = std::env::var("GENFLEET_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let have_vips = Command::new("vipsthumbnail")
        .arg("--version")
        .output()
        .is_ok();
    println!(
        "imaging_vs_vips: {} photos from {}, {runs} runs, libvips {}",
        photos.len(),
        photos_dir.display(),
        if have_vips {
            vips_version()
        } else {
            "not installed (apt-get install libvips-tools)".into()
        }
    );

    in_process(&photos, runs);
    if have_vips {
        batches(&photos, runs);
        upscale(&photos, runs);
    }
}

fn vips_version() -> String {
    Command::new("vips")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Resident set size now and the peak of the process, in bytes, from
/// /proc/self/status (Linux).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Child mode: thumbnail one photo in a fresh process and print the peak
/// RSS above the process's size once the file is read. In one long-lived
/// process the allocator keeps freed pages, so later images would read low.
fn peak_of_one(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (rest, _) = rss();
    let (out, _, _, _) = thumbnail(&bytes);
    let (_, peak) = rss();
    std::hint::black_box(out);
    println!("peak_above={}", peak.saturating_sub(rest));
}

fn measure_peak(path: &Path) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let output = Command::new(exe)
        .env("GENFLEET_BENCH_PEAK_OF", path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("peak_above=")?.trim().parse().ok())
}

fn thumbnail(bytes: &[u8]) -> (Vec<u8>, u32, u32, u32) {
    let limits = Limits::default();
    let s = genfleet_imaging::decode_to_fit(bytes, &limits, Some(LONG_SIDE))
        .unwrap_or_else(|e| panic!("corpus photo must decode: {e}"));
    let out = genfleet_imaging::encode(&s.image, Encoding::jpeg(85))
        .unwrap_or_else(|e| panic!("encode: {e}"));
    (out, s.source.width, s.source.height, s.shrink_on_load)
}

fn in_process(photos: &[PathBuf], runs: usize) {
    println!("\n## In process, 1 thread: decode, orient, sRGB, fit {LONG_SIDE}, JPEG q85");
    println!("| photo | MP | median ms | MP/s | peak above rest MiB | peak / decoded source |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut all_ms = Vec::new();
    let mut all_mps = Vec::new();
    let mut ratios = Vec::new();
    let mut peak_ok = true;
    for path in photos {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let _warm = thumbnail(&bytes);
        let mut times = Vec::new();
        let mut source_mp = 0.0;
        let mut decoded_bytes = 0u64;
        for _ in 0..runs {
            let started = Instant::now();
            let (out, w, h, _) = thumbnail(&bytes);
            times.push(ms(started.elapsed()));
            source_mp = f64::from(w) * f64::from(h) / 1e6;
            decoded_bytes = u64::from(w) * u64::from(h) * 3;
            std::hint::black_box(out);
        }
        let peak_above = measure_peak(path).unwrap_or_else(|| {
            peak_ok = false;
            0
        });
        let med = median(times);
        let mps = source_mp / (med / 1000.0);
        let ratio = peak_above as f64 / decoded_bytes as f64;
        all_ms.push(med);
        all_mps.push(mps);
        ratios.push(ratio);
        println!(
            "| {} | {source_mp:.1} | {med:.1} | {mps:.0} | {:.1} | {ratio:.2}x |",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            peak_above as f64 / 1048576.0
        );
    }
    println!(
        "median of photos: {:.1} ms/image, {:.0} MP/s per core, peak memory {:.2}x the decoded source{}",
        median(all_ms),
        median(all_mps),
        median(ratios),
        if peak_ok { "" } else { " (some peaks not measurable: no /proc/self/status)" }
    );
}

/// Runs `command` and returns its wall time.
fn timed(command: &mut Command) -> Duration {
    let started = Instant::now();
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let elapsed = started.elapsed();
    assert!(status.success(), "{command:?} failed: {status}");
    elapsed
}

fn batches(photos: &[PathBuf], runs: usize) {
    let genfleet = env!("CARGO_BIN_EXE_genfleet");
    let scratch = std::env::temp_dir().join(format!("genfleet-vs-vips-{}", std::process::id()));
    let input = scratch.join("in");
    std::fs::create_dir_all(&input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    // One folder with exactly the photos, for genfleet batch.
    for photo in photos {
        if let Some(name) = photo.file_name() {
            let link = input.join(name);
            if !link.exists() {
                std::os::unix::fs::symlink(photo, &link)
                    .unwrap_or_else(|e| panic!("{}: {e}", link.display()));
            }
        }
    }
    let total_mp: f64 = photos
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|b| genfleet_imaging::inspect(&b, &Limits::default()).ok())
        .map(|i| f64::from(i.width) * f64::from(i.height) / 1e6)
        .sum();
    let n = photos.len() as f64;

    let ours = |threads: &str| {
        let out = scratch.join(format!("genfleet-{threads}"));
        let mut c = Command::new(genfleet);
        c.args(["batch"])
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .args([
                "--long-side",
                "2048",
                "--quality",
                "85",
                "--threads",
                threads,
            ])
            .stdout(std::process::Stdio::null());
        timed(&mut c)
    };
    let vips = |single: bool| {
        let out = scratch.join(format!("vips-{single}"));
        std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
        let mut c = Command::new("vipsthumbnail");
        c.args(photos)
            .args(["-s", "2048", "-o"])
            .arg(format!("{}/%s.jpg[Q=85,strip]", out.display()));
        if single {
            c.env("VIPS_CONCURRENCY", "1");
        }
        timed(&mut c)
    };
    // Warm the page cache and both binaries.
    ours("1");
    vips(true);

    let report = |label: &str, ours_threads: &str, vips_single: bool| -> f64 {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let mut pair = Vec::new();
        for _ in 0..runs {
            let x = ms(ours(ours_threads));
            let y = ms(vips(vips_single));
            a.push(x);
            b.push(y);
            pair.push(x / y);
        }
        let (ma, mb) = (median(a), median(b.clone()));
        let min = pair.iter().copied().fold(f64::INFINITY, f64::min);
        let max = pair.iter().copied().fold(0.0, f64::max);
        println!(
            "| {label} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} [{min:.2}-{max:.2}] |",
            ma / n,
            total_mp / (ma / 1000.0),
            mb / n,
            total_mp / (mb / 1000.0),
            median(pair),
        );
        ma
    };
    println!("\n## Whole batch of {} photos as processes (start-up included), fit 2048, JPEG q85, stripped", photos.len());
    println!("| threads | genfleet ms/img | genfleet MP/s | vipsthumbnail ms/img | vipsthumbnail MP/s | time ratio genfleet/vips (per-pair median [min-max]) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let single = report("1 (VIPS_CONCURRENCY=1)", "1", true);
    let multi = report("2 (vips default)", "2", false);
    println!("genfleet scaling 1 -> 2 threads: {:.2}x", single / multi);
    let _ = std::fs::remove_dir_all(&scratch);
}

fn upscale(photos: &[PathBuf], runs: usize) {
    let scratch = std::env::temp_dir().join(format!("genfleet-vs-vips-up-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap_or_else(|e| panic!("{}: {e}", scratch.display()));
    let limits = Limits::default();
    // Inputs: the photos cut to a 2048 long side (upright, stripped), q90.
    let inputs: Vec<(PathBuf, Vec<u8>)> = photos
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let s = genfleet_imaging::decode_to_fit(&bytes, &limits, Some(LONG_SIDE))
                .unwrap_or_else(|e| panic!("decode: {e}"));
            let jpeg = genfleet_imaging::encode(&s.image, Encoding::jpeg(90))
                .unwrap_or_else(|e| panic!("encode: {e}"));
            let path = scratch.join(format!("{i:02}.jpg"));
            std::fs::write(&path, &jpeg).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, jpeg)
        })
        .collect();
    let out_mp: f64 = inputs
        .iter()
        .filter_map(|(_, b)| genfleet_imaging::inspect(b, &limits).ok())
        .map(|i| 4.0 * f64::from(i.width) * f64::from(i.height) / 1e6)
        .sum();
    let ours_once = || {
        let started = Instant::now();
        for (_, bytes) in &inputs {
            let s = genfleet_imaging::decode_sanitised(bytes, &limits)
                .unwrap_or_else(|e| panic!("decode: {e}"));
            let up = genfleet_imaging::upscale(&s.image, 2, &limits)
                .unwrap_or_else(|e| panic!("upscale: {e}"));
            let out = genfleet_imaging::encode(&up, Encoding::jpeg(85))
                .unwrap_or_else(|e| panic!("encode: {e}"));
            std::hint::black_box(out);
        }
        ms(started.elapsed())
    };
    let vips_once = || {
        let started = Instant::now();
        for (path, _) in &inputs {
            let out = scratch.join("up.jpg");
            let mut c = Command::new("vips");
            c.arg("resize")
                .arg(path)
                .arg(format!("{}[Q=85,strip]", out.display()))
                .args(["2", "--kernel", "lanczos3"])
                .env("VIPS_CONCURRENCY", "1");
            timed(&mut c);
        }
        ms(started.elapsed())
    };
    let startup_once = || {
        let started = Instant::now();
        for _ in &inputs {
            timed(
                Command::new("vips")
                    .arg("--version")
                    .stdout(std::process::Stdio::null()),
            );
        }
        ms(started.elapsed())
    };
    ours_once();
    vips_once();
    let (mut a, mut b, mut s, mut pair) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let x = ours_once();
        let y = vips_once();
        let z = startup_once();
        a.push(x);
        b.push(y);
        s.push(z);
        pair.push(x / (y - z).max(1.0));
    }
    let n = inputs.len() as f64;
    let (ma, mb, ms_) = (median(a), median(b), median(s));
    println!("\n## Upscale 2x (2048 -> 4096 long side) + JPEG q85, 1 thread");
    println!("| tool | ms/img | output MP/s |");
    println!("|---|---:|---:|");
    println!(
        "| genfleet (in process, banded Lanczos3) | {:.0} | {:.0} |",
        ma / n,
        out_mp / (ma / 1000.0)
    );
    println!(
        "| vips resize 2 --kernel lanczos3 (process per image) | {:.0} | {:.0} |",
        mb / n,
        out_mp / (mb / 1000.0)
    );
    println!(
        "| vips start-up alone (`vips --version`) | {:.0} | |",
        ms_ / n
    );
    println!(
        "time ratio genfleet / (vips - start-up), per-pair median: {:.2}",
        median(pair)
    );
    let _ = std::fs::remove_dir_all(&scratch);
}
