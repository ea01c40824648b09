//! vmt-hub: train, store and share VMT-Adapters (multi-task adapters for a frozen Swin)
//! with candle.
//!
//! - [`model`]: the Swin backbone, the adapters, KEMs, decoders and losses;
//! - [`forward`]: running a bundle on an input;
//! - [`cli`]: the `vmt-hub` command line (a thin layer over the above).
//!
//! Formats and storage live in the `vmt-registry` crate (no candle).

pub mod adapter;
pub mod bench;
pub mod cli;
pub mod data;
pub mod device;
pub mod eval;
pub mod forward;
pub mod model;
pub mod predict;
pub mod tasks;
pub mod train;

pub use vmt_registry as registry;
