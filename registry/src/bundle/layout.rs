//! The bundle's tensor naming scheme (DESIGN §2) and the component each tensor lives in.
//!
//! This is the single place that knows which tensors a bundle holds and their shapes;
//! the model, the importer and `show` all read it from here.

use super::config::{AdapterKind, BundleConfig};

/// The component of the shared adapter.
pub const SHARED_COMPONENT: &str = "shared";

/// The component of task `name`: `task/<name>`.
pub fn task_component(name: &str) -> String {
    format!("task/{name}")
}

/// One trainable tensor: its bundle name, shape and whether weight decay applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Its bundle name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The component it is stored in: `shared` or `task/<name>`.
    pub component: String,
    /// Matrices decay; biases, norms, gamma and beta do not.
    pub decays: bool,
}

impl TensorSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The parameters of each component (`shared`, `task/<name>`) of the bundle.
pub fn component_params(cfg: &BundleConfig) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for s in bundle_tensors(cfg) {
        *out.entry(s.component.clone()).or_default() += s.numel();
    }
    out
}

/// Every tensor of the bundle, in the reference's `bundle_state()` order.
pub fn bundle_tensors(cfg: &BundleConfig) -> Vec<TensorSpec> {
    let mut out = shared_tensors(cfg);
    for t in &cfg.tasks {
        out.extend(task_tensors(cfg, t.stored_name(), t.channels));
    }
    out
}

/// The shared adapter's tensors: `adapter.stages.{i}.blocks.{j}.{down,up}.{weight,bias}`.
pub fn shared_tensors(cfg: &BundleConfig) -> Vec<TensorSpec> {
    let mut out = Vec::new();
    let push = |out: &mut Vec<TensorSpec>, name: String, shape: Vec<usize>, decays: bool| {
        out.push(TensorSpec {
            name,
            shape,
            component: SHARED_COMPONENT.into(),
            decays,
        })
    };
    for (i, (&c, &depth)) in cfg
        .backbone
        .stage_dims()
        .iter()
        .zip(&cfg.backbone.depths)
        .enumerate()
    {
        let r = cfg.adapter.bottleneck(c);
        for j in 0..depth {
            let p = format!("adapter.stages.{i}.blocks.{j}.");
            push(&mut out, format!("{p}down.weight"), vec![r, c], true);
            push(&mut out, format!("{p}down.bias"), vec![r], false);
            if cfg.adapter.kind == AdapterKind::Vmt {
                push(&mut out, format!("{p}up.weight"), vec![c, r], true);
            }
            push(&mut out, format!("{p}up.bias"), vec![c], false);
        }
    }
    out
}

/// One task's tensors: its KEMs and its decoder; `task` is the name they are stored
/// under ([`TaskSpec::stored_name`](super::TaskSpec::stored_name)).
pub fn task_tensors(cfg: &BundleConfig, task: &str, channels: usize) -> Vec<TensorSpec> {
    let component = task_component(task);
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, decays: bool| {
        out.push(TensorSpec {
            name,
            shape,
            component: component.clone(),
            decays,
        })
    };
    let dims = cfg.backbone.stage_dims();
    for (i, (&c, &depth)) in dims.iter().zip(&cfg.backbone.depths).enumerate() {
        for j in 0..depth {
            let p = format!("tasks.{task}.kem.stages.{i}.blocks.{j}.");
            push(format!("{p}gamma"), vec![c], false);
            push(format!("{p}beta"), vec![c], false);
        }
    }
    let (d, hidden) = (cfg.decoder.dim, cfg.decoder.hidden);
    let p = format!("tasks.{task}.decoder.");
    for (i, &c) in dims.iter().enumerate() {
        push(format!("{p}norms.{i}.weight"), vec![c], false);
        push(format!("{p}norms.{i}.bias"), vec![c], false);
        push(format!("{p}lateral.{i}.weight"), vec![d, c], true);
        push(format!("{p}lateral.{i}.bias"), vec![d], false);
    }
    push(
        format!("{p}fuse.weight"),
        vec![hidden, dims.len() * d],
        true,
    );
    push(format!("{p}fuse.bias"), vec![hidden], false);
    push(format!("{p}fuse_norm.weight"), vec![hidden], false);
    push(format!("{p}fuse_norm.bias"), vec![hidden], false);
    push(format!("{p}head.weight"), vec![channels, hidden], true);
    push(format!("{p}head.bias"), vec![channels], false);
    out
}

/// The component a tensor name belongs to, or None when it is outside the scheme.
pub fn component_of(name: &str) -> Option<String> {
    if name.starts_with("adapter.") {
        return Some(SHARED_COMPONENT.into());
    }
    let rest = name.strip_prefix("tasks.")?;
    let (task, _) = rest.split_once('.')?;
    Some(task_component(task))
}

/// Trainable parameters of the whole bundle.
pub fn trainable_count(cfg: &BundleConfig) -> usize {
    bundle_tensors(cfg).iter().map(TensorSpec::numel).sum()
}
