//! Full-resolution refinement of a coarse foreground mask (a saliency model's
//! 320x320 output, upsampled) guided by the image: a fast guided filter.
//!
//! The guided filter (He, Sun and Tang, "Guided Image Filtering", 2010) fits,
//! in every window, the mask as a linear function of the image's luma,
//! `q = a * I + b`, then averages the coefficients. Where the window holds
//! one flat region the mask is kept; where it holds an edge of the image the
//! mask's blurry ramp snaps to that edge. The "fast" variant (He and Sun,
//! 2015) fits the coefficients on a reduced copy and applies them to the
//! full-resolution luma, so the edge lands at full resolution while the box
//! filters run on a quarter of the pixels.
//!
//! Box filters are running sums (O(1) per pixel whatever the radius) in
//! `f64`, because the variance `E[I^2] - E[I]^2` cancels badly in `f32`.
//! Working memory: nine `f32` planes of the reduced copy (at most
//! `WORKING_LONG_SIDE` on its long side, ~23 MB at 800x800) plus the output;
//! nothing of full size but the output is held.
//!
//! It does not invent structure the coarse mask lacks (the inside of a ring
//! the model filled stays filled): that is what the classical matte and the
//! `auto` choice (`confidence.rs`) are for.

use image::{GrayImage, RgbImage};

use crate::error::ImagingError;

/// Longest side of the reduced copy the coefficients are fitted on.
const WORKING_LONG_SIDE: u32 = 800;
/// Window radius in full-resolution pixels per 1600 px of the long side
/// (so 16 px on a 1600 px image, 8 px in the reduced copy); large enough to
/// span the blurry ramp of a 320 px mask upsampled 5x, small enough to keep
/// thin parts. Tuned on the composites: 8 scores lower, 32 no better.
const RADIUS_PER_1600: f32 = 16.0;
/// Regularisation on luma in [0, 1]: below the noise of a flat backdrop
/// (variance ~1e-4 for sigma 2.2 JPEG noise) the filter would follow the
/// noise, far above it the filter stops following edges. 1e-3 to 1e-4
/// scored the same on the composites.
const EPS: f64 = 1e-3;

/// Refines `coarse` (a mask the size of `image`, 255 = foreground, soft
/// values allowed) at full resolution, guided by the edges of `image`.
/// Returns a soft alpha mask of the same size.
///
/// # Errors
///
/// [`ImagingError::Invalid`] when the image is empty or the mask is not the
/// size of the image.
pub fn refine_mask(image: &RgbImage, coarse: &GrayImage) -> Result<GrayImage, ImagingError> {
    let (width, height) = image.dimensions();
    if width == 0 || height == 0 {
        return Err(ImagingError::Invalid(format!(
            "image is {width}x{height} pixels, expected at least 1x1"
        )));
    }
    if coarse.dimensions() != (width, height) {
        return Err(ImagingError::Invalid(format!(
            "coarse mask is {}x{}, expected {width}x{height} like the image",
            coarse.width(),
            coarse.height()
        )));
    }
    // Integer reduction factor: every working pixel is the mean of a k x k
    // cell, so reducing needs no resampler and the cells line up exactly
    // with the full-resolution pixels the coefficients are applied to.
    let k = width.max(height).div_ceil(WORKING_LONG_SIDE).max(1);
    let grid = Grid::new(width, height, k);
    let (guide, mask) = reduce(image, coarse, &grid);
    let radius_full = RADIUS_PER_1600 * width.max(height) as f32 / 1600.0;
    let r = ((radius_full / k as f32).round() as usize).max(1);
    let (mean_a, mean_b) = coefficients(&guide, &mask, grid.w, grid.h, r);
    apply(image, &grid, &mean_a, &mean_b)
}

/// The reduced grid: `w` x `h` cells of `k` x `k` full pixels (the last row
/// and column of cells may be partial).
struct Grid {
    w: usize,
    h: usize,
    k: u32,
}

