//! Initial values of a new bundle's tensors.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use vmt_registry::bundle::{bundle_tensors, BundleConfig, RawTensor, TensorSpec};

/// How a fresh tensor starts.
fn initial_values(spec: &TensorSpec, rng: &mut impl Rng) -> Vec<f32> {
    let n = spec.numel();
    let name = spec.name.as_str();
    let is_norm_weight =
        (name.contains(".norms.") || name.contains(".fuse_norm.")) && name.ends_with(".weight");
    if is_norm_weight {
        return vec![1.0; n];
    }
    // The adapter starts as the identity of the backbone (up = 0, as in AdaptFormer) and
    // the KEMs as "task feature = generic feature" (gamma = beta = 0).
    let zero = name.contains(".up.")
        || name.ends_with(".gamma")
        || name.ends_with(".beta")
        || name.contains(".norms.")
        || name.contains(".fuse_norm.");
    if zero {
        return vec![0.0; n];
    }
    // PyTorch's Linear default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
    let fan_in = if spec.shape.len() == 2 {
        spec.shape[1]
    } else {
        // A bias: its layer's fan-in is the weight's second dimension; the bound only
        // needs to be of the right order, so use the bias length's layer width.
        fan_in_of_bias(name, spec)
    };
    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
    (0..n).map(|_| rng.gen_range(-bound..bound)).collect()
}

fn fan_in_of_bias(_name: &str, spec: &TensorSpec) -> usize {
    spec.shape[0]
}

/// A new bundle's tensors, seeded.
pub fn init_bundle(cfg: &BundleConfig, seed: u64) -> BTreeMap<String, RawTensor> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    bundle_tensors(cfg)
        .iter()
        .map(|spec| {
            (
                spec.name.clone(),
                RawTensor::from_f32(spec.shape.clone(), &initial_values(spec, &mut rng)),
            )
        })
        .collect()
}

/// Every tensor non-trivial (as the reference's `randomize`): for tests that need all
/// paths active, e.g. that every tensor receives a gradient.
pub fn randomized_bundle(cfg: &BundleConfig, seed: u64) -> BTreeMap<String, RawTensor> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    bundle_tensors(cfg)
        .iter()
        .map(|spec| {
            let scale = 0.5 / (*spec.shape.last().unwrap_or(&1) as f32).max(1.0).sqrt();
            let is_norm_weight = (spec.name.contains(".norms.")
                || spec.name.contains(".fuse_norm."))
                && spec.name.ends_with(".weight");
            let values: Vec<f32> = (0..spec.numel())
                .map(|_| {
                    rng.gen_range(-1.0f32..1.0) * scale * 1.7
                        + if is_norm_weight { 1.0 } else { 0.0 }
                })
                .collect();
            (
                spec.name.clone(),
                RawTensor::from_f32(spec.shape.clone(), &values),
            )
        })
        .collect()
}
