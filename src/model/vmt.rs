//! VMT-Adapter: one adapter per Swin block shared by all tasks, per-task knowledge
//! extraction modules (KEMs) and per-task decoders (reference: `vmt_ref.py`).
//!
//! ```text
//! x1 = x + WindowAttention(LN_before(x))          frozen
//! h  = LN_after(x1);  a = Adapter(h)               shared by all tasks
//! x  = x1 + MLP(h) + s*a                           the one backbone stream
//! acc_t += s*(gamma_t*a + beta_t)                  per task, elementwise (KEM)
//! end of stage i: F_i = x, F_i^t = x + acc_t       generic and task features
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Module, Result, Tensor};
use vmt_registry::bundle::{AdapterKind, BundleConfig, TaskSpec};

use super::error::ModelError;
use super::ops::{resize_bilinear_nchw, resize_bilinear_nhwc, LayerNorm, Linear};
use super::swin::{StageLayout, Swin};
use super::tensors::NamedTensors;

/// The shared adapter of one block: `up(relu(down(h)))`, or for Lite
/// `relu(down(h)) · down.weight + up.bias`.
#[derive(Debug, Clone)]
pub struct Adapter {
    down: Linear,
    /// VMT: `[C, r]` own weight; Lite: None (the transpose of `down.weight` is used).
    up_weight: Option<Tensor>,
    up_bias: Tensor,
}

impl Adapter {
    fn new(
        t: &NamedTensors,
        prefix: &str,
        kind: AdapterKind,
        dim: usize,
        r: usize,
    ) -> std::result::Result<Self, ModelError> {
        let down = Linear::new(
            t.get_f32(&format!("{prefix}.down.weight"), &[r, dim])?,
            Some(t.get_f32(&format!("{prefix}.down.bias"), &[r])?),
        );
        let up_weight = match kind {
            AdapterKind::Vmt => Some(t.get_f32(&format!("{prefix}.up.weight"), &[dim, r])?),
            AdapterKind::VmtLite => None,
        };
        Ok(Self {
            down,
            up_weight,
            up_bias: t.get_f32(&format!("{prefix}.up.bias"), &[dim])?,
        })
    }

    /// `h`: `[B, L, C]` -> `[B, L, C]`.
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let z = self.down.forward(h)?.relu()?;
        let up = match &self.up_weight {
            Some(w) => Linear::new(w.clone(), Some(self.up_bias.clone())),
            // Lite: z · down.weight = z · (down.weightᵀ)ᵀ, a Linear with weight down.weightᵀ.
            None => Linear::new(self.down.weight.t()?, Some(self.up_bias.clone())),
        };
        up.forward(&z)
    }
}

/// A task's knowledge-extraction module for one block: `s*(gamma*a + beta)`.
#[derive(Debug, Clone)]
pub struct Kem {
    gamma: Tensor,
    beta: Tensor,
}

/// A task's light multi-scale decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    norms: Vec<LayerNorm>,
    lateral: Vec<Linear>,
    fuse: Linear,
    fuse_norm: LayerNorm,
    head: Linear,
}

impl Decoder {
    fn new(
        t: &NamedTensors,
        cfg: &BundleConfig,
        task: &TaskSpec,
    ) -> std::result::Result<Self, ModelError> {
        let p = format!("tasks.{}.decoder", task.stored_name());
        let eps = cfg.backbone.layer_norm_eps;
        let (d, hidden) = (cfg.decoder.dim, cfg.decoder.hidden);
        let dims = cfg.backbone.stage_dims();
        let ln = |name: String, c: usize| -> std::result::Result<LayerNorm, ModelError> {
            Ok(LayerNorm::new(
                t.get_f32(&format!("{name}.weight"), &[c])?,
                t.get_f32(&format!("{name}.bias"), &[c])?,
                eps,
            ))
        };
        let lin =
            |name: String, out: usize, inp: usize| -> std::result::Result<Linear, ModelError> {
                Ok(Linear::new(
                    t.get_f32(&format!("{name}.weight"), &[out, inp])?,
                    Some(t.get_f32(&format!("{name}.bias"), &[out])?),
                ))
            };
        Ok(Self {
            norms: (0..dims.len())
                .map(|i| ln(format!("{p}.norms.{i}"), dims[i]))
                .collect::<std::result::Result<_, _>>()?,
            lateral: (0..dims.len())
                .map(|i| lin(format!("{p}.lateral.{i}"), d, dims[i]))
                .collect::<std::result::Result<_, _>>()?,
            fuse: lin(format!("{p}.fuse"), hidden, dims.len() * d)?,
            fuse_norm: ln(format!("{p}.fuse_norm"), hidden)?,
            head: lin(format!("{p}.head"), task.channels, hidden)?,
        })
    }

