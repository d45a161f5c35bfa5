//! Output presets: named recipes (size, canvas, background, product
//! placement, encoding) kept as data in TOML, so marketplaces and users add
//! theirs without a release.
//!
//! Owns the preset file format, its validation (with messages naming the
//! preset and key) and [`apply_preset`], which turns a generated image into
//! the preset's pixels. It does not read files (the caller passes the TOML
//! text) and does not encode: [`Preset::encoding`] says how the caller
//! should.

use std::collections::BTreeMap;

use image::{DynamicImage, Rgb, RgbImage, Rgba, RgbaImage};

use crate::encode::Encoding;
use crate::error::ImagingError;
use crate::jpeg::{ChromaSubsampling, JpegOptions};
use crate::matte::{apply_matte, Matte};
use crate::resize::{resize_exact, resize_to_fit_with};

/// The presets shipped with genfleet (see `presets.toml` in this crate).
const BUILTIN: &str = include_str!("../presets.toml");

/// Longest preset name: names become part of output file names.
const MAX_NAME_LEN: usize = 64;
/// Largest canvas or minimum side a preset may ask for.
const MAX_SIDE: u32 = 16384;
/// rav1e speed for preset AVIF: 8 of 10 keeps a 2048 px encode around a
/// second on one core, at sizes still well under WebP's.
pub const AVIF_SPEED: u8 = 8;
/// Alpha at or above this counts as product when finding its bounding box:
/// soft edges and shadows below it are not "product".
const PRODUCT_ALPHA: u8 = 128;

/// An output format a preset may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresetFormat {
    Jpeg,
    Png,
    /// Lossy WebP.
    Webp,
    WebpLossless,
    Avif,
}

/// One preset, as written in TOML. Every key is optional; the default is
/// "the image as it is".
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Filled in from the table name.
    #[serde(skip)]
    pub name: String,
    /// What the preset is for, shown by `genfleet presets`.
    #[serde(default)]
    pub description: String,
    /// Fit inside this long side; never enlarges (see `min_long_side`).
    pub long_side: Option<u32>,
    /// Enlarge (Lanczos3) so the long side is at least this.
    pub min_long_side: Option<u32>,
    /// Output exactly `[width, height]`: the image (or the product, with
    /// `product_fill`) is scaled to fit inside, up or down, and centred on
    /// `background`.
    pub canvas: Option<[u32; 2]>,
    /// With `canvas`: crop to the product (the opaque part, after
    /// `remove_background`) and scale it so it spans this fraction
    /// (0 < f <= 1) of the canvas in its limiting direction.
    pub product_fill: Option<f32>,
    /// Cut the product out of its backdrop with the matte before placing it
    /// (opaque inputs only; a cut-out's own alpha is used as it is).
    #[serde(default)]
    pub remove_background: bool,
    /// `"#RRGGBB"`: canvas fill, and what transparency is flattened onto.
    /// Without it transparency is kept (or JPEG flattens onto white).
    pub background: Option<String>,
    /// Default format when the job names none: jpeg, png, webp (lossy),
    /// webp_lossless or avif.
    pub format: Option<PresetFormat>,
    /// JPEG / lossy WebP quality, 1..=100 (default 85).
    pub quality: Option<u8>,
    /// Progressive JPEG with optimised Huffman tables.
    #[serde(default)]
    pub progressive: bool,
    /// JPEG chroma subsampling: "4:2:0" (default), "4:2:2" or "4:4:4".
    pub subsampling: Option<ChromaSubsampling>,
    /// Resize in linear light (see [`crate::resize_to_fit_with`]).
    #[serde(default)]
    pub gamma_correct: bool,
}

/// A set of presets by name.
#[derive(Clone, Debug, PartialEq)]
pub struct Presets {
    by_name: BTreeMap<String, Preset>,
}

