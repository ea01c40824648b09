//! `vmt-hub train`: AdamW on the bundle's tensors only, over a frozen backbone.
//!
//! A run directory holds `metrics.jsonl` (one line per step), a TensorBoard event file
//! (see [`tensorboard`]), `checkpoints/step-N/`
//! (weights, AdamW moments and the step; the last K kept) and nothing else. The data
//! order and augmentations are a function of (seed, step), so `--resume` restores a run
//! exactly: a resumed run ends with the same bytes as an uninterrupted one.

pub(crate) mod checkpoint;
pub mod optim;
pub mod tensorboard;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use serde_json::json;
use vmt_registry::bundle::{
    bundle_tensors, AdapterConfig, AdapterKind, BundleConfig, BundleDir, DecoderConfig, Metrics,
    Provenance, RawTensor, TaskSpec,
};

use crate::data::loader::{train_plan, Batch, Loader};
use crate::data::Dataset;
use crate::error::{invalid, Context, Error, Result};
use crate::eval::evaluate;
use crate::model::init::init_bundle;
use crate::model::tensors::{from_raw, to_raw};
use crate::model::{task_loss, Backbone, NamedTensors, VmtModel};
use checkpoint::Checkpoint;
pub(crate) use checkpoint::Fingerprint;
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
    /// add-task: a trained bundle whose shared adapter and tasks stay frozen; `tasks`
    /// are the new tasks, and the adapter/decoder settings come from this bundle.
    pub base: Option<Base>,
    /// Single-task values (each task's primary metric) the final validation's Δm is
    /// measured against; stored as `metrics.delta_m` and logged as `val/delta_m`.
    pub baseline: Option<BTreeMap<String, f64>>,
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
            base: None,
            baseline: None,
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
    /// Stopped early at this step (`stop_after`); resume to finish.
    Stopped(usize),
}

/// What one optimisation step measured: one line of `metrics.jsonl`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepRecord {
    /// Steps done, this one included (1-based).
    pub step: usize,
    /// The learning rate used.
    pub lr: f64,
    /// The weighted total loss.
    pub loss: f64,
    /// Unweighted loss per task.
    pub losses: serde_json::Map<String, serde_json::Value>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Images per second of this step.
    pub images_per_s: f64,
}

/// What a run reports as it goes. The CLI draws a progress bar from these events; a
/// library user can log them, plot them or ignore them (`()` ignores them all).
pub trait TrainEvents {
    /// Steps `start..end` are about to run (`start` > 0 on resume).
    fn started(&mut self, _start: usize, _end: usize) {}
    /// A step finished.
    fn step(&mut self, _record: &StepRecord) {}
    /// A checkpoint of `step` was written to `run_dir`.
    fn checkpoint(&mut self, _step: usize, _run_dir: &Path) {}
    /// The steps are over; validation and the bundle follow.
    fn steps_done(&mut self) {}
}

impl TrainEvents for () {}

/// Trains a new bundle (or, with [`TrainOptions::base`], adds tasks to one): the short
/// form of [`Trainer::new`] then [`Trainer::run`], with no events.
///
/// # Errors
/// See [`Trainer::new`] and [`Trainer::run`].
pub fn train(opts: &TrainOptions, device: &Device) -> Result<TrainOutcome> {
    Trainer::new(opts.clone(), device)?.run(&mut ())
}