impl Grid {
    fn new(width: u32, height: u32, k: u32) -> Self {
        Grid {
            w: width.div_ceil(k) as usize,
            h: height.div_ceil(k) as usize,
            k,
        }
    }
}

/// Luma (Rec. 601 weights, in [0, 1]) of an RGB pixel.
#[inline]
fn luma(p: [u8; 3]) -> f32 {
    (0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])) / 255.0
}

/// Cell means of the luma and of the mask (in [0, 1]).
fn reduce(image: &RgbImage, coarse: &GrayImage, grid: &Grid) -> (Vec<f32>, Vec<f32>) {
    let mut guide = vec![0f32; grid.w * grid.h];
    let mut mask = vec![0f32; grid.w * grid.h];
    let mut count = vec![0u32; grid.w * grid.h];
    let (width, k) = (image.width() as usize, grid.k as usize);
    for (y, (row, mrow)) in image
        .as_raw()
        .chunks_exact(width * 3)
        .zip(coarse.as_raw().chunks_exact(width))
        .enumerate()
    {
        let base = (y / k) * grid.w;
        for (x, (px, &m)) in row.chunks_exact(3).zip(mrow).enumerate() {
            let i = base + x / k;
            guide[i] += luma([px[0], px[1], px[2]]);
            mask[i] += f32::from(m) / 255.0;
            count[i] += 1;
        }
    }
    for ((g, m), &n) in guide.iter_mut().zip(mask.iter_mut()).zip(&count) {
        let n = n.max(1) as f32;
        *g /= n;
        *m /= n;
    }
    (guide, mask)
}

/// The guided filter's averaged coefficients `mean(a)` and `mean(b)` on the
/// reduced grid.
fn coefficients(guide: &[f32], mask: &[f32], w: usize, h: usize, r: usize) -> (Vec<f32>, Vec<f32>) {
    let mut scratch = BoxScratch::new(w, h);
    let sq: Vec<f32> = guide.iter().map(|&i| i * i).collect();
    let prod: Vec<f32> = guide.iter().zip(mask).map(|(&i, &p)| i * p).collect();
    let mean_i = scratch.mean(guide, r);
    let mean_p = scratch.mean(mask, r);
    let corr_ii = scratch.mean(&sq, r);
    let corr_ip = scratch.mean(&prod, r);
    drop((sq, prod));
    let mut a = vec![0f32; w * h];
    let mut b = vec![0f32; w * h];
    for i in 0..w * h {
        let (mi, mp) = (f64::from(mean_i[i]), f64::from(mean_p[i]));
        let var = (f64::from(corr_ii[i]) - mi * mi).max(0.0);
        let cov = f64::from(corr_ip[i]) - mi * mp;
        let ai = cov / (var + EPS);
        a[i] = ai as f32;
        b[i] = (mp - ai * mi) as f32;
    }
    (scratch.mean(&a, r), scratch.mean(&b, r))
}

/// Reusable buffers for the separable box mean.
struct BoxScratch {
    w: usize,
    h: usize,
    row: Vec<f64>,
    col: Vec<f64>,
    tmp: Vec<f32>,
}

impl BoxScratch {
    fn new(w: usize, h: usize) -> Self {
        BoxScratch {
            w,
            h,
            row: vec![0.0; w + 1],
            col: vec![0.0; w],
            tmp: vec![0.0; w * h],
        }
    }

