//! The image steps shared by the worker and `genfleet batch`: validate and
//! sanitise an upload, pre-process it, and render outputs in the requested
//! presets and formats. Pure CPU work over `genfleet-imaging`; callers run it
//! off the async runtime (`spawn_blocking` with a bound).

use genfleet_imaging::{
    ClassicalMatte, DynamicImage, Encoding, ImageInfo, Limits, Matte, Preset, Presets,
};
use genfleet_proto::{v1, ErrorCode};

use crate::failure::JobFailure;
use crate::methods::MatteMethod;

/// A pre-processing step, converted once from the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Fit inside a square of this side; never enlarges.
    Resize(u32),
    /// Enlarge by 2 or 4.
    Upscale(u32),
}

impl Step {
    pub fn from_contract(steps: &[v1::PreprocessStep]) -> Vec<Step> {
        steps
            .iter()
            .filter_map(|s| match &s.step {
                Some(v1::preprocess_step::Step::Resize(r)) => Some(Step::Resize(r.long_side)),
                Some(v1::preprocess_step::Step::Upscale(u)) => Some(Step::Upscale(u.factor)),
                None => None,
            })
            .collect()
    }
}

/// What to render for every generated image.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderSpec {
    pub presets: Vec<Preset>,
    /// The job's formats, applied to every preset. Empty means each
    /// preset's own format, else PNG when the image has transparency (a
    /// cut-out must keep it) and JPEG otherwise.
    pub encodings: Vec<Encoding>,
    /// The job's quality, when it set one: it overrides the presets'.
    pub quality: Option<u8>,
    pub watermark: bool,
    /// `parameters.method` for presets that remove a backdrop; `None`: the
    /// model where this worker has one (`auto`), else the classical matte,
    /// as before models existed.
    pub matte: Option<MatteMethod>,
}

/// The quality used when neither the job nor the preset sets one.
pub const DEFAULT_QUALITY: u8 = 85;

impl RenderSpec {
    /// # Errors
    /// An unknown preset name: `invalid_input`, naming the known ones.
    pub fn from_contract(
        spec: Option<&v1::OutputSpec>,
        known: &Presets,
    ) -> Result<RenderSpec, JobFailure> {
        let default = v1::OutputSpec::default();
        let spec = spec.unwrap_or(&default);
        let quality = (spec.quality != 0)
            .then(|| u8::try_from(spec.quality.min(100)).unwrap_or(DEFAULT_QUALITY));
        let q = quality.unwrap_or(DEFAULT_QUALITY);
        let mut encodings: Vec<Encoding> = Vec::new();
        for format in &spec.formats {
            let encoding = match v1::OutputFormat::try_from(*format) {
                Ok(v1::OutputFormat::Jpeg) => Encoding::jpeg(q),
                Ok(v1::OutputFormat::Png) => Encoding::Png,
                Ok(v1::OutputFormat::Webp) => Encoding::Webp { quality: q },
                Ok(v1::OutputFormat::WebpLossless) => Encoding::WebpLossless,
                Ok(v1::OutputFormat::Avif) => Encoding::Avif {
                    quality: q,
                    speed: genfleet_imaging::AVIF_SPEED,
                },
                _ => continue,
            };
            if !encodings.contains(&encoding) {
                encodings.push(encoding);
            }
        }
        let mut presets: Vec<Preset> = Vec::new();
        for name in &spec.presets {
            let preset = known.get(name).ok_or_else(|| {
                let names: Vec<&str> = known.iter().map(|p| p.name.as_str()).collect();
                JobFailure::new(
                    ErrorCode::InvalidInput,
                    format!(
                        "field `outputs.presets`: unknown preset {name:?}, expected one of {}",
                        names.join(", ")
                    ),
                )
            })?;
            if !presets.contains(preset) {
                presets.push(preset.clone());
            }
        }
        if presets.is_empty() {
            presets.push(known.original());
        }
        Ok(RenderSpec {
            presets,
            encodings,
            quality,
            watermark: spec.watermark,
            matte: None,
        })
    }

    /// One preset in one encoding: what `genfleet batch` renders.
    pub fn single(preset: Preset, encoding: Encoding, watermark: bool) -> RenderSpec {
        RenderSpec {
            presets: vec![preset],
            encodings: vec![encoding],
            quality: None,
            watermark,
            matte: None,
        }
    }

    /// Whether a preset cuts the backdrop out of `image` (one that already
    /// has transparency is kept as it is).
    pub fn mattes(&self, image: &DynamicImage) -> bool {
        !image.color().has_alpha() && self.presets.iter().any(|p| p.remove_background)
    }

