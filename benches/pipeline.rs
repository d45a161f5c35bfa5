//! The worker's image pipeline, stage by stage, on the example photos:
//! header rejection of a decompression bomb, sanitising decode, resize, and
//! the whole validate -> orient -> resize -> encode path `genfleet batch` runs.
//!
//! `cargo bench --bench pipeline`. The side-by-side comparison with libvips
//! on 12 MP photos belongs to the imaging performance work.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use genfleet_imaging::{Encoding, Limits};
use genfleet_worker::pipeline::{self, RenderSpec, Step};

fn read(relative: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn stages(c: &mut Criterion) {
    let limits = Limits::default();
    let bomb = read("tests/fixtures/hostile/h02_bomb_60000x60000.png");
    c.bench_function("reject 60000x60000 png from header", |b| {
        b.iter(|| genfleet_imaging::inspect(black_box(&bomb), &limits).is_err())
    });

    let photo = read("examples/photos/dandelions_progressive_2048.jpg");
    c.bench_function("decode_sanitised 2048x1536 progressive jpeg", |b| {
        b.iter(|| genfleet_imaging::decode_sanitised(black_box(&photo), &limits))
    });

    let decoded = match genfleet_imaging::decode_sanitised(&photo, &limits) {
        Ok(s) => s.image,
        Err(e) => panic!("example photo must decode: {e}"),
    };
    c.bench_function("resize 2048x1536 -> 1024 lanczos3", |b| {
        b.iter(|| genfleet_imaging::resize_to_fit(black_box(&decoded), 1024))
    });

    let spec = RenderSpec::single(
        genfleet_imaging::Presets::builtin().original(),
        Encoding::jpeg(85),
        false,
    );
    let mut group = c.benchmark_group("batch pipeline");
    group.sample_size(20);
    group.bench_function("2048 progressive jpeg -> 1024 jpeg q85", |b| {
        b.iter(|| {
            let prepared = pipeline::prepare(black_box(&photo), &limits, &[Step::Resize(1024)]);
            prepared.and_then(|p| pipeline::render(&p.image, 0, &spec))
        })
    });
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
