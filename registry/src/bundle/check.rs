//! Checks of a bundle as it arrives from outside (a pull, a push to `serve`, `verify`):
//! what a manifest may declare, that its layers are exactly the config's components,
//! and that each component holds exactly its tensors. Everything here runs before any
//! byte is stored, and bounds what a peer can make us download or allocate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::config::BundleConfig;
use super::dir::RawTensor;
use super::layout::{bundle_tensors, TensorSpec};
use crate::error::{Error, Result};
use crate::oci::Manifest;
use crate::safetensors_canon::parse;

/// Most layers a bundle manifest may have: one per task plus `shared`.
pub const MAX_LAYERS: usize = super::limits::MAX_TASKS + 1;
/// Largest manifest accepted (a 129-layer manifest is about 40 KiB).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

fn bad(origin: &str, reason: String) -> Error {
    Error::BadBundle {
        path: origin.into(),
        reason,
    }
}

/// What a manifest may declare on its own: a bounded number of layers, no layer twice
/// (by digest or by title), a config no larger than a `bundle.json` may be.
///
/// # Errors
/// [`Error::BadBundle`] naming `origin` and the offending layer.
pub fn check_manifest(m: &Manifest, origin: &str) -> Result<()> {
    if m.layers.len() > MAX_LAYERS {
        return Err(bad(
            origin,
            format!(
                "the manifest has {} layers, more than the {MAX_LAYERS} a bundle can have",
                m.layers.len()
            ),
        ));
    }
    if m.config.size > super::limits::MAX_CONFIG_BYTES {
        return Err(bad(
            origin,
            format!(
                "the config is declared as {} bytes, more than the {} a bundle.json may have",
                m.config.size,
                super::limits::MAX_CONFIG_BYTES
            ),
        ));
    }
    let mut digests = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for l in &m.layers {
        let title = l.title().unwrap_or("?");
        if !digests.insert(l.digest) {
            return Err(bad(
                origin,
                format!("layer {} ({title}) appears twice", l.digest),
            ));
        }
        if !titles.insert(title) {
            return Err(bad(origin, format!("two layers are titled {title:?}")));
        }
    }
    Ok(())
}

/// The tensors of each component of `config`, by component name.
pub fn component_specs(config: &BundleConfig) -> BTreeMap<String, Vec<TensorSpec>> {
    let mut out: BTreeMap<String, Vec<TensorSpec>> = BTreeMap::new();
    for s in bundle_tensors(config) {
        out.entry(s.component.clone()).or_default().push(s);
    }
    out
}

/// Smallest and largest canonical safetensors size of a component: its F32 data plus
/// an 8-byte length and a JSON header whose size the tensor names bound.
pub fn size_bounds(specs: &[TensorSpec]) -> (u64, u64) {
    let data: u64 = specs.iter().map(|s| 4 * s.numel() as u64).sum();
    let header: u64 = 256 + specs.iter().map(|s| s.name.len() as u64 + 128).sum::<u64>();
    (data + 8, data + 8 + header)
}

/// The layers must be exactly the config's components, each declared with a size its
/// tensors can have. Run this before downloading or reading any layer.
///
/// # Errors
/// [`Error::BadBundle`] naming `origin` and the component.
pub fn check_layers(m: &Manifest, config: &BundleConfig, origin: &str) -> Result<()> {
    let specs = component_specs(config);
    let found: BTreeSet<&str> = m.layers.iter().filter_map(|l| l.title()).collect();
    let expected: BTreeSet<&str> = specs.keys().map(String::as_str).collect();
    if found != expected {
        return Err(bad(
            origin,
            format!("the layers {found:?} are not the config's components {expected:?}"),
        ));
    }
    for l in &m.layers {
        let title = l.title().unwrap_or("?");
        let (lo, hi) = size_bounds(&specs[title]);
        if l.size < lo || l.size > hi {
            return Err(bad(
                origin,
                format!(
                    "component {title} is declared as {} bytes; the config implies {lo}..={hi}",
                    l.size
                ),
            ));
        }
    }
    Ok(())
}

/// Parses one component's bytes and checks that it holds exactly the tensors the
/// config gives that component: names, F32, shapes, finite values.
///
/// # Errors
/// [`Error::NotSafetensors`], [`Error::MissingTensor`], [`Error::UnexpectedTensor`],
/// [`Error::NotF32`], [`Error::ShapeMismatch`] or [`Error::NonFinite`], naming the
/// component and the tensor.
pub fn check_component(
    config: &BundleConfig,
    component: &str,
    bytes: &[u8],
    origin: &str,
) -> Result<BTreeMap<String, RawTensor>> {
    let what = format!("{origin} component {component}");
    let path = Path::new(&what);
    let tensors = parse(bytes, path)?;
    let specs = component_specs(config);
    let Some(specs) = specs.get(component) else {
        return Err(bad(
            origin,
            format!("component {component:?} is not one of the config's"),
        ));
    };
    super::dir::check_specs(specs, &tensors, config, path)?;
    Ok(tensors)
}
