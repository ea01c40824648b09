//! `bundle.json`: the geometry of the backbone, the adapter, the decoder and the tasks.
//!
//! Every struct keeps the keys it does not know in `extra`, so a bundle written by a
//! newer vmt-hub survives a round trip through an older one (DESIGN §2).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The only bundle format this version reads and writes.
pub const BUNDLE_FORMAT: &str = "vmt-bundle/1";

/// Geometry (and, when known, provenance) of a Swin backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwinGeometry {
    /// Always `swin`.
    #[serde(default = "swin_family")]
    pub family: String,
    /// Channels of stage 0 (96 for Swin-T).
    pub embed_dim: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    pub num_heads: Vec<usize>,
    /// Attention window side.
    pub window_size: usize,
    /// Patch embedding stride.
    pub patch_size: usize,
    /// MLP hidden width over channels.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Where the weights came from: `hf:<repo>`, `dir:<path>` or `random:<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The commit the weights were resolved to (Hugging Face sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// `sha256:<hex>` of the weights file (or of the canonical bytes of random weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Keys this version does not know, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn swin_family() -> String {
    "swin".into()
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_eps() -> f64 {
    1e-5
}

impl SwinGeometry {
    /// A geometry with no provenance.
    pub fn new(
        embed_dim: usize,
        depths: &[usize],
        num_heads: &[usize],
        window_size: usize,
    ) -> Self {
        Self {
            family: swin_family(),
            embed_dim,
            depths: depths.to_vec(),
            num_heads: num_heads.to_vec(),
            window_size,
            patch_size: 4,
            mlp_ratio: 4.0,
            layer_norm_eps: 1e-5,
            source: None,
            revision: None,
            digest: None,
            extra: Map::new(),
        }
    }

    /// Swin-T: embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7.
    pub fn swin_t() -> Self {
        Self::new(96, &[2, 2, 6, 2], &[3, 6, 12, 24], 7)
    }

    /// The geometry of the parity fixtures: embed 32, depths 2-2-2-2, heads 1-2-4-8, window 4.
    pub fn tiny() -> Self {
        Self::new(32, &[2, 2, 2, 2], &[1, 2, 4, 8], 4)
    }

    /// Channels of stage `i`'s feature map.
    pub fn stage_dims(&self) -> Vec<usize> {
        (0..self.depths.len())
            .map(|i| self.embed_dim << i)
            .collect()
    }

    /// Hidden width of a block's MLP at `dim` channels.
    pub fn mlp_hidden(&self, dim: usize) -> usize {
        (dim as f64 * self.mlp_ratio) as usize
    }

    /// True when both describe the same network (provenance and unknown keys aside).
    pub fn same_shape(&self, other: &Self) -> bool {
        self.embed_dim == other.embed_dim
            && self.depths == other.depths
            && self.num_heads == other.num_heads
            && self.window_size == other.window_size
            && self.patch_size == other.patch_size
            && self.mlp_ratio == other.mlp_ratio
    }

    /// A one-line description such as `embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7`.
    pub fn describe(&self) -> String {
        let join = |v: &[usize]| {
            v.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("-")
        };
        format!(
            "embed {}, depths {}, heads {}, window {}, patch {}",
            self.embed_dim,
            join(&self.depths),
            join(&self.num_heads),
            self.window_size,
            self.patch_size
        )
    }
}

/// VMT-Adapter (own up-projection) or VMT-Adapter-Lite (up = downᵀ, own bias).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdapterKind {
    /// VMT-Adapter: its own up-projection.
    #[serde(rename = "vmt")]
    Vmt,
    /// VMT-Adapter-Lite: up-projection tied to the down-projection.
    #[serde(rename = "vmt-lite")]
    VmtLite,
}

impl std::fmt::Display for AdapterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Vmt => "vmt",
            Self::VmtLite => "vmt-lite",
        })
    }
}

impl std::str::FromStr for AdapterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vmt" => Ok(Self::Vmt),
            "vmt-lite" => Ok(Self::VmtLite),
            _ => Err(format!(
                "unknown adapter kind {s:?} (expected vmt or vmt-lite)"
            )),
        }
    }
}

