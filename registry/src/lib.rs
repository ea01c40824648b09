//! vmt-registry: the formats and storage of vmt-hub, with no machine learning in it.
//!
//! - [`bundle`]: `bundle.json`, the tensor naming scheme, exported directories;
//! - [`safetensors_canon`]: canonical safetensors bytes (same tensors, same digest).

pub mod bundle;
pub mod digest;
pub mod error;
pub mod safetensors_canon;

pub use error::{Error, Result};
pub use digest::Digest;
