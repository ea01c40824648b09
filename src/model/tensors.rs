//! Named tensor maps read from safetensors files, with checks that name the file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::error::{ModelError, Result};

/// Tensors by name, remembering which file they came from (for error messages).
#[derive(Debug, Clone)]
pub struct NamedTensors {
    /// Where they came from (for messages).
    pub origin: String,
    /// By name.
    pub tensors: HashMap<String, Tensor>,
}

impl NamedTensors {
    /// Named tensors from a map.
    pub fn new(origin: impl Into<String>, tensors: HashMap<String, Tensor>) -> Self {
        Self {
            origin: origin.into(),
            tensors,
        }
    }

    /// Reads every tensor of a safetensors file; a truncated or foreign file is an error
    /// naming the path, never a panic.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string(), device)
    }

    /// Reads safetensors bytes onto `device`.
    pub fn from_bytes(bytes: &[u8], origin: &str, device: &Device) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
            ModelError::NotSafetensors {
                path: origin.into(),
                reason: e.to_string(),
            }
        })?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let t = candle_core::safetensors::Load::load(&view, device).map_err(|e| {
                ModelError::NotSafetensors {
                    path: origin.into(),
                    reason: format!("tensor {name:?}: {e}"),
                }
            })?;
            tensors.insert(name, t);
        }
        Ok(Self::new(origin, tensors))
    }

    /// The tensor `name`, which must have `shape` (and be f32 when `f32_only`).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                file: self.origin.clone(),
                name: name.into(),
            })?;
        if t.dims() != shape {
            return Err(ModelError::ShapeMismatch {
                file: self.origin.clone(),
                name: name.into(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        Ok(t.clone())
    }

    /// Like [`get`](Self::get), and the tensor must already be f32.
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get(name, shape)?;
        if t.dtype() != DType::F32 {
            return Err(ModelError::DTypeMismatch {
                file: self.origin.clone(),
                name: name.into(),
                expected: "F32".into(),
                found: format!("{:?}", t.dtype()).to_uppercase(),
            });
        }
        Ok(t)
    }
}

/// Raw F32 bundle tensors (from the registry crate) as candle tensors on `device`.
pub fn from_raw(
    raw: &std::collections::BTreeMap<String, vmt_registry::bundle::RawTensor>,
    origin: &str,
    device: &Device,
) -> Result<NamedTensors> {
    let mut tensors = HashMap::new();
    for (name, t) in raw {
        if t.dtype != safetensors::Dtype::F32 {
            return Err(ModelError::DTypeMismatch {
                file: origin.into(),
                name: name.clone(),
                expected: "F32".into(),
                found: format!("{:?}", t.dtype),
            });
        }
        let values = t.to_f32();
        tensors.insert(
            name.clone(),
            Tensor::from_vec(values, t.shape.clone(), device)?,
        );
    }
    Ok(NamedTensors::new(origin, tensors))
}

/// A candle tensor as a raw F32 tensor (copied to the host).
pub fn to_raw(t: &Tensor) -> Result<vmt_registry::bundle::RawTensor> {
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(vmt_registry::bundle::RawTensor::from_f32(
        t.dims().to_vec(),
        &values,
    ))
}
