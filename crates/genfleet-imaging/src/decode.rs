//! Decoding untrusted bytes into clean pixels.
//!
//! Owns [`decode_sanitised`] and [`decode_to_fit`]: header check, decode
//! under limits (JPEG through [`crate::jpeg`], with shrink-on-load when
//! built with libjpeg-turbo; the rest through `image`), EXIF orientation,
//! embedded ICC profile to sRGB, and normalisation to 8-bit RGB or RGBA. It
//! deliberately returns pixels only:
//! metadata (EXIF, GPS, ICC, XMP, comments, trailing polyglot payloads) is
//! dropped by construction because every output is re-encoded from these
//! pixels.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{ColorType, DynamicImage, ImageDecoder};

use crate::color::{self, ProfileOutcome};
use crate::error::ImagingError;
use crate::jpeg;
use crate::limits::{check_dimensions, inspect, ImageInfo, Limits};
use crate::resize::resize_to_fit;
use crate::sniff::ImageFormat;
use crate::structure;

/// A decoded image, safe to process and re-encode.
pub struct Sanitised {
    /// Oriented sRGB pixels, always `ImageRgb8` or `ImageRgba8`.
    pub image: DynamicImage,
    /// What the header said (stored, pre-orientation dimensions).
    pub source: ImageInfo,
    /// Whether an EXIF orientation other than "normal" was applied.
    pub orientation_applied: bool,
    /// What was done with an embedded colour profile.
    pub profile: ProfileOutcome,
    /// The JPEG DCT scale denominator used by shrink-on-load (1 = none).
    pub shrink_on_load: u32,
}

/// Pixels straight from a decoder, before any clean-up.
struct Raw {
    image: DynamicImage,
    orientation: Orientation,
    icc: Option<Vec<u8>>,
    shrink: u32,
}

/// Decodes untrusted `bytes` into oriented 8-bit sRGB or sRGBA pixels.
///
/// Runs [`inspect`] first, so bombs are rejected from the header. GIF and
/// animated WebP give their first frame. An unreadable EXIF block or colour
/// profile is ignored (the image is shown as stored) rather than failing the
/// job over metadata.
///
/// # Errors
///
/// Everything [`inspect`] returns, plus [`ImagingError::Invalid`] for corrupt
/// or truncated pixel data and [`ImagingError::TooLarge`] when the decoder
/// needs more than `limits.max_decode_alloc_bytes`.
pub fn decode_sanitised(bytes: &[u8], limits: &Limits) -> Result<Sanitised, ImagingError> {
    decode_to_fit(bytes, limits, None)
}

/// Like [`decode_sanitised`], and shrinks the result to fit inside
/// `fit_long_side` (never enlarging): the thumbnail operation.
///
/// With libjpeg-turbo (the `simd-c` feature) JPEGs are shrunk in the DCT
/// domain first, by the largest power of two that keeps the long side at or
/// above the target; then everything is shrunk by Lanczos3. The
/// resize runs before orientation and colour conversion, so both touch the
/// small image only; a rotation commutes with fitting a long side.
///
/// # Errors
/// As [`decode_sanitised`]; [`ImagingError::Invalid`] when `fit_long_side`
/// is `Some(0)`.
pub fn decode_to_fit(
    bytes: &[u8],
    limits: &Limits,
    fit_long_side: Option<u32>,
) -> Result<Sanitised, ImagingError> {
    let source = inspect(bytes, limits)?;
    check_complete(source.format, bytes)?;

    let raw = match source.format {
        ImageFormat::Jpeg => decode_jpeg(bytes, limits, fit_long_side)?,
        _ => None,
    };
    let raw = match raw {
        Some(raw) => raw,
        None => decode_with_image(bytes, source.format, limits)?,
    };

    let mut image = normalise(raw.image);
    // resize_to_fit hands back a copy when the image already fits; the
    // decoded buffer is ours, so only resize when there is work to do.
    if let Some(long_side) = fit_long_side {
        if long_side == 0 || image.width().max(image.height()) > long_side {
            image = resize_to_fit(&image, long_side)?;
        }
    }
    let orientation_applied = raw.orientation != Orientation::NoTransforms;
    if orientation_applied {
        image.apply_orientation(raw.orientation);
    }
    let profile = color::to_srgb(&mut image, raw.icc.as_deref())?;
    Ok(Sanitised {
        image,
        source,
        orientation_applied,
        profile,
        shrink_on_load: raw.shrink,
    })
}

