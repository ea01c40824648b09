//! The measurements of `vmt-hub bench` (benchmarks, not tests): the multi-task forward
//! pass, a training step, the registry's import/export/verify and push/pull throughput.
//! Each report prints as the line `vmt-hub bench` shows (`Display`) or as JSON (`Serialize`).

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
    /// The backbone spec.
    pub backbone: String,
    /// Tasks run.
    pub tasks: usize,
    /// Images per pass.
    pub batch: usize,
    /// Image side.
    pub size: usize,
    /// Timed passes.
    pub iters: usize,
    /// Median seconds per pass.
    pub median_s: f64,
    /// Fastest pass, seconds.
    pub min_s: f64,
    /// Images per second at the median.
    pub images_per_s: f64,
    /// Median of the encoder alone (backbone, shared adapters, every task's KEMs).
    pub encoder_median_s: f64,
    /// Median of the decoders alone.
    pub decoder_median_s: f64,
    /// Peak resident memory of the process (VmHWM), MiB; None where /proc is absent.
    pub peak_rss_mib: Option<f64>,
}

/// Times `iters` forward passes (after one warm-up) for each batch size.
pub fn bench_forward(
    backbone: &str,
    tasks: &str,
    batches: &[usize],
    size: usize,
    iters: usize,
    device: &Device,
) -> crate::Result<Vec<ForwardTiming>> {
    let backbone = Backbone::load(backbone, device)?;
    let cfg = BundleConfig::new(
        backbone.geometry_with_provenance(),
        AdapterConfig::new(AdapterKind::Vmt, 4, 1.0),
        DecoderConfig::new(32, 64),
        crate::tasks::bench_task_selection(tasks)?,
    );
    let tensors = from_raw(&randomized_bundle(&cfg, 0), "bench", device)?;
    let model = VmtModel::new(cfg.clone(), Arc::clone(&backbone.swin), &tensors)?;
    let mut out = Vec::new();
    for &batch in batches {
        let pixels = Tensor::randn(0f32, 1f32, (batch, 3, size, size), device)?;
        model.forward(&pixels)?; // warm-up
        let (mut times, mut enc_t, mut dec_t) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..iters.max(1) {
            let t = Instant::now();
            let enc = model.encode(&pixels)?;
            // Force completion (CUDA is asynchronous).
            for f in enc.task_feats.iter().flatten() {
                f.sum_all()?.to_scalar::<f32>()?;
            }
            let t_enc = t.elapsed().as_secs_f64();
            let o = model.decode(enc)?;
            for (_, t) in &o.tasks {
                t.sum_all()?.to_scalar::<f32>()?;
            }
            let total = t.elapsed().as_secs_f64();
            times.push(total);
            enc_t.push(t_enc);
            dec_t.push(total - t_enc);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let (encoder_median_s, decoder_median_s) = (median(&mut enc_t), median(&mut dec_t));
        let median = median(&mut times);
        out.push(ForwardTiming {
            backbone: backbone.source.clone(),
            tasks: cfg.tasks.len(),
            batch,
            size,
            iters: times.len(),
            median_s: median,
            min_s: times[0],
            images_per_s: batch as f64 / median,
            encoder_median_s,
            decoder_median_s,
            peak_rss_mib: peak_rss_mib(),
        });
    }
    Ok(out)
}

/// One registry operation's throughput.
#[derive(Debug, Serialize)]
pub struct RegistryTiming {
    /// What was timed.
    pub operation: String,
    /// Bytes it moved.
    pub bytes: u64,
    /// Median seconds.
    pub median_s: f64,
    /// Throughput at the median, MB/s.
    pub mb_per_s: f64,
}

fn median_of(mut times: Vec<f64>) -> f64 {
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

/// Import, export and verify of a Swin-T-sized four-task bundle in a temporary
/// registry, next to `sha256sum` over the same bytes. Imports go to a fresh registry each
/// time (so every blob is written), under `dir`.
pub fn bench_registry(dir: &std::path::Path, iters: usize) -> crate::Result<Vec<RegistryTiming>> {
    use vmt_registry::bundle::{BundleDir, SwinGeometry};
    use vmt_registry::reference::TagName;
    use vmt_registry::Registry;

    let cfg = BundleConfig::new(
        SwinGeometry::swin_t(),
        AdapterConfig::new(AdapterKind::Vmt, 4, 1.0),
        DecoderConfig::new(32, 64),
        crate::tasks::parse_tasks("semseg,human_parts,sal,normals")?,
    );
    let src = dir.join("bundle");
    let tensors = randomized_bundle(&cfg, 0);
    BundleDir::new(cfg, tensors, &src)?.write(&src)?;
    let bytes = std::fs::metadata(src.join("adapter.safetensors"))?.len()
        + std::fs::metadata(src.join("bundle.json"))?.len();
    let tag = TagName::parse("bench:v1")?;
    let mut rows = Vec::new();
    let mut record = |op: &str, times: Vec<f64>| {
        let m = median_of(times);
        rows.push(RegistryTiming {
            operation: op.into(),
            bytes,
            median_s: m,
            mb_per_s: bytes as f64 / 1e6 / m,
        });
    };
    let mut import = Vec::new();
    for i in 0..iters {
        let root = dir.join(format!("reg{i}"));
        let t = Instant::now();
        let bundle = BundleDir::read(&src)?;
        Registry::open(&root)?.publish(&bundle, &tag)?;
        import.push(t.elapsed().as_secs_f64());
    }
    record(
        "import (read + check + hash + fsync'd blobs + index)",
        import,
    );
    let reg = Registry::open(&dir.join("reg0"))?;
    let d = reg.resolve("bench:v1")?;
    let mut export = Vec::new();
    for i in 0..iters {
        let out = dir.join(format!("export{i}"));
        let t = Instant::now();
        reg.load(&d)?.write(&out)?;
        export.push(t.elapsed().as_secs_f64());
    }
    record("export (verify blobs + write directory)", export);
    let mut verify = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        let r = reg.verify(Some("bench:v1"))?;
        if !r.ok() {
            crate::error::invalid!("verify found problems: {:?}", r.problems);
        }
        verify.push(t.elapsed().as_secs_f64());
    }
    record("verify (re-hash every blob of the bundle)", verify);
    let mut sha = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        let st = std::process::Command::new("sha256sum")
            .arg(src.join("adapter.safetensors"))
            .arg(src.join("bundle.json"))
            .output()?;
        if !st.status.success() {
            crate::error::invalid!("sha256sum failed");
        }
        sha.push(t.elapsed().as_secs_f64());
    }
    record("sha256sum on the same files (process included)", sha);
    Ok(rows)
}

