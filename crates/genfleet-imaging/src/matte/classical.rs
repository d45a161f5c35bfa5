//! The classical (no model) matte for studio and product photos on plain or
//! gradient backdrops.
//!
//! Pipeline, at a reduced working resolution for speed:
//!
//! 1. Fit a smooth colour field (per-channel quadratic) to a ring of border
//!    pixels, drop outliers (an object touching the border), refit. If the
//!    border is not a smooth field at all there is no backdrop to remove and
//!    the whole image is foreground.
//! 2. Threshold the distance of every pixel from the field, adaptively: a
//!    multiple of the border residuals' 95th percentile.
//! 3. Grow the background from the image border through pixels close to the
//!    field. Darkening without a change of hue (a soft floor shadow) counts as
//!    close, because the ground-truth masks of the corpus treat shadows as
//!    background.
//! 4. Refit the field on all background found so far and grow again, so the
//!    middle of the image is judged against a field fitted there too.
//! 5. Enclosed regions that match the backdrop closely and are large (the
//!    inside of a ring, the gaps of a lantern frame) become background;
//!    small ones (white print on a shirt) stay foreground. Foreground specks
//!    smaller than a minimum area are dropped.
//! 6. Upsample the mask bilinearly and refine the edge band at full
//!    resolution: alpha = distance from the backdrop / distance of the nearby
//!    solid foreground, the linear-blend model of an anti-aliased edge.
//!
//! It does not separate hair or fur, and it cannot tell a grey object from a
//! shadow on a white backdrop (set `shadow_floor` to 1.0 to stop treating
//! darkening as background).

use std::borrow::Cow;

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, GrayImage, RgbImage};

use super::background::{distances, Field, Fitter};
use super::regions::{flood_from_border, for_each_component};
use super::Matte;
use crate::error::ImagingError;
use crate::resize::resize_to_fit;

/// Background removal by a border colour model and region growing; see the
/// module docs for the steps. Construct with `Default` and override fields
/// with struct update syntax.
#[derive(Debug, Clone)]
pub struct ClassicalMatte {
    /// Longer side of the working copy the regions are computed on. 800 keeps
    /// 2 px wide wires of a 1600 px photo and runs in tens of milliseconds.
    pub working_long_side: u32,
    /// Width of the border ring sampled for the backdrop, as a fraction of
    /// the shorter side.
    pub border_fraction: f32,
    /// Darkest shadow accepted as background, as a fraction of the backdrop's
    /// brightness (the corpus' floor shadows reach about 0.6). 1.0 disables
    /// shadow handling.
    pub shadow_floor: f32,
    /// Smallest colour distance threshold (Euclidean, 8-bit RGB units).
    pub min_threshold: f32,
    /// Threshold as a multiple of the 95th percentile of border residuals.
    pub threshold_scale: f32,
    /// Largest threshold; bounds how much a noisy border can swallow.
    pub max_threshold: f32,
    /// If the border residuals' 95th percentile exceeds this, the border is
    /// not a backdrop (a photo filling the frame) and nothing is removed.
    pub max_border_noise: f32,
    /// Enclosed backdrop-coloured regions at least this fraction of the
    /// working image's area become background.
    pub min_hole_fraction: f32,
    /// Foreground specks below this fraction of the working area are dropped.
    pub min_island_fraction: f32,
    /// Refine the edge at full resolution (a soft, sub-pixel edge) instead of
    /// only upsampling the working mask.
    pub refine_edges: bool,
}

impl Default for ClassicalMatte {
    fn default() -> Self {
        ClassicalMatte {
            working_long_side: 800,
            border_fraction: 0.03,
            shadow_floor: 0.5,
            min_threshold: 10.0,
            threshold_scale: 2.5,
            max_threshold: 80.0,
            max_border_noise: 30.0,
            min_hole_fraction: 0.0005,
            min_island_fraction: 0.0002,
            refine_edges: true,
        }
    }
}

/// What the border tells about the backdrop.
struct Backdrop {
    field: Field,
    /// Distance threshold between backdrop and object.
    threshold: f32,
    /// Median border residual: the distance plain noise reaches.
    noise: f32,
    /// 95th percentile of the border residuals.
    noise_p95: f32,
    /// Fraction of the border ring the first fit explains.
    inliers: f32,
}

