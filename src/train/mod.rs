//! `vmt-hub train`: AdamW on the bundle's tensors only, over a frozen backbone.
//!
//! A run directory holds `metrics.jsonl` (one line per step), `checkpoints/step-N/`
//! (weights, AdamW moments and the step; the last K kept) and nothing else. The data
//! order and augmentations are a function of (seed, step), so `--resume` restores a run
//! exactly: a resumed run ends with the same bytes as an uninterrupted one.

pub(crate) mod checkpoint;
pub mod optim;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, Var};
use serde_json::json;
use vmt_registry::bundle::{
    bundle_tensors, AdapterConfig, AdapterKind, BundleConfig, BundleDir, DecoderConfig, Metrics,
    Provenance, TaskProvenance, TaskSpec,
};

use crate::data::loader::{train_plan, Loader};
use crate::data::Dataset;
use crate::eval::evaluate;
use crate::model::init::init_bundle;
use crate::model::tensors::{from_raw, to_raw};
use crate::model::{task_loss, Backbone, NamedTensors, VmtModel};
use checkpoint::{Checkpoint, Fingerprint};
use optim::{learning_rate, AdamW};

/// Everything a training run needs.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The dataset folder.
    pub data: PathBuf,
    /// Task names, all present in the dataset.
    pub tasks: Vec<String>,
    /// The split trained on (`splits/<name>.txt`), `train` unless told otherwise (e.g.
    /// `human_parts_train`, the images of an imported PASCAL-Context with people).
    pub train_split: String,
    /// What `Backbone::load` takes: `random:NAME`, a folder or a Hub repo.
    pub backbone: String,
    /// VMT-Adapter or -Lite.
    pub adapter: AdapterKind,
    /// Bottleneck reduction.
    pub reduction: usize,
    /// Adapter scale `s`.
    pub scale: f64,
    /// Decoder width D.
    pub decoder_dim: usize,
    /// Decoder hidden width.
    pub decoder_hidden: usize,
    /// Optimisation steps.
    pub steps: usize,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW weight decay (matrices only).
    pub weight_decay: f64,
    /// Default: 5% of the steps.
    pub warmup: Option<usize>,
    /// Training image side.
    pub image_size: usize,
    /// Per-task weights; missing tasks use [`default_loss_weight`].
    pub loss_weights: BTreeMap<String, f64>,
    /// Clip the global gradient norm to this (None: no clipping).
    pub clip_grad: Option<f64>,
    /// Seeds initialisation, order and augmentation.
    pub seed: u64,
    /// Loader threads.
    pub workers: usize,
    /// Checkpoint every this many steps.
    pub checkpoint_every: usize,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Where checkpoints and metrics.jsonl go.
    pub run_dir: PathBuf,
    /// Continue from the last checkpoint.
    pub resume: bool,
    /// Stop (with a checkpoint, without a bundle) once this step is reached.
    pub stop_after: Option<usize>,
    /// No progress bar.
    pub quiet: bool,
    /// add-task: a trained bundle whose shared adapter and tasks stay frozen; `tasks`
    /// are the new tasks, and the adapter/decoder settings come from this bundle.
    pub base: Option<Base>,
}

impl Default for TrainOptions {
    /// The command line's defaults: four PASCAL-Context tasks of `data/` on
    /// `random:tiny`, VMT-Adapter with reduction 4, decoders 32/64, 300 steps of batch 8
    /// at 64x64, AdamW lr 2e-3, weight decay 1e-4, clipping at 1.0, seed 0, run
    /// directory `runs/default`. Override fields with struct update syntax:
    ///
    /// ```
    /// use vmt_hub::train::TrainOptions;
    /// let opts = TrainOptions {
    ///     data: "my-data".into(),
    ///     tasks: vec!["semseg".into(), "sal".into()],
    ///     steps: 50,
    ///     ..TrainOptions::default()
    /// };
    /// assert_eq!(opts.batch, 8);
    /// ```
    fn default() -> Self {
        Self {
            data: PathBuf::from("data"),
            tasks: ["semseg", "human_parts", "sal", "normals"]
                .map(String::from)
                .to_vec(),
            train_split: "train".into(),
            backbone: "random:tiny".into(),
            adapter: AdapterKind::Vmt,
            reduction: 4,
            scale: 1.0,
            decoder_dim: 32,
            decoder_hidden: 64,
            steps: 300,
            batch: 8,
            lr: 2e-3,
            weight_decay: 1e-4,
            warmup: None,
            image_size: 64,
            loss_weights: BTreeMap::new(),
            clip_grad: Some(1.0),
            seed: 0,
            workers: 2,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            run_dir: PathBuf::from("runs/default"),
            resume: false,
            stop_after: None,
            quiet: false,
            base: None,
        }
    }
}

