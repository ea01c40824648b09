//! Registry errors: each names the file, tensor, reference or digest at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: missing ({what})")]
    MissingFile { path: PathBuf, what: &'static str },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    BadBundle { path: PathBuf, reason: String },
    #[error("{path}: not a valid safetensors file: {reason}")]
    NotSafetensors { path: PathBuf, reason: String },
    #[error("{file}: tensor {name:?} is missing")]
    MissingTensor { file: PathBuf, name: String },
    #[error("{file}: tensor {name:?} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        file: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: tensor {name:?} is {found}, bundles hold only F32 tensors")]
    NotF32 {
        file: PathBuf,
        name: String,
        found: String,
    },
    #[error("{file}: tensor {name:?} holds a NaN or infinite value (element {index})")]
    NonFinite {
        file: PathBuf,
        name: String,
        index: usize,
    },
    #[error("{file}: tensor {name:?} is not in the bundle's naming scheme ({reason})")]
    UnexpectedTensor {
        file: PathBuf,
        name: String,
        reason: String,
    },
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("no bundle matches {0:?} (see `vmt-hub list`)")]
    NotFound(String),
    #[error("{reference:?} is ambiguous: it matches {}", candidates.join(", "))]
    Ambiguous {
        reference: String,
        candidates: Vec<String>,
    },
    #[error("{what}: content does not match its digest (expected {expected}, found {actual})")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("blob {digest} is missing from the store ({what})")]
    MissingBlob { digest: String, what: String },
    #[error("{what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("another vmt-hub process holds the registry at {path} (its index is locked); try again when it finishes")]
    Locked { path: PathBuf },
    #[error("{remote}: {reason}")]
    Remote {
        remote: String,
        /// The HTTP status, when the remote answered with an error status.
        status: Option<u16>,
        reason: String,
    },
    #[error("{remote}: authentication failed: {reason}")]
    Auth { remote: String, reason: String },
    #[error("cannot compose: {0}")]
    Compose(String),
    #[error("registry index: {0}")]
    Index(#[from] sled::Error),
}

impl Error {
    /// An error of a remote (`status` when it answered with an HTTP error status).
    pub fn remote(remote: &str, status: Option<u16>, reason: impl Into<String>) -> Self {
        Self::Remote {
            remote: remote.into(),
            status,
            reason: reason.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
