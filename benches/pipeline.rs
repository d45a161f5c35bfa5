//! The worker's image pipeline, stage by stage, on the example photos:
//! header rejection of a decompression bomb, sanitising decode, resize, and
//! the whole validate -> orient -> resize -> encode path `genfleet batch` runs.
//!
//! Then stage by stage on one 12 MP corpus photo (when `../shared/corpus`
//! or `GENFLEET_CORPUS` is there): full decode, shrink-on-load decode, the
//! resize to 2048, each encoder at 2048, the 2x upscale and a preset.
//!
//! `cargo bench --bench pipeline`. The side-by-side comparison with libvips
//! is `benches/imaging_vs_vips.rs`.

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

fn corpus_stages(c: &mut Criterion) {
    let corpus = std::env::var_os("GENFLEET_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"));
    let Ok(photo) = std::fs::read(corpus.join("photos/p01_foliage_sky_4000x3000.jpg")) else {
        println!("corpus stages skipped: no {}", corpus.display());
        return;
    };
    let limits = Limits::default();
    let mut group = c.benchmark_group("12 MP stages");
    group.sample_size(10);
    group.bench_function("decode 4000x3000 jpeg", |b| {
        b.iter(|| genfleet_imaging::decode_sanitised(black_box(&photo), &limits))
    });
    group.bench_function("decode_to_fit 1024 (shrink-on-load 1/2 + lanczos3)", |b| {
        b.iter(|| genfleet_imaging::decode_to_fit(black_box(&photo), &limits, Some(1024)))
    });
    let full = match genfleet_imaging::decode_sanitised(&photo, &limits) {
        Ok(s) => s.image,
        Err(e) => panic!("corpus photo must decode: {e}"),
    };
    group.bench_function("resize 4000x3000 -> 2048 lanczos3", |b| {
        b.iter(|| genfleet_imaging::resize_to_fit(black_box(&full), 2048))
    });
    group.bench_function("resize 4000x3000 -> 2048 lanczos3, linear light", |b| {
        b.iter(|| genfleet_imaging::resize_to_fit_with(black_box(&full), 2048, true))
    });
    let small = match genfleet_imaging::resize_to_fit(&full, 2048) {
        Ok(image) => image,
        Err(e) => panic!("resize: {e}"),
    };
    for (label, encoding) in [
        ("encode 2048x1536 jpeg q85", Encoding::jpeg(85)),
        ("encode 2048x1536 webp q80", Encoding::Webp { quality: 80 }),
        ("encode 2048x1536 webp lossless", Encoding::WebpLossless),
        ("encode 2048x1536 png", Encoding::Png),
        (
            "encode 2048x1536 avif q60 speed 8",
            Encoding::Avif {
                quality: 60,
                speed: 8,
            },
        ),
    ] {
        group.bench_function(label, |b| {
            b.iter(|| genfleet_imaging::encode(black_box(&small), encoding))
        });
    }
    group.bench_function("upscale 2048x1536 x2 (banded)", |b| {
        b.iter(|| genfleet_imaging::upscale(black_box(&small), 2, &limits))
    });
    let presets = genfleet_imaging::Presets::builtin();
    if let Some(shopify) = presets.get("shopify-square") {
        let matte = genfleet_imaging::ClassicalMatte::default();
        group.bench_function("preset shopify-square from 2048x1536", |b| {
            b.iter(|| genfleet_imaging::apply_preset(black_box(&small), shopify, &matte))
        });
    }
    group.finish();
}

criterion_group!(benches, stages, corpus_stages);
criterion_main!(benches);
