//! Checkpoints: `checkpoints/step-NNNNNNNN/` with `state.safetensors` (weights and AdamW
//! moments, bit-exact) and `trainer.json` (step and the run's fingerprint). Written to a
//! temp directory and renamed, so a crash never leaves half a checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use vmt_registry::bundle::RawTensor;
use vmt_registry::safetensors_canon::{canonical_bytes, parse};

use super::optim::AdamW;
use super::TrainOptions;
use crate::error::{Context, Error, Result};
use crate::model::tensors::to_raw;

/// The run directory's log of steps, one JSON line each.
pub const METRICS: &str = "metrics.jsonl";

fn train_split() -> String {
    "train".into()
}

/// What must not change between a run and its resumption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub tasks: Vec<String>,
    #[serde(default = "train_split")]
    pub train_split: String,
    pub backbone_digest: String,
    pub data_digest: String,
    pub adapter: String,
    pub reduction: usize,
    pub scale: f64,
    pub decoder: (usize, usize),
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup: Option<usize>,
    pub image_size: usize,
    pub loss_weights: BTreeMap<String, f64>,
    pub clip_grad: Option<f64>,
    pub seed: u64,
    /// add-task: the bundle extended.
    #[serde(default)]
    pub base: Option<String>,
}

impl Fingerprint {
    pub fn new(o: &TrainOptions, backbone_digest: &str, data_digest: &str) -> Self {
        Self {
            tasks: o.tasks.clone(),
            train_split: o.train_split.clone(),
            backbone_digest: backbone_digest.into(),
            data_digest: data_digest.into(),
            adapter: o.adapter.to_string(),
            reduction: o.reduction,
            scale: o.scale,
            decoder: (o.decoder_dim, o.decoder_hidden),
            steps: o.steps,
            batch: o.batch,
            lr: o.lr,
            weight_decay: o.weight_decay,
            warmup: o.warmup,
            image_size: o.image_size,
            loss_weights: o.loss_weights.clone(),
            clip_grad: o.clip_grad,
            seed: o.seed,
            base: o.base.as_ref().map(|b| b.identity()),
        }
    }
}

/// `trainer.json`: where a checkpoint stands.
#[derive(Debug, Serialize, Deserialize)]
pub struct TrainerState {
    /// Steps done.
    pub step: usize,
    /// AdamW's update count.
    pub adam_t: u64,
    /// The loss of the last step (absent in checkpoints of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// The run's settings.
    pub fingerprint: Fingerprint,
}

/// A restored checkpoint.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub step: usize,
    adam_t: u64,
    loss: Option<f64>,
    fingerprint: Fingerprint,
    pub params: BTreeMap<String, RawTensor>,
    moments: BTreeMap<String, RawTensor>,
}

fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Completed checkpoints, oldest first.
fn list(run_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = checkpoints_dir(run_dir);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(step) = name
                .strip_prefix("step-")
                .and_then(|s| s.parse::<usize>().ok())
            {
                out.push((step, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Checkpoint {
    /// Writes the checkpoint of `state` and keeps only the newest `keep`.
    pub fn save(run_dir: &Path, state: &TrainerState, opt: &AdamW, keep: usize) -> Result<()> {
        let dir = checkpoints_dir(run_dir);
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        let mut tensors = BTreeMap::new();
        for p in &opt.params {
            tensors.insert(format!("param.{}", p.name), to_raw(p.var.as_tensor())?);
            tensors.insert(format!("adam_m.{}", p.name), to_raw(&p.m)?);
            tensors.insert(format!("adam_v.{}", p.name), to_raw(&p.v)?);
        }
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-step-")
            .tempdir_in(&dir)
            .with_context(|| dir.display().to_string())?;
        for (name, bytes) in [
            ("state.safetensors", canonical_bytes(&tensors)),
            ("trainer.json", serde_json::to_vec_pretty(state)?),
        ] {
            let path = tmp.path().join(name);
            std::fs::write(&path, bytes).map_err(|e| Error::io(path, e))?;
        }
        let final_dir = dir.join(format!("step-{:08}", state.step));
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
        }
        std::fs::rename(tmp.keep(), &final_dir).with_context(|| final_dir.display().to_string())?;
        let all = list(run_dir)?;
        for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
            std::fs::remove_dir_all(old).with_context(|| old.display().to_string())?;
        }
        Ok(())
    }

    /// The newest checkpoint of a run, if any.
    pub fn latest(run_dir: &Path) -> Result<Option<Self>> {
        let Some((_, dir)) = list(run_dir)?.pop() else {
            return Ok(None);
        };
        let state_path = dir.join("trainer.json");
        let state: TrainerState = serde_json::from_slice(
            &std::fs::read(&state_path).with_context(|| state_path.display().to_string())?,
        )
        .with_context(|| state_path.display().to_string())?;
        let tpath = dir.join("state.safetensors");
        let all = parse(
            &std::fs::read(&tpath).with_context(|| tpath.display().to_string())?,
            &tpath,
        )?;
        let mut params = BTreeMap::new();
        let mut moments = BTreeMap::new();
        for (name, t) in all {
            if let Some(n) = name.strip_prefix("param.") {
                params.insert(n.to_string(), t);
            } else {
                moments.insert(name, t);
            }
        }
        Ok(Some(Self {
            dir,
            step: state.step,
            adam_t: state.adam_t,
            loss: state.loss,
            fingerprint: state.fingerprint,
            params,
            moments,
        }))
    }

    /// Refuses to resume with other settings, naming what differs.
    pub fn check_fingerprint(&self, now: &Fingerprint) -> Result<()> {
        if &self.fingerprint == now {
            return Ok(());
        }
        let (a, b) = (
            serde_json::to_value(&self.fingerprint)?,
            serde_json::to_value(now)?,
        );
        let differing: Vec<String> = a
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| b.get(k.as_str()) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k} (checkpoint {v}, now {})",
                    b.get(k.as_str()).cloned().unwrap_or_default()
                )
            })
            .collect();
        Err(Error::SettingsChanged {
            checkpoint: self.dir.clone(),
            differing,
        })
    }

    /// The loss of the checkpoint's last step: recorded in the checkpoint, or (for
    /// checkpoints of earlier versions) read from the run's metrics; NaN if neither has it.
    pub fn loss(&self, run_dir: &Path) -> f64 {
        self.loss
            .or_else(|| metrics_loss(&run_dir.join(METRICS), self.step))
            .unwrap_or(f64::NAN)
    }

    /// Puts the AdamW moments and update count back.
    pub fn restore_optimizer(&self, opt: &mut AdamW, device: &Device) -> Result<()> {
        opt.t = self.adam_t;
        for p in &mut opt.params {
            let get = |kind: &str| -> Result<Tensor> {
                let t = self
                    .moments
                    .get(&format!("{kind}.{}", p.name))
                    .with_context(|| format!("{}: no {kind} for {}", self.dir.display(), p.name))?;
                Ok(Tensor::from_vec(t.to_f32(), t.shape.clone(), device)?)
            };
            p.m = get("adam_m")?;
            p.v = get("adam_v")?;
        }
        Ok(())
    }
}

/// The step number of a metrics line.
fn line_step(line: &str) -> Option<(usize, serde_json::Value)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some((v.get("step")?.as_u64()? as usize, v))
}

/// The loss of `step` in a run's metrics, if recorded.
fn metrics_loss(path: &Path, step: usize) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter_map(line_step)
        .find(|(s, _)| *s == step)
        .and_then(|(_, v)| v.get("loss")?.as_f64())
}

/// Opens the run's metrics for appending after `step`: lines past it (written after the
/// checkpoint a run resumes from) are dropped; a fresh run (`step` 0) starts empty.
pub fn open_metrics(run_dir: &Path, step: usize) -> Result<std::fs::File> {
    let path = run_dir.join(METRICS);
    let kept: String = match std::fs::read_to_string(&path) {
        Ok(text) if step > 0 => text
            .lines()
            .filter(|l| line_step(l).is_some_and(|(s, _)| s <= step))
            .map(|l| format!("{l}\n"))
            .collect(),
        _ => String::new(),
    };
    std::fs::write(&path, kept).map_err(|e| Error::io(&path, e))?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))
}
