//! `NYUD_MT`, the multi-task NYUD-v2 of MTI-Net / InvPT (795 train, 654 val images):
//!
//! ```text
//! images/<id>.jpg
//! segmentation/<id>.png     0 = unlabelled, 1..=40 the 40 classes
//! depth/<id>.npy            H x W float, metres, 0 = invalid
//! normals/<id>.npy          H x W x 3 float, a zero vector = invalid
//! gt_sets/{train,val}.txt
//! ```
//!
//! As the upstream loader does, semseg drops the unlabelled class (0 -> 255 ignored,
//! c -> c - 1). Depth is written in millimetres (16-bit PNG, rounded), normals as 16-bit
//! RGB (`v = round((n + 1) / 2 * 65535)`, within 1.6e-5 of the float). The edge labels
//! (`edge/<id>.npy`) are not converted: vmt-hub has no edge head.

use std::path::{Path, PathBuf};

use image::{DynamicImage, GrayImage, ImageBuffer, Luma, Rgb};
use vmt_registry::bundle::{TaskKind, TaskSpec};

use super::{check_size, read_index_png, Converted, Layout};
use crate::data::{invalid, DataError};

/// A `NYUD_MT` folder.
pub(crate) struct Nyud {
    root: PathBuf,
}

impl Nyud {
    pub(crate) fn new(root: &Path) -> Self {
        Self { root: root.into() }
    }
}

/// NYUD-v2's 40 classes (Gupta et al. 2013), by id after the loaders' shift by one.
const NYU40_CLASSES: [&str; 40] = [
    "wall",
    "floor",
    "cabinet",
    "bed",
    "chair",
    "sofa",
    "table",
    "door",
    "window",
    "bookshelf",
    "picture",
    "counter",
    "blinds",
    "desk",
    "shelves",
    "curtain",
    "dresser",
    "pillow",
    "mirror",
    "floor mat",
    "clothes",
    "ceiling",
    "books",
    "refrigerator",
    "television",
    "paper",
    "towel",
    "shower curtain",
    "box",
    "whiteboard",
    "person",
    "night stand",
    "toilet",
    "sink",
    "lamp",
    "bathtub",
    "bag",
    "otherstructure",
    "otherfurniture",
    "otherprop",
];

impl Layout for Nyud {
    fn name(&self) -> &'static str {
        "NYUD-v2 (multi-task)"
    }

    fn tasks(&self) -> Vec<TaskSpec> {
        vec![
            TaskSpec::new("semseg", TaskKind::Segmentation, 40).with_classes(&NYU40_CLASSES),
            TaskSpec::new("depth", TaskKind::Depth, 1),
            TaskSpec::new("normals", TaskKind::Normals, 3),
        ]
    }

    fn split_file(&self, split: &str) -> PathBuf {
        self.root.join("gt_sets").join(format!("{split}.txt"))
    }

    fn image(&self, id: &str) -> PathBuf {
        self.root.join("images").join(format!("{id}.jpg"))
    }

    fn convert(&self, id: &str, width: u32, height: u32) -> Result<Converted, DataError> {
        let size = (width, height);
        let path = self.root.join("segmentation").join(format!("{id}.png"));
        let (w, h, seg) = read_index_png(&path)?;
        check_size(&path, "the segmentation", (w, h), size)?;
        if let Some(bad) = seg.iter().find(|&&c| c > 40) {
            return Err(invalid(
                &path,
                format!("class {bad} (NYUD-v2 has 40 classes, 1..=40; 0 = unlabelled)"),
            ));
        }
        let seg = seg
            .into_iter()
            .map(|c| if c == 0 { 255 } else { c - 1 })
            .collect();
        let semseg = GrayImage::from_raw(w, h, seg).expect("w*h ids");

        let path = self.root.join("depth").join(format!("{id}.npy"));
        let (shape, metres) = read_npy(&path)?;
        check_shape(&path, &shape, &[height as usize, width as usize])?;
        let mut mm = Vec::with_capacity(metres.len());
        for (i, &m) in metres.iter().enumerate() {
            let v = (m * 1000.0).round_ties_even();
            if !(0.0..=u16::MAX as f64).contains(&v) {
                return Err(invalid(
                    &path,
                    format!(
                        "depth {m} m at pixel ({}, {}) is outside 0..65.535 m",
                        i % width as usize,
                        i / width as usize
                    ),
                ));
            }
            mm.push(v as u16);
        }
        let depth: ImageBuffer<Luma<u16>, Vec<u16>> =
            ImageBuffer::from_raw(width, height, mm).expect("w*h depths");

        let path = self.root.join("normals").join(format!("{id}.npy"));
        let (shape, n) = read_npy(&path)?;
        check_shape(&path, &shape, &[height as usize, width as usize, 3])?;
        if let Some(bad) = n.iter().find(|v| !v.is_finite()) {
            return Err(invalid(&path, format!("non-finite normal component {bad}")));
        }
        let mut enc = Vec::with_capacity(n.len());
        for px in n.chunks_exact(3) {
            if px.iter().all(|&v| v == 0.0) {
                enc.extend([0u16; 3]);
            } else {
                enc.extend(px.iter().map(|&v| {
                    ((v + 1.0) / 2.0 * 65535.0)
                        .round_ties_even()
                        .clamp(0.0, 65535.0) as u16
                }));
            }
        }
        let normals: ImageBuffer<Rgb<u16>, Vec<u16>> =
            ImageBuffer::from_raw(width, height, enc).expect("w*h*3 components");
        Ok(Converted {
            labels: vec![
                DynamicImage::ImageLuma8(semseg),
                DynamicImage::ImageLuma16(depth),
                DynamicImage::ImageRgb16(normals),
            ],
        })
    }
}

