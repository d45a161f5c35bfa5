//! Tiling and resizing around models, as pure functions: no runtime, no
//! async, no I/O.
//!
//! An image larger than a model's tile is cut into tiles of `tile` pixels
//! that overlap by at least `overlap`; every tile of an image has the same
//! size (the last tile of a row or column is moved back to end at the image
//! edge rather than padded), so all tiles of an image can share a batch.
//! Outputs (scaled by the model's factor) are blended with separable linear
//! ramps across each overlap, normalised by the summed weights, so no seam
//! or grid shows. Blending goes band by band ([`BandBlender`]): only the
//! output rows that a later tile row can still touch are held in floats.
//!
//! Also here: the resize and letterbox helpers for fixed-size inputs.

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{GrayImage, Rgb, RgbImage};

/// One tile in input coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tile {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// Tile origins along one axis of `len` pixels: steps of `tile - overlap`,
/// the last moved back to end exactly at `len`. One origin (0) when the
/// axis fits in one tile.
pub fn axis_origins(len: u32, tile: u32, overlap: u32) -> Vec<u32> {
    let tile = tile.max(1);
    if len <= tile {
        return vec![0];
    }
    // An overlap as large as the tile would never advance.
    let step = tile.saturating_sub(overlap).max(1);
    let mut origins = Vec::new();
    let mut origin = 0u32;
    while origin + tile < len {
        origins.push(origin);
        origin += step;
    }
    origins.push(len - tile);
    origins
}

/// The tiles of an image, as rows (tiles of a row share `y`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TilePlan {
    pub xs: Vec<u32>,
    pub ys: Vec<u32>,
    pub tile_width: u32,
    pub tile_height: u32,
}

impl TilePlan {
    /// Plans tiles of at most `tile` x `tile` over a `width` x `height` image.
    pub fn new(width: u32, height: u32, tile: u32, overlap: u32) -> Self {
        Self {
            xs: axis_origins(width, tile, overlap),
            ys: axis_origins(height, tile, overlap),
            tile_width: width.min(tile.max(1)),
            tile_height: height.min(tile.max(1)),
        }
    }