/// What the classical matte saw while cutting one image: the evidence
/// `classical_confidence` turns into a score for the `auto` choice. Figures
/// are measured on the working copy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassicalEvidence {
    /// The border is a smooth backdrop; when false nothing was removed and
    /// every other figure is zero.
    pub backdrop: bool,
    /// Fraction of the border ring that the backdrop field explains (the
    /// rest is an object touching the border, or texture).
    pub border_inliers: f32,
    /// 95th percentile of the border's residuals from the field, in 8-bit
    /// RGB units: sensor and JPEG noise on a studio backdrop (~5), texture
    /// in a photo (tens).
    pub border_noise: f32,
    /// The backdrop/object distance threshold used.
    pub threshold: f32,
    /// Fraction of the image that is foreground.
    pub foreground: f32,
    /// Fraction of the image whose distance from the backdrop is neither
    /// clearly backdrop nor clearly object (between half and twice the
    /// threshold): thin on a clean cut-out (its outline), wide where the
    /// backdrop model does not explain the scene.
    pub ambiguous: f32,
}

impl ClassicalEvidence {
    /// The border is no backdrop: the matte kept everything.
    const NONE: ClassicalEvidence = ClassicalEvidence {
        backdrop: false,
        border_inliers: 0.0,
        border_noise: 0.0,
        threshold: 0.0,
        foreground: 1.0,
        ambiguous: 0.0,
    };
}

impl Matte for ClassicalMatte {
    fn name(&self) -> &str {
        "classical"
    }

    fn matte(&self, image: &DynamicImage) -> Result<GrayImage, ImagingError> {
        Ok(self.matte_with_evidence(image)?.0)
    }
}

