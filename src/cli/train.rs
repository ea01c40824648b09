//! `vmt-hub train` and `vmt-hub eval`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use vmt_registry::bundle::AdapterKind;
use vmt_registry::reference::TagName;

use vmt_hub::adapter::{backbone_for, read_bundle, Adapter};
use vmt_hub::data::Dataset;
use vmt_hub::device::parse_device;
use vmt_hub::eval::{evaluate, read_baseline, select_tasks};
use vmt_hub::train::{Base, StepRecord, TrainEvents, TrainOptions, TrainOutcome, Trainer};

/// Settings of a training run, shared by `train` and `add-task`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Optimisation steps.
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// The split to train on (splits/NAME.txt), e.g. human_parts_train.
    #[arg(long, default_value = "train")]
    pub train_split: String,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Peak learning rate (linear warm-up, then cosine decay).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// AdamW weight decay (not applied to biases, norms, gamma and beta).
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Warm-up steps (default: 5% of --steps).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Square image size in pixels (train: 64; add-task: the size the bundle was
    /// trained at).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Clip the global gradient norm (0 disables).
    #[arg(long, default_value_t = 1.0)]
    pub clip_grad: f64,
    /// Random seed (the same seed gives the same result).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads decoding images.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Write a checkpoint every N steps.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// How many of the latest checkpoints the run directory keeps.
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Run directory (metrics.jsonl, TensorBoard events, checkpoints). Default:
    /// runs/<name>-<tag>.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Single-task baselines for the Δm of the final validation (stored with the
    /// bundle's metrics, logged to TensorBoard): pascal-swin-t-stl, an `eval --json`
    /// report, or a JSON file {"task": value}.
    #[arg(long)]
    pub baseline: Option<String>,
    /// Continue from the run directory's last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this step with a checkpoint and no bundle (resume later).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    /// Where to run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Registry tag of the trained bundle.
    #[arg(long)]
    pub tag: String,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Dataset directory (dataset.json, images/, <task>/, splits/).
    #[arg(long)]
    pub data: PathBuf,
    /// Tasks to train, comma-separated (default: every task of the dataset).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Backbone: a Hugging Face repo id[@revision], a directory, or random:tiny / random:swin-t.
    #[arg(long, default_value = "random:tiny")]
    pub backbone: String,
    /// vmt or vmt-lite.
    #[arg(long, default_value = "vmt")]
    pub adapter: AdapterKind,
    /// Adapter bottleneck: a block of C channels gets C / reduction.
    #[arg(long, default_value_t = 4)]
    pub reduction: usize,
    /// Adapter scale s.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Width of each task decoder.
    #[arg(long, default_value_t = 32)]
    pub decoder_dim: usize,
    /// Hidden width of each task decoder.
    #[arg(long, default_value_t = 64)]
    pub decoder_hidden: usize,
    /// Per-task loss weights, e.g. `semseg=1,sal=5` (defaults: semseg 1, human_parts 2,
    /// sal 5, normals 10, others 1).
    #[arg(long, value_delimiter = ',')]
    pub loss_weights: Vec<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct AddTaskArgs {
    /// The bundle to extend: registry reference or exported directory.
    pub reference: String,
    /// New task(s): NAME[:KIND[:CHANNELS]] (kind and channels default to the dataset's).
    #[arg(long = "task", required = true, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Dataset with the new task(s).
    #[arg(long)]
    pub data: PathBuf,
    /// Backbone (default: the one the bundle records).
    #[arg(long)]
    pub backbone: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
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

/// The image size of `train` when `--image-size` is not given.
const DEFAULT_IMAGE_SIZE: usize = 64;

/// The image size a command that runs a stored bundle uses: `--image-size` if given,
/// else the size the bundle was trained at, else [`DEFAULT_IMAGE_SIZE`]; said on stderr.
fn image_size_for(flag: Option<usize>, config: &vmt_registry::bundle::BundleConfig) -> usize {
    if let Some(s) = flag {
        return s;
    }
    match config.provenance().and_then(|p| p.image_size) {
        Some(s) => {
            eprintln!("image size {s} (the bundle was trained at it; --image-size overrides)");
            s
        }
        None => {
            eprintln!(
                "image size {DEFAULT_IMAGE_SIZE} (the bundle records none; --image-size overrides)"
            );
            DEFAULT_IMAGE_SIZE
        }
    }
}

/// Options of a run, before the model-specific fields are filled in.
fn run_options(
    run: &RunArgs,
    tag: &TagName,
    data: PathBuf,
    tasks: Vec<String>,
    backbone: String,
) -> TrainOptions {
    let run_dir = run.run_dir.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("{}-{}", tag.name.replace('/', "_"), tag.tag))
    });
    TrainOptions {
        data,
        tasks,
        backbone,
        train_split: run.train_split.clone(),
        steps: run.steps,
        batch: run.batch,
        lr: run.lr,
        weight_decay: run.weight_decay,
        warmup: run.warmup,
        image_size: run.image_size.unwrap_or(DEFAULT_IMAGE_SIZE),
        clip_grad: (run.clip_grad > 0.0).then_some(run.clip_grad),
        seed: run.seed,
        workers: run.workers,
        checkpoint_every: run.checkpoint_every,
        keep_checkpoints: run.keep_checkpoints,
        run_dir,
        resume: run.resume,
        stop_after: run.stop_after,
        ..TrainOptions::default()
    }
}

