//! The reference's per-task losses, built from differentiable tensor ops.
//!
//! - segmentation: cross-entropy, mean over pixels whose label != 255;
//! - saliency: balanced BCE-with-logits (labels 0/1, 255 ignored);
//! - normals: L1 between the L2-normalised prediction and the target, over valid pixels
//!   (not all three channels 255) and the 3 channels;
//! - depth: L1 over pixels whose target is > 0.

use candle_core::{DType, Device, Result, Tensor};
use vmt_registry::bundle::TaskKind;

use super::error::ModelError;
use super::ops::log_softmax;

/// The value of the ignore label for segmentation, saliency and normals.
pub const IGNORE: u8 = 255;

/// A task's target for a batch.
#[derive(Debug, Clone)]
pub enum Target {
    /// Class ids `[B, H, W]` u8 (segmentation) or 0/1 labels (saliency); 255 = ignore.
    Labels(Tensor),
    /// Dense values `[B, K, H, W]` f32: normals (255 = ignore) or depth (0 = invalid).
    Dense(Tensor),
}

fn count(mask: &Tensor) -> Result<f32> {
    mask.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()
}

/// The unweighted loss of one task (a scalar tensor). `pred`: `[B, K, H, W]`.
pub fn task_loss(
    kind: TaskKind,
    task: &str,
    pred: &Tensor,
    target: &Target,
) -> std::result::Result<Tensor, ModelError> {
    let (b, k, h, w) = pred.dims4()?;
    let bad = |reason: String| ModelError::bad_input(format!("target of task {task:?}"), reason);
    match (kind, target) {
        (TaskKind::Segmentation | TaskKind::Saliency, Target::Labels(labels)) => {
            if labels.dims() != [b, h, w] {
                return Err(bad(format!(
                    "labels are {:?}, expected [{b}, {h}, {w}]",
                    labels.dims()
                )));
            }
            let labels = labels.to_dtype(DType::F32)?;
            let valid = labels.ne(IGNORE as f64)?.to_dtype(DType::F32)?;
            if kind == TaskKind::Segmentation {
                let out_of_range = count(&(labels.ge(k as f64)?.to_dtype(DType::F32)? * &valid)?)?;
                if out_of_range > 0.0 {
                    return Err(bad(format!(
                        "{out_of_range} pixel(s) have a class id >= {k} (and not 255)"
                    )));
                }
                Ok(cross_entropy(pred, &labels, &valid, k)?)
            } else {
                Ok(balanced_bce(&pred.squeeze(1)?, &labels, &valid)?)
            }
        }
        (TaskKind::Normals, Target::Dense(t)) => {
            if t.dims() != [b, 3, h, w] {
                return Err(bad(format!(
                    "normals are {:?}, expected [{b}, 3, {h}, {w}]",
                    t.dims()
                )));
            }
            Ok(normals_l1(pred, &t.to_dtype(DType::F32)?)?)
        }
        (TaskKind::Depth, Target::Dense(t)) => {
            if t.dims() != [b, 1, h, w] {
                return Err(bad(format!(
                    "depth is {:?}, expected [{b}, 1, {h}, {w}]",
                    t.dims()
                )));
            }
            let t = t.to_dtype(DType::F32)?;
            let valid = t.gt(0.0)?.to_dtype(DType::F32)?;
            let n = count(&valid)?.max(1.0);
            Ok(((pred - &t)?.abs()? * valid)?
                .sum_all()?
                .affine(1.0 / n as f64, 0.0)?)
        }
        (kind, _) => Err(bad(format!(
            "a {kind:?} task needs {} targets",
            match kind {
                TaskKind::Segmentation | TaskKind::Saliency => "label (u8)",
                _ => "dense (f32)",
            }
        ))),
    }
}

/// Cross-entropy over classes (dim 1), mean over valid pixels.
fn cross_entropy(pred: &Tensor, labels: &Tensor, valid: &Tensor, k: usize) -> Result<Tensor> {
    let n = count(valid)?.max(1.0);
    if super::fused::enabled(pred) {
        // Per-pixel losses in one kernel (0 where ignored); its backward is one pass.
        let per_pixel = pred
            .contiguous()?
            .apply_op2(&labels.contiguous()?, super::fused::CrossEntropyOp)?;
        return per_pixel.sum_all()?.affine(1.0 / n as f64, 0.0);
    }
    let classes = Tensor::arange(0f32, k as f32, pred.device())?.reshape((1, k, 1, 1))?;
    let one_hot = labels
        .unsqueeze(1)?
        .broadcast_eq(&classes)?
        .to_dtype(DType::F32)?;
    let picked = (log_softmax(pred, 1)? * one_hot)?.sum(1)?; // [B, H, W]
    (picked * valid)?.sum_all()?.affine(-1.0 / n as f64, 0.0)
}

/// Balanced BCE-with-logits: positives weighted by the share of negatives and vice versa.
fn balanced_bce(logits: &Tensor, labels: &Tensor, valid: &Tensor) -> Result<Tensor> {
    let pos = (labels.eq(1.0)?.to_dtype(DType::F32)? * valid)?;
    let n_valid = count(valid)?.max(1.0);
    let n_pos = count(&pos)?;
    let n_neg = count(valid)? - n_pos;
    // w = n_neg/n on positives, n_pos/n on (valid) negatives.
    let weight =
        ((&pos * (n_neg / n_valid) as f64)? + ((valid - &pos)? * (n_pos / n_valid) as f64)?)?;
    // Stable BCE-with-logits: max(x, 0) - x*z + log(1 + exp(-|x|)).
    let bce =
        ((logits.relu()? - (logits * &pos)?)? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    (bce * weight)?.sum_all()?.affine(1.0 / n_valid as f64, 0.0)
}

/// L1 between the L2-normalised prediction and the target normals, over valid pixels.
fn normals_l1(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let norm = pred.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
    let unit = pred.broadcast_div(&norm)?;
    let valid = target
        .ne(IGNORE as f64)?
        .to_dtype(DType::F32)?
        .max_keepdim(1)?; // a pixel is valid where any channel is not 255
    let n = (count(&valid)? * 3.0).max(1.0);
    ((unit - target)?.abs()?.broadcast_mul(&valid)?)
        .sum_all()?
        .affine(1.0 / n as f64, 0.0)
}

/// Targets read from a safetensors map (`targets.<task>`) as the loss expects them.
pub fn target_from_tensor(kind: TaskKind, t: Tensor, device: &Device) -> Result<Target> {
    let t = t.to_device(device)?;
    Ok(match kind {
        TaskKind::Segmentation | TaskKind::Saliency => Target::Labels(t),
        TaskKind::Normals | TaskKind::Depth => Target::Dense(t),
    })
}