    /// The encodings for one preset's output.
    fn encodings_for(&self, preset: &Preset, has_alpha: bool) -> Vec<Encoding> {
        if !self.encodings.is_empty() {
            return self.encodings.clone();
        }
        let encoding = match preset.encoding() {
            Some(encoding) => with_quality(encoding, self.quality),
            None if has_alpha => Encoding::Png,
            None => Encoding::jpeg(self.quality.unwrap_or(DEFAULT_QUALITY)),
        };
        vec![encoding]
    }
}

fn with_quality(encoding: Encoding, quality: Option<u8>) -> Encoding {
    match (encoding, quality) {
        (Encoding::Jpeg(mut options), Some(q)) => {
            options.quality = q;
            Encoding::Jpeg(options)
        }
        (Encoding::Webp { .. }, Some(q)) => Encoding::Webp { quality: q },
        (Encoding::Avif { speed, .. }, Some(q)) => Encoding::Avif { quality: q, speed },
        (encoding, _) => encoding,
    }
}

/// A sanitised, pre-processed input.
pub struct Prepared {
    pub image: DynamicImage,
    pub source: ImageInfo,
}

/// Validates (type from magic bytes, limits from the header), decodes with
/// limits, applies EXIF orientation (dropping all metadata: outputs are
/// re-encoded from pixels), then applies `steps` in order.
///
/// # Errors
/// `unsupported_type`, `too_large` or `invalid_input` for the upload.
pub fn prepare(bytes: &[u8], limits: &Limits, steps: &[Step]) -> Result<Prepared, JobFailure> {
    if !steps.is_empty() {
        let header = genfleet_imaging::inspect(bytes, limits)?;
        check_step_budget(header.width, header.height, steps, limits)?;
    }
    // A leading resize is done while decoding: JPEGs shrink in the DCT
    // domain, and orientation and colour conversion touch the small image.
    let (fit, steps) = match steps.split_first() {
        Some((Step::Resize(long_side), rest)) => (Some(*long_side), rest),
        _ => (None, steps),
    };
    let sanitised = genfleet_imaging::decode_to_fit(bytes, limits, fit)?;
    let mut image = sanitised.image;
    for step in steps {
        image = match *step {
            Step::Resize(long_side) => genfleet_imaging::resize_to_fit(&image, long_side)?,
            Step::Upscale(factor) => genfleet_imaging::upscale(&image, factor, limits)?,
        };
    }
    Ok(Prepared {
        image,
        source: sanitised.source,
    })
}

/// Pixels the steps of one job may produce in all, as a multiple of the
/// input limit `max_pixels`: one x4 upscale of a 12 MP photo (192 MP) fits
/// the default, a chain that upscales, shrinks and upscales again to hold a
/// worker does not.
pub const STEP_PIXEL_BUDGET_FACTOR: u64 = 4;

/// Refuses, from the header's size alone and before any pixel is decoded,
/// steps whose outputs would add up to more than
/// [`STEP_PIXEL_BUDGET_FACTOR`] x `max_pixels`.
///
/// # Errors
/// `too_large`, naming the step that goes over.
pub fn check_step_budget(
    width: u32,
    height: u32,
    steps: &[Step],
    limits: &Limits,
) -> Result<(), JobFailure> {
    let budget = limits.max_pixels.saturating_mul(STEP_PIXEL_BUDGET_FACTOR);
    let (mut w, mut h) = (u64::from(width), u64::from(height));
    let mut produced: u64 = 0;
    for (i, step) in steps.iter().enumerate() {
        match *step {
            Step::Resize(long_side) => {
                let long = w.max(h);
                let target = u64::from(long_side);
                if long > target && long > 0 {
                    w = (w * target).div_ceil(long).max(1);
                    h = (h * target).div_ceil(long).max(1);
                }
            }
            Step::Upscale(factor) => {
                w = w.saturating_mul(u64::from(factor));
                h = h.saturating_mul(u64::from(factor));
            }
        }
        produced = produced.saturating_add(w.saturating_mul(h));
        if produced > budget {
            return Err(JobFailure::new(
                ErrorCode::TooLarge,
                format!(
                    "field `preprocess[{i}]`: the steps would produce {produced} pixels from a \
                     {width}x{height} input, above this worker's budget of {budget}"
                ),
            ));
        }
    }
    Ok(())
}