impl Presets {
    /// The built-in presets.
    ///
    /// # Panics
    /// Never at run time: the built-in file is checked by this crate's
    /// tests, and a broken one cannot pass them.
    pub fn builtin() -> Presets {
        match Presets::parse(BUILTIN) {
            Ok(presets) => presets,
            Err(e) => panic!("built-in presets.toml is invalid: {e}"),
        }
    }

    /// Reads presets from TOML text: one table per preset.
    ///
    /// # Errors
    /// [`ImagingError::Invalid`] naming the preset and key for a syntax
    /// error, an unknown key, a bad name or a value out of range.
    pub fn parse(toml_text: &str) -> Result<Presets, ImagingError> {
        let tables: BTreeMap<String, Preset> = toml::from_str(toml_text)
            .map_err(|e| ImagingError::Invalid(format!("presets: {}", e.message())))?;
        let mut by_name = BTreeMap::new();
        for (name, mut preset) in tables {
            preset.name = name.clone();
            preset.validate()?;
            by_name.insert(name, preset);
        }
        Ok(Presets { by_name })
    }

    /// These presets with `other`'s added; `other` wins on equal names.
    pub fn merged(mut self, other: Presets) -> Presets {
        self.by_name.extend(other.by_name);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Preset> {
        self.by_name.get(name)
    }

    /// The "original" preset (no resize, the job's formats): the built-in
    /// one unless a presets file replaced it.
    pub fn original(&self) -> Preset {
        self.get("original").cloned().unwrap_or_else(|| Preset {
            name: "original".into(),
            ..Preset::default()
        })
    }

    /// Every preset, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Preset> {
        self.by_name.values()
    }
}

impl Default for Presets {
    fn default() -> Self {
        Presets::builtin()
    }
}

impl Preset {
    fn validate(&self) -> Result<(), ImagingError> {
        let fail = |key: &str, why: String| {
            Err(ImagingError::Invalid(format!(
                "presets: preset {:?}: `{key}` {why}",
                self.name
            )))
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_NAME_LEN
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(ImagingError::Invalid(format!(
                "presets: name {:?} must be 1-{MAX_NAME_LEN} lower-case letters, digits or dashes",
                self.name
            )));
        }
        for (key, side) in [
            ("long_side", self.long_side),
            ("min_long_side", self.min_long_side),
        ] {
            if let Some(side) = side {
                if side == 0 || side > MAX_SIDE {
                    return fail(key, format!("is {side}, expected 1..={MAX_SIDE}"));
                }
            }
        }
        if let (Some(max), Some(min)) = (self.long_side, self.min_long_side) {
            if min > max {
                return fail("min_long_side", format!("is {min}, above long_side {max}"));
            }
        }
        if let Some([w, h]) = self.canvas {
            if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
                return fail(
                    "canvas",
                    format!("is {w}x{h}, expected sides in 1..={MAX_SIDE}"),
                );
            }
        }
        if let Some(fill) = self.product_fill {
            if self.canvas.is_none() {
                return fail("product_fill", "needs a `canvas`".into());
            }
            if !(fill > 0.0 && fill <= 1.0) {
                return fail("product_fill", format!("is {fill}, expected 0 < f <= 1"));
            }
        }
        if let Some(quality) = self.quality {
            if !(1..=100).contains(&quality) {
                return fail("quality", format!("is {quality}, expected 1..=100"));
            }
        }
        if let Some(background) = &self.background {
            if parse_hex_colour(background).is_none() {
                return fail(
                    "background",
                    format!("is {background:?}, expected \"#RRGGBB\""),
                );
            }
        }
        Ok(())
    }

    fn background_colour(&self) -> Option<[u8; 3]> {
        self.background.as_deref().and_then(parse_hex_colour)
    }

    /// How to encode this preset's output: the job's `requested` encodings
    /// win; otherwise the preset's format; otherwise `None` (the caller's
    /// default).
    pub fn encoding(&self) -> Option<Encoding> {
        let quality = self.quality.unwrap_or(85);
        Some(match self.format? {
            PresetFormat::Jpeg => Encoding::Jpeg(JpegOptions {
                quality,
                progressive: self.progressive,
                subsampling: self.subsampling.unwrap_or(ChromaSubsampling::Yuv420),
            }),
            PresetFormat::Png => Encoding::Png,
            PresetFormat::Webp => Encoding::Webp { quality },
            PresetFormat::WebpLossless => Encoding::WebpLossless,
            PresetFormat::Avif => Encoding::Avif {
                quality,
                speed: AVIF_SPEED,
            },
        })
    }
}

