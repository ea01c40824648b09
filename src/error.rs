//! The library's error: one enum at the top that wraps the errors of the layers below
//! (model, data, registry, candle) and adds what training, evaluation and the task table
//! refuse. Every variant names the file, task, step or setting at fault.
//!
//! ```
//! use vmt_hub::{Error, train::{Trainer, TrainOptions}};
//! use candle_core::Device;
//!
//! let opts = TrainOptions { steps: 0, ..TrainOptions::default() };
//! match Trainer::new(opts, &Device::Cpu) {
//!     Err(Error::Invalid(why)) => assert!(why.contains("steps")),
//!     other => panic!("expected Error::Invalid, got {:?}", other.err()),
//! }
//! ```

use std::path::PathBuf;

use crate::data::mat::MatError;
use crate::data::DataError;
use crate::model::ModelError;

/// What the library can refuse or fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Loading or running the model (a backbone, a bundle's tensors, pixels).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A dataset file.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A MATLAB file of a benchmark.
    #[error(transparent)]
    Mat(#[from] MatError),
    /// The registry, a bundle's format or a remote.
    #[error(transparent)]
    Registry(#[from] vmt_registry::Error),
    /// A bundle configuration that breaks a rule.
    #[error(transparent)]
    Config(#[from] vmt_registry::bundle::InvalidConfig),
    /// candle failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An I/O error on a file or folder.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// An I/O error not tied to one file (a pipe, a temp file).
    #[error(transparent)]
    System(#[from] std::io::Error),
    /// An image that cannot be decoded or encoded.
    #[error(transparent)]
    Image(#[from] image::ImageError),
    /// Options, arguments or a spec that cannot work (the message names which).
    #[error("{0}")]
    Invalid(String),
    /// A training step whose loss is NaN or infinite.
    #[error("step {step}: the loss is {loss} (a lower learning rate may help)")]
    NonFiniteLoss {
        /// The step (0-based) that produced it.
        step: usize,
        /// The loss.
        loss: f64,
    },
    /// A fresh run pointed at a directory that holds another run's checkpoints.
    #[error(
        "run directory {0} holds a run already: continue it with --resume, or choose \
         another with --run-dir (or remove it)"
    )]
    RunDirInUse(PathBuf),
    /// `resume` of a run directory with no checkpoint.
    #[error("resume: {0} has no checkpoint")]
    NoCheckpoint(PathBuf),
    /// `resume` with settings other than the checkpoint's.
    #[error("resume: {checkpoint} was made with other settings: {}", differing.join("; "))]
    SettingsChanged {
        /// The checkpoint folder.
        checkpoint: PathBuf,
        /// Each differing setting, with its value then and now.
        differing: Vec<String>,
    },
    /// Any of the above, with what was being done when it happened.
    #[error("{context}")]
    Context {
        /// What was being done (a file, a step, an image).
        context: String,
        /// The error.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// The error under any [`Error::Context`] layers.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            e => e,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Invalid(format!("JSON: {e}"))
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `.context(..)` and `.with_context(..)` on results and options, as anyhow has them,
/// building an [`Error::Context`] (or an [`Error::Invalid`] for a `None`).
pub trait Context<T> {
    /// Adds what was being done.
    ///
    /// # Errors
    /// The error (or `None`) with `context` on top.
    fn context(self, context: impl std::fmt::Display) -> Result<T>;

    /// Adds what was being done, computed only on error.
    ///
    /// # Errors
    /// The error (or `None`) with the computed context on top.
    fn with_context<C: std::fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: context.to_string(),
            source: Box::new(e.into()),
        })
    }

    fn with_context<C: std::fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: f().to_string(),
            source: Box::new(e.into()),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl std::fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error::Invalid(context.to_string()))
    }

    fn with_context<C: std::fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| Error::Invalid(f().to_string()))
    }
}

/// Returns early with an [`Error::Invalid`] built by `format!`.
macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err($crate::Error::Invalid(format!($($arg)*)))
    };
}
pub(crate) use invalid;