/// One GEMM of a Swin linear layer, timed with both ways of sharing it between threads.
#[derive(Debug, Serialize)]
pub struct GemmTiming {
    /// The layer and pass, e.g. `stage 3 fc2 forward`.
    pub layer: String,
    /// Rows (the tokens of the batch).
    pub m: usize,
    /// Output columns.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// GFLOP/s of the fastest of the timed runs, split as the fused layers do.
    pub blocks_gflops: f64,
    /// GFLOP/s of the fastest run with gemm's own split (candle's matmul).
    pub gemm_gflops: f64,
    /// Threads of the pool.
    pub threads: usize,
}

impl std::fmt::Display for GemmTiming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<24} {:>5} x {:>4} x {:>4}: blocks {:6.1} GFLOP/s, gemm's split {:6.1} GFLOP/s ({} threads)",
            self.layer, self.m, self.n, self.k, self.blocks_gflops, self.gemm_gflops, self.threads
        )
    }
}

/// Times the GEMMs of Swin-T's linear layers (qkv, proj, fc1, fc2 of each stage; the
/// forward product `x Wᵀ` and the backward's input gradient `grad W`) at `batch` images
/// of `size` pixels, the fastest of `iters` runs each, on a thread of the pool (as the
/// model runs).
pub fn bench_gemm(batch: usize, size: usize, iters: usize) -> Vec<GemmTiming> {
    crate::model::on_pool(|| gemm_timings(batch, size, iters))
}

fn gemm_timings(batch: usize, size: usize, iters: usize) -> Vec<GemmTiming> {
    use crate::model::fused::{gemm_split, GemmSplit};
    let mut rows = Vec::new();
    for stage in 0..4 {
        let tokens = batch * ((size / 4) >> stage).pow(2);
        let c = 96 << stage;
        for (name, inp, out) in [
            ("qkv", c, 3 * c),
            ("proj", c, c),
            ("fc1", c, 4 * c),
            ("fc2", 4 * c, c),
        ] {
            for backward in [false, true] {
                // forward: [tokens, in] x [out, in]ᵀ; backward: [tokens, out] x [out, in].
                let (m, n, k) = if backward {
                    (tokens, inp, out)
                } else {
                    (tokens, out, inp)
                };
                let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
                let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
                let mut y = vec![0f32; m * n];
                let mut best = |split| {
                    (0..iters.max(1))
                        .map(|_| {
                            let t = Instant::now();
                            gemm_split((m, n, k), (&x, &w, backward), &mut y, split);
                            std::hint::black_box(&y);
                            t.elapsed().as_secs_f64()
                        })
                        .fold(f64::MAX, f64::min)
                };
                let flop = 2.0 * (m * n * k) as f64 / 1e9;
                let pass = if backward { "backward" } else { "forward" };
                rows.push(GemmTiming {
                    layer: format!("stage {} {name} {pass}", stage + 1),
                    m,
                    n,
                    k,
                    blocks_gflops: flop / best(GemmSplit::Blocks),
                    gemm_gflops: flop / best(GemmSplit::Gemm),
                    threads: rayon::current_num_threads(),
                });
            }
        }
    }
    rows
}