/// The JPEG quality of inputs re-encoded for a provider: high, because the
/// model sees every artefact, and still a fraction of a PNG's size.
pub const PROVIDER_INPUT_QUALITY: u8 = 92;

/// One input, ready to send to a provider.
pub struct ProviderInput {
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
    /// The upload's own JPEG data (metadata stripped), not a re-encode.
    pub passed_through: bool,
}

/// Validates, sanitises and pre-processes an input for a provider.
///
/// An upright sRGB JPEG that no step changes goes as it came, minus every
/// metadata segment and anything after its end marker
/// ([`genfleet_imaging::jpeg_passthrough`]): no decode-encode round trip,
/// no generation loss. Everything else is decoded and encoded from clean
/// pixels: masks and images with transparency as PNG (alpha kept
/// losslessly), photos as JPEG at [`PROVIDER_INPUT_QUALITY`].
///
/// # Errors
/// As [`prepare`].
pub fn prepare_for_provider(
    bytes: &[u8],
    limits: &Limits,
    steps: &[Step],
    is_mask: bool,
) -> Result<ProviderInput, JobFailure> {
    let fit = match steps {
        [] => Some(None),
        [Step::Resize(long_side)] => Some(Some(*long_side)),
        _ => None,
    };
    if let (Some(fit), false) = (fit, is_mask) {
        if let Some(passed) = genfleet_imaging::jpeg_passthrough(bytes, limits, fit)? {
            return Ok(ProviderInput {
                content_type: Encoding::jpeg(PROVIDER_INPUT_QUALITY).mime(),
                bytes: passed.bytes,
                passed_through: true,
            });
        }
    }
    let prepared = prepare(bytes, limits, steps)?;
    let encoding = if is_mask || prepared.image.color().has_alpha() {
        Encoding::Png
    } else {
        Encoding::jpeg(PROVIDER_INPUT_QUALITY)
    };
    Ok(ProviderInput {
        content_type: encoding.mime(),
        bytes: genfleet_imaging::encode(&prepared.image, encoding)?,
        passed_through: false,
    })
}

/// One encoded output, not yet stored.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// File name inside the job's output folder: `<index>-<preset>.<ext>`.
    pub name: String,
    pub preset: String,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
    pub bytes: Vec<u8>,
}

/// Renders one generated image in every preset x encoding. Presets that
/// remove a backdrop use the classical matte; [`render_with`] takes another
/// (a model's mask, computed before).
///
/// # Errors
/// An encoder failure (`internal`); an output too large for its format
/// (`too_large`).
pub fn render(
    image: &DynamicImage,
    index: usize,
    spec: &RenderSpec,
) -> Result<Vec<Rendered>, JobFailure> {
    render_with(image, index, spec, &ClassicalMatte::default())
}

