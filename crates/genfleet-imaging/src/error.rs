//! The one error type of this crate and its stable codes.
//!
//! Owns the mapping from `image` and `fast_image_resize` errors to the closed
//! set of codes used in metrics labels and `JobResult.error.code`. It does not
//! decide retries: every variant here is permanent for the same input bytes,
//! except [`ImagingError::Internal`], which the worker may treat as a bug.

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImagingError {
    /// The bytes are not one of the image types we decode (judged by magic
    /// bytes, never by file name or declared content type).
    #[error("unsupported image type: found {found}, expected jpeg, png, webp, gif, bmp or tiff")]
    UnsupportedType {
        /// What the bytes look like instead, e.g. "svg", "html", "unknown".
        found: String,
    },
    /// The input or the image it describes is above a configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// The input is empty, corrupt, truncated or otherwise not decodable.
    #[error("{0}")]
    Invalid(String),
    /// A failure that no input should cause (an encoder or resizer bug).
    #[error("{0}")]
    Internal(String),
}

impl ImagingError {
    /// Stable code from a closed set, safe to use as a metrics label value.
    pub fn code(&self) -> &'static str {
        match self {
            ImagingError::UnsupportedType { .. } => "unsupported_type",
            ImagingError::TooLarge(_) => "too_large",
            ImagingError::Invalid(_) => "invalid_input",
            ImagingError::Internal(_) => "internal",
        }
    }

    /// Classifies an error that `image` returned while reading input bytes.
    ///
    /// Decoding and I/O errors both mean bad input here: the reader is an
    /// in-memory cursor, so an I/O error can only be an unexpected end of data.
    pub(crate) fn from_decode(err: image::ImageError) -> Self {
        use image::ImageError as E;
        match err {
            E::Limits(e) => ImagingError::TooLarge(format!(
                "image needs more memory to decode than the limits allow: {e}"
            )),
            E::Decoding(e) => {
                ImagingError::Invalid(format!("image data is corrupt or truncated: {e}"))
            }
            E::IoError(e) => {
                ImagingError::Invalid(format!("image data is corrupt or truncated: {e}"))
            }
            // A supported type using a feature the decoder lacks (e.g.
            // arithmetic-coded JPEG): the file is unusable to us, like corrupt data.
            E::Unsupported(e) => ImagingError::Invalid(format!(
                "image uses a feature the decoder does not support: {e}"
            )),
            E::Parameter(e) => ImagingError::Internal(format!("image decoder misused: {e}")),
            E::Encoding(e) => {
                ImagingError::Internal(format!("unexpected encoding error while decoding: {e}"))
            }
        }
    }

    /// Classifies an error from an encoder: our pixels, our parameters, so
    /// any failure is internal.
    pub(crate) fn from_encode(err: image::ImageError) -> Self {
        ImagingError::Internal(format!("image encoding failed: {err}"))
    }
}

impl From<fast_image_resize::ResizeError> for ImagingError {
    fn from(err: fast_image_resize::ResizeError) -> Self {
        ImagingError::Internal(format!("resize failed: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        let cases = [
            (
                ImagingError::UnsupportedType {
                    found: "svg".into(),
                },
                "unsupported_type",
            ),
            (ImagingError::TooLarge("x".into()), "too_large"),
            (ImagingError::Invalid("x".into()), "invalid_input"),
            (ImagingError::Internal("x".into()), "internal"),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn unsupported_message_names_found_and_expected() {
        let err = ImagingError::UnsupportedType {
            found: "svg".into(),
        };
        assert_eq!(
            err.to_string(),
            "unsupported image type: found svg, expected jpeg, png, webp, gif, bmp or tiff"
        );
    }
}