/// One measured training configuration.
#[derive(Debug, Serialize)]
pub struct TrainTiming {
    /// The backbone spec.
    pub backbone: String,
    /// Tasks trained.
    pub tasks: usize,
    /// An add-task step: the shared adapter frozen.
    pub add_task: bool,
    /// Images per step.
    pub batch: usize,
    /// Image side.
    pub size: usize,
    /// Timed steps.
    pub steps: usize,
    /// Mean seconds per step.
    pub step_s: f64,
    /// Images per second.
    pub images_per_s: f64,
    /// Peak resident memory of the process (VmHWM), MiB; None where /proc is absent.
    pub peak_rss_mib: Option<f64>,
}

/// Random targets of the right kind for each task.
fn random_targets(
    tasks: &[vmt_registry::bundle::TaskSpec],
    b: usize,
    s: usize,
    device: &Device,
) -> crate::Result<Vec<crate::model::Target>> {
    use crate::model::Target;
    use vmt_registry::bundle::TaskKind;
    tasks
        .iter()
        .map(|t| {
            Ok(match t.kind {
                TaskKind::Segmentation | TaskKind::Saliency => {
                    let k = if t.kind == TaskKind::Saliency {
                        2.0
                    } else {
                        t.channels as f64
                    };
                    let v = (Tensor::rand(0f32, 1f32, (b, s, s), device)? * k)?
                        .floor()?
                        .to_dtype(candle_core::DType::U8)?;
                    Target::Labels(v)
                }
                TaskKind::Normals => {
                    Target::Dense(Tensor::randn(0f32, 1f32, (b, 3, s, s), device)?)
                }
                TaskKind::Depth => {
                    Target::Dense(Tensor::rand(0.5f32, 10f32, (b, 1, s, s), device)?)
                }
            })
        })
        .collect()
}

/// Peak resident set size of this process, MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Times training steps (forward for all tasks, backward, AdamW) on in-memory random
/// batches, after one warm-up step. Data loading is not included.
pub fn bench_train(
    backbone: &str,
    tasks: &str,
    batch: usize,
    size: usize,
    steps: usize,
    add_task: bool,
    device: &Device,
) -> crate::Result<TrainTiming> {
    let backbone = Backbone::load(backbone, device)?;
    let specs = crate::tasks::bench_task_selection(tasks)?;
    let cfg = BundleConfig::new(
        backbone.geometry_with_provenance(),
        AdapterConfig::new(AdapterKind::Vmt, 4, 1.0),
        DecoderConfig::new(32, 64),
        specs.clone(),
    );
    let init = crate::model::init::init_bundle(&cfg, 0);
    let (model, mut opt) = crate::train::trainable(&cfg, &backbone, &init, 1e-4, |s| {
        !(add_task && s.component == vmt_registry::bundle::SHARED_COMPONENT)
    })?;
    let pixels = Tensor::randn(0f32, 1f32, (batch, 3, size, size), device)?;
    let targets = random_targets(&specs, batch, size, device)?;
    let weights = vec![1.0; specs.len()];
    let mut step = || {
        crate::train::train_step(
            &model,
            &mut opt,
            &pixels,
            &targets,
            &weights,
            1e-4,
            Some(1.0),
        )
    };
    step()?; // warm-up
    let t = Instant::now();
    for _ in 0..steps.max(1) {
        step()?;
    }
    let step_s = t.elapsed().as_secs_f64() / steps.max(1) as f64;
    Ok(TrainTiming {
        backbone: backbone.source.clone(),
        tasks: specs.len(),
        add_task,
        batch,
        size,
        steps: steps.max(1),
        step_s,
        images_per_s: batch as f64 / step_s,
        peak_rss_mib: peak_rss_mib(),
    })
}