    /// Mean over the (2r+1)^2 window clipped to the image, so borders are
    /// averaged over the pixels that exist rather than padded with zeros.
    fn mean(&mut self, src: &[f32], r: usize) -> Vec<f32> {
        let (w, h) = (self.w, self.h);
        // Horizontal pass through a per-row prefix sum.
        for (s, t) in src.chunks_exact(w).zip(self.tmp.chunks_exact_mut(w)) {
            self.row[0] = 0.0;
            for (x, &v) in s.iter().enumerate() {
                self.row[x + 1] = self.row[x] + f64::from(v);
            }
            for (x, out) in t.iter_mut().enumerate() {
                let (lo, hi) = (x.saturating_sub(r), (x + r + 1).min(w));
                *out = ((self.row[hi] - self.row[lo]) / (hi - lo) as f64) as f32;
            }
        }
        // Vertical pass: a running sum per column, one row in, one row out.
        let mut out = vec![0f32; w * h];
        self.col.iter_mut().for_each(|c| *c = 0.0);
        for y in 0..=r.min(h - 1) {
            for (c, &v) in self.col.iter_mut().zip(&self.tmp[y * w..(y + 1) * w]) {
                *c += f64::from(v);
            }
        }
        for y in 0..h {
            let n = ((y + r).min(h - 1) - y.saturating_sub(r) + 1) as f64;
            for (o, &c) in out[y * w..(y + 1) * w].iter_mut().zip(&self.col) {
                *o = (c / n) as f32;
            }
            if y + r + 1 < h {
                let add = &self.tmp[(y + r + 1) * w..(y + r + 2) * w];
                self.col
                    .iter_mut()
                    .zip(add)
                    .for_each(|(c, &v)| *c += f64::from(v));
            }
            if y >= r {
                let sub = &self.tmp[(y - r) * w..(y - r + 1) * w];
                self.col
                    .iter_mut()
                    .zip(sub)
                    .for_each(|(c, &v)| *c -= f64::from(v));
            }
        }
        out
    }
}

/// Bilinear interpolation taps from full-resolution positions to cell
/// centres along one axis: (lower cell, upper cell, weight of the upper).
fn taps(full: u32, cells: usize, k: u32) -> Vec<(usize, usize, f32)> {
    (0..full)
        .map(|x| {
            // Cell c's centre is at full coordinate c*k + (k-1)/2.
            let pos = ((x as f32) - (k as f32 - 1.0) / 2.0) / k as f32;
            let pos = pos.clamp(0.0, (cells - 1) as f32);
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(cells - 1);
            (lo, hi, pos - lo as f32)
        })
        .collect()
}