fn parse_hex_colour(text: &str) -> Option<[u8; 3]> {
    let hex = text.strip_prefix('#')?;
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

/// Renders `image` (8-bit RGB or RGBA) as `preset` says. `matte` is used
/// only by presets with `remove_background` (the seam where a model-based
/// matte replaces the classical one).
///
/// # Errors
/// A failing matte or resize (`internal`, or the matte's own error).
pub fn apply_preset(
    image: &DynamicImage,
    preset: &Preset,
    matte: &dyn Matte,
) -> Result<DynamicImage, ImagingError> {
    let mut work = image.clone();
    if preset.remove_background && !work.color().has_alpha() {
        let alpha = matte.matte(&work)?;
        work = apply_matte(&work, &alpha)?;
    }
    let background = preset.background_colour();

    let mut work = match preset.canvas {
        Some([width, height]) => {
            if preset.product_fill.is_some() {
                work = crop_to_product(&work);
            }
            let fill = preset.product_fill.unwrap_or(1.0);
            let box_w = (width as f32 * fill).max(1.0);
            let box_h = (height as f32 * fill).max(1.0);
            let scale = (box_w / work.width() as f32).min(box_h / work.height() as f32);
            let new_w = ((work.width() as f32 * scale).round() as u32).clamp(1, width);
            let new_h = ((work.height() as f32 * scale).round() as u32).clamp(1, height);
            let placed = resize_exact(&work, new_w, new_h, preset.gamma_correct)?;
            place_on_canvas(&placed, width, height, background)
        }
        None => {
            let mut sized = match preset.long_side {
                Some(side) => resize_to_fit_with(&work, side, preset.gamma_correct)?,
                None => work,
            };
            if let Some(min) = preset.min_long_side {
                let long = sized.width().max(sized.height());
                if long < min {
                    let scale = f64::from(min) / f64::from(long);
                    let w = ((f64::from(sized.width()) * scale).round() as u32).max(1);
                    let h = ((f64::from(sized.height()) * scale).round() as u32).max(1);
                    sized = resize_exact(&sized, w, h, preset.gamma_correct)?;
                }
            }
            sized
        }
    };
    if let (Some(colour), true) = (background, work.color().has_alpha()) {
        work = DynamicImage::ImageRgb8(flatten_onto(&work.to_rgba8(), colour));
    }
    Ok(work)
}

/// The bounding box of the product: pixels with alpha >= 128. An opaque
/// image, or one with nothing opaque, is its own box.
fn crop_to_product(image: &DynamicImage) -> DynamicImage {
    let DynamicImage::ImageRgba8(rgba) = image else {
        return image.clone();
    };
    let product = rgba
        .enumerate_pixels()
        .filter(|(_, _, p)| p[3] >= PRODUCT_ALPHA)
        .map(|(x, y, _)| (x, y));
    match bounds(product) {
        Some((x0, y0, x1, y1)) => image.crop_imm(x0, y0, x1 - x0 + 1, y1 - y0 + 1),
        None => image.clone(),
    }
}

/// Inclusive bounds of a set of pixel positions.
fn bounds(points: impl Iterator<Item = (u32, u32)>) -> Option<(u32, u32, u32, u32)> {
    points.fold(None, |acc, (x, y)| {
        Some(match acc {
            None => (x, y, x, y),
            Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
        })
    })
}

/// Centres `image` on a `width` x `height` canvas of `background` (or
/// transparent without one).
fn place_on_canvas(
    image: &DynamicImage,
    width: u32,
    height: u32,
    background: Option<[u8; 3]>,
) -> DynamicImage {
    let left = i64::from((width - image.width().min(width)) / 2);
    let top = i64::from((height - image.height().min(height)) / 2);
    match background {
        Some(colour) => {
            let mut canvas = RgbImage::from_pixel(width, height, Rgb(colour));
            let opaque = if image.color().has_alpha() {
                flatten_onto(&image.to_rgba8(), colour)
            } else {
                image.to_rgb8()
            };
            image::imageops::overlay(&mut canvas, &opaque, left, top);
            DynamicImage::ImageRgb8(canvas)
        }
        None => {
            let mut canvas = RgbaImage::from_pixel(width, height, Rgba([0, 0, 0, 0]));
            image::imageops::overlay(&mut canvas, &image.to_rgba8(), left, top);
            DynamicImage::ImageRgba8(canvas)
        }
    }
}

/// Composites straight-alpha RGBA onto an opaque colour.
fn flatten_onto(rgba: &RgbaImage, colour: [u8; 3]) -> RgbImage {
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y);
        let a = u32::from(p[3]);
        let mix =
            |c: u8, bg: u8| ((u32::from(c) * a + u32::from(bg) * (255 - a) + 127) / 255) as u8;
        Rgb([
            mix(p[0], colour[0]),
            mix(p[1], colour[1]),
            mix(p[2], colour[2]),
        ])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matte::ClassicalMatte;
    use crate::test_paths::{read, COMPOSITES};

    #[test]
    fn builtin_presets_parse_and_include_the_marketplaces() {
        let presets = Presets::builtin();
        let names: Vec<&str> = presets.iter().map(|p| p.name.as_str()).collect();
        for want in [
            "amazon-main",
            "etsy",
            "original",
            "shopify-square",
            "thumbnail-256",
            "thumbnail-512",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let amazon = presets.get("amazon-main").unwrap();
        assert_eq!(
            amazon.encoding(),
            Some(Encoding::Jpeg(JpegOptions {
                quality: 90,
                progressive: true,
                subsampling: ChromaSubsampling::Yuv420
            }))
        );
        assert_eq!(
            presets.get("thumbnail-256").unwrap().encoding(),
            Some(Encoding::Webp { quality: 80 })
        );
        assert_eq!(presets.get("original").unwrap().encoding(), None);
    }

    #[test]
    fn user_presets_add_and_replace() {
        let user = Presets::parse(
            r##"
            [etsy]
            long_side = 3000
            format = "png"
            [poster-a3]
            description = "A3 at 150 dpi"
            canvas = [1754, 2480]
            background = "#f0f0f0"
            "##,
        )
        .unwrap();
        let all = Presets::builtin().merged(user);
        assert_eq!(all.get("etsy").unwrap().long_side, Some(3000));
        assert_eq!(all.get("etsy").unwrap().encoding(), Some(Encoding::Png));
        assert_eq!(all.get("poster-a3").unwrap().canvas, Some([1754, 2480]));
        assert!(all.get("amazon-main").is_some());
    }

    /// Each bad preset file gets an error naming what is wrong.
    #[test]
    fn invalid_presets_are_rejected_with_the_key_named() {
        let cases = [
            ("[x]\nlong_side = 0", "preset \"x\": `long_side` is 0"),
            ("[x]\ncanvas = [0, 10]", "`canvas` is 0x10"),
            ("[x]\nproduct_fill = 0.5", "`product_fill` needs a `canvas`"),
            (
                "[x]\ncanvas = [10, 10]\nproduct_fill = 1.5",
                "`product_fill` is 1.5",
            ),
            ("[x]\nquality = 0", "`quality` is 0"),
            ("[x]\nbackground = \"white\"", "`background` is \"white\""),
            (
                "[x]\nlong_side = 100\nmin_long_side = 200",
                "`min_long_side` is 200",
            ),
            ("[\"../etc\"]\nlong_side = 10", "name \"../etc\" must be"),
            ("[Big]\nlong_side = 10", "name \"Big\" must be"),
            ("[x]\nsize = 10", "unknown field `size`"),
            ("[x]\nformat = \"gif\"", "unknown variant `gif`"),
            ("[x\nlong_side = 1", "presets:"),
        ];
        for (text, want) in cases {
            let err = Presets::parse(text).unwrap_err();
            assert_eq!(err.code(), "invalid_input");
            assert!(err.to_string().contains(want), "{text:?}: {err}");
        }
    }

    /// Amazon's main image: the backdrop replaced by pure white, the
    /// product centred and spanning 85% of the frame.
    #[test]
    fn amazon_main_puts_the_product_on_white_at_85_percent() {
        let photo = crate::decode_sanitised(
            &read(COMPOSITES, "k04_phone_grey_gradient_shadow.jpg"),
            &crate::Limits::default(),
        )
        .unwrap()
        .image;
        let preset = Presets::builtin().get("amazon-main").unwrap().clone();
        let out = apply_preset(&photo, &preset, &ClassicalMatte::default()).unwrap();
        assert_eq!((out.width(), out.height()), (2000, 2000));
        let DynamicImage::ImageRgb8(rgb) = &out else {
            panic!("expected opaque RGB, got {:?}", out.color());
        };
        // Corners and edges pure white: RGB 255 exactly, as Amazon requires.
        for (x, y) in [
            (0, 0),
            (1999, 0),
            (0, 1999),
            (1999, 1999),
            (1000, 2),
            (2, 1000),
        ] {
            assert_eq!(rgb.get_pixel(x, y), &Rgb([255, 255, 255]), "({x}, {y})");
        }
        // The product's box: where pixels are clearly not white.
        let product = rgb
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0.iter().any(|&c| c < 235))
            .map(|(x, y, _)| (x, y));
        let (x0, y0, x1, y1) = bounds(product).unwrap();
        let span = (x1 - x0 + 1).max(y1 - y0 + 1);
        assert!(
            (1650..=1710).contains(&span),
            "product spans {span} px of 2000"
        );
        let centre_x = (x0 + x1) / 2;
        assert!(
            centre_x.abs_diff(1000) <= 10,
            "product centred at x = {centre_x}"
        );
    }

    #[test]
    fn canvas_long_side_and_min_long_side() {
        let presets = Presets::builtin();
        let matte = ClassicalMatte::default();
        let landscape = DynamicImage::ImageRgb8(RgbImage::from_pixel(1000, 500, Rgb([10, 20, 30])));
        // (preset, output size)
        let cases = [
            ("shopify-square", (2048, 2048)),
            ("etsy", (2000, 1000)),
            ("thumbnail-256", (256, 128)),
            ("thumbnail-512", (512, 256)),
            ("original", (1000, 500)),
        ];
        for (name, size) in cases {
            let out = apply_preset(&landscape, presets.get(name).unwrap(), &matte).unwrap();
            assert_eq!((out.width(), out.height()), size, "{name}");
        }
        // The square pads with white above and below the landscape image.
        let square =
            apply_preset(&landscape, presets.get("shopify-square").unwrap(), &matte).unwrap();
        let square = square.to_rgb8();
        assert_eq!(square.get_pixel(1024, 10), &Rgb([255, 255, 255]));
        assert_eq!(square.get_pixel(1024, 1024), &Rgb([10, 20, 30]));
        // A cut-out keeps its transparency without a background...
        let cut_out = DynamicImage::ImageRgba8(RgbaImage::from_pixel(300, 300, Rgba([9, 9, 9, 0])));
        let thumb = apply_preset(&cut_out, presets.get("thumbnail-256").unwrap(), &matte).unwrap();
        assert!(thumb.color().has_alpha());
        // ...and is flattened onto the background with one.
        let flat = apply_preset(&cut_out, presets.get("shopify-square").unwrap(), &matte).unwrap();
        assert_eq!(flat.to_rgb8().get_pixel(1024, 1024), &Rgb([255, 255, 255]));
    }
}
