//! Checkpoints: `checkpoints/step-NNNNNNNN/` with `state.safetensors` (weights and AdamW
//! moments, bit-exact) and `trainer.json` (step and the run's fingerprint). Written to a
//! temp directory and renamed, so a crash never leaves half a checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use vmt_registry::bundle::RawTensor;
use vmt_registry::safetensors_canon::{canonical_bytes, parse};

use super::optim::AdamW;
use super::TrainOptions;
use crate::model::tensors::to_raw;

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

#[derive(Debug, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    adam_t: u64,
    fingerprint: Fingerprint,
}

/// A restored checkpoint.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub step: usize,
    adam_t: u64,
    fingerprint: Fingerprint,
    pub params: BTreeMap<String, RawTensor>,
    moments: BTreeMap<String, RawTensor>,
}

fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Completed checkpoints, oldest first.
fn list(run_dir: &Path) -> anyhow::Result<Vec<(usize, PathBuf)>> {
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
    /// Writes the checkpoint of `step` and keeps only the newest `keep`.
    pub fn save(
        run_dir: &Path,
        step: usize,
        fingerprint: &Fingerprint,
        opt: &AdamW,
        keep: usize,
    ) -> anyhow::Result<()> {
        let dir = checkpoints_dir(run_dir);
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        let mut tensors = BTreeMap::new();
        for p in &opt.params {
            tensors.insert(format!("param.{}", p.name), to_raw(p.var.as_tensor())?);
            tensors.insert(format!("adam_m.{}", p.name), to_raw(&p.m)?);
            tensors.insert(format!("adam_v.{}", p.name), to_raw(&p.v)?);
        }
        let state = TrainerState {
            step,
            adam_t: opt.t,
            fingerprint: fingerprint.clone(),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-step-")
            .tempdir_in(&dir)?;
        std::fs::write(
            tmp.path().join("state.safetensors"),
            canonical_bytes(&tensors),
        )?;
        std::fs::write(
            tmp.path().join("trainer.json"),
            serde_json::to_vec_pretty(&state)?,
        )?;
        let final_dir = dir.join(format!("step-{step:08}"));
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)?;
        }
        std::fs::rename(tmp.keep(), &final_dir).with_context(|| final_dir.display().to_string())?;
        let all = list(run_dir)?;
        for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
            std::fs::remove_dir_all(old).with_context(|| old.display().to_string())?;
        }
        Ok(())
    }

    /// The newest checkpoint of a run, if any.
    pub fn latest(run_dir: &Path) -> anyhow::Result<Option<Self>> {
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
            fingerprint: state.fingerprint,
            params,
            moments,
        }))
    }

    /// Refuses to resume with other settings, naming what differs.
    pub fn check_fingerprint(&self, now: &Fingerprint) -> anyhow::Result<()> {
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
        bail!(
            "resume: {} was made with other settings: {}",
            self.dir.display(),
            differing.join("; ")
        )
    }

    /// Puts the AdamW moments and update count back.
    pub fn restore_optimizer(&self, opt: &mut AdamW, device: &Device) -> anyhow::Result<()> {
        opt.t = self.adam_t;
        for p in &mut opt.params {
            let get = |kind: &str| -> anyhow::Result<Tensor> {
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

/// Drops metric lines past `step` (written after the checkpoint a run resumes from).
pub fn truncate_metrics(path: &Path, step: usize) -> anyhow::Result<()> {
    if step == 0 {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        return Ok(());
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step")?.as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept)?;
    Ok(())
}
