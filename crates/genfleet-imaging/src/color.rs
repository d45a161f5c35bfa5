//! Embedded colour profiles converted to sRGB.
//!
//! Owns the decision whether a profile needs converting and the conversion
//! itself (moxcms, a pure-Rust CMS: no system lcms2 to install). Outputs are
//! published without any profile, and untagged pixels are read as sRGB by
//! every browser, so an Adobe RGB or Display P3 upload must be converted or
//! it shows dull. It does not handle CMYK profiles: CMYK JPEGs are converted
//! to RGB by the decoder before they get here.

use image::DynamicImage;
use moxcms::{ColorProfile, DataColorSpace, Layout, TransformOptions};

use crate::error::ImagingError;

/// Rows converted per call, so the scratch buffer stays small (a 4000 px
/// wide RGBA image needs 1 MB for 64 rows) whatever the image size.
const ROWS_PER_CHUNK: usize = 64;

/// What happened to an embedded profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileOutcome {
    /// No profile: the pixels are taken as sRGB.
    None,
    /// The profile maps the sample colours to sRGB unchanged (an sRGB
    /// profile, or one equivalent to it), so nothing was done.
    AlreadySrgb,
    /// The pixels were converted from the profile to sRGB.
    Converted,
    /// The profile is unreadable, or not an RGB profile for RGB pixels; it
    /// was ignored and the pixels taken as sRGB. Never fatal: a broken tag
    /// must not cost a customer their job.
    Ignored,
}

/// Converts `image` (8-bit RGB or RGBA) from `icc` to sRGB in place.
///
/// # Errors
/// [`ImagingError::Internal`] when the transform fails on pixels after it
/// was built; a profile we cannot use is [`ProfileOutcome::Ignored`].
pub(crate) fn to_srgb(
    image: &mut DynamicImage,
    icc: Option<&[u8]>,
) -> Result<ProfileOutcome, ImagingError> {
    let Some(icc) = icc else {
        return Ok(ProfileOutcome::None);
    };
    let layout = match image {
        DynamicImage::ImageRgb8(_) => Layout::Rgb,
        DynamicImage::ImageRgba8(_) => Layout::Rgba,
        _ => return Ok(ProfileOutcome::Ignored),
    };
    let Some(transform) = transform_to_srgb(icc, layout) else {
        return Ok(ProfileOutcome::Ignored);
    };
    let failed = |e: moxcms::CmsError| ImagingError::Internal(format!("colour conversion: {e}"));
    if is_identity(&*transform, layout).map_err(failed)? {
        return Ok(ProfileOutcome::AlreadySrgb);
    }
    let (width, samples): (usize, &mut [u8]) = match image {
        DynamicImage::ImageRgb8(rgb) => (rgb.width() as usize, &mut **rgb),
        DynamicImage::ImageRgba8(rgba) => (rgba.width() as usize, &mut **rgba),
        _ => return Ok(ProfileOutcome::Ignored),
    };
    let chunk_len = width * layout.channels() * ROWS_PER_CHUNK;
    let mut scratch = vec![0u8; chunk_len.min(samples.len())];
    for chunk in samples.chunks_mut(chunk_len.max(1)) {
        let out = &mut scratch[..chunk.len()];
        transform.transform(chunk, out).map_err(failed)?;
        chunk.copy_from_slice(out);
    }
    Ok(ProfileOutcome::Converted)
}

/// Whether pixels tagged with `icc` are already sRGB (within one code
/// value), so the profile can be dropped without converting anything. A
/// profile we cannot use counts as sRGB, as [`to_srgb`] ignores it too.
pub(crate) fn is_srgb_equivalent(icc: &[u8]) -> bool {
    transform_to_srgb(icc, Layout::Rgb)
        .is_none_or(|transform| is_identity(&*transform, Layout::Rgb).unwrap_or(false))
}

