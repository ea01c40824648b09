//! Composition of stored bundles without touching a tensor: merge bundles that share
//! their adapter, drop or rename a task, and compare two bundles. Each operation writes
//! one config and one manifest over blobs already in the store, so the registry grows
//! by two small files; everything is checked before anything is written.
//!
//! Lineage: the new bundle's `provenance.parent` is its (first) source, with
//! `provenance.operation` (`merge`, `drop-task`, `rename-task`) and, for a merge,
//! `provenance.merged_from` (every source).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::bundle::{
    task_component, BundleConfig, Provenance, TaskMetrics, TaskSpec, SHARED_COMPONENT,
};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{Descriptor, Manifest};
use crate::reference::TagName;
use crate::store::{Published, Registry};

fn refuse(reason: String) -> Error {
    Error::Compose(reason)
}

/// A stored bundle's manifest and config, read and verified (no tensor is read).
pub struct Stored {
    /// How the user named it.
    pub label: String,
    /// Its manifest digest.
    pub digest: Digest,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its config.
    pub config: BundleConfig,
}

impl Stored {
    /// Reads `reference` from `reg`.
    ///
    /// # Errors
    /// An unknown reference, or a manifest or config that does not verify.
    pub fn read(reg: &Registry, reference: &str) -> Result<Self> {
        let digest = reg.resolve(reference)?;
        let manifest = reg.manifest(&digest)?;
        let config = crate::bundle::dir::parse_config(
            &reg.blob(&manifest.config.digest, &format!("config of {reference}"))?,
            std::path::Path::new(&format!("{reference} config")),
        )?;
        Ok(Self {
            label: reference.into(),
            digest,
            manifest,
            config,
        })
    }

    /// The layer titled `component`.
    pub fn layer(&self, component: &str) -> Option<&Descriptor> {
        self.manifest
            .layers
            .iter()
            .find(|l| l.title() == Some(component))
    }

    fn shared(&self) -> Result<&Descriptor> {
        self.layer(SHARED_COMPONENT).ok_or_else(|| Error::Corrupt {
            what: format!("bundle {}", self.label),
            reason: "its manifest has no shared component".into(),
        })
    }

    fn task_layer(&self, task: &str) -> Result<&Descriptor> {
        let t = self.config.task(task).ok_or_else(|| {
            refuse(format!(
                "bundle {} has no task {task:?} (it has {})",
                self.label,
                self.task_names().join(", ")
            ))
        })?;
        self.layer(&task_component(t.stored_name()))
            .ok_or_else(|| Error::Corrupt {
                what: format!("bundle {}", self.label),
                reason: format!("its manifest has no component for task {task:?}"),
            })
    }

    fn task_names(&self) -> Vec<&str> {
        self.config.tasks.iter().map(|t| t.name.as_str()).collect()
    }

    /// `metrics.val.<task>`, if recorded.
    fn val_metrics(&self, task: &str) -> Option<TaskMetrics> {
        self.config.metrics()?.val.remove(task)
    }
}

/// The provenance of a bundle made from `source` by `operation`.
fn derived_provenance(source: &Stored, operation: &str) -> Provenance {
    Provenance {
        parent: Some(source.digest.to_string()),
        operation: Some(operation.into()),
        merged_from: None,
        ..source.config.provenance().unwrap_or_default()
    }
}

/// Sets the validation metrics of `config` to `val` (keeping its other metrics) and
/// its provenance.
fn set_extra(
    config: &mut BundleConfig,
    val: BTreeMap<String, TaskMetrics>,
    provenance: Provenance,
) {
    let mut metrics = config.metrics().unwrap_or_default();
    metrics.val = val;
    config.set_metrics(&metrics);
    config.set_provenance(&provenance);
}

