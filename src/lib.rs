#![deny(missing_docs)]
//! vmt-hub: train, store and share VMT-Adapters (multi-task adapters for a frozen Swin)
//! with candle.
//!
//! - [`adapter`]: open a stored bundle on its backbone and run it ([`adapter::Adapter`]);
//! - [`train`]: train a bundle, or add tasks to one ([`train::train`],
//!   [`train::TrainOptions`]);
//! - [`eval`], [`predict`]: metrics on a dataset split, pictures of predictions;
//! - [`data`]: the dataset layout, its loader and the synthetic scenes;
//! - [`model`]: the Swin backbone ([`model::BackboneSource`]), the adapters, KEMs,
//!   decoders and losses;
//! - [`tasks`]: the task table;
//! - [`forward`]: reading inputs and writing outputs of `vmt-hub forward`;
//! - [`bench`](mod@bench): the measurements behind `vmt-hub bench` and docs/benchmarks.md;
//! - [`error`]: [`Error`], what every fallible function here returns.
//!
//! Formats, storage, composition and remotes live in the `vmt-registry` crate (no
//! candle), re-exported as [`registry`]. The `vmt-hub` binary (`src/main.rs`, `src/cli/`)
//! only parses arguments, calls one function of this library per command and prints.
//! `examples/` shows the main calls.

pub mod adapter;
pub mod bench;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod forward;
pub mod fuzz;
pub mod model;
pub mod predict;
pub mod tasks;
pub mod train;

pub use error::{Error, Result};
pub use vmt_registry as registry;