/// The bundle `add-task` extends.
#[derive(Debug, Clone)]
pub struct Base {
    /// The trained bundle.
    pub bundle: BundleDir,
    /// Its manifest digest, when it came from the registry (recorded as the parent).
    pub parent: Option<vmt_registry::Digest>,
}

impl Base {
    /// Identifies the base in checkpoints: its manifest, or the digest of its tensors.
    pub fn identity(&self) -> String {
        match &self.parent {
            Some(d) => d.to_string(),
            None => vmt_registry::Digest::of(&vmt_registry::safetensors_canon::canonical_bytes(
                &self.bundle.tensors,
            ))
            .to_string(),
        }
    }
}

/// Weights of the PASCAL-Context protocol (as in MTLoRA): semseg 1, human_parts 2,
/// sal 5, normals 10; any other task 1.
pub fn default_loss_weight(task: &str) -> f64 {
    match task {
        "human_parts" => 2.0,
        "sal" => 5.0,
        "normals" => 10.0,
        _ => 1.0,
    }
}

/// How a run ended.
pub enum TrainOutcome {
    /// The trained bundle, with provenance and validation metrics in its config.
    Finished(Box<BundleDir>),
    /// Stopped early at this step (`--stop-after`); resume to finish.
    Stopped(usize),
}