/// The 8-bit transform from an embedded RGB profile to sRGB, or `None` for
/// a profile we cannot use (unreadable, not RGB, not transformable): those
/// are ignored and the pixels taken as sRGB.
fn transform_to_srgb(
    icc: &[u8],
    layout: Layout,
) -> Option<std::sync::Arc<moxcms::Transform8BitExecutor>> {
    let source = ColorProfile::new_from_slice(icc).ok()?;
    if source.color_space != DataColorSpace::Rgb {
        return None;
    }
    source
        .create_transform_8bit(
            layout,
            &ColorProfile::new_srgb(),
            layout,
            TransformOptions::default(),
        )
        .ok()
}

/// Whether `transform` leaves a 16^3 grid of colours (plus the greys)
/// within one code value: the cheap way to skip embedded sRGB profiles,
/// whatever their name or version, without converting megapixels for
/// nothing.
fn is_identity(
    transform: &(dyn moxcms::TransformExecutor<u8> + Send + Sync),
    layout: Layout,
) -> Result<bool, moxcms::CmsError> {
    let channels = layout.channels();
    let mut samples = Vec::with_capacity((16 * 16 * 16 + 256) * channels);
    let mut push = |r: u8, g: u8, b: u8| {
        samples.extend_from_slice(&[r, g, b]);
        if channels == 4 {
            samples.push(255);
        }
    };
    for r in 0..16u8 {
        for g in 0..16u8 {
            for b in 0..16u8 {
                push(r * 17, g * 17, b * 17);
            }
        }
    }
    for v in 0..=255u8 {
        push(v, v, v);
    }
    let mut out = vec![0u8; samples.len()];
    transform.transform(&samples, &mut out)?;
    Ok(samples.iter().zip(&out).all(|(a, b)| a.abs_diff(*b) <= 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_paths::{read, CORPUS};
    use image::{Rgb, RgbImage};

    fn icc_of(name: &str) -> Vec<u8> {
        let bytes = read(CORPUS, name);
        crate::structure::jpeg_metadata(&bytes)
            .icc
            .unwrap_or_else(|| panic!("{name} has no ICC profile"))
    }

    #[test]
    fn adobe_rgb_is_converted_and_srgb_is_left_alone() {
        let adobe = icc_of("photos/p07_forest_stream_adobergb_1000x667.jpg");
        let srgb = icc_of("photos/p12_boats_dusk_srgb_icc_1000x625.jpg");
        // Adobe RGB's green primary is far more saturated than sRGB's, so
        // pure green lies outside sRGB and clips; a mid grey stays grey.
        let mut image = DynamicImage::ImageRgb8(RgbImage::from_fn(2, 1, |x, _| match x {
            0 => Rgb([0, 200, 0]),
            _ => Rgb([128, 128, 128]),
        }));
        let original = image.clone();
        assert_eq!(
            to_srgb(&mut image, Some(&srgb)).unwrap(),
            ProfileOutcome::AlreadySrgb
        );
        assert_eq!(image, original);
        assert_eq!(
            to_srgb(&mut image, Some(&adobe)).unwrap(),
            ProfileOutcome::Converted
        );
        let rgb = image.to_rgb8();
        let green = rgb.get_pixel(0, 0);
        // The same colour expressed in sRGB needs red pulled to 0 and more
        // green drive: it must have changed, and stayed green.
        assert_ne!(green, &Rgb([0, 200, 0]));
        assert!(
            green[1] > 200 && green[0] < 40 && green[2] < 40,
            "{green:?}"
        );
        let grey = rgb.get_pixel(1, 0);
        assert!(
            grey.0.iter().all(|c| c.abs_diff(grey[0]) <= 1),
            "grey must stay neutral: {grey:?}"
        );
    }

    #[test]
    fn unusable_profiles_are_ignored() {
        let mut image = DynamicImage::ImageRgb8(RgbImage::new(4, 4));
        assert_eq!(to_srgb(&mut image, None).unwrap(), ProfileOutcome::None);
        assert_eq!(
            to_srgb(&mut image, Some(b"not a profile")).unwrap(),
            ProfileOutcome::Ignored
        );
        let adobe = icc_of("photos/p07_forest_stream_adobergb_1000x667.jpg");
        let mut grey = DynamicImage::ImageLuma8(image::GrayImage::new(4, 4));
        assert_eq!(
            to_srgb(&mut grey, Some(&adobe)).unwrap(),
            ProfileOutcome::Ignored
        );
    }
}
