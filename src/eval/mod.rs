//! `vmt-hub eval`: per-task metrics of a bundle on a dataset split, and Δm.

pub mod metrics;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use vmt_registry::bundle::{TaskKind, TaskSpec};

use crate::data::loader::{eval_plans, Loader};
use crate::data::{Dataset, Label};
use crate::error::{invalid, Error, Result};
use crate::model::VmtModel;
use metrics::{delta_m, DepthMetric, NormalsMetric, SalMetric, SegMetric};

/// One task's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task's kind.
    pub kind: TaskKind,
    /// The metric Δm uses.
    pub primary: String,
    /// Metric name -> value.
    pub metrics: BTreeMap<String, f64>,
}

/// All tasks' results on a split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// The split evaluated.
    pub split: String,
    /// Images evaluated.
    pub images: usize,
    /// Side they were resized to.
    pub image_size: usize,
    /// Results per task.
    pub tasks: BTreeMap<String, TaskResult>,
    /// Multi-task performance against the baselines, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_m: Option<f64>,
    /// The baseline values Δm was computed against, by task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BTreeMap<String, f64>>,
}

/// Accumulates one task's metric.
enum Acc {
    Seg(SegMetric),
    Sal(SalMetric),
    Normals(NormalsMetric),
    Depth(DepthMetric),
}

impl Acc {
    fn new(t: &TaskSpec) -> Self {
        match t.kind {
            TaskKind::Segmentation => Acc::Seg(SegMetric::new(t.channels)),
            TaskKind::Saliency => Acc::Sal(SalMetric::new()),
            TaskKind::Normals => Acc::Normals(NormalsMetric::default()),
            TaskKind::Depth => Acc::Depth(DepthMetric::default()),
        }
    }

    fn finish(&self, kind: TaskKind) -> TaskResult {
        let (primary, metrics) = match self {
            Acc::Seg(m) => ("mIoU", vec![("mIoU", 100.0 * m.miou())]),
            Acc::Sal(m) => (
                "mIoU",
                vec![
                    ("mIoU", 100.0 * m.miou()),
                    ("maxF", 100.0 * m.max_f()),
                    ("maxF_beta", 100.0 * m.max_f_beta()),
                ],
            ),
            Acc::Normals(m) => ("mErr", vec![("mErr", m.mean_error())]),
            Acc::Depth(m) => ("rmse", vec![("rmse", m.rmse())]),
        };
        TaskResult {
            kind,
            primary: primary.into(),
            metrics: metrics
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }
}

/// Host-side per-image predictions of one task, as the metrics take them.
fn predictions(kind: TaskKind, logits: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    let b = logits.dim(0)?;
    let host = match kind {
        TaskKind::Segmentation => logits.argmax_keepdim(1)?.to_dtype(DType::F32)?,
        TaskKind::Saliency => candle_nn::ops::sigmoid(logits)?,
        TaskKind::Normals | TaskKind::Depth => logits.clone(),
    };
    let host = host.to_device(&Device::Cpu)?;
    (0..b)
        .map(|i| host.get(i)?.flatten_all()?.to_vec1::<f32>())
        .collect()
}

/// Accumulates the protocol's metrics of a set of tasks over batches of model outputs.
pub struct Evaluator {
    tasks: Vec<TaskSpec>,
    accs: Vec<Acc>,
    images: usize,
}

impl Evaluator {
    /// An evaluator of `tasks`, with nothing seen yet.
    pub fn new(tasks: &[TaskSpec]) -> Self {
        Self {
            tasks: tasks.to_vec(),
            accs: tasks.iter().map(Acc::new).collect(),
            images: 0,
        }
    }

