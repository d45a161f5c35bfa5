//! The cut-out by method: `classical` (the classical matte), `model` (the
//! engine's coarse mask, refined at full resolution against the image's
//! edges) and `auto` (the classical matte where it is confident, a plain
//! studio backdrop, the model otherwise). The CPU parts run on the worker's
//! [`CpuPool`]; the model call waits on the engine's micro-batcher, holding
//! no CPU slot.

use std::sync::Arc;

use genfleet_imaging::{ClassicalMatte, DynamicImage, ImagingError, Matte};
use image::{GrayImage, RgbImage};

use super::{LocalModels, ModelError};
use crate::cpu::CpuPool;
use crate::methods::MatteMethod;

/// What a failing model cut-out is called in messages.
const WHAT: &str = "background removal by model";

/// The classical matte of `image` when the imaging crate's `auto` rule
/// trusts it (a smooth backdrop the object stands out from), else `None`:
/// the model's turn.
///
/// # Errors
/// The matte's own (an empty image).
pub fn classical_if_confident(image: &DynamicImage) -> Result<Option<GrayImage>, ImagingError> {
    let (alpha, evidence) = ClassicalMatte::default().matte_with_evidence(image)?;
    Ok(match genfleet_imaging::choose_method(&evidence) {
        genfleet_imaging::MatteMethod::Classical => Some(alpha),
        genfleet_imaging::MatteMethod::Model => None,
    })
}

/// The model's coarse mask (full resolution, blurry edges) refined against
/// `image`'s own edges at full resolution (the imaging crate's guided
/// filter): where the quality of a model cut-out comes from.
///
/// # Errors
/// A mask that is not the image's size.
pub fn refine(image: &RgbImage, coarse: &GrayImage) -> Result<GrayImage, ImagingError> {
    genfleet_imaging::refine_mask(image, coarse)
}

/// A mask computed before rendering (by a model, off the CPU slot), handed
/// to the presets that remove a backdrop in place of a matte of their own.
pub struct FixedMatte(pub GrayImage);

impl Matte for FixedMatte {
    fn name(&self) -> &str {
        "fixed"
    }

    fn matte(&self, image: &DynamicImage) -> Result<GrayImage, ImagingError> {
        if (image.width(), image.height()) != self.0.dimensions() {
            return Err(ImagingError::Internal(format!(
                "the precomputed mask is {}x{}, the image {}x{}",
                self.0.width(),
                self.0.height(),
                image.width(),
                image.height()
            )));
        }
        Ok(self.0.clone())
    }
}

/// Runs image work on the worker's CPU pool.
pub(super) async fn on_cpu<T, F>(cpu: &CpuPool, work: F) -> Result<T, ModelError>
where
    F: FnOnce() -> Result<T, ImagingError> + Send + 'static,
    T: Send + 'static,
{
    cpu.run(work)
        .await
        .map_err(|message| ModelError::Image(ImagingError::Internal(message)))?
        .map_err(ModelError::Image)
}

impl LocalModels {
    /// The alpha mask of `image` by `method`, the size of `image`.
    ///
    /// # Errors
    /// [`ModelError::Unavailable`] when the method needs the model and this
    /// worker has none (for `auto`, only on an image the classical matte is
    /// not confident on); the engine's other errors; an image error.
    pub async fn alpha(
        &self,
        cpu: &CpuPool,
        image: Arc<DynamicImage>,
        method: MatteMethod,
        deadline: tokio::time::Instant,
    ) -> Result<GrayImage, ModelError> {
        match method {
            MatteMethod::Classical => {
                return on_cpu(cpu, move || ClassicalMatte::default().matte(&image)).await;
            }
            MatteMethod::Auto => {
                let judged = image.clone();
                if let Some(alpha) = on_cpu(cpu, move || classical_if_confident(&judged)).await? {
                    return Ok(alpha);
                }
                self.engine(WHAT).map_err(|e| match e {
                    ModelError::Unavailable(m) => ModelError::Unavailable(format!(
                        "the classical matte is not confident on this image, and {m}"
                    )),
                    other => other,
                })?;
            }
            MatteMethod::Model => {}
        }
        // Fails before any pixel work when there is no model.
        let engine = self.engine(WHAT)?;
        let rgb = on_cpu(cpu, move || Ok(image.to_rgb8())).await?;
        let coarse = engine
            .foreground_mask(&rgb, deadline)
            .await
            .map_err(|e| ModelError::from_inference(WHAT, e))?;
        on_cpu(cpu, move || refine(&rgb, &coarse)).await
    }

    /// [`LocalModels::alpha`] for a caller on a plain thread (`genfleet
    /// batch`): the CPU parts on this thread, the model call on `runtime`.
    ///
    /// # Errors
    /// As [`LocalModels::alpha`].
    pub fn alpha_blocking(
        &self,
        runtime: Option<&tokio::runtime::Handle>,
        image: &DynamicImage,
        method: MatteMethod,
        deadline: tokio::time::Instant,
    ) -> Result<GrayImage, ModelError> {
        match method {
            MatteMethod::Classical => return Ok(ClassicalMatte::default().matte(image)?),
            MatteMethod::Auto => {
                if let Some(alpha) = classical_if_confident(image)? {
                    return Ok(alpha);
                }
            }
            MatteMethod::Model => {}
        }
        let engine = self.engine(WHAT)?;
        let rgb = image.to_rgb8();
        let coarse = super::block_on(runtime, engine.foreground_mask(&rgb, deadline))?
            .map_err(|e| ModelError::from_inference(WHAT, e))?;
        Ok(refine(&rgb, &coarse)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_border_is_confident_and_a_busy_one_is_not() {
        let mut plain = RgbImage::from_pixel(64, 48, image::Rgb([245, 245, 245]));
        for y in 12..36 {
            for x in 16..48 {
                plain.put_pixel(x, y, image::Rgb([120, 40, 30]));
            }
        }
        let plain = DynamicImage::ImageRgb8(plain);
        let alpha = classical_if_confident(&plain).unwrap().expect("confident");
        assert_eq!(alpha.dimensions(), (64, 48));
        assert!(alpha.get_pixel(30, 20).0[0] > 200);
        assert!(alpha.get_pixel(2, 2).0[0] < 50);

        let busy = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([
                (x * 37 % 256) as u8,
                (y * 91 % 256) as u8,
                ((x + y) * 53 % 256) as u8,
            ])
        });
        assert!(classical_if_confident(&DynamicImage::ImageRgb8(busy))
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn model_methods_without_an_engine_say_so_and_classical_runs() {
        let models = LocalModels::disabled();
        let cpu = CpuPool::new(1);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let busy = Arc::new(DynamicImage::ImageRgb8(RgbImage::from_fn(
            32,
            32,
            |x, y| image::Rgb([(x * 37 % 256) as u8, (y * 91 % 256) as u8, 7]),
        )));
        let err = models
            .alpha(&cpu, busy.clone(), MatteMethod::Model, deadline)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ModelError::Unavailable(m) if m.contains("needs [inference] enabled")),
            "{err:?}"
        );
        let err = models
            .alpha(&cpu, busy.clone(), MatteMethod::Auto, deadline)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not confident"), "{err}");
        let alpha = models
            .alpha(&cpu, busy, MatteMethod::Classical, deadline)
            .await
            .unwrap();
        assert_eq!(alpha.dimensions(), (32, 32));
    }
}