    /// Task features NHWC `[B, h_i, w_i, C_i]` -> logits NCHW `[B, K, H, W]`.
    pub fn forward(&self, feats: &[Tensor], out_h: usize, out_w: usize) -> Result<Tensor> {
        let (_, h1, w1, _) = feats[0].dims4()?;
        let ys = feats
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let y = self.lateral[i].forward(&self.norms[i].forward(f)?)?;
                resize_bilinear_nhwc(&y, h1, w1) // [B, h1, w1, D]
            })
            .collect::<Result<Vec<_>>>()?;
        let y = Tensor::cat(&ys, 3)?; // [B, h1, w1, 4D]
        let y = self.fuse_norm.forward(&self.fuse.forward(&y)?)?.relu()?;
        let y = self.head.forward(&y)?.permute((0, 3, 1, 2))?; // [B, K, h1, w1]
        resize_bilinear_nchw(&y, out_h, out_w)
    }
}

/// One task: its spec, its KEMs (`[stage][block]`) and its decoder.
#[derive(Debug, Clone)]
pub struct TaskHead {
    /// The task.
    pub spec: TaskSpec,
    kems: Vec<Vec<Kem>>,
    decoder: Decoder,
}

/// What one forward pass gives: every task's logits and the generic stage features.
#[derive(Debug, Clone)]
pub struct VmtOutput {
    /// `(task name, [B, K, H, W])`, in the bundle's task order.
    pub tasks: Vec<(String, Tensor)>,
    /// Generic (task-independent) stage features, NCHW `[B, C_i, h_i, w_i]`.
    pub features: Vec<Tensor>,
}