    /// Adds one batch: `outputs[t]` is task t's output `[B, C, H, W]` (logits for
    /// segmentation and saliency, the prediction for normals and depth), `labels[i][t]`
    /// image i's label of task t at the same size.
    ///
    /// # Errors
    /// An output that is not `[B, C, H, W]` f32 with one image per label.
    pub fn add(&mut self, outputs: &[&Tensor], labels: &[&[Label]]) -> candle_core::Result<()> {
        for (t, (task, acc)) in self.tasks.iter().zip(&mut self.accs).enumerate() {
            let preds = predictions(task.kind, outputs[t])?;
            if preds.len() != labels.len() {
                candle_core::bail!(
                    "task {}: {} outputs for {} labels",
                    task.name,
                    preds.len(),
                    labels.len()
                );
            }
            for (pred, ex) in preds.iter().zip(labels) {
                match (&mut *acc, &ex[t]) {
                    (Acc::Seg(m), Label::Classes(gt)) => {
                        let p: Vec<u8> = pred.iter().map(|&c| c as u8).collect();
                        m.add(&p, gt)
                    }
                    (Acc::Sal(m), Label::Classes(gt)) => m.add(pred, gt),
                    (Acc::Normals(m), Label::Normals(gt)) => m.add(pred, gt),
                    (Acc::Depth(m), Label::Depth(gt)) => m.add(pred, gt),
                    _ => candle_core::bail!("task {}: a label of another kind", task.name),
                }
            }
        }
        self.images += labels.len();
        Ok(())
    }

    /// The report of everything added.
    pub fn finish(&self, split: &str, image_size: usize) -> EvalReport {
        EvalReport {
            split: split.into(),
            images: self.images,
            image_size,
            tasks: self
                .tasks
                .iter()
                .zip(&self.accs)
                .map(|(t, a)| (t.name.clone(), a.finish(t.kind)))
                .collect(),
            delta_m: None,
            baseline: None,
        }
    }
}

/// Which tasks an evaluation runs, and which it leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSelection {
    /// The tasks to evaluate, in the dataset's order (or as asked for).
    pub tasks: Vec<String>,
    /// One line for each task of either side left out, saying why.
    pub skipped: Vec<String>,
}

/// The tasks to evaluate a bundle (`config`, called `bundle` in messages) on:
/// `wanted` if given, else every task both it and `dataset` have, the others named in
/// [`TaskSelection::skipped`].
///
/// # Errors
/// [`Error::Invalid`] when no task is in common, or a wanted task is missing from the
/// bundle; a wanted task missing from the dataset.
pub fn select_tasks(
    config: &vmt_registry::bundle::BundleConfig,
    bundle: &str,
    dataset: &Dataset,
    wanted: &[String],
) -> Result<TaskSelection> {
    let in_bundle = |t: &str| config.task(t).is_some();
    let mut skipped = Vec::new();
    let tasks: Vec<String> = if wanted.is_empty() {
        for t in dataset.info.tasks.iter().filter(|t| !in_bundle(&t.name)) {
            skipped.push(format!("{}: bundle {bundle} has no such task", t.name));
        }
        for t in config
            .tasks
            .iter()
            .filter(|t| dataset.task(&t.name).is_none())
        {
            let root = dataset.root.display();
            skipped.push(format!("{}: dataset {root} has no such task", t.name));
        }
        let both = dataset.info.tasks.iter().filter(|t| in_bundle(&t.name));
        both.map(|t| t.name.clone()).collect()
    } else {
        wanted.to_vec()
    };
    if tasks.is_empty() {
        let root = dataset.root.display();
        invalid!("bundle {bundle} and dataset {root} have no task in common");
    }
    for t in &tasks {
        if !in_bundle(t) {
            let has: Vec<&str> = config.tasks.iter().map(|t| t.name.as_str()).collect();
            invalid!(
                "task {t:?} was asked for, but bundle {bundle} lacks it (it has {})",
                has.join(", ")
            );
        }
        dataset.require_task(t)?;
    }
    Ok(TaskSelection { tasks, skipped })
}

/// Evaluates `model` on `split`, images resized to `size`.
pub fn evaluate(
    model: &VmtModel,
    dataset: Arc<Dataset>,
    split: &str,
    size: usize,
    batch: usize,
    workers: usize,
) -> Result<EvalReport> {
    let tasks: Vec<TaskSpec> = model.config.tasks.clone();
    for t in &tasks {
        let d = dataset.require_task(&t.name)?;
        if d.kind != t.kind || d.channels != t.channels {
            invalid!(
                "{}: task {:?} is {:?} with {} channels there, {:?} with {} in the bundle",
                dataset.root.join("dataset.json").display(),
                t.name,
                d.kind,
                d.channels,
                t.kind,
                t.channels
            );
        }
    }
    let ids = dataset.split(split)?;
    let device = model.backbone.device.clone();
    let mut evaluator = Evaluator::new(&tasks);
    let loader = Loader::spawn(
        dataset,
        tasks.clone(),
        size,
        eval_plans(&ids, batch).into_iter(),
        workers,
        2,
    );
    for batch in loader {
        let batch = batch?;
        let (pixels, _) = batch.tensors(&tasks, &device)?;
        let out = model.forward(&pixels)?;
        let outputs: Vec<&Tensor> = tasks
            .iter()
            .map(|t| out.task(&t.name).expect("model has every task"))
            .collect();
        let labels: Vec<&[Label]> = batch.examples.iter().map(|e| &e.labels[..]).collect();
        evaluator.add(&outputs, &labels)?;
    }
    Ok(evaluator.finish(split, size))
}

