//! Fuzz entry points for the dataset parsers (see `vmt_registry::fuzz` for the registry's
//! and `fuzz/` for the targets): arbitrary bytes never panic.

use std::path::Path;

/// A MATLAB v5 file (PASCAL-Context labels, NYUD-v2 arrays).
pub fn mat(data: &[u8]) {
    let _ = crate::data::mat::parse(data);
}

/// A `.npy` array (NYUD-v2 depth and normals): what parses has as many values as its
/// shape says.
pub fn npy(data: &[u8]) {
    if let Ok((shape, values)) = crate::data::benchmarks::nyud::parse_npy(data, Path::new("fuzz")) {
        assert_eq!(shape.iter().product::<usize>(), values.len());
    }
}

/// Every target of this crate.
pub const TARGETS: &[vmt_registry::fuzz::Target] = &[("mat", mat), ("npy", npy)];
