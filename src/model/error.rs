//! Errors of the model layer: each names the file, tensor or field at fault.

use std::path::PathBuf;

/// What loading or running a model can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An I/O error on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// Bytes that are not a safetensors file.
    #[error("{path}: not a valid safetensors file: {reason}")]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// A JSON file that does not parse.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A backbone config with a bad field.
    #[error("{path}: {reason}")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// The field and what is wrong with it.
        reason: String,
    },
    /// A config that describes no Swin.
    #[error("{path}: not a Swin backbone config: {reason}")]
    NotSwin {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        reason: String,
    },
    /// A tensor the model needs is absent.
    #[error("{file}: tensor {name:?} is missing")]
    MissingTensor {
        /// The file or origin.
        file: String,
        /// The tensor's name.
        name: String,
    },
    /// A tensor of another shape.
    #[error("{file}: tensor {name:?} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The file or origin.
        file: String,
        /// The tensor's name.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A tensor of another dtype.
    #[error("{file}: tensor {name:?} is {found}, expected {expected}")]
    DTypeMismatch {
        /// The file or origin.
        file: String,
        /// The tensor's name.
        name: String,
        /// The dtype the model needs.
        expected: String,
        /// The dtype found.
        found: String,
    },
    /// A tensor the model has no place for.
    #[error("{file}: unexpected tensor {name:?} ({reason})")]
    UnexpectedTensor {
        /// The file or origin.
        file: String,
        /// The tensor's name.
        name: String,
        /// Why it does not belong.
        reason: String,
    },
    /// An input (a backbone spec, pixels, ...) that cannot be used.
    #[error("{what}: {reason}")]
    BadInput {
        /// What was given.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A backbone other than the one a bundle was trained on.
    #[error("backbone mismatch: {0}")]
    BackboneMismatch(String),
    /// candle failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`ModelError::BadInput`].
    pub fn bad_input(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::BadInput {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// The model layer's result type.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
