//! Upscaling by model: the colour goes through Real-ESRGAN (tiled by the
//! engine, so its working memory is bounded like the banded Lanczos
//! upscale's), an alpha channel, which the networks do not carry, through
//! Lanczos. The output size is checked against the worker's limits before
//! the model runs.

use genfleet_imaging::{DynamicImage, ImagingError, Limits};
use genfleet_inference::UpscaleModel;

use super::matte::on_cpu;
use super::{LocalModels, ModelError};
use crate::cpu::CpuPool;
use crate::methods::UpscaleMethod;
use crate::pipeline::STEP_PIXEL_BUDGET_FACTOR;

/// The engine's model for a job's `parameters.model`; `None` for Lanczos.
fn engine_model(method: UpscaleMethod) -> Option<UpscaleModel> {
    match method {
        UpscaleMethod::Lanczos => None,
        UpscaleMethod::RealEsrganFast => Some(UpscaleModel::RealEsrganFast),
        UpscaleMethod::RealEsrgan => Some(UpscaleModel::RealEsrgan),
    }
}

/// Refuses an upscale whose output would exceed what the Lanczos path
/// allows (`max_pixels` x [`STEP_PIXEL_BUDGET_FACTOR`]), before any run.
fn check_size(image: &DynamicImage, factor: u32, limits: &Limits) -> Result<(), ImagingError> {
    if factor != 2 && factor != 4 {
        return Err(ImagingError::Invalid(format!(
            "upscale factor is {factor}, expected 2 or 4"
        )));
    }
    let pixels = u64::from(image.width()) * u64::from(image.height()) * u64::from(factor * factor);
    let budget = limits.max_pixels.saturating_mul(STEP_PIXEL_BUDGET_FACTOR);
    if pixels > budget {
        return Err(ImagingError::TooLarge(format!(
            "upscaling {}x{} by {factor} gives {pixels} pixels, above the output limit of {budget}",
            image.width(),
            image.height()
        )));
    }
    Ok(())
}

/// The colour the networks take, and the alpha channel they do not (if
/// any), which goes through Lanczos instead.
fn split_alpha(image: &DynamicImage) -> (image::RgbImage, Option<image::GrayImage>) {
    let alpha = image.color().has_alpha().then(|| {
        let rgba = image.to_rgba8();
        image::GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            image::Luma([rgba.get_pixel(x, y).0[3]])
        })
    });
    (image.to_rgb8(), alpha)
}

/// Puts an upscaled alpha back on the model's colour output.
fn with_alpha(
    colour: image::RgbImage,
    alpha: Option<image::GrayImage>,
    factor: u32,
    limits: &Limits,
) -> Result<DynamicImage, ImagingError> {
    let colour = DynamicImage::ImageRgb8(colour);
    let Some(alpha) = alpha else {
        return Ok(colour);
    };
    let alpha =
        genfleet_imaging::upscale_with(&DynamicImage::ImageLuma8(alpha), factor, None, limits)?
            .to_luma8();
    genfleet_imaging::apply_matte(&colour, &alpha)
}

impl LocalModels {
    /// What both entry points check before any pixel work: the job's model,
    /// the output size, and that this worker has an engine. Returns the
    /// phrase errors name, the model and the engine.
    fn prepare(
        &self,
        image: &DynamicImage,
        method: UpscaleMethod,
        factor: u32,
        limits: &Limits,
    ) -> Result<(String, UpscaleModel, &genfleet_inference::Engine), ModelError> {
        let what = format!("upscaling by {}", method.label());
        let Some(model) = engine_model(method) else {
            return Err(ModelError::Invalid(format!("{what} runs no model")));
        };
        check_size(image, factor, limits)?;
        let engine = self.engine(&what)?;
        Ok((what, model, engine))
    }

    /// `image` enlarged `factor` times by `method`'s model.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] for Lanczos (the caller's path) or a factor
    /// other than 2 and 4; [`ModelError::Image`] with `too_large` for an
    /// output over the limits; [`ModelError::Unavailable`] without the
    /// model; the engine's other errors.
    pub async fn upscale(
        &self,
        cpu: &CpuPool,
        image: DynamicImage,
        method: UpscaleMethod,
        factor: u32,
        limits: &Limits,
        deadline: tokio::time::Instant,
    ) -> Result<DynamicImage, ModelError> {
        let (what, model, engine) = self.prepare(&image, method, factor, limits)?;
        let (rgb, alpha) = on_cpu(cpu, move || Ok(split_alpha(&image))).await?;
        let colour = engine
            .upscale(&rgb, model, factor, deadline)
            .await
            .map_err(|e| ModelError::from_inference(&what, e))?;
        drop(rgb);
        let limits = limits.clone();
        on_cpu(cpu, move || with_alpha(colour, alpha, factor, &limits)).await
    }

    /// [`LocalModels::upscale`] for a caller on a plain thread (`genfleet
    /// batch`): the image work on this thread, the model on `runtime`.
    ///
    /// # Errors
    /// As [`LocalModels::upscale`].
    pub fn upscale_blocking(
        &self,
        runtime: Option<&tokio::runtime::Handle>,
        image: &DynamicImage,
        method: UpscaleMethod,
        factor: u32,
        limits: &Limits,
        deadline: tokio::time::Instant,
    ) -> Result<DynamicImage, ModelError> {
        let (what, model, engine) = self.prepare(image, method, factor, limits)?;
        let (rgb, alpha) = split_alpha(image);
        let colour = super::block_on(runtime, engine.upscale(&rgb, model, factor, deadline))?
            .map_err(|e| ModelError::from_inference(&what, e))?;
        Ok(with_alpha(colour, alpha, factor, limits)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_over_the_budget_are_refused_before_the_model() {
        let limits = Limits {
            max_pixels: 1_000_000,
            ..Limits::default()
        };
        let small = DynamicImage::new_rgb8(500, 500);
        assert!(check_size(&small, 4, &limits).is_ok());
        let big = DynamicImage::new_rgb8(1001, 1000);
        assert!(matches!(
            check_size(&big, 2, &limits),
            Err(ImagingError::TooLarge(_))
        ));
        assert!(matches!(
            check_size(&small, 3, &limits),
            Err(ImagingError::Invalid(_))
        ));
    }

    #[test]
    fn alpha_comes_back_upscaled_on_the_colour() {
        let colour = image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]));
        let alpha =
            image::GrayImage::from_fn(4, 4, |x, _| image::Luma([if x < 2 { 0 } else { 255 }]));
        let out = with_alpha(colour, Some(alpha), 2, &Limits::default()).unwrap();
        let out = out.to_rgba8();
        assert_eq!(out.dimensions(), (8, 8));
        assert!(out.get_pixel(0, 0).0[3] < 20);
        assert!(out.get_pixel(7, 7).0[3] > 235);
    }

    #[tokio::test]
    async fn without_an_engine_a_model_upscale_says_so() {
        let err = LocalModels::disabled()
            .upscale(
                &CpuPool::new(1),
                DynamicImage::new_rgb8(8, 8),
                UpscaleMethod::RealEsrganFast,
                2,
                &Limits::default(),
                tokio::time::Instant::now() + std::time::Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ModelError::Unavailable(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "upscaling by realesrgan-fast needs [inference] enabled on this worker"
        );
    }
}