    /// Every tile, row by row.
    pub fn tiles(&self) -> impl Iterator<Item = Tile> + '_ {
        self.ys.iter().flat_map(move |&y| {
            self.xs.iter().map(move |&x| Tile {
                x,
                y,
                width: self.tile_width,
                height: self.tile_height,
            })
        })
    }

    pub fn len(&self) -> usize {
        self.xs.len() * self.ys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Feathering weights of every tile along one axis, at output resolution
/// (`scale` output pixels per input pixel). Inside a tile the weight is 1;
/// across an overlap with a neighbour it ramps linearly, so the two
/// neighbours' weights sum to exactly 1 there; at the image border there is
/// no ramp.
pub fn axis_weights(origins: &[u32], tile: u32, scale: u32) -> Vec<Vec<f32>> {
    let length = (tile * scale) as usize;
    (0..origins.len())
        .map(|k| {
            let before = k.checked_sub(1).map_or(0, |p| {
                (origins[p] + tile).saturating_sub(origins[k]) * scale
            });
            let after = origins
                .get(k + 1)
                .map_or(0, |&n| (origins[k] + tile).saturating_sub(n) * scale);
            (0..length)
                .map(|i| {
                    let mut w = 1.0f32;
                    if before > 0 {
                        w = w.min((i as f32 + 0.5) / before as f32);
                    }
                    if after > 0 {
                        w = w.min((length as f32 - i as f32 - 0.5) / after as f32);
                    }
                    w
                })
                .collect()
        })
        .collect()
}

/// Blends tile outputs (planar RGB floats in 0..=1) into an RGB image one
/// band of output rows at a time. Tiles must be added row by row; after the
/// last tile of a row, [`BandBlender::finish_rows`] writes every output row
/// that no later tile touches and frees it.
pub struct BandBlender {
    plan: TilePlan,
    scale: u32,
    x_weights: Vec<Vec<f32>>,
    y_weights: Vec<Vec<f32>>,
    out: RgbImage,
    /// First output row held in `values`/`weights`.
    top: u32,
    /// Interleaved RGB sums and weight sums for rows `top..`.
    values: Vec<f32>,
    weights: Vec<f32>,
}

impl BandBlender {
    /// A blender for `plan` over a `width` x `height` input, output scaled
    /// by `scale`.
    pub fn new(plan: TilePlan, width: u32, height: u32, scale: u32) -> Self {
        let x_weights = axis_weights(&plan.xs, plan.tile_width, scale);
        let y_weights = axis_weights(&plan.ys, plan.tile_height, scale);
        Self {
            plan,
            scale,
            x_weights,
            y_weights,
            out: RgbImage::new(width * scale, height * scale),
            top: 0,
            values: Vec::new(),
            weights: Vec::new(),
        }
    }

    /// Adds the output of tile (`column`, `row`) of the plan: planar
    /// `[3, tile_height*scale, tile_width*scale]` floats.
    ///
    /// # Panics
    /// Never on well-formed input; a short `planar` slice is ignored past
    /// its end rather than read out of bounds.
    pub fn add(&mut self, column: usize, row: usize, planar: &[f32]) {
        let (Some(&x0), Some(&y0)) = (self.plan.xs.get(column), self.plan.ys.get(row)) else {
            return;
        };
        let (tw, th) = (
            (self.plan.tile_width * self.scale) as usize,
            (self.plan.tile_height * self.scale) as usize,
        );
        let width = self.out.width() as usize;
        let (ox, oy) = ((x0 * self.scale) as usize, (y0 * self.scale) as usize);
        let bottom = oy + th;
        let held = (bottom.saturating_sub(self.top as usize)) * width;
        if self.weights.len() < held {
            self.weights.resize(held, 0.0);
            self.values.resize(held * 3, 0.0);
        }
        let plane = tw * th;
        if planar.len() < plane * 3 {
            return;
        }
        let (wx, wy) = (&self.x_weights[column], &self.y_weights[row]);
        let wx = &wx[..tw.min(wx.len())];
        let (red, rest) = planar.split_at(plane);
        let (green, blue) = rest.split_at(plane);
        // Row slices zipped together: no index arithmetic or bounds check
        // per pixel, so the loop vectorises (a 1024x1024 tile output is 3 M
        // values; per-pixel indexing made this the engine's bottleneck on a
        // GPU).
        for (ty, &weight_y) in wy.iter().enumerate().take(th) {
            let Some(local_row) = (oy + ty).checked_sub(self.top as usize) else {
                continue;
            };
            let base = local_row * width + ox;
            let Some(weights) = self.weights.get_mut(base..base + wx.len()) else {
                continue;
            };
            let Some(values) = self.values.get_mut(base * 3..(base + wx.len()) * 3) else {
                continue;
            };
            let source = ty * tw..ty * tw + wx.len();
            let (r, g, b) = (&red[source.clone()], &green[source.clone()], &blue[source]);
            for ((((weight, value), &weight_x), (&r, &g)), &b) in weights
                .iter_mut()
                .zip(values.chunks_exact_mut(3))
                .zip(wx)
                .zip(r.iter().zip(g))
                .zip(b)
            {
                let w = weight_x * weight_y;
                *weight += w;
                value[0] += w * r;
                value[1] += w * g;
                value[2] += w * b;
            }
        }
    }

    /// Writes out every held row above output row `until` (exclusive) and
    /// frees it. Call with the next tile row's first output row, or the
    /// image height after the last.
    pub fn finish_rows(&mut self, until: u32) {
        let until = until.min(self.out.height());
        if until <= self.top {
            return;
        }
        let width = self.out.width() as usize;
        let rows = (until - self.top) as usize;
        let count = (rows * width).min(self.weights.len());
        let raw: &mut [u8] = &mut self.out;
        let start = self.top as usize * width * 3;
        let pixels = raw[start..].chunks_exact_mut(3).take(count);
        for ((pixel, value), &weight) in pixels.zip(self.values.chunks_exact(3)).zip(&self.weights)
        {
            let inverse = 1.0 / weight.max(f32::MIN_POSITIVE);
            pixel[0] = to_u8(value[0] * inverse);
            pixel[1] = to_u8(value[1] * inverse);
            pixel[2] = to_u8(value[2] * inverse);
        }
        self.weights.drain(..count);
        self.values.drain(..count * 3);
        self.top = until;
    }

    /// The output row where tile row `row` begins (the image height past
    /// the last row).
    pub fn row_start(&self, row: usize) -> u32 {
        self.plan
            .ys
            .get(row)
            .map_or(self.out.height(), |&y| y * self.scale)
    }

    /// The blended image (rows not yet finished are finished now).
    pub fn into_image(mut self) -> RgbImage {
        self.finish_rows(self.out.height());
        self.out
    }
}

/// A float in 0..=1 to a byte, rounded and clamped.
pub fn to_u8(value: f32) -> u8 {
    (value * 255.0 + 0.5).clamp(0.0, 255.0) as u8
}

/// Copies `tile` of `image` out as planar RGB floats in 0..=1
/// (`[3, height, width]`), appended to `out`.
pub fn tile_planar_unit(image: &RgbImage, tile: Tile, out: &mut Vec<f32>) {
    let plane = (tile.width * tile.height) as usize;
    let start = out.len();
    out.resize(start + plane * 3, 0.0);
    let (r, rest) = out[start..].split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let mut i = 0;
    for y in tile.y..tile.y + tile.height {
        for x in tile.x..tile.x + tile.width {
            let Rgb([pr, pg, pb]) = *image.get_pixel(x, y);
            r[i] = f32::from(pr) / 255.0;
            g[i] = f32::from(pg) / 255.0;
            b[i] = f32::from(pb) / 255.0;
            i += 1;
        }
    }
}

/// Runs `op` on every tile of `image` and blends the scaled outputs: the
/// reference tiling, used by tests and by callers without batching.
///
/// # Errors
/// The first error `op` returns.
pub fn map_tiled<E>(
    image: &RgbImage,
    scale: u32,
    tile: u32,
    overlap: u32,
    mut op: impl FnMut(&RgbImage) -> Result<RgbImage, E>,
) -> Result<RgbImage, E> {
    let (width, height) = image.dimensions();
    let plan = TilePlan::new(width, height, tile, overlap);
    let mut blender = BandBlender::new(plan.clone(), width, height, scale);
    for (row, &y) in plan.ys.iter().enumerate() {
        for (column, &x) in plan.xs.iter().enumerate() {
            let crop = image::imageops::crop_imm(image, x, y, plan.tile_width, plan.tile_height)
                .to_image();
            let output = op(&crop)?;
            let mut planar = Vec::new();
            let whole = Tile {
                x: 0,
                y: 0,
                width: output.width(),
                height: output.height(),
            };
            tile_planar_unit(&output, whole, &mut planar);
            blender.add(column, row, &planar);
        }
        let next = blender.row_start(row + 1);
        blender.finish_rows(next);
    }
    Ok(blender.into_image())
}

/// Resizes an RGB image with Lanczos3 (downscaling photos, model inputs).
pub fn resize_rgb(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize(image, width, height, PixelType::U8x3, FilterType::Lanczos3)
        .and_then(|raw| RgbImage::from_raw(width, height, raw))
        .unwrap_or_else(|| image::imageops::resize(image, width, height, image::imageops::Lanczos3))
}

/// Resizes a mask bilinearly (upsampling a coarse model mask).
pub fn resize_gray_bilinear(mask: &GrayImage, width: u32, height: u32) -> GrayImage {
    resize(mask, width, height, PixelType::U8, FilterType::Bilinear)
        .and_then(|raw| GrayImage::from_raw(width, height, raw))
        .unwrap_or_else(|| image::imageops::resize(mask, width, height, image::imageops::Triangle))
}

/// fast_image_resize into a fresh buffer; `None` on a size it refuses (the
/// callers fall back to `image`'s slower resize rather than fail).
fn resize<V: fast_image_resize::IntoImageView>(
    source: &V,
    width: u32,
    height: u32,
    pixel: PixelType,
    filter: FilterType,
) -> Option<Vec<u8>> {
    if width == 0 || height == 0 {
        return None;
    }
    let mut destination = Image::new(width, height, pixel);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
    Resizer::new()
        .resize(source, &mut destination, &options)
        .ok()?;
    Some(destination.into_vec())
}

/// Where a letterboxed image sits inside its canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// Fits `image` inside `width` x `height` keeping its aspect ratio, centred
/// on a `fill` background.
pub fn letterbox(
    image: &RgbImage,
    width: u32,
    height: u32,
    fill: Rgb<u8>,
) -> (RgbImage, Placement) {
    let (w, h) = image.dimensions();
    let ratio =
        (f64::from(width) / f64::from(w.max(1))).min(f64::from(height) / f64::from(h.max(1)));
    let fit_w = ((f64::from(w) * ratio).round() as u32).clamp(1, width.max(1));
    let fit_h = ((f64::from(h) * ratio).round() as u32).clamp(1, height.max(1));
    let resized = resize_rgb(image, fit_w, fit_h);
    let mut canvas = RgbImage::from_pixel(width, height, fill);
    let placement = Placement {
        x: (width - fit_w) / 2,
        y: (height - fit_h) / 2,
        width: fit_w,
        height: fit_h,
    };
    image::imageops::replace(
        &mut canvas,
        &resized,
        i64::from(placement.x),
        i64::from(placement.y),
    );
    (canvas, placement)
}

/// Undoes [`letterbox`] on a model's mask: crops the placement and resizes
/// it bilinearly to `width` x `height`.
pub fn unletterbox_mask(
    mask: &GrayImage,
    placement: Placement,
    width: u32,
    height: u32,
) -> GrayImage {
    let crop = image::imageops::crop_imm(
        mask,
        placement.x,
        placement.y,
        placement.width,
        placement.height,
    )
    .to_image();
    resize_gray_bilinear(&crop, width, height)
}
