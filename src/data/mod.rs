//! Multi-task datasets on disk, their augmentation, and a loader that decodes on worker
//! threads.
//!
//! Layout (see docs/dataset.md):
//! ```text
//! dataset.json              {"tasks": [{"name", "kind", "channels"}, ...]}
//! images/<id>.jpg|png       RGB
//! <task>/<id>.png           segmentation: class ids (255 = ignore); saliency: 0/255;
//!                           normals: RGB (8 or 16 bits), n = v/max*2-1, (0,0,0) = invalid;
//!                           depth: 16-bit millimetres, 0 = invalid
//! splits/train.txt, splits/val.txt   one id per line
//! ```

pub mod augment;
pub mod benchmarks;
pub mod loader;
pub mod mat;
pub mod synth;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmt_registry::bundle::{TaskKind, TaskSpec};
use vmt_registry::Digest;

/// Errors that name the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O error on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A file whose content breaks the dataset's rules.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The rule it breaks.
        reason: String,
    },
    /// An image or label that cannot be decoded.
    #[error("{path}: cannot decode image: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's complaint.
        reason: String,
    },
}

pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Invalid {
        path: path.into(),
        reason: reason.into(),
    }
}

/// `dataset.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// A display name.
    #[serde(default)]
    pub name: String,
    /// Its tasks.
    pub tasks: Vec<TaskSpec>,
}

/// A dataset directory, checked on open.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Its folder.
    pub root: PathBuf,
    /// Its `dataset.json`.
    pub info: DatasetInfo,
}

/// One task's label for one image, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Label {
    /// Segmentation class ids or saliency 0/1, 255 = ignore; `h*w`.
    Classes(Vec<u8>),
    /// Unit normals, channel-major `3*h*w`; invalid pixels are 255 in all channels.
    Normals(Vec<f32>),
    /// Depth in metres, `h*w`; 0 = invalid.
    Depth(Vec<f32>),
}

/// An image (RGB8, `h*w*3`) and one label per requested task.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Image id.
    pub id: String,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// RGB8 bytes, `h*w*3`.
    pub rgb: Vec<u8>,
    /// One label per requested task.
    pub labels: Vec<Label>,
}

impl Dataset {
    /// Opens and checks a dataset folder (`dataset.json`, `images/`, one folder per task).
    pub fn open(root: &Path) -> Result<Self, DataError> {
        let path = root.join("dataset.json");
        let bytes =
            vmt_registry::file::read_limited(&path, 16 << 20).map_err(|e| DataError::Io {
                path: path.clone(),
                source: e,
            })?;
        let info: DatasetInfo =
            serde_json::from_slice(&bytes).map_err(|e| invalid(&path, e.to_string()))?;
        if info.tasks.is_empty() {
            return Err(invalid(&path, "lists no tasks"));
        }
        for t in &info.tasks {
            vmt_registry::bundle::validate_task_name(&t.name).map_err(|r| invalid(&path, r))?;
            t.check_class_names().map_err(|r| invalid(&path, r))?;
            if let Some(c) = t.kind.fixed_channels() {
                if t.channels != c {
                    return Err(invalid(
                        &path,
                        format!("task {:?} ({:?}) must have {c} channel(s)", t.name, t.kind),
                    ));
                }
            }
        }
        Ok(Self {
            root: root.into(),
            info,
        })
    }

    /// The task called `name`.
    pub fn task(&self, name: &str) -> Option<&TaskSpec> {
        self.info.tasks.iter().find(|t| t.name == name)
    }

    /// The task `name`, or an error naming dataset.json and the tasks it has.
    pub fn require_task(&self, name: &str) -> Result<&TaskSpec, DataError> {
        self.task(name).ok_or_else(|| {
            let have: Vec<&str> = self.info.tasks.iter().map(|t| t.name.as_str()).collect();
            invalid(
                &self.root.join("dataset.json"),
                format!("no task {name:?} (it has {})", have.join(", ")),
            )
        })
    }

    /// The ids of a split (`train`, `val`); an empty or missing split is an error.
    pub fn split(&self, name: &str) -> Result<Vec<String>, DataError> {
        let path = self.root.join("splits").join(format!("{name}.txt"));
        let ids = read_id_list(&path)?;
        if ids.is_empty() {
            return Err(invalid(&path, format!("split {name:?} is empty")));
        }
        Ok(ids)
    }

