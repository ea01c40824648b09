//! Canonical safetensors bytes: tensors sorted by name, one fixed `__metadata__` entry,
//! no timestamps. The same tensors always give the same bytes, hence the same digest.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, View};

use crate::error::{Error, Result};

/// The only metadata entry written (what PyTorch's `save_file` writes too).
pub const METADATA: (&str, &str) = ("format", "pt");

/// A tensor as bytes: what the registry moves around without knowing any maths.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub data: Vec<u8>,
}

impl RawTensor {
    /// An F32 tensor from its values.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        Self {
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The values of an F32 tensor.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Serialises `tensors` canonically. Bundle tensors are all F32, so the safetensors
/// crate's (dtype, name) order is the name order.
pub fn canonical_bytes(tensors: &BTreeMap<String, RawTensor>) -> Vec<u8> {
    let metadata = HashMap::from([(METADATA.0.to_string(), METADATA.1.to_string())]);
    safetensors::serialize(tensors.iter(), Some(metadata))
        .expect("serialising tensors whose lengths match their shapes")
}

/// The largest safetensors header (the JSON table of tensors) accepted: far more than a
/// bundle of the largest geometry needs (a tensor's entry is about 100 bytes).
pub const MAX_HEADER_BYTES: u64 = 8 << 20;

/// Parses safetensors bytes into raw tensors; `origin` names the file in errors.
/// A header over [`MAX_HEADER_BYTES`] is refused before it is read.
pub fn parse(bytes: &[u8], origin: &Path) -> Result<BTreeMap<String, RawTensor>> {
    if let Some(len) = bytes.get(..8) {
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        if len > MAX_HEADER_BYTES {
            return Err(Error::NotSafetensors {
                path: origin.into(),
                reason: format!(
                    "its header declares {len} bytes; at most {MAX_HEADER_BYTES} are accepted"
                ),
            });
        }
    }
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| Error::NotSafetensors {
        path: origin.into(),
        reason: e.to_string(),
    })?;
    Ok(st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let t = RawTensor {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            };
            (name, t)
        })
        .collect())
}