/// Refuses to merge `s` with `first` unless both have the same shared component, the
/// same backbone and the same adapter and decoder geometry.
fn check_mergeable(first: &Stored, s: &Stored) -> Result<()> {
    let (shared, other) = (first.shared()?, s.shared()?);
    if other.digest != shared.digest {
        return Err(refuse(format!(
            "{} and {} have different shared components ({} and {}): only bundles \
             trained on the same shared adapter (add-task siblings) can be merged",
            first.label, s.label, shared.digest, other.digest
        )));
    }
    let (a, b) = (&first.config.backbone, &s.config.backbone);
    if !a.same_shape(b) || a.digest != b.digest {
        return Err(refuse(format!(
            "{} and {} were trained on different backbones ({} {} vs {} {})",
            first.label,
            s.label,
            a.describe(),
            a.digest.as_deref().unwrap_or("?"),
            b.describe(),
            b.digest.as_deref().unwrap_or("?")
        )));
    }
    if first.config.adapter != s.config.adapter || first.config.decoder != s.config.decoder {
        return Err(refuse(format!(
            "{} and {} have a different adapter or decoder geometry",
            first.label, s.label
        )));
    }
    Ok(())
}

/// Whether the merged `config` (with `layers`) takes task `t` of `s` (stored in `layer`):
/// yes for a new task, no for the same task with the same weights already in; refused
/// for a task of that name with other weights, or one stored under a taken name.
fn takes_task(
    config: &BundleConfig,
    layers: &[Descriptor],
    s: &Stored,
    t: &TaskSpec,
    layer: &Descriptor,
) -> Result<bool> {
    if let Some(have) = config.task(&t.name) {
        let same = layers.iter().any(|l| {
            l.title() == Some(&task_component(have.stored_name())) && l.digest == layer.digest
        });
        if same && have.kind == t.kind && have.channels == t.channels {
            return Ok(false);
        }
        return Err(refuse(format!(
            "task {:?} is in more than one bundle (last in {}) with different weights; \
             rename one first (vmt-hub rename-task)",
            t.name, s.label
        )));
    }
    if let Some(clash) = config.task_stored_as(t.stored_name()) {
        return Err(refuse(format!(
            "task {:?} of {} and task {:?} are both stored as {:?}",
            t.name,
            s.label,
            clash.name,
            t.stored_name()
        )));
    }
    Ok(true)
}

/// Merges bundles trained on the same shared adapter into one with all their tasks.
///
/// # Errors
/// [`Error::Compose`] (nothing written) when the bundles' `shared` components, backbones
/// or adapter/decoder geometry differ, or when one task name holds different weights in
/// two bundles.
pub fn merge(reg: &Registry, references: &[&str], tag: &TagName) -> Result<Published> {
    if references.len() < 2 {
        return Err(refuse("merge needs at least two bundles".into()));
    }
    let sources: Vec<Stored> = references
        .iter()
        .map(|r| Stored::read(reg, r))
        .collect::<Result<_>>()?;
    let first = &sources[0];
    let shared = first.shared()?.clone();
    for s in &sources {
        check_mergeable(first, s)?;
    }
    let mut config = first.config.clone();
    let mut layers = vec![shared];
    let mut val = BTreeMap::new();
    config.tasks.clear();
    for s in &sources {
        for t in &s.config.tasks {
            let layer = s.task_layer(&t.name)?;
            if !takes_task(&config, &layers, s, t, layer)? {
                continue; // the same task in two bundles: kept once
            }
            config.tasks.push(t.clone());
            layers.push(layer.clone());
            if let Some(m) = s.val_metrics(&t.name) {
                val.insert(t.name.clone(), m);
            }
        }
    }
    let mut provenance = derived_provenance(first, "merge");
    provenance.merged_from = Some(sources.iter().map(|s| s.digest.to_string()).collect());
    // Each task keeps the record of the run that trained it, from whichever source.
    let mut per_task = BTreeMap::new();
    for s in &sources {
        let p = s.config.provenance().unwrap_or_default();
        for t in &s.config.tasks {
            per_task
                .entry(t.name.clone())
                .or_insert_with(|| p.task(&t.name));
        }
    }
    provenance.tasks = Some(per_task);
    set_extra(&mut config, val, provenance);
    reg.publish_composed(&config, layers, tag)
}