/// `q = mean_a * I + mean_b` at full resolution, with the coefficients
/// upsampled bilinearly row by row (no full-size coefficient planes).
fn apply(
    image: &RgbImage,
    grid: &Grid,
    mean_a: &[f32],
    mean_b: &[f32],
) -> Result<GrayImage, ImagingError> {
    let (width, height) = image.dimensions();
    let xt = taps(width, grid.w, grid.k);
    let yt = taps(height, grid.h, grid.k);
    let mut out = vec![0u8; width as usize * height as usize];
    let mut row_a = vec![0f32; grid.w];
    let mut row_b = vec![0f32; grid.w];
    for ((px_row, out_row), &(y0, y1, fy)) in image
        .as_raw()
        .chunks_exact(width as usize * 3)
        .zip(out.chunks_exact_mut(width as usize))
        .zip(&yt)
    {
        // Vertical interpolation once per row of cells, then horizontal per
        // pixel.
        for c in 0..grid.w {
            let (i0, i1) = (y0 * grid.w + c, y1 * grid.w + c);
            row_a[c] = mean_a[i0] + fy * (mean_a[i1] - mean_a[i0]);
            row_b[c] = mean_b[i0] + fy * (mean_b[i1] - mean_b[i0]);
        }
        for ((px, o), &(x0, x1, fx)) in px_row.chunks_exact(3).zip(out_row.iter_mut()).zip(&xt) {
            let a = row_a[x0] + fx * (row_a[x1] - row_a[x0]);
            let b = row_b[x0] + fx * (row_b[x1] - row_b[x0]);
            let q = a * luma([px[0], px[1], px[2]]) + b;
            *o = (q.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    GrayImage::from_raw(width, height, out)
        .ok_or_else(|| ImagingError::Internal("refined mask buffer has the wrong length".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matte::alpha_iou;
    use crate::resize::resize_exact;
    use crate::test_paths::{read, COMPOSITES};
    use image::{DynamicImage, Luma, Rgb};

    /// What a `side` px model sees of `truth`: reduced to `side` x `side`
    /// and stretched back, the blurry ramp `refine_mask` must undo.
    fn model_like(truth: &GrayImage, side: u32) -> GrayImage {
        let (w, h) = truth.dimensions();
        let small =
            resize_exact(&DynamicImage::ImageLuma8(truth.clone()), side, side, false).unwrap();
        resize_exact(&small, w, h, false).unwrap().into_luma8()
    }

    #[test]
    fn snaps_a_blurry_mask_to_the_image_edge() {
        // A disc with a slanted rim on a vertical gradient: the coarse mask's
        // ramp is five pixels wide per model pixel, the image's edge one.
        let (w, h) = (1000u32, 700u32);
        let inside = |x: u32, y: u32| {
            let (dx, dy) = (x as f32 - 480.0, y as f32 - 330.0);
            dx * dx / 1.3 + dy * dy < 230.0 * 230.0
        };
        let image = RgbImage::from_fn(w, h, |x, y| {
            if inside(x, y) {
                Rgb([150, 40, 30])
            } else {
                let v = 200 + (y * 40 / h) as u8;
                Rgb([v, v, v])
            }
        });
        let truth = GrayImage::from_fn(w, h, |x, y| Luma([if inside(x, y) { 255 } else { 0 }]));
        let coarse = model_like(&truth, 320);
        let refined = refine_mask(&image, &coarse).unwrap();
        let (before, after) = (alpha_iou(&coarse, &truth), alpha_iou(&refined, &truth));
        assert!(after > before && after > 0.995, "{before} -> {after}");
        assert_eq!(refined.get_pixel(0, 0).0[0], 0);
        assert_eq!(refined.get_pixel(480, 330).0[0], 255);
    }

    #[test]
    fn improves_a_model_like_mask_of_composites() {
        for name in ["k02_boot_white_shadow", "k06_strawberry_coral"] {
            let image = image::load_from_memory(&read(COMPOSITES, &format!("{name}.jpg")))
                .unwrap()
                .into_rgb8();
            let truth = image::load_from_memory(&read(COMPOSITES, &format!("{name}.mask.png")))
                .unwrap()
                .into_luma8();
            // A truth-derived mask at 320 px is already within 0.2 % of the
            // truth; at 80 px its edge is as blurry as the model's.
            let coarse = model_like(&truth, 80);
            let refined = refine_mask(&image, &coarse).unwrap();
            let (before, after) = (alpha_iou(&coarse, &truth), alpha_iou(&refined, &truth));
            assert!(after > before, "{name}: {before} -> {after}");
        }
    }

    #[test]
    fn tiny_and_odd_sizes_keep_their_size() {
        for (w, h) in [(1, 1), (1, 900), (1601, 3), (801, 802)] {
            let image = RgbImage::from_fn(w, h, |x, _| Rgb([(x % 256) as u8, 9, 9]));
            let coarse = GrayImage::from_fn(w, h, |x, y| Luma([((x + y) % 256) as u8]));
            let out = refine_mask(&image, &coarse).unwrap();
            assert_eq!(out.dimensions(), (w, h));
        }
        // A flat mask over a flat image stays what it was.
        let image = RgbImage::from_pixel(40, 30, Rgb([90, 90, 90]));
        let out = refine_mask(&image, &GrayImage::from_pixel(40, 30, Luma([255]))).unwrap();
        assert!(out.as_raw().iter().all(|&a| a == 255));
    }

    #[test]
    fn rejects_empty_images_and_mismatched_masks() {
        let err = refine_mask(&RgbImage::new(0, 0), &GrayImage::new(0, 0)).unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        let err = refine_mask(&RgbImage::new(8, 4), &GrayImage::new(4, 8)).unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        assert_eq!(
            err.to_string(),
            "coarse mask is 4x8, expected 8x4 like the image"
        );
    }
}
