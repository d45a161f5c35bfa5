//! The free-tier watermark: "GENFLEET" tiled across the image in a tiny
//! built-in 5x7 bitmap font, semi-transparent white with a dark shadow so it
//! shows on both light and dark content.
//!
//! Owns the glyphs, the tiling layout and the blending. It is deterministic
//! (same input, same output) and needs no font files or I/O. It is a
//! deterrent, not tamper-proof: it does not embed an invisible mark.

use image::{DynamicImage, GenericImage, GenericImageView, Rgba};

/// Rows of the 5x7 glyphs, most significant of the low 5 bits = leftmost column.
const fn glyph(c: u8) -> [u8; 7] {
    match c {
        b'G' => [
            0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111,
        ],
        b'E' => [
            0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111,
        ],
        b'N' => [
            0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0b10001,
        ],
        b'F' => [
            0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000,
        ],
        b'L' => [
            0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111,
        ],
        b'T' => [
            0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100,
        ],
        _ => [0; 7],
    }
}

const TEXT: &[u8] = b"GENFLEET";
/// Glyph cell: 5 columns of ink plus 1 of spacing, 7 rows.
const CELL_W: u32 = 6;
const GLYPH_H: u32 = 7;
/// Opacity of the white letters and of their dark shadow. About a quarter
/// keeps the image usable for judging a result while making it unusable
/// commercially.
const INK_ALPHA: f32 = 0.30;
const SHADOW_ALPHA: f32 = 0.25;

/// Draws the free-tier mark over the whole of `image`, in place.
///
/// Letters are about 1/20 of the short side tall (at least 7 px), tiled in
/// rows that shift right by a third of a tile each row, which gives a
/// diagonal pattern that cannot be cropped away. Works on every pixel type;
/// 8-bit RGB and RGBA (what [`crate::decode_sanitised`] produces) take a fast
/// path. Alpha images are composited "source over", so the mark is also
/// visible over transparent areas.
pub fn apply_watermark(image: &mut DynamicImage) {
    let (width, height) = image.dimensions();
    if width == 0 || height == 0 {
        return;
    }
    let scale = (width.min(height) / 20 / GLYPH_H).max(1);
    let text_w = TEXT.len() as u32 * CELL_W * scale;
    let pitch_x = text_w + 4 * CELL_W * scale;
    let pitch_y = GLYPH_H * scale * 3;

    match image {
        DynamicImage::ImageRgb8(buf) => plot_mark(
            width,
            height,
            scale,
            pitch_x,
            pitch_y,
            |x, y, ink, alpha| {
                if let Some(p) = buf.get_pixel_mut_checked(x, y) {
                    for c in p.0.iter_mut() {
                        *c = mix(*c, ink, alpha);
                    }
                }
            },
        ),
        DynamicImage::ImageRgba8(buf) => plot_mark(
            width,
            height,
            scale,
            pitch_x,
            pitch_y,
            |x, y, ink, alpha| {
                if let Some(p) = buf.get_pixel_mut_checked(x, y) {
                    *p = over(*p, ink, alpha);
                }
            },
        ),
        other => plot_mark(
            width,
            height,
            scale,
            pitch_x,
            pitch_y,
            |x, y, ink, alpha| {
                // Bounds are checked by plot_mark; get/put_pixel convert to and
                // from 8-bit RGBA, which is precise enough for marked pixels.
                if x < width && y < height {
                    let p = other.get_pixel(x, y);
                    other.put_pixel(x, y, over(p, ink, alpha));
                }
            },
        ),
    }
}

/// Calls `plot(x, y, ink, alpha)` for every in-bounds pixel of the mark:
/// first all shadow pixels, offset down-right by one glyph pixel, then
/// the letters, so letters sit on top of their own shadow.
fn plot_mark(
    width: u32,
    height: u32,
    scale: u32,
    pitch_x: u32,
    pitch_y: u32,
    mut plot: impl FnMut(u32, u32, u8, f32),
) {
    for (ink, alpha, offset) in [(0u8, SHADOW_ALPHA, scale), (255u8, INK_ALPHA, 0)] {
        let mut row = 0u32;
        let mut top = u64::from(pitch_y / 3);
        while top < u64::from(height) {
            // Each row starts a third of a tile further right, wrapping, and
            // one tile left of the edge so the left margin is covered too.
            let shift = (u64::from(row) * u64::from(pitch_x / 3)) % u64::from(pitch_x);
            let mut left = shift as i64 - i64::from(pitch_x);
            while left < i64::from(width) {
                draw_text(
                    left, top as i64, scale, offset, width, height, ink, alpha, &mut plot,
                );
                left += i64::from(pitch_x);
            }
            row += 1;
            top += u64::from(pitch_y);
        }
    }
}