/// A training run in three pieces: [`Trainer::new`] sets it up (dataset, backbone,
/// configuration, the run directory, fresh or restored weights), [`Trainer::step`] runs
/// one optimisation step on a batch, and [`Trainer::finish`] turns the weights into a
/// bundle with its provenance and validation metrics. [`Trainer::run`] strings them
/// together with the loader and checkpoints.
///
/// ```
/// use vmt_hub::train::{Trainer, TrainOptions, TrainOutcome};
/// # let dir = tempfile::tempdir()?;
/// // 8 synthetic scenes of 32x32 (a train and a val split).
/// vmt_hub::data::synth::synthesize(&dir.path().join("data"), 8, 32, 0)?;
/// let opts = TrainOptions {
///     data: dir.path().join("data"),
///     tasks: vec!["semseg".into(), "sal".into()],
///     steps: 2,
///     batch: 2,
///     image_size: 32,
///     run_dir: dir.path().join("run"),
///     ..TrainOptions::default()
/// };
/// let mut trainer = Trainer::new(opts, &candle_core::Device::Cpu)?;
/// assert_eq!(trainer.steps_done(), 0);
/// let TrainOutcome::Finished(bundle) = trainer.run(&mut ())? else { unreachable!() };
/// assert_eq!(trainer.steps_done(), 2);
/// assert_eq!(bundle.config.tasks.len(), 2);
/// // Validation metrics of both tasks, measured on the val split.
/// assert_eq!(bundle.config.metrics().unwrap().val.len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Trainer {
    opts: TrainOptions,
    dataset: Arc<Dataset>,
    /// The tasks trained (for add-task: the new ones only).
    tasks: Vec<TaskSpec>,
    train_ids: Vec<String>,
    data_digest: vmt_registry::Digest,
    /// The configuration trained: every task, or for add-task the base's settings with
    /// the new tasks only.
    config: BundleConfig,
    /// Loss weight of each task in `tasks`.
    weights: Vec<f64>,
    fingerprint: Fingerprint,
    backbone: Backbone,
    model: VmtModel,
    opt: AdamW,
    device: Device,
    /// Steps done.
    done: usize,
    last_loss: f64,
    metrics: std::fs::File,
    /// The TensorBoard event file (behind a lock: `finish` logs validation metrics).
    events: std::sync::Mutex<tensorboard::EventWriter>,
    /// The image whose prediction sheet is logged at each checkpoint.
    sheet_image: Option<String>,
}