/// Trains a new bundle.
pub fn train(opts: &TrainOptions, device: &Device) -> anyhow::Result<TrainOutcome> {
    if opts.steps == 0 || opts.batch == 0 || opts.image_size == 0 {
        bail!(
            "steps ({}), batch ({}) and image_size ({}) must be positive",
            opts.steps,
            opts.batch,
            opts.image_size
        );
    }
    let dataset = Arc::new(Dataset::open(&opts.data)?);
    let tasks: Vec<TaskSpec> = opts
        .tasks
        .iter()
        .map(|name| Ok(dataset.require_task(name)?.clone()))
        .collect::<anyhow::Result<_>>()?;
    let train_ids = dataset.split(&opts.train_split)?;
    let has_val = dataset.root.join("splits/val.txt").is_file();
    let data_digest = dataset.digest()?;
    tracing::info!(
        "dataset {}: {} training images, data {data_digest}",
        dataset.root.display(),
        train_ids.len()
    );
    let backbone = Backbone::load(&opts.backbone, device)?;
    tracing::info!("backbone {}: {}", backbone.source, backbone.digest);
    // The configuration trained here: every task for a new bundle; for add-task, the base's
    // adapter and decoder settings with only the new tasks.
    let mut config = match &opts.base {
        None => BundleConfig::new(
            backbone.geometry_with_provenance(),
            AdapterConfig::new(opts.adapter, opts.reduction, opts.scale),
            DecoderConfig::new(opts.decoder_dim, opts.decoder_hidden),
            tasks.clone(),
        ),
        Some(base) => {
            backbone.check_matches(&base.bundle.config.backbone)?;
            for t in &tasks {
                if base.bundle.config.task(&t.name).is_some() {
                    bail!(
                        "the bundle already has a task {:?}; add-task adds new tasks only",
                        t.name
                    );
                }
            }
            let mut c = base.bundle.config.clone();
            c.tasks = tasks.clone();
            c.extra.remove("provenance");
            c.extra.remove("metrics");
            c
        }
    };
    config.validate().map_err(anyhow::Error::msg)?;
    let weights: Vec<f64> = tasks
        .iter()
        .map(|t| {
            opts.loss_weights
                .get(&t.name)
                .copied()
                .unwrap_or_else(|| default_loss_weight(&t.name))
        })
        .collect();
    let fingerprint = Fingerprint::new(opts, &backbone.digest, &data_digest.to_string());

    // Trainable tensors: fresh, or restored from the last checkpoint.
    std::fs::create_dir_all(&opts.run_dir).with_context(|| opts.run_dir.display().to_string())?;
    let restored = if opts.resume {
        Checkpoint::latest(&opts.run_dir)?
    } else {
        None
    };
    if opts.resume && restored.is_none() {
        bail!(
            "resume: {} has no checkpoint",
            opts.run_dir.join("checkpoints").display()
        );
    }
    // A fresh run never mixes with an old one: a folder holding a run's checkpoints is
    // refused; one left by a run that failed before its first checkpoint starts clean.
    if !opts.resume {
        let checkpoints = opts.run_dir.join("checkpoints");
        let holds_run = std::fs::read_dir(&checkpoints).is_ok_and(|mut d| d.next().is_some());
        if holds_run {
            bail!(
                "run directory {} holds a run already: continue it with --resume, or \
                 choose another with --run-dir (or remove it)",
                opts.run_dir.display()
            );
        }
        let _ = std::fs::remove_file(opts.run_dir.join("metrics.jsonl"));
    }
    // Fresh values; for add-task, the base's shared adapter in place of fresh ones.
    let mut initial = init_bundle(&config, opts.seed);
    if let Some(base) = &opts.base {
        for (name, t) in &base.bundle.tensors {
            if initial.contains_key(name) {
                initial.insert(name.clone(), t.clone());
            }
        }
    }
    let mut start = 0;
    if let Some(c) = &restored {
        c.check_fingerprint(&fingerprint)?;
        start = c.step;
        initial.extend(c.params.clone());
    }
    let frozen_shared = opts.base.is_some();
    let (model, mut opt) = trainable(&config, &backbone, &initial, opts.weight_decay, |s| {
        !(frozen_shared && s.component == vmt_registry::bundle::SHARED_COMPONENT)
    })?;
    if let Some(c) = &restored {
        c.restore_optimizer(&mut opt, device)?;
    }
    let metrics_path = opts.run_dir.join("metrics.jsonl");
    checkpoint::truncate_metrics(&metrics_path, start)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .with_context(|| metrics_path.display().to_string())?;

    let end = opts.stop_after.map_or(opts.steps, |s| s.min(opts.steps));
    let warmup = opts.warmup.unwrap_or(opts.steps / 20);
    let (seed, batch) = (opts.seed, opts.batch);
    let ids = train_ids.clone();
    let loader = Loader::spawn(
        Arc::clone(&dataset),
        tasks.clone(),
        opts.image_size,
        (start..end).map(move |step| train_plan(&ids, seed, batch, step)),
        opts.workers,
        2,
    );
    let bar = progress_bar(opts, start, end);
    let mut last_loss = f64::NAN;
    for (step, b) in (start..end).zip(loader) {
        let t0 = Instant::now();
        let b = b?;
        let (pixels, targets) = b.tensors(&tasks, device)?;
        let lr = learning_rate(opts.lr, step, warmup, opts.steps);
        let stats = train_step(
            &model,
            &mut opt,
            &pixels,
            &targets,
            &weights,
            lr,
            opts.clip_grad,
        )
        .with_context(|| format!("step {step}, images {}", b.ids.join(",")))?;
        last_loss = stats.loss;
        if !last_loss.is_finite() {
            bail!("step {step}: the loss is {last_loss} (a lower learning rate may help)");
        }
        let (losses, norm) = (stats.losses, stats.grad_norm);
        let ips = batch as f64 / t0.elapsed().as_secs_f64();
        let line = json!({"step": step + 1, "lr": lr, "loss": last_loss, "losses": losses, "grad_norm": norm, "images_per_s": ips});
        writeln!(metrics, "{line}").with_context(|| metrics_path.display().to_string())?;
        bar.set_message(format!("loss {last_loss:.4}  lr {lr:.2e}  {ips:.1} img/s"));
        bar.inc(1);
        let done = step + 1;
        if done % opts.checkpoint_every.max(1) == 0 || done == end {
            metrics.flush()?;
            Checkpoint::save(
                &opts.run_dir,
                done,
                &fingerprint,
                &opt,
                opts.keep_checkpoints,
            )?;
            tracing::info!(
                "step {done}/{}: loss {last_loss:.4}, checkpoint in {}",
                opts.steps,
                opts.run_dir.display()
            );
        }
    }
    bar.finish_and_clear();
    if end < opts.steps {
        return Ok(TrainOutcome::Stopped(end));
    }

    // The finished bundle: trained tensors, provenance and validation metrics.
    let mut tensors = BTreeMap::new();
    for p in &opt.params {
        tensors.insert(p.name.clone(), to_raw(p.var.as_tensor())?);
    }
    let mut provenance = Provenance {
        code_version: Some(concat!("vmt-hub ", env!("CARGO_PKG_VERSION")).into()),
        data_digest: Some(data_digest.to_string()),
        seed: Some(opts.seed),
        steps: Some(opts.steps),
        batch: Some(opts.batch),
        lr: Some(opts.lr),
        image_size: Some(opts.image_size),
        loss_weights: Some(
            tasks
                .iter()
                .zip(&weights)
                .map(|(t, w)| (t.name.clone(), *w))
                .collect(),
        ),
        ..Provenance::default()
    };
    let mut metrics = Metrics {
        train_loss: Some(last_loss),
        ..Metrics::default()
    };
    // Each task's own record: this run for the tasks it trained; for add-task, the
    // base's tasks keep the records of the runs that trained them.
    let mut run = provenance.run_record();
    run.metrics_image_size = has_val.then_some(opts.image_size);
    let mut per_task: BTreeMap<String, TaskProvenance> = BTreeMap::new();
    if let Some(base) = &opts.base {
        let inherited = base.bundle.config.provenance().unwrap_or_default();
        for t in &base.bundle.config.tasks {
            per_task.insert(t.name.clone(), inherited.task(&t.name));
        }
    }
    for t in &tasks {
        per_task.insert(t.name.clone(), run.clone());
    }
    provenance.tasks = Some(per_task);
    if let Some(base) = &opts.base {
        // The base's tasks and shared adapter, unchanged; the new tasks after them.
        tensors.extend(base.bundle.tensors.clone());
        let mut all = base.bundle.config.tasks.clone();
        all.extend(tasks.clone());
        config = base.bundle.config.clone();
        config.tasks = all;
        provenance.parent = base.parent.map(|d| d.to_string());
        provenance.added_tasks = Some(opts.tasks.clone());
        if let Some(m) = base.bundle.config.metrics() {
            metrics.val = m.val;
        }
    }
    config.set_provenance(&provenance);
    if has_val {
        let report = evaluate(
            &model,
            Arc::clone(&dataset),
            "val",
            opts.image_size,
            opts.batch,
            opts.workers,
        )?;
        for (t, r) in report.tasks {
            metrics
                .val
                .insert(t, serde_json::from_value(serde_json::to_value(r)?)?);
        }
    }
    config.set_metrics(&metrics);
    let bundle = BundleDir::new(config, tensors, &opts.run_dir)?;
    Ok(TrainOutcome::Finished(Box::new(bundle)))
}