#[allow(clippy::too_many_arguments)] // a private helper; a struct would only rename them
fn draw_text(
    left: i64,
    top: i64,
    scale: u32,
    offset: u32,
    width: u32,
    height: u32,
    ink: u8,
    alpha: f32,
    plot: &mut impl FnMut(u32, u32, u8, f32),
) {
    let scale = i64::from(scale);
    for (i, &c) in TEXT.iter().enumerate() {
        let glyph_left = left + i as i64 * i64::from(CELL_W) * scale + i64::from(offset);
        for (gy, bits) in glyph(c).iter().enumerate() {
            for gx in 0..5i64 {
                if bits & (0b10000 >> gx) == 0 {
                    continue;
                }
                let x0 = glyph_left + gx * scale;
                let y0 = top + gy as i64 * scale + i64::from(offset);
                for y in y0..y0 + scale {
                    for x in x0..x0 + scale {
                        if let (Ok(x), Ok(y)) = (u32::try_from(x), u32::try_from(y)) {
                            if x < width && y < height {
                                plot(x, y, ink, alpha);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Linear blend of one channel towards `ink`.
fn mix(dst: u8, ink: u8, alpha: f32) -> u8 {
    (f32::from(dst) * (1.0 - alpha) + f32::from(ink) * alpha).round() as u8
}

/// Grey `ink` at `alpha` composited source-over onto `dst`.
fn over(dst: Rgba<u8>, ink: u8, alpha: f32) -> Rgba<u8> {
    let dst_a = f32::from(dst[3]) / 255.0;
    let out_a = alpha + dst_a * (1.0 - alpha);
    if out_a <= 0.0 {
        return dst;
    }
    let channel = |c: u8| {
        ((f32::from(ink) * alpha + f32::from(c) * dst_a * (1.0 - alpha)) / out_a).round() as u8
    };
    Rgba([
        channel(dst[0]),
        channel(dst[1]),
        channel(dst[2]),
        (out_a * 255.0).round() as u8,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ColorType;

    fn changed_fraction(before: &DynamicImage, after: &DynamicImage) -> f64 {
        let (a, b) = (before.to_rgba8(), after.to_rgba8());
        let changed = a.pixels().zip(b.pixels()).filter(|(p, q)| p != q).count();
        changed as f64 / f64::from(a.width() * a.height())
    }

    #[test]
    fn marks_every_pixel_type_visibly_and_deterministically() {
        let cases = [
            (ColorType::Rgb8, 640, 480),
            (ColorType::Rgba8, 480, 640),
            (ColorType::L8, 300, 200),
            (ColorType::Rgb16, 120, 90),
            (ColorType::Rgba32F, 33, 17),
            (ColorType::Rgb8, 4000, 3000),
        ];
        for (color, width, height) in cases {
            // Mid grey shows both the white letters and the dark shadow.
            let mut before = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
                width,
                height,
                Rgba([128, 128, 128, 255]),
            ));
            before = match color {
                ColorType::Rgb8 => DynamicImage::ImageRgb8(before.to_rgb8()),
                ColorType::L8 => DynamicImage::ImageLuma8(before.to_luma8()),
                ColorType::Rgb16 => DynamicImage::ImageRgb16(before.to_rgb16()),
                ColorType::Rgba32F => DynamicImage::ImageRgba32F(before.to_rgba32f()),
                _ => before,
            };
            let mut once = before.clone();
            apply_watermark(&mut once);
            let mut twice = before.clone();
            apply_watermark(&mut twice);
            assert_eq!(once.color(), color);
            assert_eq!(
                once.as_bytes(),
                twice.as_bytes(),
                "{color:?} not deterministic"
            );
            let fraction = changed_fraction(&before, &once);
            assert!(
                (0.03..0.6).contains(&fraction),
                "{color:?} {width}x{height}: {fraction:.3} of pixels changed"
            );
        }
    }

    #[test]
    fn visible_over_transparency() {
        let mut img = DynamicImage::ImageRgba8(image::RgbaImage::new(200, 200));
        apply_watermark(&mut img);
        assert!(img.to_rgba8().pixels().any(|p| p[3] > 0));
    }

    #[test]
    fn tiny_images_do_not_panic() {
        for (w, h) in [(0, 0), (1, 1), (1, 500), (500, 1), (7, 7)] {
            let mut img = DynamicImage::new(w, h, ColorType::Rgb8);
            apply_watermark(&mut img);
        }
    }
}
