//! The bundle: its `bundle.json`, its tensor layout and its exported directory.

pub mod check;
pub mod config;
pub mod dir;
pub mod layout;

pub use config::*;
pub use dir::{BundleDir, RawTensor};
pub use layout::*;