impl Trainer {
    /// Sets a run up: opens the dataset and the backbone, builds the configuration,
    /// prepares the run directory and the trainable tensors (fresh from the seed, or
    /// restored from the last checkpoint with `resume`).
    ///
    /// # Errors
    /// [`Error::Invalid`] for zero steps, batch or size, an unknown task or an add-task
    /// of a task the base has; [`Error::RunDirInUse`] for a fresh run in a directory
    /// holding another run; [`Error::NoCheckpoint`] and [`Error::SettingsChanged`] for a
    /// resume that cannot continue; the dataset's and the backbone's errors.
    pub fn new(opts: TrainOptions, device: &Device) -> Result<Self> {
        if opts.steps == 0 || opts.batch == 0 || opts.image_size == 0 {
            invalid!(
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
            .collect::<Result<_>>()?;
        let train_ids = dataset.split(&opts.train_split)?;
        let data_digest = dataset.digest()?;
        tracing::info!(
            "dataset {}: {} training images, data {data_digest}",
            dataset.root.display(),
            train_ids.len()
        );
        let backbone = Backbone::load(&opts.backbone, device)?;
        tracing::info!("backbone {}: {}", backbone.source, backbone.digest);
        let config = trained_config(&opts, &backbone, &tasks)?;
        let weights = tasks.iter().map(|t| opts.loss_weight(&t.name)).collect();
        let fingerprint = Fingerprint::new(&opts, &backbone.digest, &data_digest.to_string());
        let restored = prepare_run_dir(&opts)?;
        let mut initial = init_bundle(&config, opts.seed);
        if let Some(base) = &opts.base {
            base.keep_shared(&mut initial);
        }
        let (mut done, mut last_loss) = (0, f64::NAN);
        if let Some(c) = &restored {
            c.check_fingerprint(&fingerprint)?;
            (done, last_loss) = (c.step, c.loss(&opts.run_dir));
            initial.extend(c.params.clone());
        }
        let frozen_shared = opts.base.is_some();
        let (model, mut opt) = trainable(&config, &backbone, &initial, opts.weight_decay, |s| {
            !(frozen_shared && s.component == vmt_registry::bundle::SHARED_COMPONENT)
        })?;
        if let Some(c) = &restored {
            c.restore_optimizer(&mut opt, device)?;
        }
        let metrics = checkpoint::open_metrics(&opts.run_dir, done)?;
        let events = tensorboard::EventWriter::open(&opts.run_dir, done)?.into();
        let sheet_image = dataset
            .split("val")
            .ok()
            .and_then(|ids| ids.first().cloned())
            .or_else(|| train_ids.first().cloned());
        Ok(Self {
            opts,
            dataset,
            tasks,
            train_ids,
            data_digest,
            config,
            weights,
            fingerprint,
            backbone,
            model,
            opt,
            device: device.clone(),
            done,
            last_loss,
            metrics,
            events,
            sheet_image,
        })
    }

    /// Steps done so far (the checkpoint's step after a resume).
    pub fn steps_done(&self) -> usize {
        self.done
    }

    /// The model being trained (its trainable tensors are the optimizer's variables).
    pub fn model(&self) -> &VmtModel {
        &self.model
    }

    /// The frozen backbone the run trains on.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// The step after which this run stops: `steps`, or `stop_after` if earlier.
    fn end(&self) -> usize {
        let steps = self.opts.steps;
        self.opts.stop_after.map_or(steps, |s| s.min(steps))
    }

    /// The batches of the remaining steps (up to `stop_after`), in order, prepared on
    /// the loader's threads: batch `k` is a function of the seed and the step only, so a
    /// resumed run sees what an uninterrupted one would have.
    ///
    /// Driving a run by hand, step by step:
    ///
    /// ```
    /// use vmt_hub::train::{Trainer, TrainOptions};
    /// # let dir = tempfile::tempdir()?;
    /// vmt_hub::data::synth::synthesize(&dir.path().join("data"), 6, 32, 0)?;
    /// let opts = TrainOptions {
    ///     data: dir.path().join("data"),
    ///     tasks: vec!["sal".into()],
    ///     steps: 3,
    ///     batch: 2,
    ///     image_size: 32,
    ///     run_dir: dir.path().join("run"),
    ///     ..TrainOptions::default()
    /// };
    /// let mut trainer = Trainer::new(opts, &candle_core::Device::Cpu)?;
    /// for batch in trainer.batches() {
    ///     let record = trainer.step(&batch?)?;
    ///     assert!(record.loss.is_finite());
    /// }
    /// trainer.checkpoint()?; // run/checkpoints/step-00000003
    /// let bundle = trainer.finish()?;
    /// assert_eq!(bundle.config.tasks[0].name, "sal");
    /// assert!(dir.path().join("run/checkpoints/step-00000003").is_dir());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn batches(&self) -> Loader {
        let (start, end) = (self.done, self.end());
        let (ids, seed, batch) = (self.train_ids.clone(), self.opts.seed, self.opts.batch);
        Loader::spawn(
            Arc::clone(&self.dataset),
            self.tasks.clone(),
            self.opts.image_size,
            (start..end).map(move |step| train_plan(&ids, seed, batch, step)),
            self.opts.workers,
            2,
        )
    }

    /// Runs the remaining steps (up to `stop_after`), writing checkpoints every
    /// `checkpoint_every` steps and at the end; then, when every step is done, the
    /// bundle ([`Trainer::finish`]).
    ///
    /// # Errors
    /// A batch that cannot be loaded, a step that fails ([`Error::NonFiniteLoss`]
    /// among them), a checkpoint or metrics line that cannot be written.
    pub fn run(&mut self, events: &mut dyn TrainEvents) -> Result<TrainOutcome> {
        let (start, steps) = (self.done, self.opts.steps);
        let end = self.end();
        let loader = self.batches();
        events.started(start, end);
        for b in loader {
            let b = b?;
            let record = self.step(&b)?;
            events.step(&record);
            if self.done.is_multiple_of(self.opts.checkpoint_every.max(1)) || self.done == end {
                self.checkpoint()?;
                events.checkpoint(self.done, &self.opts.run_dir);
            }
        }
        events.steps_done();
        if end < steps {
            return Ok(TrainOutcome::Stopped(end));
        }
        Ok(TrainOutcome::Finished(Box::new(self.finish()?)))
    }

    /// One optimisation step on `batch` at the schedule's learning rate; appends its
    /// line to `metrics.jsonl`.
    ///
    /// # Errors
    /// candle's errors, named with the step and the images; [`Error::NonFiniteLoss`].
    pub fn step(&mut self, batch: &Batch) -> Result<StepRecord> {
        let (t0, step, o) = (Instant::now(), self.done, &self.opts);
        let (pixels, targets) = batch.tensors(&self.tasks, &self.device)?;
        let warmup = o.warmup.unwrap_or(o.steps / 20);
        let lr = learning_rate(o.lr, step, warmup, o.steps);
        let stats = train_step(
            &self.model,
            &mut self.opt,
            &pixels,
            &targets,
            &self.weights,
            lr,
            o.clip_grad,
        )
        .with_context(|| format!("step {step}, images {}", batch.ids.join(",")))?;
        if !stats.loss.is_finite() {
            return Err(Error::NonFiniteLoss {
                step,
                loss: stats.loss,
            });
        }
        let record = StepRecord {
            step: step + 1,
            lr,
            loss: stats.loss,
            losses: stats.losses,
            grad_norm: stats.grad_norm,
            images_per_s: batch.ids.len() as f64 / t0.elapsed().as_secs_f64(),
        };
        let metrics_path = self.opts.run_dir.join(checkpoint::METRICS);
        writeln!(self.metrics, "{}", serde_json::to_string(&record)?)
            .map_err(|e| Error::io(&metrics_path, e))?;
        self.log_step(&record, t0.elapsed().as_secs_f64())?;
        (self.done, self.last_loss) = (step + 1, stats.loss);
        Ok(record)
    }

    /// Writes the checkpoint of the steps done (keeping the newest `keep_checkpoints`).
    ///
    /// # Errors
    /// The checkpoint or the metrics cannot be written.
    pub fn checkpoint(&mut self) -> Result<()> {
        let run_dir = &self.opts.run_dir;
        self.metrics
            .flush()
            .map_err(|e| Error::io(run_dir.join(checkpoint::METRICS), e))?;
        let state = checkpoint::TrainerState {
            step: self.done,
            adam_t: self.opt.t,
            loss: self.last_loss.is_finite().then_some(self.last_loss),
            fingerprint: self.fingerprint.clone(),
        };
        Checkpoint::save(run_dir, &state, &self.opt, self.opts.keep_checkpoints)?;
        self.log_sheet()?;
        tracing::info!(
            "step {}/{}: loss {:.4}, checkpoint in {}",
            self.done,
            self.opts.steps,
            self.last_loss,
            run_dir.display()
        );
        Ok(())
    }

    /// The trained bundle: the weights, the provenance of each task and validation
    /// metrics (on the dataset's `val` split, when it has one). For add-task, the base's
    /// tasks and shared adapter unchanged with the new tasks after them.
    ///
    /// # Errors
    /// [`Error::Invalid`] before every step is done; validation's errors.
    pub fn finish(&self) -> Result<BundleDir> {
        if self.done < self.opts.steps {
            invalid!("finish: {} of {} steps done", self.done, self.opts.steps);
        }
        let mut tensors = BTreeMap::new();
        for p in &self.opt.params {
            tensors.insert(p.name.clone(), to_raw(p.var.as_tensor())?);
        }
        let has_val = self.dataset.root.join("splits/val.txt").is_file();
        let mut metrics = Metrics {
            train_loss: self.last_loss.is_finite().then_some(self.last_loss),
            ..Metrics::default()
        };
        let mut provenance = self.provenance(has_val);
        let mut config = self.config.clone();
        if let Some(base) = &self.opts.base {
            config = base.extended(&self.tasks, &mut tensors, &mut provenance, &mut metrics);
        }
        config.set_provenance(&provenance);
        if has_val {
            let o = &self.opts;
            let dataset = Arc::clone(&self.dataset);
            let report = evaluate(
                &self.model,
                dataset,
                "val",
                o.image_size,
                o.batch,
                o.workers,
            )?;
            let report = match &o.baseline {
                Some(b) => report.with_baseline(b),
                None => report,
            };
            if let Some(dm) = report.delta_m {
                metrics.extra.insert("delta_m".into(), json!(dm));
            }
            for (t, r) in report.tasks {
                metrics
                    .val
                    .insert(t, serde_json::from_value(serde_json::to_value(r)?)?);
            }
        }
        self.log_validation(&metrics)?;
        config.set_metrics(&metrics);
        Ok(BundleDir::new(config, tensors, &self.opts.run_dir)?)
    }

    /// A step's scalars in TensorBoard: `loss/total`, `loss/<task>`, `train/lr`,
    /// `train/grad_norm`, `train/images_per_s`, `train/step_time_s`.
    fn log_step(&self, r: &StepRecord, seconds: f64) -> Result<()> {
        let mut values = vec![
            ("loss/total".to_string(), r.loss),
            ("train/lr".into(), r.lr),
            ("train/grad_norm".into(), r.grad_norm),
            ("train/images_per_s".into(), r.images_per_s),
            ("train/step_time_s".into(), seconds),
        ];
        for (task, v) in &r.losses {
            values.push((format!("loss/{task}"), v.as_f64().unwrap_or(f64::NAN)));
        }
        self.events.lock().expect("events").scalars(r.step, &values)
    }

    /// The prediction sheet of the fixed image (`predictions/<id>`), then a sync of
    /// the event file: at each checkpoint. A sheet that cannot be drawn is a warning
    /// (the run goes on); an event file that cannot be written is an error.
    fn log_sheet(&self) -> Result<()> {
        let mut events = self.events.lock().expect("events");
        if let Some(id) = &self.sheet_image {
            match crate::predict::sample_sheet(&self.model, &self.dataset, id) {
                Ok(sheet) => events.image(self.done, &format!("predictions/{id}"), &sheet)?,
                Err(e) => tracing::warn!("TensorBoard: no prediction sheet of {id}: {e}"),
            }
        }
        events.flush()
    }

    /// Validation metrics as `val/<task>/<metric>` at the last step.
    fn log_validation(&self, metrics: &Metrics) -> Result<()> {
        let mut values = Vec::new();
        if let Some(dm) = metrics.extra.get("delta_m").and_then(|v| v.as_f64()) {
            values.push(("val/delta_m".to_string(), dm));
        }
        for (task, m) in &metrics.val {
            for (name, v) in &m.metrics {
                values.push((format!("val/{task}/{name}"), *v));
            }
        }
        let mut events = self.events.lock().expect("events");
        if !values.is_empty() {
            events.scalars(self.done, &values)?;
        }
        events.flush()
    }

    /// This run's provenance, with a per-task record for each task it trained.
    fn provenance(&self, has_val: bool) -> Provenance {
        let o = &self.opts;
        let mut provenance = Provenance {
            code_version: Some(concat!("vmt-hub ", env!("CARGO_PKG_VERSION")).into()),
            data_digest: Some(self.data_digest.to_string()),
            seed: Some(o.seed),
            steps: Some(o.steps),
            batch: Some(o.batch),
            lr: Some(o.lr),
            image_size: Some(o.image_size),
            loss_weights: Some(
                self.tasks
                    .iter()
                    .zip(&self.weights)
                    .map(|(t, w)| (t.name.clone(), *w))
                    .collect(),
            ),
            ..Provenance::default()
        };
        let mut run = provenance.run_record();
        run.metrics_image_size = has_val.then_some(o.image_size);
        let per_task = self.tasks.iter().map(|t| (t.name.clone(), run.clone()));
        provenance.tasks = Some(per_task.collect());
        provenance
    }
}

impl TrainOptions {
    /// The loss weight of `task`: [`TrainOptions::loss_weights`] or the default.
    pub fn loss_weight(&self, task: &str) -> f64 {
        self.loss_weights
            .get(task)
            .copied()
            .unwrap_or_else(|| default_loss_weight(task))
    }
}

impl Base {
    /// The base's shared adapter in place of the fresh one in `initial`.
    fn keep_shared(&self, initial: &mut BTreeMap<String, RawTensor>) {
        for (name, t) in &self.bundle.tensors {
            if initial.contains_key(name) {
                initial.insert(name.clone(), t.clone());
            }
        }
    }