/// The shared adapter's hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Adapter or Adapter-Lite.
    pub kind: AdapterKind,
    /// Bottleneck of stage i is `max(1, C_i / reduction)`.
    pub reduction: usize,
    /// `s` in `x = x1 + MLP(h) + s * a`.
    pub scale: f64,
    /// Keys this version does not know, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl AdapterConfig {
    /// An adapter config.
    pub fn new(kind: AdapterKind, reduction: usize, scale: f64) -> Self {
        Self {
            kind,
            reduction,
            scale,
            extra: Map::new(),
        }
    }

    /// The bottleneck width at `dim` channels.
    pub fn bottleneck(&self, dim: usize) -> usize {
        (dim / self.reduction.max(1)).max(1)
    }
}

/// Width of every task decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    /// D: channels of each stage after its lateral projection.
    pub dim: usize,
    /// Channels after fusing the four stages.
    pub hidden: usize,
    /// Keys this version does not know, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl DecoderConfig {
    /// A decoder config.
    pub fn new(dim: usize, hidden: usize) -> Self {
        Self {
            dim,
            hidden,
            extra: Map::new(),
        }
    }
}

/// What a task predicts, which fixes its loss and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Per-pixel classes, cross-entropy, label 255 ignored.
    Segmentation,
    /// One logit per pixel, balanced BCE, label 255 ignored.
    Saliency,
    /// Three channels, L1 on the L2-normalised prediction.
    Normals,
    /// One channel, L1 on pixels whose depth is > 0.
    Depth,
}

impl TaskKind {
    /// Output channels a task of this kind must have, where fixed.
    pub fn fixed_channels(self) -> Option<usize> {
        match self {
            TaskKind::Segmentation => None,
            TaskKind::Saliency | TaskKind::Depth => Some(1),
            TaskKind::Normals => Some(3),
        }
    }
}

impl std::str::FromStr for TaskKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "segmentation" => Ok(Self::Segmentation),
            "saliency" => Ok(Self::Saliency),
            "normals" => Ok(Self::Normals),
            "depth" => Ok(Self::Depth),
            _ => Err(format!(
                "unknown task kind {s:?} (expected segmentation, saliency, normals or depth)"
            )),
        }
    }
}

/// One task: its name, kind and output channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Its name (lowercase, in outputs, metrics and components).
    pub name: String,
    /// What it predicts.
    pub kind: TaskKind,
    /// Output channels (classes for segmentation).
    pub channels: usize,
    /// The name its tensors and component are stored under, when it differs from
    /// `name` (after `rename-task`, which writes no tensor): tensors stay
    /// `tasks.<stored_as>.*` in component `task/<stored_as>`. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_as: Option<String>,
    /// The classes' display names, by class id (segmentation), where the dataset
    /// names them: legends and the catalog show them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
    /// Keys this version does not know, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The longest class name (bytes).
pub const MAX_CLASS_NAME: usize = 64;

impl TaskSpec {
    /// A task with no stored alias.
    pub fn new(name: &str, kind: TaskKind, channels: usize) -> Self {
        Self {
            name: name.into(),
            kind,
            channels,
            stored_as: None,
            class_names: None,
            extra: Map::new(),
        }
    }

    /// The task with its classes named, by class id.
    pub fn with_classes(mut self, names: &[&str]) -> Self {
        self.class_names = Some(names.iter().map(|n| n.to_string()).collect());
        self
    }

    /// The display name of class `k`: its name, else its id.
    pub fn class_name(&self, k: usize) -> String {
        self.class_names
            .as_ref()
            .and_then(|n| n.get(k).cloned())
            .unwrap_or_else(|| k.to_string())
    }

    /// Checks `class_names`: one per channel, each short printable text.
    ///
    /// # Errors
    /// A message naming the task and what is wrong.
    pub fn check_class_names(&self) -> Result<(), String> {
        let Some(names) = &self.class_names else {
            return Ok(());
        };
        if names.len() != self.channels {
            return Err(format!(
                "task {}: {} class names for {} channels",
                self.name,
                names.len(),
                self.channels
            ));
        }
        for n in names {
            if n.is_empty() || n.len() > MAX_CLASS_NAME || n.chars().any(char::is_control) {
                return Err(format!(
                    "task {}: class name {n:?} must be 1 to {MAX_CLASS_NAME} bytes of printable text",
                    self.name
                ));
            }
        }
        Ok(())
    }