/// [`jpeg::decode`] for YCbCr and grey JPEGs; `None` hands CMYK/YCCK to
/// `image`.
fn decode_jpeg(
    bytes: &[u8],
    limits: &Limits,
    fit_long_side: Option<u32>,
) -> Result<Option<Raw>, ImagingError> {
    let Some(decoded) = jpeg::decode(bytes, fit_long_side, limits.max_decode_alloc_bytes)? else {
        return Ok(None);
    };
    let metadata = structure::jpeg_metadata(bytes);
    Ok(Some(Raw {
        image: DynamicImage::ImageRgb8(decoded.image),
        orientation: metadata.orientation(),
        icc: metadata.icc,
        shrink: decoded.shrink,
    }))
}

/// Every other format, and CMYK JPEGs, through `image` under limits.
fn decode_with_image(
    bytes: &[u8],
    format: ImageFormat,
    limits: &Limits,
) -> Result<Raw, ImagingError> {
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(limits.max_width);
    decode_limits.max_image_height = Some(limits.max_height);
    decode_limits.max_alloc = Some(limits.max_decode_alloc_bytes);

    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format.to_image());
    reader.limits(decode_limits);
    let mut decoder = reader.into_decoder().map_err(ImagingError::from_decode)?;
    // The decoder's own view of the size must pass too: a JPEG with two
    // frame headers, say, could disagree with what inspect() read.
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;
    // Not every decoder honours max_alloc (the JPEG one ignores it), so
    // check the output buffer, the largest single allocation, ourselves.
    let needed = decoder.total_bytes();
    if needed > limits.max_decode_alloc_bytes {
        return Err(ImagingError::TooLarge(format!(
            "image needs {needed} bytes to decode, above the {} byte limit",
            limits.max_decode_alloc_bytes
        )));
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let image = DynamicImage::from_decoder(decoder).map_err(ImagingError::from_decode)?;
    Ok(Raw {
        image,
        orientation,
        icc,
        shrink: 1,
    })
}

/// Converts to `ImageRgb8` or `ImageRgba8`: the two types every later stage
/// (resize, watermark, encoders) handles natively. Alpha is kept only when
/// the source has an alpha channel; 16-bit and float are reduced to 8 bits.
fn normalise(image: DynamicImage) -> DynamicImage {
    match image.color() {
        ColorType::Rgb8 | ColorType::Rgba8 => image,
        color if color.has_alpha() => DynamicImage::ImageRgba8(image.into_rgba8()),
        _ => DynamicImage::ImageRgb8(image.into_rgb8()),
    }
}

