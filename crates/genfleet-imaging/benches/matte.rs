//! Background removal on the composites corpus: IoU against the ground-truth
//! masks and time per image for [`ClassicalMatte`].
//!
//! Run with `cargo bench -p genfleet-imaging --bench matte`. Decoding is not
//! timed: the figure is the matte alone on an already decoded image.

use std::time::{Duration, Instant};

use genfleet_imaging::{alpha_iou, ClassicalMatte, Matte};

const COMPOSITES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/composites/"
);
const RUNS: usize = 5;

fn main() {
    let matte = ClassicalMatte::default();
    let mut names: Vec<String> = std::fs::read_dir(COMPOSITES)
        .expect("composites fixtures")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".jpg"))
        .collect();
    names.sort();
    let mut ious = Vec::new();
    let mut medians = Vec::new();
    println!("{:<40} {:>8} {:>10}", "file", "IoU", "ms (med5)");
    for name in &names {
        let image = image::open(format!("{COMPOSITES}{name}")).expect("decode input");
        let truth = image::open(format!("{COMPOSITES}{}", name.replace(".jpg", ".mask.png")))
            .expect("decode mask")
            .into_luma8();
        let mut times: Vec<Duration> = Vec::new();
        let mut alpha = None;
        for _ in 0..RUNS {
            let start = Instant::now();
            let out = matte.matte(&image).expect("matte");
            times.push(start.elapsed());
            alpha = Some(out);
        }
        times.sort();
        let median = times[RUNS / 2].as_secs_f64() * 1e3;
        let iou = alpha_iou(&alpha.expect("at least one run"), &truth);
        println!(
            "{name:<40} {iou:>8.4} {median:>10.1}   ({}x{})",
            image.width(),
            image.height()
        );
        ious.push(iou);
        medians.push(median);
    }
    let mean = ious.iter().sum::<f64>() / ious.len() as f64;
    let min = ious.iter().copied().fold(1.0, f64::min);
    let ms = medians.iter().sum::<f64>() / medians.len() as f64;
    println!(
        "mean IoU {mean:.4}, min IoU {min:.4}, mean of medians {ms:.1} ms/image ({})",
        matte.name()
    );
}
