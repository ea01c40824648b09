#![deny(missing_docs)]
//! vmt-registry: the formats and storage of vmt-hub, with no machine learning in it.
//!
//! - [`bundle`]: `bundle.json`, the tensor naming scheme, exported directories;
//! - [`safetensors_canon`]: canonical safetensors bytes (same tensors, same digest);
//! - [`digest`], [`oci`], [`reference`](mod@reference): digests, OCI manifests, bundle references;
//! - [`file`](mod@file): reading only regular files within a limit, writing by temp file and rename;
//! - [`store`]: the local registry (blobs on disk, tag record, sled index);
//! - [`compose`]: merge, drop-task, rename-task and diff over stored bundles;
//! - [`fuzz`]: the parsers' fuzz entry points (`fuzz/` in the repository);
//! - [`remote`]: push, pull and `serve` over the OCI Distribution API.

pub mod bundle;
pub mod compose;
pub mod digest;
pub mod error;
pub mod file;
pub mod fuzz;
pub mod oci;
pub mod reference;
pub mod remote;
pub mod safetensors_canon;
pub mod sign;
pub mod store;

pub use digest::Digest;
pub use error::{Error, Result};
pub use store::Registry;
