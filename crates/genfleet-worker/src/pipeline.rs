//! The image steps shared by the worker and `genfleet batch`: validate and
//! sanitise an upload, pre-process it, and render outputs in the requested
//! presets and formats. Pure CPU work over `genfleet-imaging`; callers run it
//! off the async runtime (`spawn_blocking` with a bound).

use genfleet_imaging::{DynamicImage, Encoding, ImageInfo, Limits};
use genfleet_proto::{v1, ErrorCode};

use crate::failure::JobFailure;

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

/// A named output size. Presets are data: adding one is adding a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    /// Long side to fit in; `None` keeps the generated size.
    pub long_side: Option<u32>,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "original",
        long_side: None,
    },
    Preset {
        name: "thumbnail-256",
        long_side: Some(256),
    },
    Preset {
        name: "thumbnail-512",
        long_side: Some(512),
    },
];

/// What to render for every generated image.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderSpec {
    pub presets: Vec<Preset>,
    /// Empty means "the default for the image": PNG when it has
    /// transparency (a cut-out must keep it), JPEG otherwise.
    pub encodings: Vec<Encoding>,
    /// Quality of the default JPEG.
    pub quality: u8,
    pub watermark: bool,
}

impl RenderSpec {
    /// # Errors
    /// An unknown preset name: `invalid_input`, naming the known ones.
    pub fn from_contract(spec: Option<&v1::OutputSpec>) -> Result<RenderSpec, JobFailure> {
        let default = v1::OutputSpec::default();
        let spec = spec.unwrap_or(&default);
        let quality = if spec.quality == 0 {
            85
        } else {
            u8::try_from(spec.quality.min(100)).unwrap_or(85)
        };
        let mut encodings: Vec<Encoding> = spec
            .formats
            .iter()
            .filter_map(|f| match v1::OutputFormat::try_from(*f) {
                Ok(v1::OutputFormat::Jpeg) => Some(Encoding::jpeg(quality)),
                Ok(v1::OutputFormat::Png) => Some(Encoding::Png),
                Ok(v1::OutputFormat::Webp) => Some(Encoding::WebpLossless),
                _ => None,
            })
            .collect();
        encodings.dedup();
        let mut presets = Vec::new();
        for name in &spec.presets {
            let preset = PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
                let known: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
                JobFailure::new(
                    ErrorCode::InvalidInput,
                    format!(
                        "field `outputs.presets`: unknown preset {name:?}, expected one of {}",
                        known.join(", ")
                    ),
                )
            })?;
            if !presets.contains(preset) {
                presets.push(preset.clone());
            }
        }
        if presets.is_empty() {
            presets.push(PRESETS[0].clone());
        }
        Ok(RenderSpec {
            presets,
            encodings,
            quality,
            watermark: spec.watermark,
        })
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

/// One encoded output, not yet stored.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// File name inside the job's output folder: `<index>-<preset>.<ext>`.
    pub name: String,
    pub preset: &'static str,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
    pub bytes: Vec<u8>,
}

/// Renders one generated image in every preset x encoding.
///
/// # Errors
/// An encoder failure (`internal`).
pub fn render(
    image: &DynamicImage,
    index: usize,
    spec: &RenderSpec,
) -> Result<Vec<Rendered>, JobFailure> {
    let default_encoding = [if image.color().has_alpha() {
        Encoding::Png
    } else {
        Encoding::jpeg(spec.quality)
    }];
    let encodings: &[Encoding] = if spec.encodings.is_empty() {
        &default_encoding
    } else {
        &spec.encodings
    };
    let mut out = Vec::with_capacity(spec.presets.len() * encodings.len());
    for preset in &spec.presets {
        let mut sized = match preset.long_side {
            Some(side) => genfleet_imaging::resize_to_fit(image, side)?,
            None => image.clone(),
        };
        if spec.watermark {
            genfleet_imaging::apply_watermark(&mut sized);
        }
        for encoding in encodings {
            let bytes = genfleet_imaging::encode(&sized, *encoding)?;
            out.push(Rendered {
                name: format!("{index}-{}.{}", preset.name, encoding.extension()),
                preset: preset.name,
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

    #[test]
    fn render_spec_defaults_and_errors() {
        let spec = RenderSpec::from_contract(None).unwrap();
        assert_eq!(spec.encodings, vec![]);
        assert_eq!(spec.quality, 85);
        assert_eq!(spec.presets[0].name, "original");
        // The default keeps transparency: PNG for a cut-out, JPEG otherwise.
        let cut_out = render(&DynamicImage::new_rgba8(8, 8), 0, &spec).unwrap();
        assert_eq!(cut_out[0].name, "0-original.png");
        let photo = render(&DynamicImage::new_rgb8(8, 8), 0, &spec).unwrap();
        assert_eq!(photo[0].name, "0-original.jpg");

        let contract = v1::OutputSpec {
            formats: vec![v1::OutputFormat::Webp as i32, v1::OutputFormat::Png as i32],
            presets: vec!["thumbnail-256".into()],
            quality: 70,
            watermark: true,
        };
        let spec = RenderSpec::from_contract(Some(&contract)).unwrap();
        assert_eq!(spec.encodings, vec![Encoding::WebpLossless, Encoding::Png]);
        assert!(spec.watermark);

        let bad = v1::OutputSpec {
            presets: vec!["poster".into()],
            ..Default::default()
        };
        let err = RenderSpec::from_contract(Some(&bad)).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput);
        assert!(err.message.contains("thumbnail-256"));
    }

    #[test]
    fn render_sizes_and_names() {
        let image = DynamicImage::new_rgb8(1000, 500);
        let spec = RenderSpec {
            presets: PRESETS.to_vec(),
            encodings: vec![Encoding::jpeg(80), Encoding::Png],
            quality: 80,
            watermark: false,
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