    /// The name in its tensor names and component: `stored_as`, else `name`.
    pub fn stored_name(&self) -> &str {
        self.stored_as.as_deref().unwrap_or(&self.name)
    }
}

/// The whole `bundle.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleConfig {
    /// `vmt-bundle/1`.
    pub format: String,
    /// The frozen backbone it runs on.
    pub backbone: SwinGeometry,
    /// The shared adapter.
    pub adapter: AdapterConfig,
    /// The task decoders.
    pub decoder: DecoderConfig,
    /// The tasks, in output order.
    pub tasks: Vec<TaskSpec>,
    /// `provenance`, `metrics` and keys this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl BundleConfig {
    /// A config of the current format.
    pub fn new(
        backbone: SwinGeometry,
        adapter: AdapterConfig,
        decoder: DecoderConfig,
        tasks: Vec<TaskSpec>,
    ) -> Self {
        Self {
            format: BUNDLE_FORMAT.into(),
            backbone,
            adapter,
            decoder,
            tasks,
            extra: Map::new(),
        }
    }

    /// The task called `name`.
    pub fn task(&self, name: &str) -> Option<&TaskSpec> {
        self.tasks.iter().find(|t| t.name == name)
    }

    /// The task whose tensors are stored under `stored` (see [`TaskSpec::stored_as`]).
    pub fn task_stored_as(&self, stored: &str) -> Option<&TaskSpec> {
        self.tasks.iter().find(|t| t.stored_name() == stored)
    }

    /// Checks what serde cannot: the format, the geometry, the task names and channel
    /// counts, and the limits on sizes.
    ///
    /// # Errors
    /// [`InvalidConfig`], naming the field and the rule it breaks.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        self.check().map_err(InvalidConfig)
    }

    fn check(&self) -> Result<(), String> {
        if self.format != BUNDLE_FORMAT {
            return Err(format!(
                "unknown format {:?} (this vmt-hub reads {BUNDLE_FORMAT:?})",
                self.format
            ));
        }
        let g = &self.backbone;
        check_limits(self)?;
        if g.family != "swin" {
            return Err(format!(
                "backbone.family is {:?}, expected \"swin\"",
                g.family
            ));
        }
        if g.depths.is_empty() || g.depths.len() != g.num_heads.len() {
            return Err(format!(
                "backbone.depths ({:?}) and backbone.num_heads ({:?}) must be non-empty and of equal length",
                g.depths, g.num_heads
            ));
        }
        for (i, (&c, &h)) in g.stage_dims().iter().zip(&g.num_heads).enumerate() {
            if h == 0 || c % h != 0 {
                return Err(format!(
                    "backbone.num_heads[{i}] = {h} does not divide the stage's {c} channels"
                ));
            }
        }
        if g.window_size == 0 || g.patch_size == 0 || g.embed_dim == 0 {
            return Err("backbone.window_size, patch_size and embed_dim must be positive".into());
        }
        if self.adapter.reduction == 0 {
            return Err("adapter.reduction must be positive".into());
        }
        if self.decoder.dim == 0 || self.decoder.hidden == 0 {
            return Err("decoder.dim and decoder.hidden must be positive".into());
        }
        if self.tasks.is_empty() {
            return Err("tasks is empty: a bundle needs at least one task".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut stored = std::collections::BTreeSet::new();
        for t in &self.tasks {
            validate_task_name(&t.name)?;
            t.check_class_names()?;
            if let Some(s) = &t.stored_as {
                validate_task_name(s)?;
            }
            if !seen.insert(&t.name) {
                return Err(format!("task {:?} appears twice", t.name));
            }
            if !stored.insert(t.stored_name()) {
                return Err(format!(
                    "two tasks are stored as {:?} (task/{0} would hold both)",
                    t.stored_name()
                ));
            }
            if t.channels == 0 {
                return Err(format!("task {:?} has 0 channels", t.name));
            }
            if let Some(c) = t.kind.fixed_channels() {
                if t.channels != c {
                    return Err(format!(
                        "task {:?} is {:?} and must have {c} channel(s), not {}",
                        t.name, t.kind, t.channels
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Sanity limits on a config, checked before anything is sized from it, so that a
/// hostile `bundle.json` (say `depths: [1000000000, 2, 2, 2]`) is refused by name
/// instead of exhausting memory. Real Swin variants (T/S/B/L, up to 48 stages deep
/// in total) are far inside them.
pub mod limits {
    /// Stages of the backbone.
    pub const MAX_STAGES: usize = 8;
    /// Blocks in one stage.
    pub const MAX_DEPTH: usize = 64;
    /// `embed_dim`, and channels of any stage (`embed_dim << i`).
    pub const MAX_CHANNELS: usize = 16384;
    /// Attention heads in a stage.
    pub const MAX_HEADS: usize = 256;
    /// `window_size` and `patch_size`.
    pub const MAX_WINDOW: usize = 64;
    /// `decoder.dim`, `decoder.hidden` and a task's output channels.
    pub const MAX_DECODER: usize = 4096;
    /// Tasks in one bundle.
    pub const MAX_TASKS: usize = 128;
    /// Trainable parameters of a whole bundle (4 GiB of f32).
    pub const MAX_PARAMS: u64 = 1 << 30;
    /// Bytes of a `bundle.json` (configs are a few KiB).
    pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
}

fn check_limits(cfg: &BundleConfig) -> Result<(), String> {
    use limits::*;
    let g = &cfg.backbone;
    let over = |field: &str, value: usize, max: usize| {
        format!("{field} = {value} is larger than the limit of {max}")
    };
    if g.depths.len() > MAX_STAGES {
        return Err(over("backbone.depths (stages)", g.depths.len(), MAX_STAGES));
    }
    for (i, &d) in g.depths.iter().enumerate() {
        if d > MAX_DEPTH {
            return Err(over(&format!("backbone.depths[{i}]"), d, MAX_DEPTH));
        }
    }
    for (i, &h) in g.num_heads.iter().enumerate() {
        if h > MAX_HEADS {
            return Err(over(&format!("backbone.num_heads[{i}]"), h, MAX_HEADS));
        }
    }
    if g.embed_dim > MAX_CHANNELS
        || (g.embed_dim << g.depths.len().saturating_sub(1)) > MAX_CHANNELS
    {
        return Err(format!(
            "backbone.embed_dim = {} gives stages wider than the limit of {MAX_CHANNELS} channels",
            g.embed_dim
        ));
    }
    if g.window_size > MAX_WINDOW {
        return Err(over("backbone.window_size", g.window_size, MAX_WINDOW));
    }
    if g.patch_size > MAX_WINDOW {
        return Err(over("backbone.patch_size", g.patch_size, MAX_WINDOW));
    }
    if !(g.mlp_ratio.is_finite() && g.mlp_ratio > 0.0 && g.mlp_ratio <= 16.0) {
        return Err(format!(
            "backbone.mlp_ratio = {} is not in (0, 16]",
            g.mlp_ratio
        ));
    }
    if !cfg.adapter.scale.is_finite() {
        return Err(format!(
            "adapter.scale = {} is not finite",
            cfg.adapter.scale
        ));
    }
    if cfg.decoder.dim > MAX_DECODER {
        return Err(over("decoder.dim", cfg.decoder.dim, MAX_DECODER));
    }
    if cfg.decoder.hidden > MAX_DECODER {
        return Err(over("decoder.hidden", cfg.decoder.hidden, MAX_DECODER));
    }
    if cfg.tasks.len() > MAX_TASKS {
        return Err(over("tasks (count)", cfg.tasks.len(), MAX_TASKS));
    }
    for t in &cfg.tasks {
        if t.channels > MAX_DECODER {
            return Err(over(
                &format!("tasks[{:?}].channels", t.name),
                t.channels,
                MAX_DECODER,
            ));
        }
    }
    let params = trainable_params(cfg);
    if params > MAX_PARAMS {
        return Err(format!(
            "the config implies about {params} trainable parameters, more than the limit of {MAX_PARAMS}"
        ));
    }
    Ok(())
}

/// The exact count of what `bundle_tensors` would make, in u64; every factor is bounded
/// above by [`check_limits`]'s earlier checks, so nothing overflows.
fn trainable_params(cfg: &BundleConfig) -> u64 {
    let g = &cfg.backbone;
    let tasks = cfg.tasks.len() as u64;
    let (d, hidden) = (cfg.decoder.dim as u64, cfg.decoder.hidden as u64);
    let dims = g.stage_dims();
    let mut params = 0u64;
    for (&c, &depth) in dims.iter().zip(&g.depths) {
        let (c, r) = (c as u64, cfg.adapter.bottleneck(c) as u64);
        params += depth as u64 * (2 * c * r + r + c + tasks * 2 * c);
        params += tasks * (2 * c + d * c + d);
    }
    params
        + cfg
            .tasks
            .iter()
            .map(|t| {
                hidden * (dims.len() as u64 * d) + 3 * hidden + (t.channels as u64 + 1) * hidden
            })
            .sum::<u64>()
}

/// Task names become part of tensor and component names: keep them simple.
pub fn validate_task_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "task name {name:?} must start with a-z and use only a-z, 0-9, '_' and '-' (at most 64)"
        ))
    }
}

/// Where a bundle came from: `provenance` in `bundle.json`, as the trainer and the
/// composition commands write it. Fields a producer did not set are absent; keys this
/// version does not know are kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// `vmt-hub <version>` that trained it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_version: Option<String>,
    /// sha256 of the training data (`Dataset::digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_digest: Option<String>,
    /// Training seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Optimisation steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Images per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// Peak learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Training image side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
    /// Loss weight per trained task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_weights: Option<std::collections::BTreeMap<String, f64>>,
    /// The manifest digest of the bundle it was derived from (`sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Tasks `add-task` added to the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_tasks: Option<Vec<String>>,
    /// How it was derived without training: `merge`, `drop-task`, `rename-task`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Every source of a merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_from: Option<Vec<String>>,
    /// The task `drop-task` left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
    /// `{"from": old, "to": new}` of `rename-task`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renamed: Option<Value>,
    /// How each task was trained and where its metrics were measured, by task name:
    /// a bundle made by `add-task` or `merge` holds tasks trained in different runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<std::collections::BTreeMap<String, TaskProvenance>>,
    /// Keys this version does not know, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// How one task was trained (the run that trained its KEMs and decoder) and at what
/// image size its validation metrics were measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskProvenance {
    /// `vmt-hub <version>` of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_version: Option<String>,
    /// sha256 of the run's training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_digest: Option<String>,
    /// The run's seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The run's steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// The run's batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// The run's peak learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// The run's training image side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
    /// The image side its validation metrics were measured at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_image_size: Option<usize>,
    /// Keys this version does not know, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Provenance {
    /// The record of the run this provenance describes, as one task's provenance.
    pub fn run_record(&self) -> TaskProvenance {
        TaskProvenance {
            code_version: self.code_version.clone(),
            data_digest: self.data_digest.clone(),
            seed: self.seed,
            steps: self.steps,
            batch: self.batch,
            lr: self.lr,
            image_size: self.image_size,
            metrics_image_size: self.image_size,
            extra: Map::new(),
        }
    }

    /// How task `name` was trained: its entry in `tasks`, or, for a bundle made before
    /// per-task provenance, this provenance's own run.
    pub fn task(&self, name: &str) -> TaskProvenance {
        self.tasks
            .as_ref()
            .and_then(|t| t.get(name).cloned())
            .unwrap_or_else(|| self.run_record())
    }
}

/// One task's validation results, as `eval` reports them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMetrics {
    /// The task's kind.
    pub kind: TaskKind,
    /// The metric that ranks it (`mIoU`, `maxF`, `mErr`, `rmse`).
    pub primary: String,
    /// Metric name -> value.
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// Keys this version does not know, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `metrics` in `bundle.json`: the last training loss and validation results.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The weighted training loss of the last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// Validation results per task.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub val: std::collections::BTreeMap<String, TaskMetrics>,
    /// Keys this version does not know, kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl BundleConfig {
    /// Its provenance, if it records one that parses.
    pub fn provenance(&self) -> Option<Provenance> {
        serde_json::from_value(self.extra.get("provenance")?.clone()).ok()
    }

    /// Records `p` as its provenance.
    pub fn set_provenance(&mut self, p: &Provenance) {
        self.extra.insert(
            "provenance".into(),
            serde_json::to_value(p).expect("provenance serialises"),
        );
    }

    /// Its metrics, if it records some that parse.
    pub fn metrics(&self) -> Option<Metrics> {
        serde_json::from_value(self.extra.get("metrics")?.clone()).ok()
    }

    /// Records `m` as its metrics (none when `m` is empty).
    pub fn set_metrics(&mut self, m: &Metrics) {
        if *m == Metrics::default() {
            self.extra.remove("metrics");
        } else {
            self.extra.insert(
                "metrics".into(),
                serde_json::to_value(m).expect("metrics serialise"),
            );
        }
    }
}

/// A bundle configuration that breaks a rule serde cannot check (the message names the
/// field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_are_one_per_channel_and_printable() {
        let t = TaskSpec::new("semseg", TaskKind::Segmentation, 2);
        assert_eq!(t.class_name(1), "1");
        let named = t.clone().with_classes(&["background", "car"]);
        assert_eq!(named.class_name(1), "car");
        assert!(named.check_class_names().is_ok());
        let short = t.clone().with_classes(&["background"]);
        assert!(short
            .check_class_names()
            .unwrap_err()
            .contains("1 class names for 2"));
        let hostile = t.with_classes(&["a", "b\u{1b}[31m"]);
        assert!(hostile
            .check_class_names()
            .unwrap_err()
            .contains("printable"));
    }

    /// `provenance` and `metrics` exactly as the untyped trainer wrote them (from a
    /// demo bundle): read into the typed structs and written back, the canonical JSON is
    /// byte for byte the same, so no stored bundle's digest depends on the change.
    #[test]
    fn typed_provenance_and_metrics_round_trip_exactly() {
        let old = r#"{"provenance": {"batch": 8, "code_version": "vmt-hub 0.1.0", "data_digest": "sha256:a7df7ffc096cfd21c36563d0ea37cbb0daa46d7b5dbb17c113a4e2287a5962c4", "image_size": 64, "loss_weights": {"human_parts": 2.0, "normals": 10.0, "sal": 5.0, "semseg": 1.0}, "lr": 0.002, "seed": 0, "steps": 300, "parent": "sha256:1111111111111111111111111111111111111111111111111111111111111111", "added_tasks": ["depth"], "future_key": [1, 2]}, "metrics": {"train_loss": 1.279165744781494, "val": {"human_parts": {"kind": "segmentation", "metrics": {"mIoU": 68.56306042650311}, "primary": "mIoU"}, "normals": {"kind": "normals", "metrics": {"mErr": 7.186299777396892}, "primary": "mErr"}, "sal": {"kind": "saliency", "metrics": {"mIoU": 65.80714744173302, "maxF": 79.76608463266513}, "primary": "mIoU"}}}}"#;
        let v: Value = serde_json::from_str(old).unwrap();
        let mut cfg = BundleConfig::new(
            SwinGeometry::tiny(),
            AdapterConfig::new(AdapterKind::Vmt, 4, 1.0),
            DecoderConfig::new(16, 32),
            vec![TaskSpec::new("sal", TaskKind::Saliency, 1)],
        );
        cfg.extra = v.as_object().unwrap().clone();
        let before = crate::oci::canonical_json(&serde_json::to_value(&cfg).unwrap());
        let (p, m) = (cfg.provenance().unwrap(), cfg.metrics().unwrap());
        assert_eq!(p.seed, Some(0));
        assert_eq!(p.parent.as_deref().map(|s| &s[..8]), Some("sha256:1"));
        assert_eq!(m.val["sal"].metrics["maxF"], 79.76608463266513);
        cfg.set_provenance(&p);
        cfg.set_metrics(&m);
        let after = crate::oci::canonical_json(&serde_json::to_value(&cfg).unwrap());
        assert_eq!(
            String::from_utf8(before).unwrap(),
            String::from_utf8(after).unwrap()
        );
    }
}