/// [`render`] with `matte` for the presets that remove a backdrop.
///
/// # Errors
/// As [`render`].
pub fn render_with(
    image: &DynamicImage,
    index: usize,
    spec: &RenderSpec,
    matte: &dyn Matte,
) -> Result<Vec<Rendered>, JobFailure> {
    let mut out = Vec::new();
    for preset in &spec.presets {
        let mut sized = genfleet_imaging::apply_preset(image, preset, matte)?;
        if spec.watermark {
            genfleet_imaging::apply_watermark(&mut sized);
        }
        for encoding in spec.encodings_for(preset, sized.color().has_alpha()) {
            let bytes = genfleet_imaging::encode(&sized, encoding)?;
            out.push(Rendered {
                name: format!("{index}-{}.{}", preset.name, encoding.extension()),
                preset: preset.name.clone(),
                content_type: encoding.mime(),
                width: sized.width(),
                height: sized.height(),
                bytes,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use genfleet_imaging::JpegOptions;

    #[test]
    fn steps_are_budgeted_from_the_header() {
        let limits = Limits {
            max_pixels: 50_000_000,
            ..Limits::default()
        };
        // One x4 upscale of a 12 MP photo fits; two do not.
        assert!(check_step_budget(4000, 3000, &[Step::Upscale(4)], &limits).is_ok());
        let err = check_step_budget(4000, 3000, &[Step::Upscale(4), Step::Upscale(4)], &limits)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert!(err.message.contains("preprocess[1]"), "{}", err.message);
        // Shrinking first makes room.
        assert!(check_step_budget(
            16000,
            3000,
            &[Step::Resize(1024), Step::Upscale(4), Step::Upscale(4)],
            &limits
        )
        .is_ok());
        // Up, down, up, down: each step counts.
        let churn = [
            Step::Upscale(4),
            Step::Resize(16384),
            Step::Upscale(4),
            Step::Resize(16384),
        ];
        assert!(check_step_budget(3000, 3000, &churn, &limits).is_err());
        assert!(check_step_budget(u32::MAX, u32::MAX, &[Step::Upscale(4)], &limits).is_err());
    }

    #[test]
    fn render_spec_defaults_and_errors() {
        let known = Presets::builtin();
        let spec = RenderSpec::from_contract(None, &known).unwrap();
        assert_eq!(spec.encodings, vec![]);
        assert_eq!(spec.quality, None);
        assert_eq!(spec.presets[0].name, "original");
        // The default keeps transparency: PNG for a cut-out, JPEG otherwise.
        let cut_out = render(&DynamicImage::new_rgba8(8, 8), 0, &spec).unwrap();
        assert_eq!(cut_out[0].name, "0-original.png");
        let photo = render(&DynamicImage::new_rgb8(8, 8), 0, &spec).unwrap();
        assert_eq!(photo[0].name, "0-original.jpg");

        let contract = v1::OutputSpec {
            formats: vec![
                v1::OutputFormat::Webp as i32,
                v1::OutputFormat::WebpLossless as i32,
                v1::OutputFormat::Png as i32,
            ],
            presets: vec!["thumbnail-256".into()],
            quality: 70,
            watermark: true,
        };
        let spec = RenderSpec::from_contract(Some(&contract), &known).unwrap();
        assert_eq!(
            spec.encodings,
            vec![
                Encoding::Webp { quality: 70 },
                Encoding::WebpLossless,
                Encoding::Png
            ]
        );
        assert!(spec.watermark);

        let bad = v1::OutputSpec {
            presets: vec!["poster".into()],
            ..Default::default()
        };
        let err = RenderSpec::from_contract(Some(&bad), &known).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput);
        assert!(err.message.contains("thumbnail-256"), "{}", err.message);
        assert!(err.message.contains("amazon-main"), "{}", err.message);
    }

    /// Without job formats each preset renders in its own format; the
    /// job's quality overrides the preset's.
    #[test]
    fn presets_pick_their_format_unless_the_job_names_one() {
        let known = Presets::builtin();
        let contract = v1::OutputSpec {
            presets: vec![
                "original".into(),
                "thumbnail-256".into(),
                "amazon-main".into(),
            ],
            quality: 77,
            ..Default::default()
        };
        let spec = RenderSpec::from_contract(Some(&contract), &known).unwrap();
        let image = DynamicImage::new_rgb8(400, 200);
        let out = render(&image, 0, &spec).unwrap();
        let summary: Vec<(&str, &str, u32, u32)> = out
            .iter()
            .map(|r| (r.name.as_str(), r.content_type, r.width, r.height))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("0-original.jpg", "image/jpeg", 400, 200),
                ("0-thumbnail-256.webp", "image/webp", 256, 128),
                ("0-amazon-main.jpg", "image/jpeg", 2000, 2000),
            ]
        );
        let amazon = known.get("amazon-main").unwrap();
        assert_eq!(
            spec.encodings_for(amazon, false),
            vec![Encoding::Jpeg(JpegOptions {
                quality: 77,
                progressive: true,
                subsampling: genfleet_imaging::ChromaSubsampling::Yuv420,
            })]
        );
    }

    #[test]
    fn render_sizes_and_names() {
        let known = Presets::builtin();
        let image = DynamicImage::new_rgb8(1000, 500);
        let spec = RenderSpec {
            presets: ["original", "thumbnail-256", "thumbnail-512"]
                .iter()
                .filter_map(|n| known.get(n).cloned())
                .collect(),
            encodings: vec![Encoding::jpeg(80), Encoding::Png],
            quality: Some(80),
            watermark: false,
            matte: None,
        };
        let out = render(&image, 2, &spec).unwrap();
        let summary: Vec<(String, u32, u32)> = out
            .iter()
            .map(|r| (r.name.clone(), r.width, r.height))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("2-original.jpg".to_string(), 1000, 500),
                ("2-original.png".to_string(), 1000, 500),
                ("2-thumbnail-256.jpg".to_string(), 256, 128),
                ("2-thumbnail-256.png".to_string(), 256, 128),
                ("2-thumbnail-512.jpg".to_string(), 512, 256),
                ("2-thumbnail-512.png".to_string(), 512, 256),
            ]
        );
    }
}