/// A named set of single-task results Δm is measured against.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    /// What `--baseline` calls it.
    pub name: &'static str,
    /// Where the numbers come from.
    pub source: &'static str,
    /// Each task's primary metric.
    pub values: &'static [(&'static str, f64)],
}

/// The built-in baselines.
pub const BASELINES: [Baseline; 1] = [Baseline {
    name: "pascal-swin-t-stl",
    source: "single-task full fine-tuning of Swin-T on PASCAL-Context at 448x448 (MTLoRA, Agiza et al., CVPR 2024, Table 1): semseg, human_parts, sal mIoU, normals mErr",
    values: &[
        ("semseg", 67.21),
        ("human_parts", 61.93),
        ("sal", 62.35),
        ("normals", 17.97),
    ],
}];

/// Single-task baselines: a name of [`BASELINES`], an `eval --json` report, or a JSON
/// file `{"task": value}` (each task's primary metric).
///
/// # Errors
/// An unknown name that is not a readable file of either form.
pub fn read_baseline(spec: &str) -> Result<BTreeMap<String, f64>> {
    if let Some(b) = BASELINES.iter().find(|b| b.name == spec) {
        return Ok(b.values.iter().map(|&(t, v)| (t.to_string(), v)).collect());
    }
    let path = Path::new(spec);
    let text = std::fs::read_to_string(path).map_err(|e| {
        let names: Vec<&str> = BASELINES.iter().map(|b| b.name).collect();
        Error::Invalid(format!(
            "{}: {e} (a baseline is a file or one of: {})",
            path.display(),
            names.join(", ")
        ))
    })?;
    if let Ok(report) = serde_json::from_str::<EvalReport>(&text) {
        return Ok(report
            .tasks
            .into_iter()
            .filter_map(|(t, r)| r.metrics.get(&r.primary).map(|v| (t, *v)))
            .collect());
    }
    serde_json::from_str::<BTreeMap<String, f64>>(&text).map_err(|e| {
        Error::Invalid(format!(
            "{}: expected an `eval --json` report or {{\"task\": value}}: {e}",
            path.display()
        ))
    })
}

impl EvalReport {
    /// Sets Δm against `baseline`.
    pub fn with_baseline(mut self, baseline: &BTreeMap<String, f64>) -> Self {
        let primary: BTreeMap<String, (String, f64)> = self
            .tasks
            .iter()
            .map(|(t, r)| (t.clone(), (r.primary.clone(), r.metrics[&r.primary])))
            .collect();
        self.delta_m = delta_m(&primary, baseline);
        self.baseline = Some(
            baseline
                .iter()
                .filter(|(t, _)| self.tasks.contains_key(*t))
                .map(|(t, v)| (t.clone(), *v))
                .collect(),
        );
        self
    }

    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} split, {} images at {}x{}\n",
            self.split, self.images, self.image_size, self.image_size
        );
        s.push_str(&format!("{:<16} {:<13} {}\n", "TASK", "KIND", "METRICS"));
        for (t, r) in &self.tasks {
            let m: Vec<String> = r
                .metrics
                .iter()
                .map(|(k, v)| {
                    let arrow = if metrics::higher_is_better(k) {
                        "↑"
                    } else {
                        "↓"
                    };
                    format!("{k} {v:.2}{arrow}")
                })
                .collect();
            s.push_str(&format!(
                "{:<16} {:<13} {}\n",
                t,
                format!("{:?}", r.kind).to_lowercase(),
                m.join("  ")
            ));
        }
        if let (Some(d), Some(b)) = (self.delta_m, &self.baseline) {
            let against: Vec<String> = b.iter().map(|(t, v)| format!("{t} {v:.2}")).collect();
            s.push_str(&format!("Δm {d:+.2}% (against {})\n", against.join(", ")));
        }
        s
    }
}
