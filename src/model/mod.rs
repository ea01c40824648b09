//! The VMT-Adapter model in candle: the frozen Swin, the adapters, KEMs, decoders and
//! losses, equal to `reference/vmt_ref.py`.

pub mod backbone;
pub mod error;
pub mod fused;
pub mod hub;
pub mod init;
pub mod loss;
pub mod ops;
mod simd;
pub mod swin;
pub mod tensors;
pub mod vmt;

pub use backbone::{Backbone, BackboneSource};
pub use error::ModelError;
pub use loss::{task_loss, Target};
pub use tensors::NamedTensors;
pub use vmt::{Encoded, VmtModel, VmtOutput};
pub use vmt_registry::bundle::{
    AdapterConfig, AdapterKind, BundleConfig, DecoderConfig, SwinGeometry, TaskKind, TaskSpec,
};
