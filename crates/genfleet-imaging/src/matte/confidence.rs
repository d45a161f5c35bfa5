//! The `auto` background-removal choice: how far to trust the classical
//! matte on one image, and the rule that picks it or the model.
//!
//! The classical matte is exact when its premise holds (a smooth backdrop
//! that the border shows and the object stands out from) and meaningless
//! when it does not; a saliency model is roughly right everywhere but blurs
//! and fills holes (the inside of a ring, the gaps of a lantern). So `auto`
//! asks whether the premise held, from what the classical matte saw
//! ([`ClassicalEvidence`]), and uses the classical matte only then.
//!
//! This module decides; it runs neither matte. The caller (the worker, which
//! can reach the model) runs [`ClassicalMatte::matte_with_evidence`]
//! first, asks [`choose_method`], and only runs the model when told to, so a
//! studio photo never pays for inference.
//!
//! [`ClassicalMatte::matte_with_evidence`]: super::ClassicalMatte::matte_with_evidence

use super::ClassicalEvidence;

/// Which matte `auto` settled on for an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatteMethod {
    /// The classical matte's own result.
    Classical,
    /// The model's mask refined at full resolution ([`super::refine_mask`]).
    Model,
}

impl MatteMethod {
    /// Stable name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            MatteMethod::Classical => "classical",
            MatteMethod::Model => "model",
        }
    }
}

/// [`classical_confidence`] at or above this picks the classical matte.
/// The score is a product of ramps that are 1 on every studio composite and
/// 0 on every photo of the corpus (no smooth border at all), so the
/// threshold sits in the middle of a wide gap rather than on a tuned edge.
pub const CLASSICAL_CONFIDENCE_THRESHOLD: f32 = 0.5;

/// How far the classical matte can be trusted on the image it produced
/// `evidence` for, from 0 (its premise failed) to 1 (a plain or gradient
/// studio backdrop it explains well). The product of four ramps, each 1
/// inside the range every studio composite falls in, with a margin:
///
/// - the border is a smooth backdrop at all (else 0);
/// - the field explains the border ring: inliers 1 at >= 90 %, 0 at 50 %
///   (the composites: >= 99.98 %);
/// - the border is quiet: 95th-percentile residual 1 at <= 8, 0 at 30 (the
///   matte's own cut-off; composites: 2 to 3.2);
/// - few pixels are neither clearly backdrop nor clearly object: 1 at
///   <= 2 % of the image, 0 at 10 % (composites: 0.06 to 0.8 %, their
///   outlines; a scene that only looks like a backdrop at the border leaves
///   wide ambiguous areas inside);
/// - the cut keeps something and removes something: 0 below 0.1 % or above
///   98 % foreground.
pub fn classical_confidence(evidence: &ClassicalEvidence) -> f32 {
    if !evidence.backdrop {
        return 0.0;
    }
    // Linear from 0 at `zero` to 1 at `one` (either may be the larger).
    let ramp = |value: f32, zero: f32, one: f32| ((value - zero) / (one - zero)).clamp(0.0, 1.0);
    let sane = (0.001..=0.98).contains(&evidence.foreground);
    let score = ramp(evidence.border_inliers, 0.5, 0.9)
        * ramp(evidence.border_noise, 30.0, 8.0)
        * ramp(evidence.ambiguous, 0.10, 0.02)
        * if sane { 1.0 } else { 0.0 };
    // NaN from a degenerate input must not read as confidence.
    if score.is_nan() {
        0.0
    } else {
        score
    }
}

/// The `auto` rule: the classical matte where [`classical_confidence`]
/// reaches [`CLASSICAL_CONFIDENCE_THRESHOLD`], the model (refined)
/// otherwise.
pub fn choose_method(evidence: &ClassicalEvidence) -> MatteMethod {
    if classical_confidence(evidence) >= CLASSICAL_CONFIDENCE_THRESHOLD {
        MatteMethod::Classical
    } else {
        MatteMethod::Model
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matte::ClassicalMatte;
    use crate::test_paths::{read, COMPOSITES};
    use image::{DynamicImage, Rgb, RgbImage};

    #[test]
    fn studio_composites_are_classical_and_noise_is_not() {
        for name in [
            "k01_tshirt_white",
            "k03_tiara_grey_gradient",
            "k05_lamp_pastel_teal",
        ] {
            let image = image::load_from_memory(&read(COMPOSITES, &format!("{name}.jpg"))).unwrap();
            let (_, evidence) = ClassicalMatte::default()
                .matte_with_evidence(&image)
                .unwrap();
            assert_eq!(classical_confidence(&evidence), 1.0, "{name}: {evidence:?}");
        }
        // xorshift32 noise: no backdrop at the border at all.
        let mut state = 0x2545_f491_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        };
        let noise = RgbImage::from_fn(300, 200, |_, _| Rgb([next(), next(), next()]));
        let (_, evidence) = ClassicalMatte::default()
            .matte_with_evidence(&DynamicImage::ImageRgb8(noise))
            .unwrap();
        assert_eq!(choose_method(&evidence), MatteMethod::Model, "{evidence:?}");
    }

    fn studio() -> ClassicalEvidence {
        // The figures the matte reports on k03 (grey gradient backdrop).
        ClassicalEvidence {
            backdrop: true,
            border_inliers: 0.9999,
            border_noise: 3.03,
            threshold: 10.0,
            foreground: 0.109,
            ambiguous: 0.0043,
        }
    }

    #[test]
    fn check_scores() {
        let check = |e: ClassicalEvidence, want: MatteMethod| {
            assert_eq!(
                choose_method(&e),
                want,
                "{e:?}: {}",
                classical_confidence(&e)
            );
        };
        check(studio(), MatteMethod::Classical);
        assert_eq!(classical_confidence(&studio()), 1.0);
        let no_backdrop = ClassicalEvidence {
            backdrop: false,
            ..studio()
        };
        check(no_backdrop, MatteMethod::Model);
        check(
            ClassicalEvidence {
                border_inliers: 0.6,
                ..studio()
            },
            MatteMethod::Model,
        );
        check(
            ClassicalEvidence {
                border_noise: 25.0,
                ..studio()
            },
            MatteMethod::Model,
        );
        check(
            ClassicalEvidence {
                ambiguous: 0.08,
                ..studio()
            },
            MatteMethod::Model,
        );
        check(
            ClassicalEvidence {
                foreground: 0.0,
                ..studio()
            },
            MatteMethod::Model,
        );
        check(
            ClassicalEvidence {
                foreground: 0.99,
                ..studio()
            },
            MatteMethod::Model,
        );
        check(
            ClassicalEvidence {
                border_noise: f32::NAN,
                ..studio()
            },
            MatteMethod::Model,
        );
    }
}
