//! Tiling: a tiled local operation equals the whole-image operation, and a
//! feathered blend of tiles that disagree shows no step at the seams.

use genfleet_inference::tiling::{axis_origins, axis_weights, map_tiled, TilePlan};
use image::{Rgb, RgbImage};

fn pattern(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([(x * 7 + y * 3) as u8, (x ^ y) as u8, (x * y % 251) as u8])
    })
}

fn nearest(image: &RgbImage, scale: u32) -> RgbImage {
    RgbImage::from_fn(image.width() * scale, image.height() * scale, |x, y| {
        *image.get_pixel(x / scale, y / scale)
    })
}

#[test]
fn origins_cover_the_axis_with_equal_tiles() {
    for (len, tile, overlap) in [
        (1, 192, 16),
        (192, 192, 16),
        (193, 192, 16),
        (1000, 192, 16),
        (369, 192, 16),
        (50, 8, 7),
    ] {
        let origins = axis_origins(len, tile, overlap);
        let t = tile.min(len);
        assert_eq!(origins[0], 0);
        assert_eq!(
            origins.last().copied().unwrap() + t,
            len,
            "{len} {tile} {overlap}"
        );
        for pair in origins.windows(2) {
            assert!(pair[1] > pair[0]);
            assert!(
                pair[0] + t >= pair[1] + overlap.min(t - 1),
                "gap in {origins:?}"
            );
        }
    }
}

#[test]
fn neighbouring_weights_sum_to_one_across_an_overlap() {
    let origins = axis_origins(500, 100, 20);
    let weights = axis_weights(&origins, 100, 2);
    let mut sum = vec![0.0f32; 1000];
    for (k, w) in weights.iter().enumerate() {
        for (i, v) in w.iter().enumerate() {
            sum[(origins[k] * 2) as usize + i] += v;
        }
    }
    // Only pairs overlap here (the last tile moved back overlaps one more
    // than the step, still a pair), so the sum is one everywhere.
    for (i, s) in sum.iter().enumerate() {
        assert!((s - 1.0).abs() < 1e-5, "weight sum {s} at {i}");
    }
}

#[test]
fn tiled_identity_and_nearest_upscale_equal_the_whole_image_op() {
    for (w, h, tile, overlap) in [
        (97, 61, 32, 8),
        (200, 150, 64, 16),
        (31, 300, 40, 6),
        (20, 20, 64, 16),
    ] {
        let image = pattern(w, h);
        let identity = map_tiled(&image, 1, tile, overlap, |t| Ok::<_, ()>(t.clone())).unwrap();
        assert_eq!(identity, image, "identity {w}x{h} tile {tile}");
        for scale in [2, 4] {
            let tiled = map_tiled(&image, scale, tile, overlap, |t| {
                Ok::<_, ()>(nearest(t, scale))
            })
            .unwrap();
            assert_eq!(
                tiled,
                nearest(&image, scale),
                "x{scale} {w}x{h} tile {tile}"
            );
        }
    }
}

#[test]
fn a_feathered_blend_of_disagreeing_tiles_has_no_step_at_seams() {
    // A smooth horizontal gradient; each tile adds its own brightness
    // offset (as a model's edge effects would). With feathering the
    // result changes by at most a small amount between neighbouring
    // pixels; a hard seam would jump by the offset difference (40).
    let (w, h) = (400u32, 64u32);
    let image = RgbImage::from_fn(w, h, |x, _| Rgb([(x * 200 / w) as u8 + 20; 3]));
    let mut call = 0u8;
    let tiled = map_tiled(&image, 1, 100, 32, |t| {
        call = call.wrapping_add(1);
        let offset: i16 = if call.is_multiple_of(2) { 20 } else { -20 };
        let mut out = t.clone();
        for p in out.pixels_mut() {
            for c in &mut p.0 {
                *c = (i16::from(*c) + offset).clamp(0, 255) as u8;
            }
        }
        Ok::<_, ()>(out)
    })
    .unwrap();
    let row: Vec<i16> = (0..w)
        .map(|x| i16::from(tiled.get_pixel(x, 10).0[0]))
        .collect();
    let max_step = row.windows(2).map(|p| (p[1] - p[0]).abs()).max().unwrap();
    // Ramp of 32 px over a 40 level change: ~1.25 per pixel plus the
    // gradient's own 0.5 per pixel.
    assert!(
        max_step <= 3,
        "largest step between neighbours is {max_step}"
    );
    assert_eq!(TilePlan::new(w, h, 100, 32).len(), 6);
}