/// Push and pull throughput of Swin-T-sized four-task bundles against `remote`
/// (`oci://HOST:PORT/REPO`); each round pushes a bundle with new tensors (so every blob
/// travels) and pulls it into an empty registry, with `credentials`.
pub fn bench_transfer(
    remote: &str,
    credentials: &vmt_registry::remote::client::Credentials,
    rounds: usize,
    dir: &std::path::Path,
) -> crate::Result<Vec<RegistryTiming>> {
    use vmt_registry::bundle::{BundleDir, SwinGeometry};
    use vmt_registry::reference::TagName;
    use vmt_registry::remote::client::Client;
    use vmt_registry::remote::transfer::{pull, push, Quiet};
    use vmt_registry::remote::RemoteRef;
    use vmt_registry::Registry;

    let cfg = BundleConfig::new(
        SwinGeometry::swin_t(),
        AdapterConfig::new(AdapterKind::Vmt, 4, 1.0),
        DecoderConfig::new(32, 64),
        crate::tasks::parse_tasks("semseg,human_parts,sal,normals")?,
    );
    let src = Registry::open(&dir.join("src"))?;
    let (mut push_t, mut pull_t, mut bytes) = (Vec::new(), Vec::new(), 0u64);
    let base = remote.trim_end_matches('/');
    for i in 0..rounds.max(1) {
        let bundle = BundleDir::new(cfg.clone(), randomized_bundle(&cfg, 1000 + i as u64), dir)?;
        let tag = TagName::parse(&format!("bench:r{i}"))?;
        let d = src.publish(&bundle, &tag)?.digest;
        let r = RemoteRef::parse(&format!("{base}:r{i}"), false)?;
        let client = Client::new(&r.base, credentials.clone());
        let t = Instant::now();
        let report = push(&src, &tag.to_string(), &r, &client, &mut Quiet)?;
        push_t.push(t.elapsed().as_secs_f64());
        bytes = report.bytes_sent;
        let dst = Registry::open(&dir.join(format!("dst{i}")))?;
        let t = Instant::now();
        let got = pull(&dst, &r, &client, None, &mut Quiet)?;
        pull_t.push(t.elapsed().as_secs_f64());
        if got.manifest != Some(d) {
            crate::error::invalid!("pulled another manifest");
        }
    }
    let row = |op: &str, times: Vec<f64>| {
        let m = median_of(times);
        RegistryTiming {
            operation: op.into(),
            bytes,
            median_s: m,
            mb_per_s: bytes as f64 / 1e6 / m,
        }
    };
    Ok(vec![
        row("push (every blob new)", push_t),
        row("pull (into an empty registry, verified)", pull_t),
    ])
}

impl std::fmt::Display for ForwardTiming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |s: f64| s * 1e3;
        write!(
            f,
            "{} {} tasks, batch {}, {}x{}: median {:.1} ms (encoder {:.1} ms, decoders {:.1} ms), min {:.1} ms, {:.2} images/s ({} runs)",
            self.backbone, self.tasks, self.batch, self.size, self.size, ms(self.median_s),
            ms(self.encoder_median_s), ms(self.decoder_median_s), ms(self.min_s),
            self.images_per_s, self.iters
        )
    }
}

impl std::fmt::Display for TrainTiming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rss = self
            .peak_rss_mib
            .map_or("n/a".into(), |m| format!("{m:.0} MiB"));
        write!(
            f,
            "{} {} tasks{}, batch {}, {}x{}: {:.2} s/step, {:.2} images/s, peak RSS {rss}",
            self.backbone,
            self.tasks,
            if self.add_task { " (add-task)" } else { "" },
            self.batch,
            self.size,
            self.size,
            self.step_s,
            self.images_per_s,
        )
    }
}

impl std::fmt::Display for RegistryTiming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<52} {:>8.1} MB/s  ({:.1} ms for {:.2} MB)",
            self.operation,
            self.mb_per_s,
            self.median_s * 1e3,
            self.bytes as f64 / 1e6
        )
    }
}

#[cfg(test)]
mod tests {
    /// `bench gemm` times every linear layer of the four stages, both passes, with the
    /// shapes of the batch's tokens.
    #[test]
    fn bench_gemm_covers_every_layer_of_swin_t() {
        let rows = super::bench_gemm(1, 32, 1);
        assert_eq!(rows.len(), 4 * 4 * 2);
        assert_eq!(rows[0].layer, "stage 1 qkv forward");
        assert_eq!((rows[0].m, rows[0].n, rows[0].k), (64, 288, 96));
        let last = rows.last().unwrap();
        assert_eq!(last.layer, "stage 4 fc2 backward");
        assert_eq!((last.m, last.n, last.k), (1, 3072, 768));
        assert!(rows
            .iter()
            .all(|r| r.blocks_gflops > 0.0 && r.gemm_gflops > 0.0));
    }
}
