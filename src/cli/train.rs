//! `vmt-hub train` and `vmt-hub eval`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use vmt_registry::bundle::AdapterKind;
use vmt_registry::reference::TagName;

use crate::data::Dataset;
use crate::device::parse_device;
use crate::eval::{evaluate, read_baseline};
use crate::model::Backbone;
use crate::train::{train, TrainOptions, TrainOutcome};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Dataset directory (dataset.json, images/, <task>/, splits/).
    #[arg(long)]
    pub data: PathBuf,
    /// Tasks to train, comma-separated (default: every task of the dataset).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Backbone: a directory, or random:tiny / random:swin-t.
    #[arg(long, default_value = "random:tiny")]
    pub backbone: String,
    /// vmt or vmt-lite.
    #[arg(long, default_value = "vmt")]
    pub adapter: AdapterKind,
    #[arg(long, default_value_t = 4)]
    pub reduction: usize,
    /// Adapter scale s.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    #[arg(long, default_value_t = 32)]
    pub decoder_dim: usize,
    #[arg(long, default_value_t = 64)]
    pub decoder_hidden: usize,
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Warm-up steps (default: 5% of --steps).
    #[arg(long)]
    pub warmup: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub image_size: usize,
    /// Per-task loss weights, e.g. `semseg=1,sal=5` (defaults: semseg 1, human_parts 2,
    /// sal 5, normals 10, others 1).
    #[arg(long, value_delimiter = ',')]
    pub loss_weights: Vec<String>,
    /// Clip the global gradient norm (0 disables).
    #[arg(long, default_value_t = 1.0)]
    pub clip_grad: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads decoding images.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Run directory (metrics.jsonl, checkpoints). Default: runs/<name>-<tag>.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue from the run directory's last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this step with a checkpoint and no bundle (resume later).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, short)]
    pub quiet: bool,
    /// Registry tag of the trained bundle.
    #[arg(long)]
    pub tag: String,
}

fn parse_weights(items: &[String]) -> anyhow::Result<BTreeMap<String, f64>> {
    items
        .iter()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--loss-weights {kv:?}: expected task=weight"))?;
            Ok((
                k.to_string(),
                v.parse()
                    .with_context(|| format!("--loss-weights {kv:?}: not a number"))?,
            ))
        })
        .collect()
}

pub fn run_train(root: Option<&Path>, a: TrainArgs) -> anyhow::Result<()> {
    let tag = TagName::parse(&a.tag)?;
    let device = parse_device(&a.device)?;
    let tasks = if a.tasks.is_empty() {
        Dataset::open(&a.data)?
            .info
            .tasks
            .iter()
            .map(|t| t.name.clone())
            .collect()
    } else {
        a.tasks.clone()
    };
    let run_dir = a.run_dir.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("{}-{}", tag.name.replace('/', "_"), tag.tag))
    });
    let opts = TrainOptions {
        data: a.data,
        tasks,
        backbone: a.backbone,
        adapter: a.adapter,
        reduction: a.reduction,
        scale: a.scale,
        decoder_dim: a.decoder_dim,
        decoder_hidden: a.decoder_hidden,
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        weight_decay: a.weight_decay,
        warmup: a.warmup,
        image_size: a.image_size,
        loss_weights: parse_weights(&a.loss_weights)?,
        clip_grad: (a.clip_grad > 0.0).then_some(a.clip_grad),
        seed: a.seed,
        workers: a.workers,
        checkpoint_every: a.checkpoint_every,
        keep_checkpoints: a.keep_checkpoints,
        run_dir: run_dir.clone(),
        resume: a.resume,
        stop_after: a.stop_after,
        quiet: a.quiet,
    };
    match train(&opts, &device)? {
        TrainOutcome::Stopped(step) => {
            println!(
                "stopped at step {step}; continue with --resume (run directory {})",
                run_dir.display()
            );
        }
        TrainOutcome::Finished(bundle) => {
            let reg = super::registry::open(root)?;
            let p = reg.publish(&bundle, &tag)?;
            if let Some(val) = bundle
                .config
                .extra
                .get("metrics")
                .and_then(|m| m.get("val"))
            {
                println!("validation: {val}");
            }
            println!(
                "{tag} -> {} (run directory {})",
                p.digest,
                run_dir.display()
            );
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A bundle: registry reference or exported directory.
    pub reference: String,
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value = "val")]
    pub split: String,
    /// Evaluate only these tasks (default: every task of the dataset, which the bundle
    /// must have).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Single-task baselines (an `eval --json` report or {"task": value}) for Δm.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub image_size: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long)]
    pub backbone: Option<String>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run_eval(root: Option<&Path>, a: EvalArgs) -> anyhow::Result<()> {
    let device = parse_device(&a.device)?;
    let dataset = Arc::new(Dataset::open(&a.data)?);
    let (mut bundle, origin) = super::forward::read_bundle(root, &a.reference)?;
    let wanted: Vec<String> = if a.tasks.is_empty() {
        dataset.info.tasks.iter().map(|t| t.name.clone()).collect()
    } else {
        a.tasks.clone()
    };
    for t in &wanted {
        if bundle.config.task(t).is_none() {
            anyhow::bail!(
                "{}: names task {t:?}, which bundle {} lacks (it has {}); pass --tasks to evaluate a subset",
                dataset.root.join("dataset.json").display(),
                a.reference,
                bundle.config.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    // Evaluate only the wanted tasks: drop the others' decoders.
    bundle.config.tasks.retain(|t| wanted.contains(&t.name));
    let keep = vmt_registry::bundle::bundle_tensors(&bundle.config);
    bundle
        .tensors
        .retain(|n, _| keep.iter().any(|s| &s.name == n));
    let backbone = Backbone::load(
        &super::forward::backbone_spec(&bundle.config, a.backbone.as_deref(), &a.reference)?,
        &device,
    )?;
    let model = crate::forward::load_model(&bundle, &backbone, &origin)?;
    let mut report = evaluate(&model, dataset, &a.split, a.image_size, a.batch, 2)?;
    if let Some(b) = &a.baseline {
        report = report.with_baseline(&read_baseline(b)?);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