impl ClassicalMatte {
    /// [`Matte::matte`], plus what the matte saw, from which
    /// `classical_confidence` judges whether to trust it.
    ///
    /// # Errors
    ///
    /// As [`Matte::matte`].
    pub fn matte_with_evidence(
        &self,
        image: &DynamicImage,
    ) -> Result<(GrayImage, ClassicalEvidence), ImagingError> {
        let (width, height) = (image.width(), image.height());
        if width == 0 || height == 0 {
            return Err(ImagingError::Invalid(format!(
                "image is {width}x{height} pixels, expected at least 1x1"
            )));
        }
        let full: Cow<'_, DynamicImage> = match image {
            DynamicImage::ImageRgb8(_) => Cow::Borrowed(image),
            other => Cow::Owned(DynamicImage::ImageRgb8(other.to_rgb8())),
        };
        let small = resize_to_fit(&full, self.working_long_side.max(16))?.into_rgb8();
        let full = full
            .as_rgb8()
            .ok_or_else(|| ImagingError::Internal("matte input is not rgb8".into()))?;
        let Some(backdrop) = self.fit_border(&small) else {
            return Ok((
                GrayImage::from_pixel(width, height, image::Luma([255])),
                ClassicalEvidence::NONE,
            ));
        };
        let (mask, field, ambiguous) =
            self.segment(&small, backdrop.field.clone(), backdrop.threshold);
        let evidence = ClassicalEvidence {
            backdrop: true,
            border_inliers: backdrop.inliers,
            border_noise: backdrop.noise_p95,
            threshold: backdrop.threshold,
            foreground: mask.iter().filter(|&&fg| fg).count() as f32 / mask.len().max(1) as f32,
            ambiguous,
        };
        let small_alpha = GrayImage::from_raw(
            small.width(),
            small.height(),
            mask.iter().map(|&fg| if fg { 255 } else { 0 }).collect(),
        )
        .ok_or_else(|| ImagingError::Internal("matte buffer has the wrong length".into()))?;
        let mut alpha = upsample(small_alpha, width, height)?;
        if self.refine_edges {
            let backdrop = Backdrop { field, ..backdrop };
            self.refine(full, &backdrop, &mut alpha);
        }
        Ok((alpha, evidence))
    }

    /// Step 1 and 2: the backdrop field and threshold from the border ring,
    /// or `None` when the border is not a smooth backdrop.
    fn fit_border(&self, small: &RgbImage) -> Option<Backdrop> {
        let (w, h) = small.dimensions();
        let ring = ((self.border_fraction * w.min(h) as f32).round() as u32).clamp(1, w.min(h));
        let in_ring = |x: u32, y: u32| x < ring || y < ring || x + ring >= w || y + ring >= h;
        let samples: Vec<(u32, u32, [u8; 3])> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .filter(|&(x, y)| in_ring(x, y))
            .map(|(x, y)| (x, y, small.get_pixel(x, y).0))
            .collect();
        let fit = |keep: &dyn Fn(usize) -> bool| {
            let mut fitter = Fitter::new(w, h);
            for (i, &(x, y, rgb)) in samples.iter().enumerate() {
                if keep(i) {
                    fitter.add(x, y, rgb);
                }
            }
            fitter.solve()
        };
        let residuals = |field: &Field| -> Vec<f32> {
            let rows = field.rows(w, h);
            samples
                .iter()
                .map(|&(x, y, rgb)| distances(to_f32(rgb), rows.at(x, y), 1.0).0)
                .collect()
        };
        let first = fit(&|_| true)?;
        let first_res = residuals(&first);
        let cut = (3.0 * percentile(&first_res, 0.5)).max(6.0);
        let inliers = first_res.iter().filter(|&&r| r <= cut).count();
        // Most of the border must be backdrop; otherwise the object fills the
        // frame or there is no backdrop at all.
        if inliers * 2 < samples.len() {
            return None;
        }
        let field = fit(&|i| first_res[i] <= cut)?;
        let res: Vec<f32> = residuals(&field)
            .into_iter()
            .zip(&first_res)
            .filter(|(_, &r0)| r0 <= cut)
            .map(|(r, _)| r)
            .collect();
        let p95 = percentile(&res, 0.95);
        if p95 > self.max_border_noise {
            return None;
        }
        let threshold = (self.threshold_scale * p95)
            .max(self.min_threshold)
            .min(self.max_threshold);
        Some(Backdrop {
            field,
            threshold,
            noise: percentile(&res, 0.5),
            noise_p95: p95,
            inliers: inliers as f32 / samples.len() as f32,
        })
    }

    /// Steps 3 to 5 on the working copy: the foreground mask, the field
    /// refitted on the background, and the ambiguous fraction of
    /// [`ClassicalEvidence`].
    fn segment(
        &self,
        small: &RgbImage,
        mut field: Field,
        threshold: f32,
    ) -> (Vec<bool>, Field, f32) {
        let (w, h) = small.dimensions();
        let (wu, hu) = (w as usize, h as usize);
        let mut strict = vec![0f32; wu * hu];
        let mut shadowed = vec![0f32; wu * hu];
        let mut background = Vec::new();
        for pass in 0..2 {
            let rows = field.rows(w, h);
            for (y, row) in small.rows().enumerate() {
                for (x, px) in row.enumerate() {
                    let i = y * wu + x;
                    let b = rows.at(x as u32, y as u32);
                    (strict[i], shadowed[i]) = distances(to_f32(px.0), b, self.shadow_floor);
                }
            }
            let passable: Vec<bool> = shadowed.iter().map(|&d| d < threshold).collect();
            background = flood_from_border(wu, hu, &passable);
            if pass == 0 {
                // Refit on plain (unshadowed) background only; every other
                // pixel on both axes is plenty for six coefficients.
                let mut fitter = Fitter::new(w, h);
                for y in (0..h).step_by(2) {
                    for x in (0..w).step_by(2) {
                        let i = y as usize * wu + x as usize;
                        if background[i] && strict[i] < threshold {
                            fitter.add(x, y, small.get_pixel(x, y).0);
                        }
                    }
                }
                if let Some(refit) = fitter.solve() {
                    field = refit;
                }
            }
        }
        let area = (wu * hu) as f32;
        // Large enclosed regions that match the backdrop closely.
        let min_hole = (self.min_hole_fraction * area).max(4.0) as usize;
        let candidate: Vec<bool> = background
            .iter()
            .zip(&strict)
            .map(|(&bg, &s)| !bg && s < threshold)
            .collect();
        let mut holes = Vec::new();
        for_each_component(wu, hu, &candidate, |pixels| {
            let mean = pixels.iter().map(|&i| strict[i]).sum::<f32>() / pixels.len() as f32;
            if pixels.len() >= min_hole && mean < 0.5 * threshold {
                holes.extend_from_slice(pixels);
            }
        });
        for i in holes {
            background[i] = true;
        }
        // Foreground specks.
        let mut foreground: Vec<bool> = background.iter().map(|&bg| !bg).collect();
        let min_island = (self.min_island_fraction * area) as usize;
        let mut specks = Vec::new();
        for_each_component(wu, hu, &foreground, |pixels| {
            if pixels.len() < min_island {
                specks.extend_from_slice(pixels);
            }
        });
        for i in specks {
            foreground[i] = false;
        }
        let ambiguous = shadowed
            .iter()
            .filter(|&&d| d >= 0.5 * threshold && d < 2.0 * threshold)
            .count() as f32
            / area;
        (foreground, field, ambiguous)
    }

    /// Step 6: sub-pixel alpha in the band where the upsampled mask is soft,
    /// from the linear blend `pixel = a * object + (1 - a) * backdrop`.
    fn refine(&self, full: &RgbImage, backdrop: &Backdrop, alpha: &mut GrayImage) {
        /// How far the band reaches beyond the upsampled soft edge.
        const GROW: i64 = 2;
        /// Radius of the window searched for solid object colour.
        const WINDOW: i64 = 3;
        let (w, h) = full.dimensions();
        let (wi, hi) = (i64::from(w), i64::from(h));
        let raw = alpha.as_raw();
        let mut band = vec![false; raw.len()];
        for (i, &a) in raw.iter().enumerate() {
            if a == 0 || a == 255 {
                continue;
            }
            let (x, y) = ((i as i64) % wi, (i as i64) / wi);
            for ny in (y - GROW).max(0)..=(y + GROW).min(hi - 1) {
                for nx in (x - GROW).max(0)..=(x + GROW).min(wi - 1) {
                    band[(ny * wi + nx) as usize] = true;
                }
            }
        }
        let rows = backdrop.field.rows(w, h);
        let mut cache = vec![f32::NAN; raw.len()];
        let mut dist = |x: i64, y: i64| {
            let i = (y * wi + x) as usize;
            if cache[i].is_nan() {
                let (xu, yu) = (x as u32, y as u32);
                let b = rows.at(xu, yu);
                cache[i] = distances(to_f32(full.get_pixel(xu, yu).0), b, self.shadow_floor).1;
            }
            cache[i]
        };
        let mut out = raw.clone();
        for (i, _) in band.iter().enumerate().filter(|(_, &b)| b) {
            let (x, y) = ((i as i64) % wi, (i as i64) / wi);
            let mut solid = 0f32;
            for ny in (y - WINDOW).max(0)..=(y + WINDOW).min(hi - 1) {
                for nx in (x - WINDOW).max(0)..=(x + WINDOW).min(wi - 1) {
                    solid = solid.max(dist(nx, ny));
                }
            }
            // Only where the object stands out clearly from the backdrop does
            // the ratio mean anything; elsewhere keep the upsampled mask.
            if solid < 2.5 * backdrop.threshold {
                continue;
            }
            let a = (dist(x, y) - backdrop.noise) / (solid - backdrop.noise);
            out[i] = (a.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
        *alpha = GrayImage::from_raw(w, h, out).unwrap_or_else(|| alpha.clone());
    }
}

fn to_f32(rgb: [u8; 3]) -> [f32; 3] {
    [f32::from(rgb[0]), f32::from(rgb[1]), f32::from(rgb[2])]
}

/// The `q` quantile (0..=1) of `values` by nearest rank; 0 when empty.
fn percentile(values: &[f32], q: f32) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    let k = ((sorted.len() - 1) as f32 * q).round() as usize;
    let (_, v, _) = sorted.select_nth_unstable_by(k, f32::total_cmp);
    *v
}

/// Bilinear upsampling of the working mask to the full size: a soft ramp
/// about one working pixel wide, which `refine` sharpens where it can.
fn upsample(small: GrayImage, width: u32, height: u32) -> Result<GrayImage, ImagingError> {
    if small.dimensions() == (width, height) {
        return Ok(small);
    }
    let src = DynamicImage::ImageLuma8(small);
    let mut dst = DynamicImage::new(width, height, image::ColorType::L8);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new().resize(&src, &mut dst, &options)?;
    Ok(dst.into_luma8())
}
