//! `vmt-hub bench forward`: time the full multi-task forward pass (a benchmark, not a test).

use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;
use vmt_registry::bundle::{AdapterConfig, AdapterKind, BundleConfig, DecoderConfig};

use crate::model::init::randomized_bundle;
use crate::model::tensors::from_raw;
use crate::model::{Backbone, VmtModel};

/// One measured configuration.
#[derive(Debug, Serialize)]
pub struct ForwardTiming {
    pub backbone: String,
    pub tasks: usize,
    pub batch: usize,
    pub size: usize,
    pub iters: usize,
    pub median_s: f64,
    pub min_s: f64,
    pub images_per_s: f64,
}

/// Times `iters` forward passes (after one warm-up) for each batch size.
pub fn bench_forward(
    backbone: &str,
    tasks: &str,
    batches: &[usize],
    size: usize,
    iters: usize,
    device: &Device,
) -> anyhow::Result<Vec<ForwardTiming>> {
    let backbone = Backbone::load(backbone, device)?;
    let cfg = BundleConfig::new(
        backbone.geometry_with_provenance(),
        AdapterConfig::new(AdapterKind::Vmt, 4, 1.0),
        DecoderConfig::new(32, 64),
        crate::cli::parse_tasks(tasks)?,
    );
    let tensors = from_raw(&randomized_bundle(&cfg, 0), "bench", device)?;
    let model = VmtModel::new(cfg.clone(), Arc::clone(&backbone.swin), &tensors)?;
    let mut out = Vec::new();
    for &batch in batches {
        let pixels = Tensor::randn(0f32, 1f32, (batch, 3, size, size), device)?;
        model.forward(&pixels)?; // warm-up
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters.max(1) {
            let t = Instant::now();
            let o = model.forward(&pixels)?;
            // Force completion (CUDA is asynchronous).
            for (_, t) in &o.tasks {
                t.sum_all()?.to_scalar::<f32>()?;
            }
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[times.len() / 2];
        out.push(ForwardTiming {
            backbone: backbone.source.clone(),
            tasks: cfg.tasks.len(),
            batch,
            size,
            iters: times.len(),
            median_s: median,
            min_s: times[0],
            images_per_s: batch as f64 / median,
        });
    }
    Ok(out)
}