/// A bundle without task `task`.
///
/// # Errors
/// [`Error::Compose`] for an unknown task or the last one (nothing written).
pub fn drop_task(reg: &Registry, reference: &str, task: &str, tag: &TagName) -> Result<Published> {
    let s = Stored::read(reg, reference)?;
    let gone = s.task_layer(task)?.digest;
    if s.config.tasks.len() == 1 {
        return Err(refuse(format!(
            "{task:?} is the only task of {reference}; a bundle needs at least one"
        )));
    }
    let mut config = s.config.clone();
    config.tasks.retain(|t| t.name != task);
    let layers: Vec<Descriptor> = s
        .manifest
        .layers
        .iter()
        .filter(|l| l.digest != gone)
        .cloned()
        .collect();
    let val = s
        .config
        .tasks
        .iter()
        .filter(|t| t.name != task)
        .filter_map(|t| Some((t.name.clone(), s.val_metrics(&t.name)?)))
        .collect();
    let mut provenance = derived_provenance(&s, "drop-task");
    provenance.dropped = Some(task.into());
    provenance.tasks = Some(
        config
            .tasks
            .iter()
            .map(|t| (t.name.clone(), provenance.task(&t.name)))
            .collect(),
    );
    set_extra(&mut config, val, provenance);
    reg.publish_composed(&config, layers, tag)
}

/// A bundle whose task `old` is called `new`. Its tensors keep their stored names
/// (the config records `stored_as`), so no component is rewritten.
///
/// # Errors
/// [`Error::Compose`] for an unknown task or a name already taken; an invalid name.
pub fn rename_task(
    reg: &Registry,
    reference: &str,
    old: &str,
    new: &str,
    tag: &TagName,
) -> Result<Published> {
    let s = Stored::read(reg, reference)?;
    s.task_layer(old)?;
    crate::bundle::validate_task_name(new).map_err(refuse)?;
    if s.config.task(new).is_some() {
        return Err(refuse(format!("{reference} already has a task {new:?}")));
    }
    let mut config = s.config.clone();
    for t in &mut config.tasks {
        if t.name == old {
            let stored = t.stored_name().to_string();
            t.name = new.into();
            t.stored_as = (stored != new).then_some(stored);
        }
    }
    let val = s
        .config
        .tasks
        .iter()
        .filter_map(|t| {
            let name = if t.name == old { new } else { &t.name };
            Some((name.to_string(), s.val_metrics(&t.name)?))
        })
        .collect();
    let mut provenance = derived_provenance(&s, "rename-task");
    provenance.renamed = Some(json!({"from": old, "to": new}));
    provenance.tasks = Some(
        s.config
            .tasks
            .iter()
            .map(|t| {
                let name = if t.name == old { new } else { &t.name };
                (name.to_string(), provenance.task(&t.name))
            })
            .collect(),
    );
    set_extra(&mut config, val, provenance);
    reg.publish_composed(&config, s.manifest.layers.clone(), tag)
}

/// One component in a [`BundleDiff`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentRef {
    /// `shared` or `task/<name>`.
    pub component: String,
    /// The blob.
    pub digest: Digest,
    /// Bytes.
    pub size: u64,
}

/// What differs between two bundles.
#[derive(Debug, Clone, Default)]
pub struct BundleDiff {
    /// Components only the second bundle has.
    pub added: Vec<ComponentRef>,
    /// Components only the first bundle has.
    pub removed: Vec<ComponentRef>,
    /// `(before, after)` of a component present in both with other content.
    pub changed: Vec<(ComponentRef, ComponentRef)>,
    /// Config fields that differ (provenance and metrics aside): `(path, before, after)`.
    pub config: Vec<(String, Option<Value>, Option<Value>)>,
    /// Validation metrics that differ: `(path, before, after)`.
    pub metrics: Vec<(String, Option<Value>, Option<Value>)>,
    /// Provenance fields that differ (how and from what each was made, per task too):
    /// `(path, before, after)`.
    pub provenance: Vec<(String, Option<Value>, Option<Value>)>,
}

/// Leaves of a JSON value by `a.b.c` path.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn compare(a: &Value, b: &Value) -> Vec<(String, Option<Value>, Option<Value>)> {
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    flatten("", a, &mut fa);
    flatten("", b, &mut fb);
    let keys: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    keys.into_iter()
        .filter(|k| fa.get(*k) != fb.get(*k))
        .map(|k| (k.clone(), fa.get(k).cloned(), fb.get(k).cloned()))
        .collect()
}

/// The config as compared by [`diff`]: tasks keyed by name, no provenance or metrics.
fn comparable_config(c: &BundleConfig) -> Value {
    let mut v = serde_json::to_value(c).expect("config serialises");
    let m = v.as_object_mut().expect("config is an object");
    m.remove("provenance");
    m.remove("metrics");
    let tasks: Map<String, Value> = c
        .tasks
        .iter()
        .map(|t| {
            let mut tv = serde_json::to_value(t).expect("task serialises");
            tv.as_object_mut().map(|o| o.remove("name"));
            (t.name.clone(), tv)
        })
        .collect();
    m.insert("tasks".into(), Value::Object(tasks));
    v
}