/// Rejects JPEG and PNG files that end early; see [`crate::structure`] for
/// why the decoders alone are not enough.
fn check_complete(format: ImageFormat, bytes: &[u8]) -> Result<(), ImagingError> {
    let complete = match format {
        ImageFormat::Jpeg => structure::jpeg_is_complete(bytes),
        ImageFormat::Png => structure::png_is_complete(bytes),
        // The GIF, WebP, BMP and TIFF decoders fail on missing data.
        _ => true,
    };
    if complete {
        Ok(())
    } else {
        Err(ImagingError::Invalid(format!(
            "image data is corrupt or truncated: {} ends before its end marker",
            format.name()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{encode, Encoding};
    use crate::test_paths::{mean_abs_diff, read, CORPUS, HOSTILE};

    /// Expected outcome of `decode_sanitised` for one fixture.
    enum Want {
        Ok {
            format: ImageFormat,
            width: u32,
            height: u32,
        },
        Err {
            code: &'static str,
        },
        Unsupported {
            found: &'static str,
        },
    }

    fn check(dir: &str, name: &str, want: Want) -> Option<Sanitised> {
        let result = decode_sanitised(&read(dir, name), &Limits::default());
        match (want, result) {
            (
                Want::Ok {
                    format,
                    width,
                    height,
                },
                Ok(s),
            ) => {
                assert_eq!(s.source.format, format, "{name}");
                assert_eq!(
                    (s.image.width(), s.image.height()),
                    (width, height),
                    "{name}"
                );
                assert!(
                    matches!(s.image.color(), ColorType::Rgb8 | ColorType::Rgba8),
                    "{name}"
                );
                Some(s)
            }
            (Want::Err { code }, Err(e)) => {
                assert_eq!(e.code(), code, "{name}: {e}");
                None
            }
            (Want::Unsupported { found: want }, Err(ImagingError::UnsupportedType { found })) => {
                assert_eq!(found, want, "{name}");
                None
            }
            (_, Ok(s)) => panic!("{name}: unexpected success {:?}", s.source),
            (_, Err(e)) => panic!("{name}: unexpected error {}: {e}", e.code()),
        }
    }

    #[test]
    fn hostile_fixtures() {
        use Want::*;
        let cases = [
            ("eicar.jpg", Unsupported { found: "text" }),
            (
                "h01_truncated.jpg",
                Err {
                    code: "invalid_input",
                },
            ),
            ("h02_bomb_60000x60000.png", Err { code: "too_large" }),
            (
                "h02b_bomb_header_only_60000x60000_rgba.png",
                Err { code: "too_large" },
            ),
            (
                "h03_polyglot_html_zip.jpg",
                Ok {
                    format: ImageFormat::Jpeg,
                    width: 640,
                    height: 480,
                },
            ),
            (
                "h04_gif_named_jpg.jpg",
                Ok {
                    format: ImageFormat::Gif,
                    width: 0,
                    height: 0,
                },
            ),
            ("h05_script.svg", Unsupported { found: "svg" }),
            (
                "h06_empty.jpg",
                Err {
                    code: "invalid_input",
                },
            ),
            ("h08_jpeg_header_65500x65500.jpg", Err { code: "too_large" }),
            ("h09_html_named_jpg.jpg", Unsupported { found: "html" }),
            // Metadata and embedded-frame bombs (issue 15; see
            // tests/fixtures/hostile/README.md and tests/alloc_bound.rs).
            ("h10_png_iccp_inflates_64mib.png", Err { code: "too_large" }),
            // Compressed text is stored, never inflated: the image decodes.
            (
                "h11_png_ztxt_inflates_64mib.png",
                Ok {
                    format: ImageFormat::Png,
                    width: 1,
                    height: 1,
                },
            ),
            ("h12_webp_iccp_claims_4gib.webp", Err { code: "too_large" }),
            ("h13_webp_exif_claims_4gib.webp", Err { code: "too_large" }),
            ("h14_tiff_8m_strip_offsets.tif", Err { code: "too_large" }),
            (
                "h15_tiff_jpeg_strip_16000x16000.tif",
                Err {
                    code: "invalid_input",
                },
            ),
        ];
        for (name, want) in cases {
            // The GIF's size is whatever its header says; only the type matters.
            let want = match want {
                Ok {
                    format: ImageFormat::Gif,
                    ..
                } => {
                    let info = inspect(&read(HOSTILE, name), &Limits::default()).unwrap();
                    Ok {
                        format: ImageFormat::Gif,
                        width: info.width,
                        height: info.height,
                    }
                }
                other => other,
            };
            check(HOSTILE, name, want);
        }
    }

    #[test]
    fn polyglot_payload_does_not_survive_reencoding() {
        let s = check(
            HOSTILE,
            "h03_polyglot_html_zip.jpg",
            Want::Ok {
                format: ImageFormat::Jpeg,
                width: 640,
                height: 480,
            },
        )
        .unwrap();
        for encoding in [Encoding::jpeg(85), Encoding::Png, Encoding::WebpLossless] {
            let out = encode(&s.image, encoding).unwrap();
            for needle in [b"<script".as_slice(), b"PK\x03\x04"] {
                assert!(
                    !contains(&out, needle),
                    "{encoding:?} output contains {needle:?}"
                );
            }
        }
    }

    #[test]
    fn corpus_orientation_and_colour() {
        use Want::Ok;
        let cases = [
            (
                "photos/p08_dogs_portrait_orient6_1000x667.jpg",
                ImageFormat::Jpeg,
                667,
                1000,
                true,
                ColorType::Rgb8,
            ),
            (
                "photos/p09_interior_still_life_orient8_1000x750.jpg",
                ImageFormat::Jpeg,
                750,
                1000,
                true,
                ColorType::Rgb8,
            ),
            (
                "photos/p10_fig_plate_orient3_1000x677.jpg",
                ImageFormat::Jpeg,
                1000,
                677,
                true,
                ColorType::Rgb8,
            ),
            (
                "photos/p01_foliage_sky_1000x750.jpg",
                ImageFormat::Jpeg,
                1000,
                750,
                false,
                ColorType::Rgb8,
            ),
            (
                "formats/f08_clock_cmyk_1440x1080.jpg",
                ImageFormat::Jpeg,
                1440,
                1080,
                false,
                ColorType::Rgb8,
            ),
            (
                "formats/f04_strawberry_alpha_lossy.webp",
                ImageFormat::Webp,
                0,
                0,
                false,
                ColorType::Rgba8,
            ),
            (
                "formats/f02_cups_exif_gps_512x320.png",
                ImageFormat::Png,
                512,
                320,
                false,
                ColorType::Rgb8,
            ),
            (
                "formats/f07_dandelions_progressive_2048x1536.jpg",
                ImageFormat::Jpeg,
                2048,
                1536,
                false,
                ColorType::Rgb8,
            ),
        ];
        for (name, format, width, height, oriented, color) in cases {
            let (width, height) = if width == 0 {
                let info = inspect(&read(CORPUS, name), &Limits::default()).unwrap();
                (info.width, info.height)
            } else {
                (width, height)
            };
            let s = check(
                CORPUS,
                name,
                Ok {
                    format,
                    width,
                    height,
                },
            )
            .unwrap();
            assert_eq!(s.orientation_applied, oriented, "{name}");
            assert_eq!(s.image.color(), color, "{name}");
        }
    }

    /// Upright means: the stored pixels turned as EXIF says. Checked against
    /// `image`'s own decoder (which ignores orientation) turned by hand, so
    /// the test does not trust the code it tests.
    #[test]
    fn orientation_matches_the_stored_pixels_turned_by_hand() {
        type Turn = fn(&DynamicImage) -> DynamicImage;
        let cases: [(&str, Turn); 3] = [
            ("photos/p08_dogs_portrait_orient6_1000x667.jpg", |i| {
                i.rotate90()
            }),
            ("photos/p09_interior_still_life_orient8_1000x750.jpg", |i| {
                i.rotate270()
            }),
            ("photos/p10_fig_plate_orient3_1000x677.jpg", |i| {
                i.rotate180()
            }),
        ];
        for (name, turn) in cases {
            let bytes = read(CORPUS, name);
            let ours = decode_sanitised(&bytes, &Limits::default()).unwrap();
            let stored = image::load_from_memory(&bytes).unwrap();
            let by_hand = DynamicImage::ImageRgb8(turn(&stored).to_rgb8());
            let diff = mean_abs_diff(&ours.image, &by_hand);
            // Two JPEG decoders differ by rounding only.
            assert!(
                diff < 1.5,
                "{name}: differs from the hand-turned pixels by {diff}"
            );
            // And not by luck: the unturned pixels are far off.
            let unturned = stored.resize_exact(
                by_hand.width(),
                by_hand.height(),
                image::imageops::FilterType::Nearest,
            );
            assert!(mean_abs_diff(&ours.image, &unturned) > 10.0);
        }
    }

    #[test]
    fn decode_to_fit_shrinks_on_load_then_orients() {
        let limits = Limits::default();
        // (file, long side, shrink-on-load, output size)
        let cases = [
            // 1000x667 stored, shown portrait: 1/2 gives 500 >= 300, 1/4 < 300.
            (
                "photos/p08_dogs_portrait_orient6_1000x667.jpg",
                300,
                2,
                (200, 300),
            ),
            (
                "photos/p08_dogs_portrait_orient6_1000x667.jpg",
                250,
                4,
                (167, 250),
            ),
            ("photos/p01_foliage_sky_1000x750.jpg", 2048, 1, (1000, 750)),
            ("photos/p01_foliage_sky_1000x750.jpg", 120, 8, (120, 90)),
            // CMYK goes through image's decoder: no DCT scaling there.
            ("formats/f08_clock_cmyk_1440x1080.jpg", 720, 1, (720, 540)),
            ("formats/f02_cups_exif_gps_512x320.png", 256, 1, (256, 160)),
        ];
        for (name, long_side, shrink, size) in cases {
            // The pure-Rust backend decodes in full and resizes all the way.
            let shrink = if jpeg::SHRINKS_ON_LOAD { shrink } else { 1 };
            let bytes = read(CORPUS, name);
            let s = decode_to_fit(&bytes, &limits, Some(long_side)).unwrap();
            assert_eq!(
                (s.shrink_on_load, (s.image.width(), s.image.height())),
                (shrink, size),
                "{name} -> {long_side}"
            );
        }
        // Shrinking on load looks like decoding fully and resizing.
        let bytes = read(CORPUS, "photos/p01_foliage_sky_1000x750.jpg");
        let fast = decode_to_fit(&bytes, &limits, Some(400)).unwrap();
        assert_eq!(
            fast.shrink_on_load,
            if jpeg::SHRINKS_ON_LOAD { 2 } else { 1 }
        );
        let full = decode_sanitised(&bytes, &limits).unwrap();
        let slow = resize_to_fit(&full.image, 400).unwrap();
        let diff = mean_abs_diff(&fast.image, &slow);
        assert!(diff < 3.0, "shrink-on-load differs by {diff}");
    }

    #[test]
    fn colour_profiles_end_as_srgb() {
        let cases = [
            (
                "photos/p07_forest_stream_adobergb_1000x667.jpg",
                ProfileOutcome::Converted,
            ),
            (
                "photos/p12_boats_dusk_srgb_icc_1000x625.jpg",
                ProfileOutcome::AlreadySrgb,
            ),
            ("photos/p01_foliage_sky_1000x750.jpg", ProfileOutcome::None),
            // CMYK without a profile: the decoder's conversion is all.
            ("formats/f08_clock_cmyk_1440x1080.jpg", ProfileOutcome::None),
        ];
        for (name, want) in cases {
            let s = decode_sanitised(&read(CORPUS, name), &Limits::default()).unwrap();
            assert_eq!(s.profile, want, "{name}");
        }
        // The PNG's iCCP, whatever it is, is handled without failing.
        let png = decode_sanitised(
            &read(CORPUS, "formats/f02_cups_exif_gps_512x320.png"),
            &Limits::default(),
        )
        .unwrap();
        assert_ne!(png.profile, ProfileOutcome::None);
    }

    #[test]
    fn frame_limit_is_read_from_the_container() {
        use image::codecs::gif::GifEncoder;
        use image::{Delay, Frame, RgbaImage};
        let mut gif = Vec::new();
        {
            let mut encoder = GifEncoder::new(&mut gif);
            for i in 0..3u8 {
                let frame = RgbaImage::from_pixel(8, 8, image::Rgba([i * 80, 0, 0, 255]));
                encoder
                    .encode_frame(Frame::from_parts(
                        frame,
                        0,
                        0,
                        Delay::from_numer_denom_ms(10, 1),
                    ))
                    .unwrap();
            }
        }
        let info = inspect(&gif, &Limits::default()).unwrap();
        assert_eq!(info.frames, 3);
        let limits = Limits {
            max_frames: 2,
            ..Limits::default()
        };
        let err = decode_sanitised(&gif, &limits)
            .map(|s| s.source)
            .unwrap_err();
        assert_eq!(
            (err.code(), err.to_string().as_str()),
            ("too_large", "image has 3 frames, above the 2 frame limit")
        );
        // Still images count one frame.
        let photo = read(CORPUS, "photos/p01_foliage_sky_1000x750.jpg");
        assert_eq!(inspect(&photo, &limits).unwrap().frames, 1);
    }

    #[test]
    fn reencoded_photo_has_no_exif_or_gps() {
        let input = read(CORPUS, "photos/p01_foliage_sky_1000x750.jpg");
        let s = decode_sanitised(&input, &Limits::default()).unwrap();
        let out = encode(&s.image, Encoding::jpeg(85)).unwrap();
        assert!(!contains(&out, b"Exif"), "output has an Exif APP1 segment");
        assert!(!contains(&out, b"GPS"), "output has GPS bytes");
    }

    /// Truncating any supported format must give an error, never a partial
    /// image. Built from a noisy image so every byte of the data matters.
    #[test]
    fn truncated_images_are_invalid() {
        let mut noisy = image::RgbImage::new(64, 48);
        for (i, p) in noisy.pixels_mut().enumerate() {
            let v = (i as u32).wrapping_mul(2_654_435_761);
            *p = image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8]);
        }
        let noisy = DynamicImage::ImageRgb8(noisy);
        let mut inputs = Vec::new();
        for (encoding, label) in [
            (Encoding::jpeg(90), "jpeg"),
            (Encoding::Png, "png"),
            (Encoding::WebpLossless, "webp"),
        ] {
            inputs.push((label, encode(&noisy, encoding).unwrap()));
        }
        // Formats we read but do not publish, written with image's encoders.
        for (format, label) in [
            (image::ImageFormat::Gif, "gif"),
            (image::ImageFormat::Bmp, "bmp"),
            (image::ImageFormat::Tiff, "tiff"),
        ] {
            let mut out = std::io::Cursor::new(Vec::new());
            noisy.write_to(&mut out, format).unwrap();
            inputs.push((label, out.into_inner()));
        }
        for (label, full) in inputs {
            assert!(
                decode_sanitised(&full, &Limits::default()).is_ok(),
                "{label} full"
            );
            // Cutting the last two bytes of a GIF removes only the block
            // terminator and trailer after the first frame, which is all we
            // decode, so the image is whole; every other cut loses pixels.
            let mut cuts = vec![full.len() * 3 / 4, full.len() / 2];
            if label != "gif" {
                cuts.push(full.len() - 2);
            }
            for keep in cuts {
                let err = match decode_sanitised(&full[..keep], &Limits::default()) {
                    Result::Ok(_) => panic!(
                        "{label} truncated to {keep} of {} bytes decoded",
                        full.len()
                    ),
                    Result::Err(e) => e,
                };
                assert_eq!(
                    err.code(),
                    "invalid_input",
                    "{label} truncated to {keep}: {err}"
                );
            }
        }
    }

    #[test]
    fn decoder_alloc_limit_applies() {
        let input = read(CORPUS, "photos/p01_foliage_sky_1000x750.jpg");
        let limits = Limits {
            max_decode_alloc_bytes: 1024 * 1024,
            ..Limits::default()
        };
        let err = decode_sanitised(&input, &limits)
            .map(|s| s.source)
            .unwrap_err();
        assert_eq!(err.code(), "too_large", "{err}");
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }
}