impl VmtOutput {
    /// The output of task `name`.
    pub fn task(&self, name: &str) -> Option<&Tensor> {
        self.tasks.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// The multi-task model: a frozen Swin, the shared adapters, and the task heads.
#[derive(Debug, Clone)]
pub struct VmtModel {
    /// The bundle config.
    pub config: BundleConfig,
    /// The frozen backbone.
    pub backbone: Arc<Swin>,
    /// `[stage][block]`.
    adapters: Vec<Vec<Adapter>>,
    /// One head per task, in config order.
    pub heads: Vec<TaskHead>,
}

impl VmtModel {
    /// Builds the model from the bundle's tensors (plain tensors for inference, or the
    /// tensors of Vars for training). The bundle and the backbone must share a geometry.
    pub fn new(
        config: BundleConfig,
        backbone: Arc<Swin>,
        t: &NamedTensors,
    ) -> std::result::Result<Self, ModelError> {
        if !config.backbone.same_shape(&backbone.geometry) {
            return Err(ModelError::BackboneMismatch(format!(
                "the bundle was trained on a Swin with {}, the backbone given has {}",
                config.backbone.describe(),
                backbone.geometry.describe()
            )));
        }
        let dims = config.backbone.stage_dims();
        let mut adapters = Vec::new();
        for (i, &depth) in config.backbone.depths.iter().enumerate() {
            let r = config.adapter.bottleneck(dims[i]);
            adapters.push(
                (0..depth)
                    .map(|j| {
                        Adapter::new(
                            t,
                            &format!("adapter.stages.{i}.blocks.{j}"),
                            config.adapter.kind,
                            dims[i],
                            r,
                        )
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?,
            );
        }
        let mut heads = Vec::new();
        for task in &config.tasks {
            let mut kems = Vec::new();
            for (i, &depth) in config.backbone.depths.iter().enumerate() {
                kems.push(
                    (0..depth)
                        .map(|j| {
                            let p =
                                format!("tasks.{}.kem.stages.{i}.blocks.{j}", task.stored_name());
                            Ok(Kem {
                                gamma: t.get_f32(&format!("{p}.gamma"), &[dims[i]])?,
                                beta: t.get_f32(&format!("{p}.beta"), &[dims[i]])?,
                            })
                        })
                        .collect::<std::result::Result<Vec<_>, ModelError>>()?,
                );
            }
            heads.push(TaskHead {
                spec: task.clone(),
                kems,
                decoder: Decoder::new(t, &config, task)?,
            });
        }
        Ok(Self {
            config,
            backbone,
            adapters,
            heads,
        })
    }

    /// One backbone pass for all tasks. `pixels`: `[B, 3, H, W]` f32 (normalised).
    pub fn forward(&self, pixels: &Tensor) -> Result<VmtOutput> {
        self.decode(self.encode(pixels)?)
    }

    /// The encoder: the backbone pass with the shared adapters, and each task's KEMs
    /// (the part whose cost is nearly O(1) in the number of tasks).
    pub fn encode(&self, pixels: &Tensor) -> Result<Encoded> {
        super::on_pool(|| self.encode_on_pool(pixels))
    }

    fn encode_on_pool(&self, pixels: &Tensor) -> Result<Encoded> {
        let (b, _, h_in, w_in) = pixels.dims4()?;
        let swin = &self.backbone;
        let s = self.config.adapter.scale;
        let (mut x, mut h, mut w) = swin.embeddings.forward(pixels)?;
        let mut task_feats: Vec<Vec<Tensor>> = vec![Vec::new(); self.heads.len()];
        let mut features = Vec::new();
        for (i, stage) in swin.stages.iter().enumerate() {
            let layout = StageLayout::new(h, w, swin.geometry.window_size, &swin.device)?;
            // acc_t = sum over the stage's blocks of (gamma_t*a + beta_t); scaled by s at the end.
            // The fused kernel takes the adapter outputs of all blocks at the stage's end.
            let fused = super::fused::enabled(&x);
            let mut acc: Vec<Option<Tensor>> = vec![None; self.heads.len()];
            let mut adapter_outs = Vec::new();
            for (j, block) in stage.blocks.iter().enumerate() {
                let x1 = block.attend(&x, &layout)?;
                let hn = block.layernorm_after.forward(&x1)?;
                let a = self.adapters[i][j].forward(&hn)?;
                x = ((&x1 + block.mlp(&hn)?)? + (&a * s)?)?;
                if fused {
                    adapter_outs.push(a);
                    continue;
                }
                for (t, head) in self.heads.iter().enumerate() {
                    let kem = &head.kems[i][j];
                    let k = a.broadcast_mul(&kem.gamma)?.broadcast_add(&kem.beta)?;
                    acc[t] = Some(match acc[t].take() {
                        Some(prev) => (prev + k)?,
                        None => k,
                    });
                }
            }
            let c = x.dim(2)?;
            features.push(x.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?);
            let a = (fused && !adapter_outs.is_empty())
                .then(|| Tensor::stack(&adapter_outs, 0))
                .transpose()?;
            for (t, acc) in acc.into_iter().enumerate() {
                let kems = &self.heads[t].kems[i];
                let f = match (&a, acc) {
                    (Some(a), _) => {
                        let gammas: Vec<&Tensor> = kems.iter().map(|k| &k.gamma).collect();
                        let betas: Vec<&Tensor> = kems.iter().map(|k| &k.beta).collect();
                        let p = Tensor::stack(
                            &[Tensor::stack(&gammas, 0)?, Tensor::stack(&betas, 0)?],
                            0,
                        )?;
                        super::fused::kem_features(&x, a, &p, s)?
                    }
                    (None, Some(acc)) => (&x + (acc * s)?)?,
                    (None, None) => x.clone(),
                };
                task_feats[t].push(f.reshape((b, h, w, c))?);
            }
            if let Some(down) = &stage.downsample {
                x = down.forward(&x, h, w)?;
                (h, w) = (h.div_ceil(2), w.div_ceil(2));
            }
        }
        Ok(Encoded {
            task_feats,
            features,
            size: (h_in, w_in),
        })
    }

    /// The decoders: each task's prediction at the input's size.
    pub fn decode(&self, enc: Encoded) -> Result<VmtOutput> {
        super::on_pool(|| self.decode_on_pool(enc))
    }

    fn decode_on_pool(&self, enc: Encoded) -> Result<VmtOutput> {
        let (h_in, w_in) = enc.size;
        let tasks = self
            .heads
            .iter()
            .zip(&enc.task_feats)
            .map(|(head, feats)| {
                Ok((
                    head.spec.name.clone(),
                    head.decoder.forward(feats, h_in, w_in)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(VmtOutput {
            tasks,
            features: enc.features,
        })
    }
}

/// What the encoder hands the decoders.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Per task, its stage features `[B, h_i, w_i, C_i]` (generic + its KEMs).
    pub task_feats: Vec<Vec<Tensor>>,
    /// Generic stage features, NCHW.
    pub features: Vec<Tensor>,
    /// The input's `(H, W)`.
    pub size: (usize, usize),
}

/// Builds the model from raw bundle tensors (as read from a bundle directory or the
/// registry), placed on the backbone's device.
pub fn model_from_raw(
    config: BundleConfig,
    backbone: Arc<Swin>,
    tensors: &BTreeMap<String, vmt_registry::bundle::RawTensor>,
    origin: &str,
) -> std::result::Result<VmtModel, ModelError> {
    let named = super::tensors::from_raw(tensors, origin, &backbone.device)?;
    VmtModel::new(config, backbone, &named)
}
