//! `vmt-hub forward`: run a bundle on `pixel_values` and write every task's output and
//! the generic stage features.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use vmt_registry::bundle::RawTensor;
use vmt_registry::safetensors_canon::canonical_bytes;

use crate::model::error::{ModelError, Result};
use crate::model::tensors::{to_raw, NamedTensors};
use crate::model::VmtOutput;

/// Reads `pixel_values` (`[B, 3, H, W]` f32) from a safetensors file.
pub fn read_pixels(path: &Path, device: &Device) -> Result<Tensor> {
    let input = NamedTensors::load(path, device)?;
    let origin = path.display().to_string();
    let t = input
        .tensors
        .get("pixel_values")
        .ok_or_else(|| ModelError::MissingTensor {
            file: origin.clone(),
            name: "pixel_values".into(),
        })?;
    if t.dtype() != DType::F32 {
        return Err(ModelError::DTypeMismatch {
            file: origin,
            name: "pixel_values".into(),
            expected: "F32".into(),
            found: format!("{:?}", t.dtype()).to_uppercase(),
        });
    }
    match t.dims() {
        [b, 3, h, w] if *b > 0 && *h > 0 && *w > 0 => Ok(t.clone()),
        dims => Err(ModelError::bad_input(
            format!("{origin}: tensor \"pixel_values\""),
            format!("has shape {dims:?}, expected [B, 3, H, W] with B, H, W > 0"),
        )),
    }
}

/// The forward outputs as named raw tensors: `<task>` and `features.stage<i>`.
pub fn output_tensors(out: &VmtOutput) -> Result<BTreeMap<String, RawTensor>> {
    let mut m = BTreeMap::new();
    for (name, t) in &out.tasks {
        m.insert(name.clone(), to_raw(t)?);
    }
    for (i, f) in out.features.iter().enumerate() {
        m.insert(format!("features.stage{i}"), to_raw(f)?);
    }
    Ok(m)
}

/// Writes the outputs as canonical safetensors.
pub fn write_outputs(path: &Path, out: &VmtOutput) -> Result<()> {
    let bytes = canonical_bytes(&output_tensors(out)?);
    vmt_registry::file::write_atomic(path, &bytes).map_err(|e| ModelError::io(path, e))
}
