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

/// Runs `f` on a thread of rayon's global pool (the current one if it already is one).
/// The CPU kernels (candle's GEMM, the fused ops) split their work over that pool: called
/// from a thread outside it, each of them wakes the pool's threads and puts the caller to
/// sleep until they finish; from a pool thread, the caller works alongside them. About 20%
/// of a training step on 2 cores (docs/benchmarks.md, "Running on the pool").
pub(crate) fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::join(f, || ()).0
}
pub use error::ModelError;
pub use loss::{task_loss, Target};
pub use tensors::NamedTensors;
pub use vmt::{Encoded, VmtModel, VmtOutput};
pub use vmt_registry::bundle::{
    AdapterConfig, AdapterKind, BundleConfig, DecoderConfig, SwinGeometry, TaskKind, TaskSpec,
};
