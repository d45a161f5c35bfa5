//! What a job asks of the local models, read from its `parameters`: the
//! method of a background removal (`parameters.method`) and the model of an
//! upscale (`parameters.model`). One parser for the routing (`kinds`), the
//! local provider, the render stage and `genfleet batch`, so they never
//! disagree about a value. A leaf: it knows parameter strings, not engines.

/// `parameters.method` of a background removal (and of the
/// `remove_background` preset step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatteMethod {
    /// The classical matte where it is confident (a plain studio
    /// background), the model otherwise.
    Auto,
    /// The model's mask, refined at full resolution.
    Model,
    /// The classical matte only: no model, exact on plain backgrounds.
    Classical,
}

impl MatteMethod {
    /// The parameter's key.
    pub const KEY: &'static str = "method";
    const ALLOWED: &'static str = "auto, model or classical";

    /// The method named `value`.
    ///
    /// # Errors
    /// A message naming the parameter and the allowed values.
    pub fn parse(value: &str) -> Result<MatteMethod, String> {
        match value {
            "auto" => Ok(MatteMethod::Auto),
            "model" => Ok(MatteMethod::Model),
            "classical" => Ok(MatteMethod::Classical),
            other => Err(format!(
                "parameters.method: {other:?} is not a background removal method, expected {}",
                Self::ALLOWED
            )),
        }
    }

    /// The method of a JSON parameter: `None` when absent (the caller's
    /// default applies).
    ///
    /// # Errors
    /// As [`MatteMethod::parse`], or a value that is not a string.
    pub fn from_json(value: Option<&serde_json::Value>) -> Result<Option<MatteMethod>, String> {
        match value {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => MatteMethod::parse(s).map(Some),
            Some(_) => Err(format!(
                "parameters.method: expected a string, one of {}",
                Self::ALLOWED
            )),
        }
    }

    /// The method a contract job names in `generation.parameters`, for its
    /// `remove_background` presets; `None` when it names none.
    ///
    /// # Errors
    /// As [`MatteMethod::from_json`].
    pub fn of_job(job: &genfleet_proto::v1::Job) -> Result<Option<MatteMethod>, String> {
        let value = job
            .generation
            .as_ref()
            .and_then(|g| g.parameters.as_ref())
            .and_then(|p| p.fields.get(Self::KEY))
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| format!("parameters.method: {e}"))?;
        MatteMethod::from_json(value.as_ref())
    }

    /// Stable label for logs and `genfleet batch`.
    pub fn label(self) -> &'static str {
        match self {
            MatteMethod::Auto => "auto",
            MatteMethod::Model => "model",
            MatteMethod::Classical => "classical",
        }
    }

    /// Whether this method may run a model (and so belongs on a worker
    /// with `[inference]`).
    pub fn may_use_model(self) -> bool {
        !matches!(self, MatteMethod::Classical)
    }
}

/// `parameters.model` of an upscale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpscaleMethod {
    /// Lanczos3 with the optional unsharp mask: no model.
    Lanczos,
    /// Real-ESRGAN animevideov3 (small, fast; x2 and x4 weights).
    RealEsrganFast,
    /// Real-ESRGAN x4plus (larger, sharper on photos; x2 by resampling its
    /// x4 output).
    RealEsrgan,
}

impl UpscaleMethod {
    /// The parameter's key.
    pub const KEY: &'static str = "model";
    const ALLOWED: &'static str = "lanczos, realesrgan-fast or realesrgan";

    /// The upscaler named `value`.
    ///
    /// # Errors
    /// A message naming the parameter and the allowed values.
    pub fn parse(value: &str) -> Result<UpscaleMethod, String> {
        match value {
            "lanczos" => Ok(UpscaleMethod::Lanczos),
            "realesrgan-fast" => Ok(UpscaleMethod::RealEsrganFast),
            "realesrgan" => Ok(UpscaleMethod::RealEsrgan),
            other => Err(format!(
                "parameters.model: {other:?} is not an upscale model, expected {}",
                Self::ALLOWED
            )),
        }
    }

    /// The upscaler of a JSON parameter; absent means Lanczos (what every
    /// upscale job got before models existed).
    ///
    /// # Errors
    /// As [`UpscaleMethod::parse`], or a value that is not a string.
    pub fn from_json(value: Option<&serde_json::Value>) -> Result<UpscaleMethod, String> {
        match value {
            None | Some(serde_json::Value::Null) => Ok(UpscaleMethod::Lanczos),
            Some(serde_json::Value::String(s)) => UpscaleMethod::parse(s),
            Some(_) => Err(format!(
                "parameters.model: expected a string, one of {}",
                Self::ALLOWED
            )),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            UpscaleMethod::Lanczos => "lanczos",
            UpscaleMethod::RealEsrganFast => "realesrgan-fast",
            UpscaleMethod::RealEsrgan => "realesrgan",
        }
    }

    /// Whether this upscaler runs a model.
    pub fn uses_model(self) -> bool {
        !matches!(self, UpscaleMethod::Lanczos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn methods_read_back_and_errors_name_the_parameter() {
        for method in [
            MatteMethod::Auto,
            MatteMethod::Model,
            MatteMethod::Classical,
        ] {
            assert_eq!(MatteMethod::parse(method.label()), Ok(method));
        }
        assert_eq!(MatteMethod::from_json(None), Ok(None));
        let err = MatteMethod::from_json(Some(&json!("magic"))).unwrap_err();
        assert_eq!(
            err,
            "parameters.method: \"magic\" is not a background removal method, \
             expected auto, model or classical"
        );
        let err = MatteMethod::from_json(Some(&json!(3))).unwrap_err();
        assert!(
            err.starts_with("parameters.method: expected a string"),
            "{err}"
        );
    }

    #[test]
    fn upscalers_read_back_and_default_to_lanczos() {
        for method in [
            UpscaleMethod::Lanczos,
            UpscaleMethod::RealEsrganFast,
            UpscaleMethod::RealEsrgan,
        ] {
            assert_eq!(UpscaleMethod::parse(method.label()), Ok(method));
        }
        assert_eq!(UpscaleMethod::from_json(None), Ok(UpscaleMethod::Lanczos));
        let err = UpscaleMethod::from_json(Some(&json!("esrgan"))).unwrap_err();
        assert!(err.contains("parameters.model"), "{err}");
        assert!(
            err.contains("lanczos, realesrgan-fast or realesrgan"),
            "{err}"
        );
        assert!(!UpscaleMethod::Lanczos.uses_model());
        assert!(UpscaleMethod::RealEsrgan.uses_model());
    }
}
