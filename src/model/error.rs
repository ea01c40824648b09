//! Errors of the model layer: each names the file, tensor or field at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {reason}")]
    NotSafetensors { path: PathBuf, reason: String },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("{path}: not a Swin backbone config: {reason}")]
    NotSwin { path: PathBuf, reason: String },
    #[error("{file}: tensor {name:?} is missing")]
    MissingTensor { file: String, name: String },
    #[error("{file}: tensor {name:?} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        file: String,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: tensor {name:?} is {found}, expected {expected}")]
    DTypeMismatch {
        file: String,
        name: String,
        expected: String,
        found: String,
    },
    #[error("{file}: unexpected tensor {name:?} ({reason})")]
    UnexpectedTensor {
        file: String,
        name: String,
        reason: String,
    },
    #[error("{what}: {reason}")]
    BadInput { what: String, reason: String },
    #[error("backbone mismatch: {0}")]
    BackboneMismatch(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub fn bad_input(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::BadInput {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