/// The largest `.npy` read: a float64 array of 4096 x 4096 x 3 and its header.
const MAX_NPY_BYTES: u64 = (4096 * 4096 * 3 * 8) + (1 << 20);

/// A C-order float32 or float64 `.npy` array as `(shape, values)`: a regular file of at
/// most [`MAX_NPY_BYTES`].
fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f64>), DataError> {
    let bytes =
        vmt_registry::file::read_limited(path, MAX_NPY_BYTES).map_err(|e| DataError::Io {
            path: path.into(),
            source: e,
        })?;
    parse_npy(&bytes, path)
}

/// [`read_npy`] of bytes; `path` names them in errors.
pub(crate) fn parse_npy(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<f64>), DataError> {
    // npyz allocates the header length the file declares before reading it: check it
    // against the bytes there are first (a 28-byte file declaring a 2.4 GB header was
    // an out-of-memory, found by the `npy` fuzz target).
    let declared = match bytes.get(6) {
        Some(1) => bytes
            .get(8..10)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize + 10),
        Some(2 | 3) => bytes
            .get(8..12)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize + 12),
        _ => None,
    };
    if bytes.starts_with(b"\x93NUMPY") && declared.is_none_or(|end| end > bytes.len()) {
        return Err(invalid(
            path,
            "not a readable .npy array: its header is longer than the file",
        ));
    }
    // A float array's header is one flat dict; npyz's parser of nested Python literals
    // ran for seconds on a 619-byte header of nested brackets (found by the fuzzer).
    if let Some(end) = declared.filter(|_| bytes.starts_with(b"\x93NUMPY")) {
        let header = &bytes[..end];
        let count = |c: u8| header.iter().filter(|&&b| b == c).count();
        if count(b'[') > 0 || count(b'{') > 1 || count(b'(') > 1 {
            return Err(invalid(
                path,
                "not a readable .npy array: its header is not a flat dict of a plain array",
            ));
        }
    }
    let bad = |e: std::io::Error| invalid(path, format!("not a readable .npy array: {e}"));
    let npy = npyz::NpyFile::new(bytes).map_err(bad)?;
    if npy.order() != npyz::Order::C {
        return Err(invalid(path, "a Fortran-order array; save it in C order"));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&c| c <= bytes.len())
        .ok_or_else(|| invalid(path, format!("shape {shape:?} does not fit the file")))?;
    let dtype = npy.dtype();
    let values: Vec<f64> = match npy.try_data::<f32>() {
        Ok(r) => r
            .map(|v| v.map(f64::from))
            .collect::<Result<_, _>>()
            .map_err(bad)?,
        Err(npy) => match npy.try_data::<f64>() {
            Ok(r) => r.collect::<Result<_, _>>().map_err(bad)?,
            Err(_) => {
                return Err(invalid(
                    path,
                    format!("dtype {} (expected float32 or float64)", dtype.descr()),
                ))
            }
        },
    };
    if values.len() != count {
        return Err(invalid(
            path,
            format!("{} values for shape {shape:?}", values.len()),
        ));
    }
    Ok((shape, values))
}

fn check_shape(path: &Path, shape: &[usize], want: &[usize]) -> Result<(), DataError> {
    if shape != want {
        return Err(invalid(
            path,
            format!("array of shape {shape:?}, the image needs {want:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_longer_than_the_file_is_refused_before_npyz_allocates_it() {
        // Found by the `npy` fuzz target: version 2, header length 0x939bd885 (2.4 GB).
        let input = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/npy/oom-header-length"),
        )
        .unwrap();
        let err = parse_npy(&input, Path::new("x.npy"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("header is longer than the file"), "{err}");
    }

    #[test]
    fn a_header_of_nested_literals_is_refused_without_parsing_it() {
        // Found by the `npy` fuzz target in CI: npyz took over 10 s on it.
        let input = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/npy/slow-nested-header"),
        )
        .unwrap();
        let err = parse_npy(&input, Path::new("x.npy"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a flat dict"), "{err}");
    }
}