/// The model over `initial`: a Var for each tensor `is_trainable` accepts (plain, frozen
/// tensors for the others), and an AdamW over the Vars that decays only the matrices.
pub fn trainable(
    config: &BundleConfig,
    backbone: &Backbone,
    initial: &BTreeMap<String, vmt_registry::bundle::RawTensor>,
    weight_decay: f64,
    is_trainable: impl Fn(&vmt_registry::bundle::TensorSpec) -> bool,
) -> anyhow::Result<(VmtModel, AdamW)> {
    let plain = from_raw(initial, "initial tensors", &backbone.swin.device)?;
    let mut params = Vec::new();
    let mut tensors = HashMap::new();
    for s in bundle_tensors(config) {
        let t = plain
            .tensors
            .get(&s.name)
            .with_context(|| format!("initial tensors lack {}", s.name))?;
        if !is_trainable(&s) {
            tensors.insert(s.name.clone(), t.clone());
            continue;
        }
        let var = Var::from_tensor(t)?;
        tensors.insert(s.name.clone(), var.as_tensor().clone());
        params.push((s.name, var, s.decays));
    }
    let model = VmtModel::new(
        config.clone(),
        Arc::clone(&backbone.swin),
        &NamedTensors::new("trainable", tensors),
    )?;
    Ok((model, AdamW::new(params, weight_decay)?))
}

/// What one optimisation step measured.
pub struct StepStats {
    /// The weighted total loss.
    pub loss: f64,
    /// Unweighted loss per task.
    pub losses: serde_json::Map<String, serde_json::Value>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// One step: forward for all tasks, the weighted sum of their losses, backward, global
/// gradient-norm clipping and an AdamW update at `lr`.
pub fn train_step(
    model: &VmtModel,
    opt: &mut AdamW,
    pixels: &Tensor,
    targets: &[crate::model::Target],
    weights: &[f64],
    lr: f64,
    clip_grad: Option<f64>,
) -> anyhow::Result<StepStats> {
    // The backward pass too runs on rayon's pool (see `model::on_pool`).
    crate::model::on_pool(|| {
        let out = model.forward(pixels)?;
        let mut total = Tensor::zeros((), DType::F32, pixels.device())?;
        let mut losses = serde_json::Map::new();
        for ((head, target), w) in model.heads.iter().zip(targets).zip(weights) {
            let task = &head.spec;
            let pred = out.task(&task.name).expect("model has every task");
            let l = task_loss(task.kind, &task.name, pred, target)?;
            losses.insert(task.name.clone(), json!(l.to_scalar::<f32>()?));
            total = (total + (l * *w)?)?;
        }
        let grads = total.backward()?;
        let grad_norm = opt.grad_norm(&grads)?;
        let scale = match clip_grad {
            Some(c) if grad_norm > c => c / (grad_norm + 1e-6),
            _ => 1.0,
        };
        opt.step(&grads, lr, scale)?;
        Ok(StepStats {
            loss: total.to_scalar::<f32>()? as f64,
            losses,
            grad_norm,
        })
    })
}

fn progress_bar(opts: &TrainOptions, start: usize, end: usize) -> indicatif::ProgressBar {
    if opts.quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new((end - start) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}
