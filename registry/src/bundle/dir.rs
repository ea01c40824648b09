//! The exported bundle directory: `bundle.json` + `adapter.safetensors` (DESIGN §2).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;

pub use crate::safetensors_canon::RawTensor;

use super::config::{BundleConfig, InvalidConfig};
use super::layout::{bundle_tensors, component_of};
use crate::error::{Error, Result};
use crate::safetensors_canon::{canonical_bytes, parse};

/// The config file of an exported bundle.
pub const CONFIG_FILE: &str = "bundle.json";
/// The tensors file of an exported bundle.
pub const TENSORS_FILE: &str = "adapter.safetensors";

/// A bundle in memory: its config and every tensor, checked against each other.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleDir {
    /// Its `bundle.json`.
    pub config: BundleConfig,
    /// Every trainable tensor, by bundle name.
    pub tensors: BTreeMap<String, RawTensor>,
}

/// Reads and validates `bundle.json` (format, tasks, geometry).
pub fn read_config(path: &Path) -> Result<BundleConfig> {
    let max = super::limits::MAX_CONFIG_BYTES;
    let bytes = read_bounded(path, max).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.into(),
            what: "a bundle directory needs bundle.json",
        },
        std::io::ErrorKind::FileTooLarge => Error::BadBundle {
            path: path.into(),
            reason: format!("larger than the {max} bytes a bundle.json may have"),
        },
        _ => Error::io(path, e),
    })?;
    parse_config(&bytes, path)
}

/// Reads a regular file of at most `max` bytes (see [`crate::file::read_limited`]).
pub(crate) fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    crate::file::read_limited(path, max)
}

/// The largest `adapter.safetensors` a config allows: its tensors' bytes plus the
/// largest header we accept.
fn max_tensors_file(config: &BundleConfig) -> u64 {
    let data: u64 = bundle_tensors(config)
        .iter()
        .map(|s| s.shape.iter().product::<usize>() as u64 * 4)
        .sum();
    8 + crate::safetensors_canon::MAX_HEADER_BYTES + data
}

/// Parses and validates bundle.json bytes; `origin` names the file in errors.
pub fn parse_config(bytes: &[u8], origin: &Path) -> Result<BundleConfig> {
    // Look at `format` first so an unknown format is reported as such, not as a
    // missing field of the format we know.
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| Error::Json {
        path: origin.into(),
        source: e,
    })?;
    match value.get("format").and_then(|f| f.as_str()) {
        Some(super::BUNDLE_FORMAT) => {}
        other => {
            return Err(Error::BadBundle {
                path: origin.into(),
                reason: format!(
                    "unknown format {:?} (this vmt-hub reads {:?})",
                    other.unwrap_or("<none>"),
                    super::BUNDLE_FORMAT
                ),
            })
        }
    }
    let config: BundleConfig = serde_json::from_value(value).map_err(|e| Error::Json {
        path: origin.into(),
        source: e,
    })?;
    config
        .validate()
        .map_err(|InvalidConfig(reason)| Error::BadBundle {
            path: origin.into(),
            reason,
        })?;
    Ok(config)
}

impl BundleDir {
    /// Checks that `tensors` are exactly the bundle's tensors, F32, with the right shapes.
    pub fn new(
        config: BundleConfig,
        tensors: BTreeMap<String, RawTensor>,
        origin: &Path,
    ) -> Result<Self> {
        check_tensors(&config, &tensors, origin)?;
        Ok(Self { config, tensors })
    }