/// Compares bundle `a` with bundle `b`: components by digest and size, config fields,
/// validation metrics.
///
/// # Errors
/// Unknown references or bundles that do not verify.
pub fn diff(reg: &Registry, a: &str, b: &str) -> Result<BundleDiff> {
    let (a, b) = (Stored::read(reg, a)?, Stored::read(reg, b)?);
    let refs = |s: &Stored| -> BTreeMap<String, ComponentRef> {
        s.manifest
            .layers
            .iter()
            .map(|l| {
                let c = l.title().unwrap_or("?").to_string();
                (
                    c.clone(),
                    ComponentRef {
                        component: c,
                        digest: l.digest,
                        size: l.size,
                    },
                )
            })
            .collect()
    };
    let (ra, rb) = (refs(&a), refs(&b));
    let mut out = BundleDiff::default();
    for (c, x) in &ra {
        match rb.get(c) {
            None => out.removed.push(x.clone()),
            Some(y) if y.digest != x.digest => out.changed.push((x.clone(), y.clone())),
            Some(_) => {}
        }
    }
    out.added = rb
        .iter()
        .filter(|(c, _)| !ra.contains_key(*c))
        .map(|(_, y)| y.clone())
        .collect();
    out.config = compare(&comparable_config(&a.config), &comparable_config(&b.config));
    let metrics = |s: &Stored| {
        s.config
            .extra
            .get("metrics")
            .and_then(|m| m.get("val"))
            .cloned()
            .unwrap_or(json!({}))
    };
    out.metrics = compare(&metrics(&a), &metrics(&b));
    let provenance = |s: &Stored| {
        s.config
            .extra
            .get("provenance")
            .cloned()
            .unwrap_or(json!({}))
    };
    out.provenance = compare(&provenance(&a), &provenance(&b));
    Ok(out)
}

/// One bundle of a lineage, with what it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageStep {
    /// The bundle's manifest digest.
    pub digest: Digest,
    /// Its tags in this registry.
    pub tags: Vec<String>,
    /// How it was made: the operation its provenance records (`train`, `add-task`,
    /// `merge`, ...), or `(not in this registry)` for a parent only named.
    pub operation: String,
    /// Its tasks (empty for a bundle not in this registry).
    pub tasks: Vec<String>,
    /// Tasks it has that its parent had not.
    pub added: Vec<String>,
    /// Tasks its parent had that it has not.
    pub removed: Vec<String>,
}

/// The lineage of `d`, oldest first: its parents (`provenance.parent`, followed while
/// they are in the registry, at most 64 steps, never around a loop) and `d` itself.
///
/// # Errors
/// The index cannot be read.
pub fn lineage(reg: &Registry, d: &Digest) -> Result<Vec<LineageStep>> {
    let mut chain = vec![*d];
    while let Some(p) = reg.parent(chain.last().expect("non-empty"))? {
        if chain.contains(&p) || chain.len() > 64 {
            break;
        }
        chain.push(p);
    }
    let mut steps: Vec<LineageStep> = Vec::new();
    for (i, digest) in chain.into_iter().rev().enumerate() {
        let (tasks, operation) = match Stored::read(reg, &digest.to_string()) {
            Ok(s) => {
                let guess = if i == 0 { "train" } else { "add-task" };
                let op = s.config.provenance().and_then(|p| p.operation);
                let tasks = s.config.tasks.iter().map(|t| t.name.clone()).collect();
                (tasks, op.unwrap_or_else(|| guess.into()))
            }
            Err(_) => (Vec::new(), "(not in this registry)".into()),
        };
        let before: &[String] = steps.last().map_or(&[], |s| &s.tasks);
        let added = tasks
            .iter()
            .filter(|t| !before.contains(t))
            .cloned()
            .collect();
        let removed = before
            .iter()
            .filter(|t| !tasks.contains(t))
            .cloned()
            .collect();
        steps.push(LineageStep {
            digest,
            tags: reg.tags_of(&digest)?,
            operation,
            tasks,
            added,
            removed,
        });
    }
    Ok(steps)
}
