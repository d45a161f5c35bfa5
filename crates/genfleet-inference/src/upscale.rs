//! Super-resolution with Real-ESRGAN: the image is cut into equal tiles
//! (`tile_size`, `tile_overlap`), the tiles go through the model's batcher
//! (a window of them in flight, so memory stays bounded whatever the image
//! size), and the outputs are blended band by band with feathered seams.
//! x4plus at factor 2 runs x4 and downsamples with Lanczos3.

use futures_util::stream::{FuturesOrdered, StreamExt};
use image::RgbImage;
use tokio::time::Instant;

use crate::engine::{Engine, Tensor};
use crate::registry::{
    ModelSpec, REALESRGAN_X4PLUS, REALESR_ANIMEVIDEOV3_X2, REALESR_ANIMEVIDEOV3_X4,
};
use crate::tiling::{resize_rgb, tile_planar_unit, BandBlender, TilePlan};
use crate::{InferenceError, UpscaleModel};

/// The most output pixels an upscale may produce (an 8-bit RGB result of
/// 100 MP is 300 MB).
pub const MAX_OUTPUT_PIXELS: u64 = 100_000_000;

pub(crate) async fn upscale(
    engine: &Engine,
    image: &RgbImage,
    model: UpscaleModel,
    factor: u32,
    deadline: Instant,
) -> Result<RgbImage, InferenceError> {
    if factor != 2 && factor != 4 {
        return Err(InferenceError::invalid(format!(
            "upscale factor is {factor}; expected 2 or 4"
        )));
    }
    let (width, height) = image.dimensions();
    if width == 0 || height == 0 {
        return Err(InferenceError::invalid(format!(
            "image is {width}x{height} pixels; an upscale needs both sides above zero"
        )));
    }
    let output_pixels = u64::from(width) * u64::from(height) * u64::from(factor * factor);
    if output_pixels > MAX_OUTPUT_PIXELS {
        return Err(InferenceError::invalid(format!(
            "upscaling {width}x{height} by {factor} gives {output_pixels} pixels, above the {} megapixel limit",
            MAX_OUTPUT_PIXELS / 1_000_000
        )));
    }
    let spec: &'static ModelSpec = match (model, factor) {
        (UpscaleModel::RealEsrganFast, 2) => &REALESR_ANIMEVIDEOV3_X2,
        (UpscaleModel::RealEsrganFast, _) => &REALESR_ANIMEVIDEOV3_X4,
        (UpscaleModel::RealEsrgan, _) => &REALESRGAN_X4PLUS,
    };
    let upscaled = run_tiled(engine, spec, image, deadline).await?;
    if spec.scale == factor {
        return Ok(upscaled);
    }
    // Lanczos over up to 100 MP is CPU work: keep it off the async threads.
    tokio::task::spawn_blocking(move || resize_rgb(&upscaled, width * factor, height * factor))
        .await
        .map_err(|_| InferenceError::failed("downscaling the x4 result panicked"))
}

/// Tiles `image`, runs every tile through `spec`'s batcher and blends.
async fn run_tiled(
    engine: &Engine,
    spec: &'static ModelSpec,
    image: &RgbImage,
    deadline: Instant,
) -> Result<RgbImage, InferenceError> {
    let model = engine.model(spec).await?;
    let config = engine.config();
    let (width, height) = image.dimensions();
    let plan = TilePlan::new(width, height, config.tile_size, config.tile_overlap);
    let scale = spec.scale;
    let columns = plan.xs.len();
    let tiles: Vec<_> = plan.tiles().collect();
    let mut blender = BandBlender::new(plan.clone(), width, height, scale);
    // Enough tiles in flight to fill two batches; more would only hold
    // outputs in memory while earlier tiles are still running.
    let window = config.max_batch.max(1) * 2;
    let mut in_flight = FuturesOrdered::new();
    let mut next = 0;
    let mut done = 0;
    while done < tiles.len() {
        while next < tiles.len() && in_flight.len() < window {
            let tile = tiles[next];
            let mut data = Vec::with_capacity((tile.width * tile.height * 3) as usize);
            tile_planar_unit(image, tile, &mut data);
            let input = Tensor {
                shape: [3, tile.height as usize, tile.width as usize],
                data,
            };
            let batcher = model.batcher.clone();
            in_flight.push_back(async move { batcher.submit(input, deadline).await });
            next += 1;
        }
        let Some(output) = in_flight.next().await else {
            break;
        };
        let output = output?;
        let expected = [
            3,
            (plan.tile_height * scale) as usize,
            (plan.tile_width * scale) as usize,
        ];
        if output.shape != expected {
            return Err(InferenceError::failed(format!(
                "{} returned a {:?} tile, expected {expected:?}",
                spec.name, output.shape
            )));
        }
        let (row, column) = (done / columns, done % columns);
        blender.add(column, row, &output.data);
        done += 1;
        if column + 1 == columns {
            let until = blender.row_start(row + 1);
            blender.finish_rows(until);
        }
    }
    Ok(blender.into_image())
}

// The engine's public entry for upscales lives here, beside the work, so
// the engine module does not import the modules that import it.
impl Engine {
    /// Upscales by `factor` (2 or 4) with `model`, tiled.
    ///
    /// # Errors
    /// `Invalid` for a factor other than 2 or 4, a zero side or an output
    /// above the pixel limit; `Unavailable`, `Overloaded`,
    /// `DeadlineExceeded`, `Failed`.
    pub async fn upscale(
        &self,
        image: &image::RgbImage,
        model: UpscaleModel,
        factor: u32,
        deadline: Instant,
    ) -> Result<image::RgbImage, InferenceError> {
        upscale(self, image, model, factor, deadline).await
    }
}