    /// The image file of `id` (`.jpg`, `.jpeg` or `.png`).
    pub fn image_path(&self, id: &str) -> Result<PathBuf, DataError> {
        for ext in ["jpg", "jpeg", "png"] {
            let p = self.root.join("images").join(format!("{id}.{ext}"));
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(invalid(
            &self.root.join("images").join(format!("{id}.jpg")),
            "missing image (tried .jpg, .jpeg, .png)",
        ))
    }

    /// Decodes the image and the labels of `tasks` for `id`, checking sizes and ranges.
    pub fn load(&self, id: &str, tasks: &[TaskSpec]) -> Result<Sample, DataError> {
        let path = self.image_path(id)?;
        let img = image::open(&path)
            .map_err(|e| DataError::Decode {
                path: path.clone(),
                reason: e.to_string(),
            })?
            .to_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut labels = Vec::with_capacity(tasks.len());
        for t in tasks {
            let lpath = self.root.join(&t.name).join(format!("{id}.png"));
            let limg = image::open(&lpath).map_err(|e| DataError::Decode {
                path: lpath.clone(),
                reason: e.to_string(),
            })?;
            if (limg.width() as usize, limg.height() as usize) != (w, h) {
                return Err(invalid(
                    &lpath,
                    format!(
                        "label is {}x{}, its image {} is {w}x{h}",
                        limg.width(),
                        limg.height(),
                        path.display()
                    ),
                ));
            }
            labels.push(decode_label(t, &limg, &lpath)?);
        }
        Ok(Sample {
            id: id.into(),
            width: w,
            height: h,
            rgb: img.into_raw(),
            labels,
        })
    }

    /// sha256 over dataset.json, the splits and every file they reference, in a fixed
    /// order: the training data's identity, recorded in bundles.
    pub fn digest(&self) -> Result<Digest, DataError> {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        let mut add = |p: &Path| -> Result<(), DataError> {
            let bytes = std::fs::read(p).map_err(|e| DataError::Io {
                path: p.into(),
                source: e,
            })?;
            let rel = p
                .strip_prefix(&self.root)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned();
            h.update((rel.len() as u64).to_le_bytes());
            h.update(rel.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
            Ok(())
        };
        add(&self.root.join("dataset.json"))?;
        for split in ["train", "val"] {
            let p = self.root.join("splits").join(format!("{split}.txt"));
            if !p.is_file() {
                continue;
            }
            add(&p)?;
            for id in self.split(split)? {
                add(&self.image_path(&id)?)?;
                for t in &self.info.tasks {
                    add(&self.root.join(&t.name).join(format!("{id}.png")))?;
                }
            }
        }
        let bytes: [u8; 32] = h.finalize().into();
        Ok(Digest::of(&bytes))
    }
}

/// The ids of a list file: one per line, blank lines skipped.
pub(crate) fn read_id_list(path: &Path) -> Result<Vec<String>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::Io {
        path: path.into(),
        source: e,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

fn decode_label(
    task: &TaskSpec,
    img: &image::DynamicImage,
    path: &Path,
) -> Result<Label, DataError> {
    match task.kind {
        TaskKind::Segmentation => {
            let ids = img.to_luma8().into_raw();
            if let Some(&bad) = ids
                .iter()
                .find(|&&c| c != 255 && c as usize >= task.channels)
            {
                return Err(invalid(
                    path,
                    format!(
                        "class id {bad} is out of range for task {:?} ({} classes; 255 = ignore)",
                        task.name, task.channels
                    ),
                ));
            }
            Ok(Label::Classes(ids))
        }
        TaskKind::Saliency => Ok(Label::Classes(
            img.to_luma8()
                .into_raw()
                .into_iter()
                .map(|v| u8::from(v >= 128))
                .collect(),
        )),
        TaskKind::Normals => {
            // 8-bit (PASCAL-Context's distilled normals) or 16-bit RGB (NYUD-v2's, from
            // floats): n = v / max * 2 - 1; (0, 0, 0) = invalid.
            let (w, h) = (img.width() as usize, img.height() as usize);
            let (max, values): (f32, Vec<u16>) = match img {
                image::DynamicImage::ImageRgb16(rgb) => (65535.0, rgb.as_raw().clone()),
                _ => (
                    255.0,
                    img.to_rgb8()
                        .into_raw()
                        .into_iter()
                        .map(u16::from)
                        .collect(),
                ),
            };
            let n = w * h;
            let mut out = vec![0f32; 3 * n];
            for (i, p) in values.chunks_exact(3).enumerate() {
                let invalid = p == [0, 0, 0];
                for c in 0..3 {
                    out[c * n + i] = if invalid {
                        255.0
                    } else {
                        p[c] as f32 / max * 2.0 - 1.0
                    };
                }
            }
            Ok(Label::Normals(out))
        }
        TaskKind::Depth => {
            let depth = img.to_luma16();
            Ok(Label::Depth(
                depth
                    .into_raw()
                    .into_iter()
                    .map(|mm| mm as f32 / 1000.0)
                    .collect(),
            ))
        }
    }
}

/// ImageNet normalisation constants.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation per channel (RGB).
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];