    /// The configuration add-task trains: the base's settings with only the new tasks.
    fn trained_config(&self, backbone: &Backbone, tasks: &[TaskSpec]) -> Result<BundleConfig> {
        backbone.check_matches(&self.bundle.config.backbone)?;
        if let Some(t) = tasks
            .iter()
            .find(|t| self.bundle.config.task(&t.name).is_some())
        {
            invalid!(
                "the bundle already has a task {:?}; add-task adds new tasks only",
                t.name
            );
        }
        let mut c = self.bundle.config.clone();
        c.tasks = tasks.to_vec();
        c.extra.remove("provenance");
        c.extra.remove("metrics");
        Ok(c)
    }

    /// The whole bundle after add-task: the base's configuration, tasks and tensors with
    /// the new ones after them; the base's tasks keep their provenance and metrics.
    fn extended(
        &self,
        new_tasks: &[TaskSpec],
        tensors: &mut BTreeMap<String, RawTensor>,
        provenance: &mut Provenance,
        metrics: &mut Metrics,
    ) -> BundleConfig {
        let base = &self.bundle.config;
        tensors.extend(self.bundle.tensors.clone());
        let inherited = base.provenance().unwrap_or_default();
        let per_task = provenance.tasks.get_or_insert_with(BTreeMap::new);
        for t in &base.tasks {
            per_task.insert(t.name.clone(), inherited.task(&t.name));
        }
        provenance.parent = self.parent.map(|d| d.to_string());
        provenance.added_tasks = Some(new_tasks.iter().map(|t| t.name.clone()).collect());
        if let Some(m) = base.metrics() {
            metrics.val = m.val;
        }
        let mut config = base.clone();
        config.tasks.extend(new_tasks.iter().cloned());
        config
    }
}

/// The configuration a run trains: every task for a new bundle; for add-task, the base's
/// adapter and decoder settings with only the new tasks.
fn trained_config(
    opts: &TrainOptions,
    backbone: &Backbone,
    tasks: &[TaskSpec],
) -> Result<BundleConfig> {
    let config = match &opts.base {
        None => BundleConfig::new(
            backbone.geometry_with_provenance(),
            AdapterConfig::new(opts.adapter, opts.reduction, opts.scale),
            DecoderConfig::new(opts.decoder_dim, opts.decoder_hidden),
            tasks.to_vec(),
        ),
        Some(base) => base.trained_config(backbone, tasks)?,
    };
    config.validate()?;
    Ok(config)
}

/// Creates the run directory; with `resume`, the checkpoint to continue from. A fresh run
/// never mixes with an old one: a folder holding a run's checkpoints is refused; one left
/// by a run that failed before its first checkpoint starts clean.
fn prepare_run_dir(opts: &TrainOptions) -> Result<Option<Checkpoint>> {
    let run_dir = &opts.run_dir;
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    if opts.resume {
        return match Checkpoint::latest(run_dir)? {
            None => Err(Error::NoCheckpoint(run_dir.join("checkpoints"))),
            some => Ok(some),
        };
    }
    let checkpoints = run_dir.join("checkpoints");
    if std::fs::read_dir(&checkpoints).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::RunDirInUse(run_dir.clone()));
    }
    Ok(None)
}

/// The model over `initial`: a Var for each tensor `is_trainable` accepts (plain, frozen
/// tensors for the others), and an AdamW over the Vars that decays only the matrices.
///
/// # Errors
/// A tensor of the configuration missing from `initial`; candle's errors.
pub fn trainable(
    config: &BundleConfig,
    backbone: &Backbone,
    initial: &BTreeMap<String, RawTensor>,
    weight_decay: f64,
    is_trainable: impl Fn(&vmt_registry::bundle::TensorSpec) -> bool,
) -> Result<(VmtModel, AdamW)> {
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
///
/// # Errors
/// candle's errors.
pub fn train_step(
    model: &VmtModel,
    opt: &mut AdamW,
    pixels: &Tensor,
    targets: &[crate::model::Target],
    weights: &[f64],
    lr: f64,
    clip_grad: Option<f64>,
) -> Result<StepStats> {
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