/// Trains, then publishes the bundle under `tag` (nothing is published if stopped early).
fn run_and_publish(
    root: Option<&Path>,
    opts: &TrainOptions,
    tag: &TagName,
    run: &RunArgs,
) -> anyhow::Result<()> {
    let device = parse_device(&run.device)?;
    let mut bar = Bar::new(run.quiet);
    match Trainer::new(opts.clone(), &device)?.run(&mut bar)? {
        TrainOutcome::Stopped(step) => {
            println!(
                "stopped at step {step}; continue with --resume (run directory {})",
                opts.run_dir.display()
            );
        }
        TrainOutcome::Finished(bundle) => {
            let reg = super::registry::open(root)?;
            let p = reg.publish(&bundle, tag)?;
            if let Some(m) = bundle.config.metrics().filter(|m| !m.val.is_empty()) {
                println!("validation: {}", serde_json::to_string(&m.val)?);
            }
            println!(
                "{tag} -> {} (run directory {})",
                p.digest,
                opts.run_dir.display()
            );
        }
    }
    Ok(())
}

/// The training progress bar (hidden with --quiet).
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(quiet: bool) -> Self {
        if quiet {
            return Self(indicatif::ProgressBar::hidden());
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} steps  {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        Self(bar)
    }
}

impl TrainEvents for Bar {
    fn started(&mut self, start: usize, end: usize) {
        self.0.set_length(end.saturating_sub(start) as u64);
    }

    fn step(&mut self, r: &StepRecord) {
        let (loss, lr, ips) = (r.loss, r.lr, r.images_per_s);
        self.0
            .set_message(format!("loss {loss:.4}  lr {lr:.2e}  {ips:.1} img/s"));
        self.0.inc(1);
    }

    fn steps_done(&mut self) {
        self.0.finish_and_clear();
    }
}

pub fn run_train(root: Option<&Path>, a: TrainArgs) -> anyhow::Result<()> {
    let tag = TagName::parse(&a.run.tag)?;
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
    let mut opts = run_options(&a.run, &tag, a.data, tasks, a.backbone);
    opts.baseline = a.run.baseline.as_deref().map(read_baseline).transpose()?;
    opts.adapter = a.adapter;
    opts.reduction = a.reduction;
    opts.scale = a.scale;
    opts.decoder_dim = a.decoder_dim;
    opts.decoder_hidden = a.decoder_hidden;
    opts.loss_weights = parse_weights(&a.loss_weights)?;
    run_and_publish(root, &opts, &tag, &a.run)
}

/// `add-task`: trains only the new tasks' KEMs and decoders on the bundle's frozen shared
/// adapter; the result stores one new component (plus config and manifest).
pub fn run_add_task(root: Option<&Path>, a: AddTaskArgs) -> anyhow::Result<()> {
    let tag = TagName::parse(&a.run.tag)?;
    let dataset = Dataset::open(&a.data)?;
    let mut names = Vec::new();
    for entry in &a.tasks {
        let spec = if entry.contains(':') {
            vmt_hub::tasks::parse_tasks(entry)
                .with_context(|| format!("--task {entry}"))?
                .into_iter()
                .next()
        } else {
            None
        };
        let spec = &spec;
        let name = entry.split(':').next().unwrap_or(entry);
        let have = dataset.require_task(name)?;
        if entry.contains(':') {
            if let Some(want) = spec {
                if want.kind != have.kind || want.channels != have.channels {
                    anyhow::bail!(
                        "--task {entry}: the dataset's {name:?} is {:?} with {} channels",
                        have.kind,
                        have.channels
                    );
                }
            }
        }
        names.push(name.to_string());
    }
    let loaded = read_bundle(&super::forward::bundle_source(root, &a.reference))?;
    let backbone = backbone_for(
        &loaded,
        super::forward::backbone_arg(a.backbone.as_deref())?.as_ref(),
    )?;
    let mut opts = run_options(&a.run, &tag, a.data, names, backbone.to_string());
    opts.image_size = image_size_for(a.run.image_size, &loaded.bundle.config);
    opts.baseline = a.run.baseline.as_deref().map(read_baseline).transpose()?;
    opts.base = Some(Base {
        bundle: loaded.bundle,
        parent: loaded.digest,
    });
    run_and_publish(root, &opts, &tag, &a.run)
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A bundle: registry reference or exported directory.
    pub reference: String,
    /// Dataset folder (dataset.json, images/, one folder per task, splits/).
    #[arg(long)]
    pub data: PathBuf,
    /// The split to evaluate (splits/NAME.txt).
    #[arg(long, default_value = "val")]
    pub split: String,
    /// Evaluate only these tasks (default: every task both the bundle and the dataset
    /// have; the others are named as skipped).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Single-task baselines for Δm: pascal-swin-t-stl (MTLoRA's single-task Swin-T on
    /// PASCAL-Context), an `eval --json` report, or a file {"task": value}.
    #[arg(long)]
    pub baseline: Option<String>,
    /// Square image size in pixels (default: the size the bundle was trained at).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Images per evaluation batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Backbone (default: the one the bundle records): a repo id[@revision], a directory, or random:tiny / random:swin-t.
    #[arg(long)]
    pub backbone: Option<String>,
    /// Where to run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run_eval(root: Option<&Path>, a: EvalArgs) -> anyhow::Result<()> {
    let device = parse_device(&a.device)?;
    let dataset = Arc::new(Dataset::open(&a.data)?);
    let mut loaded = read_bundle(&super::forward::bundle_source(root, &a.reference))?;
    let selection = select_tasks(&loaded.bundle.config, &a.reference, &dataset, &a.tasks)?;
    for why in &selection.skipped {
        eprintln!("skipped {why}");
    }
    loaded.keep_tasks(&selection.tasks);
    let size = image_size_for(a.image_size, &loaded.bundle.config);
    let backbone = super::forward::backbone_arg(a.backbone.as_deref())?;
    let adapter = Adapter::from_loaded(loaded, backbone.as_ref(), &device)?;
    let mut report = evaluate(&adapter.model, dataset, &a.split, size, a.batch, 2)?;
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