    /// Reads an exported directory; every problem names the file and the tensor.
    pub fn read(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::MissingFile {
                path: dir.into(),
                what: "not a bundle directory",
            });
        }
        let config = read_config(&dir.join(CONFIG_FILE))?;
        let tpath = dir.join(TENSORS_FILE);
        let max = max_tensors_file(&config);
        let bytes = read_bounded(&tpath, max).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingFile {
                path: tpath.clone(),
                what: "a bundle directory needs adapter.safetensors",
            },
            std::io::ErrorKind::FileTooLarge => Error::BadBundle {
                path: tpath.clone(),
                reason: format!(
                    "larger than the {max} bytes bundle.json's tensors and a header take ({e})"
                ),
            },
            _ => Error::io(&tpath, e),
        })?;
        let tensors = parse(&bytes, &tpath)?;
        Self::new(config, tensors, &tpath)
    }

    /// Writes `bundle.json` (pretty, stable key order) and canonical `adapter.safetensors`,
    /// each by temp file and rename: a symlink or FIFO in their place is replaced,
    /// never written through.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = self.config_json_pretty();
        write_file(&dir.join(CONFIG_FILE), json.as_bytes())?;
        write_file(&dir.join(TENSORS_FILE), &canonical_bytes(&self.tensors))
    }

    /// `bundle.json` as written by `export`: pretty, with a final newline.
    pub fn config_json_pretty(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.config).expect("config serialises");
        s.push('\n');
        s
    }

    /// The tensors of one component (`shared` or `task/<name>`).
    pub fn component_tensors(&self, component: &str) -> BTreeMap<String, RawTensor> {
        self.tensors
            .iter()
            .filter(|(name, _)| component_of(name).as_deref() == Some(component))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect()
    }

    /// Component names in a stable order: `shared`, then the tasks in config order.
    pub fn components(&self) -> Vec<String> {
        std::iter::once(super::SHARED_COMPONENT.to_string())
            .chain(
                self.config
                    .tasks
                    .iter()
                    .map(|t| super::task_component(t.stored_name())),
            )
            .collect()
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::file::write_atomic(path, bytes).map_err(|e| Error::io(path, e))
}

/// Refuses NaN and infinite weights (they would make every prediction NaN).
pub fn check_finite(t: &RawTensor, name: &str, file: &Path) -> Result<()> {
    let bad = t
        .data
        .chunks_exact(4)
        .position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite());
    match bad {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite {
            file: file.into(),
            name: name.into(),
            index: i,
        }),
    }
}

/// The bundle must hold exactly the tensors its config implies.
pub fn check_tensors(
    config: &BundleConfig,
    tensors: &BTreeMap<String, RawTensor>,
    origin: &Path,
) -> Result<()> {
    check_specs(&bundle_tensors(config), tensors, config, origin)
}

/// `tensors` must be exactly `specs` (of `config`): names, F32, shapes, finite values.
pub(crate) fn check_specs(
    specs: &[super::layout::TensorSpec],
    tensors: &BTreeMap<String, RawTensor>,
    config: &BundleConfig,
    origin: &Path,
) -> Result<()> {
    let file = PathBuf::from(origin);
    for spec in specs {
        let t = tensors
            .get(&spec.name)
            .ok_or_else(|| Error::MissingTensor {
                file: file.clone(),
                name: spec.name.clone(),
            })?;
        if t.dtype != Dtype::F32 {
            return Err(Error::NotF32 {
                file: file.clone(),
                name: spec.name.clone(),
                found: format!("{:?}", t.dtype),
            });
        }
        if t.shape != spec.shape {
            return Err(Error::ShapeMismatch {
                file: file.clone(),
                name: spec.name.clone(),
                expected: spec.shape.clone(),
                found: t.shape.clone(),
            });
        }
        check_finite(t, &spec.name, &file)?;
    }
    if tensors.len() != specs.len() {
        let known: std::collections::HashSet<&str> =
            specs.iter().map(|s| s.name.as_str()).collect();
        if let Some(name) = tensors.keys().find(|n| !known.contains(n.as_str())) {
            let reason = match component_of(name) {
                None => "names start with adapter. or tasks.<task>.".to_string(),
                Some(c) if c.starts_with("task/") && config.task_stored_as(&c[5..]).is_none() => {
                    format!("bundle.json has no task {:?}", &c[5..])
                }
                Some(c) if specs.iter().all(|s| s.component != c) => {
                    format!("it belongs to component {c}, not to this one")
                }
                Some(_) => "bundle.json's geometry implies no such tensor".to_string(),
            };
            return Err(Error::UnexpectedTensor {
                file,
                name: name.clone(),
                reason,
            });
        }
    }
    Ok(())
}
