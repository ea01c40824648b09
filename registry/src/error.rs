//! Registry errors: each names the file, tensor, reference or digest at fault.

use std::path::PathBuf;

/// Everything the registry, its formats and its remotes can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a file or folder.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A file a bundle directory needs is absent.
    #[error("{path}: missing ({what})")]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// Why it is needed.
        what: &'static str,
    },
    /// A JSON file that does not parse (or does not fit its schema).
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file (or a name for bytes from elsewhere).
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A bundle (config, manifest or layers) that breaks a rule or a limit.
    #[error("{path}: {reason}")]
    BadBundle {
        /// Where it came from.
        path: PathBuf,
        /// The rule it breaks.
        reason: String,
    },
    /// Bytes that are not a safetensors file.
    #[error("{path}: not a valid safetensors file: {reason}")]
    NotSafetensors {
        /// Where they came from.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// A tensor the config implies is absent.
    #[error("{file}: tensor {name:?} is missing")]
    MissingTensor {
        /// The file or component.
        file: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A tensor of another shape than the config implies.
    #[error("{file}: tensor {name:?} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The file or component.
        file: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A tensor that is not F32.
    #[error("{file}: tensor {name:?} is {found}, bundles hold only F32 tensors")]
    NotF32 {
        /// The file or component.
        file: PathBuf,
        /// The tensor's name.
        name: String,
        /// Its dtype.
        found: String,
    },
    /// A tensor holding NaN or an infinity.
    #[error("{file}: tensor {name:?} holds a NaN or infinite value (element {index})")]
    NonFinite {
        /// The file or component.
        file: PathBuf,
        /// The tensor's name.
        name: String,
        /// The first such element.
        index: usize,
    },
    /// A tensor the config does not imply.
    #[error("{file}: tensor {name:?} is not in the bundle's naming scheme ({reason})")]
    UnexpectedTensor {
        /// The file or component.
        file: PathBuf,
        /// The tensor's name.
        name: String,
        /// Why it does not belong.
        reason: String,
    },
    /// A reference, name or tag that does not parse.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference {
        /// What was given.
        reference: String,
        /// The rule it breaks.
        reason: String,
    },
    /// No bundle matches the reference.
    #[error("no bundle matches {0:?} (see `vmt-hub list`)")]
    NotFound(String),
    /// A digest prefix that matches several bundles.
    #[error("{reference:?} is ambiguous: it matches {}", candidates.join(", "))]
    Ambiguous {
        /// The prefix given.
        reference: String,
        /// The short digests it matches.
        candidates: Vec<String>,
    },
    /// Content that does not hash to its digest.
    #[error("{what}: content does not match its digest (expected {expected}, found {actual})")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// The digest (and size) declared.
        expected: String,
        /// The digest (and size) found.
        actual: String,
    },
    /// A blob a bundle needs is not in the store.
    #[error("blob {digest} is missing from the store ({what})")]
    MissingBlob {
        /// The blob's digest.
        digest: String,
        /// What it is.
        what: String,
    },
    /// Stored state that is damaged (a manifest, the index, a tag file).
    #[error("{what}: {reason}")]
    Corrupt {
        /// What is damaged.
        what: String,
        /// How.
        reason: String,
    },
    /// Another process holds the registry.
    #[error("another vmt-hub process holds the registry at {path} (its index is locked); try again when it finishes")]
    Locked {
        /// The registry's root.
        path: PathBuf,
    },
    /// A remote failed or refused.
    #[error("{remote}: {reason}")]
    Remote {
        /// The remote (its base URL or reference).
        remote: String,
        /// The HTTP status, when the remote answered with an error status.
        status: Option<u16>,
        /// The OCI error code of its answer's body, when it sent a known one.
        code: Option<crate::oci::ErrorCode>,
        /// What happened.
        reason: String,
    },
    /// A remote sent more bytes than were declared or allowed (not retried: a lie, not
    /// a broken connection).
    #[error("{remote}: {what} is larger than the {limit} bytes expected")]
    Oversized {
        /// The remote.
        remote: String,
        /// What it sent.
        what: String,
        /// The bytes declared or allowed.
        limit: u64,
    },
    /// A remote refused the credentials (or wants some).
    #[error("{remote}: authentication failed: {reason}")]
    Auth {
        /// The remote.
        remote: String,
        /// What it said (never the credentials).
        reason: String,
    },
    /// A stored login that cannot be used: a credentials file that does not parse, an
    /// entry that is not base64 `user:password`, a credential helper that fails.
    #[error("{origin}: {reason}")]
    Credentials {
        /// The file, or the helper and the file that names it.
        origin: String,
        /// What is wrong (never the credentials).
        reason: String,
    },
    /// A key file that cannot be used: not PEM, not P-256, a wrong passphrase.
    #[error("{origin}: {reason}")]
    Key {
        /// The key file.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A bundle whose signatures do not satisfy what was required (nothing was stored).
    #[error("{what}: {reason}")]
    Signature {
        /// The bundle (its remote or local reference).
        what: String,
        /// Why each signature was refused, and the keys tried.
        reason: String,
    },
    /// A composition (merge, drop-task, rename-task) that cannot be done.
    #[error("cannot compose: {0}")]
    Compose(String),
    /// The sled index failed.
    #[error("registry index: {0}")]
    Index(#[from] sled::Error),
}

impl Error {
    /// An error of a remote (`status` when it answered with an HTTP error status).
    pub fn remote(remote: &str, status: Option<u16>, reason: impl Into<String>) -> Self {
        Self::Remote {
            remote: remote.into(),
            status,
            code: None,
            reason: reason.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// The registry's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
