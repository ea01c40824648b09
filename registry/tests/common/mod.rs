//! Small bundles made in memory, for registry tests that need many of them, and a
//! hostile HTTP server.
#![allow(dead_code)]

pub mod hostile;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vmt_registry::bundle::{
    bundle_tensors, AdapterConfig, AdapterKind, BundleConfig, BundleDir, DecoderConfig, RawTensor,
    SwinGeometry, TaskKind, TaskSpec,
};

/// A tiny geometry: bundles of a few KiB.
pub fn micro_config(tasks: &[&str]) -> BundleConfig {
    BundleConfig::new(
        SwinGeometry::new(8, &[1, 1], &[1, 2], 2),
        AdapterConfig::new(AdapterKind::Vmt, 4, 1.0),
        DecoderConfig::new(4, 4),
        tasks
            .iter()
            .map(|t| TaskSpec::new(t, TaskKind::Segmentation, 3))
            .collect(),
    )
}

/// A bundle whose shared tensors depend on `shared_seed` and each task's on its name
/// and `task_seed`: equal seeds give byte-identical components.
pub fn micro_bundle(tasks: &[&str], shared_seed: u32, task_seed: u32) -> BundleDir {
    let cfg = micro_config(tasks);
    let tensors: BTreeMap<String, RawTensor> = bundle_tensors(&cfg)
        .into_iter()
        .map(|s| {
            let seed = if s.component == "shared" {
                shared_seed
            } else {
                task_seed
            };
            let salt = s
                .name
                .bytes()
                .fold(seed, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
            let values: Vec<f32> = (0..s.numel())
                .map(|i| ((salt as usize + i * 7) % 13) as f32 / 13.0)
                .collect();
            (
                s.name.clone(),
                RawTensor::from_f32(s.shape.clone(), &values),
            )
        })
        .collect();
    BundleDir::new(cfg, tensors, Path::new("micro")).unwrap()
}

/// The workspace's `tests/fixtures` (parity fixtures made by `reference/vmt_ref.py`).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Blob files on disk.
pub fn blob_count(root: &Path) -> usize {
    std::fs::read_dir(root.join("blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}
