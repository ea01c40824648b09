//! Model properties beyond parity: gradients reach every trainable tensor, the Swin-T
//! geometry has the reference's parameter counts, other checkpoint layouts load to the
//! same network, and any input size runs.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use common::{assert_close, fixtures};
use vmt_hub::model::backbone::{canonical_names, random_weights};
use vmt_hub::model::init::{init_bundle, randomized_bundle};
use vmt_hub::model::swin::{parameter_count, Swin};
use vmt_hub::model::tensors::from_raw;
use vmt_hub::model::{task_loss, Backbone, NamedTensors, Target, VmtModel};
use vmt_hub::tasks::parse_tasks;
use vmt_hub::train::trainable;
use vmt_registry::bundle::{
    trainable_count, AdapterConfig, AdapterKind, BundleConfig, DecoderConfig, SwinGeometry,
    TaskKind,
};

fn config(
    geometry: SwinGeometry,
    kind: AdapterKind,
    tasks: &str,
    d: usize,
    hidden: usize,
) -> BundleConfig {
    BundleConfig::new(
        geometry,
        AdapterConfig::new(kind, 4, 0.7),
        DecoderConfig::new(d, hidden),
        parse_tasks(tasks).unwrap(),
    )
}

/// Targets with every kind of pixel (valid, ignored) for a batch of `b` `h x w` images.
fn targets(cfg: &BundleConfig, b: usize, h: usize, w: usize, dev: &Device) -> Vec<Target> {
    cfg.tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let n = b * h * w;
            match t.kind {
                TaskKind::Segmentation | TaskKind::Saliency => {
                    let classes = if t.kind == TaskKind::Saliency {
                        2
                    } else {
                        t.channels
                    };
                    let v: Vec<u8> = (0..n)
                        .map(|p| {
                            if p % 17 == 0 {
                                255
                            } else {
                                ((p * 7 + i) % classes) as u8
                            }
                        })
                        .collect();
                    Target::Labels(Tensor::from_vec(v, (b, h, w), dev).unwrap())
                }
                TaskKind::Normals => {
                    let v: Vec<f32> = (0..3 * n).map(|p| ((p % 11) as f32 / 5.0) - 1.0).collect();
                    Target::Dense(Tensor::from_vec(v, (b, 3, h, w), dev).unwrap())
                }
                TaskKind::Depth => {
                    let v: Vec<f32> = (0..n).map(|p| (p % 5) as f32 * 0.5).collect();
                    Target::Dense(Tensor::from_vec(v, (b, 1, h, w), dev).unwrap())
                }
            }
        })
        .collect()
}

fn every_tensor_gets_a_gradient(kind: AdapterKind) {
    let dev = Device::Cpu;
    let backbone = Backbone::load("random:tiny", &dev).unwrap();
    let cfg = config(
        SwinGeometry::tiny(),
        kind,
        "semseg:segmentation:4,sal,normals,depth",
        8,
        16,
    );
    let (model, opt) =
        trainable(&cfg, &backbone, &randomized_bundle(&cfg, 3), 0.0, |_| true).unwrap();
    let vars: HashMap<String, Var> = opt
        .params
        .iter()
        .map(|p| (p.name.clone(), p.var.clone()))
        .collect();
    // 40x40 is not a multiple of the window at stage 1: padding and shifting both run.
    let pixels = Tensor::randn(0f32, 1f32, (2, 3, 40, 40), &dev).unwrap();
    let out = model.forward(&pixels).unwrap();
    let tgts = targets(&cfg, 2, 40, 40, &dev);
    let mut total = Tensor::zeros((), DType::F32, &dev).unwrap();
    for (task, target) in cfg.tasks.iter().zip(&tgts) {
        let loss = task_loss(task.kind, &task.name, out.task(&task.name).unwrap(), target).unwrap();
        total = (total + loss).unwrap();
    }
    let grads = total.backward().unwrap();
    assert_eq!(vars.len(), trainable_tensor_names(&cfg));
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{kind:?}: {name} received no gradient"));
        let max = g
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            max > 0.0 && max.is_finite(),
            "{kind:?}: {name} has gradient max |g| = {max}"
        );
    }
}

fn trainable_tensor_names(cfg: &BundleConfig) -> usize {
    vmt_registry::bundle::bundle_tensors(cfg).len()
}

#[test]
fn every_trainable_tensor_gets_a_gradient_vmt() {
    every_tensor_gets_a_gradient(AdapterKind::Vmt);
}

#[test]
fn every_trainable_tensor_gets_a_gradient_vmt_lite() {
    every_tensor_gets_a_gradient(AdapterKind::VmtLite);
}

#[test]
fn swin_t_parameter_counts_match_the_reference() {
    let cfg = config(
        SwinGeometry::swin_t(),
        AdapterKind::Vmt,
        "semseg,human_parts,sal,normals",
        32,
        64,
    );
    assert_eq!(
        cfg.tasks.iter().map(|t| t.channels).collect::<Vec<_>>(),
        [21, 7, 1, 3]
    );
    // Counted from the tensors actually made, and from the layout.
    let made: usize = init_bundle(&cfg, 0).values().map(|t| t.numel()).sum();
    assert_eq!(made, 1_351_088);
    assert_eq!(trainable_count(&cfg), 1_351_088);
    let dev = Device::Cpu;
    let weights = random_weights(&SwinGeometry::swin_t(), 1, &dev).unwrap();
    let numel: usize = weights.tensors.values().map(|t| t.elem_count()).sum();
    assert_eq!(numel, 27_519_354);
    assert_eq!(parameter_count(&SwinGeometry::swin_t()), 27_519_354);
}

/// Renames the fixture's Hugging Face weights into the timm/Microsoft layout.
fn to_timm_layout(hf: &NamedTensors, downsample_at_end: bool) -> NamedTensors {
    let mut out = HashMap::new();
    let mut qkv: HashMap<String, [Option<Tensor>; 3]> = HashMap::new();
    for (name, t) in &hf.tensors {
        let n = name.strip_prefix("swin.").unwrap_or(name);
        if n.starts_with("classifier") {
            out.insert(n.replace("classifier", "head"), t.clone());
            continue;
        }
        if n.ends_with("relative_position_index") {
            out.insert(
                n.replace("encoder.", "")
                    .replace("attention.self.", "attn."),
                t.clone(),
            );
            continue;
        }
        let n = n
            .replace("embeddings.patch_embeddings.projection", "patch_embed.proj")
            .replace("embeddings.norm", "patch_embed.norm")
            .replace("encoder.layers.", "layers.")
            .replace("layernorm_before", "norm1")
            .replace("layernorm_after", "norm2")
            .replace("attention.output.dense", "attn.proj")
            .replace(
                "attention.self.relative_position_bias_table",
                "attn.relative_position_bias_table",
            )
            .replace("intermediate.dense", "mlp.fc1")
            .replace("output.dense", "mlp.fc2");
        let n = if n.starts_with("layernorm.") {
            n.replace("layernorm.", "norm.")
        } else {
            n
        };
        let n = if !downsample_at_end && n.contains(".downsample.") {
            let stage: usize = n["layers.".len()..]
                .split('.')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            n.replacen(
                &format!("layers.{stage}."),
                &format!("layers.{}.", stage + 1),
                1,
            )
        } else {
            n
        };
        let mut is_qkv = false;
        for (i, part) in ["query", "key", "value"].iter().enumerate() {
            let marker = format!("attention.self.{part}.");
            if let Some(pos) = n.find(&marker) {
                let key = format!("{}attn.qkv.{}", &n[..pos], &n[pos + marker.len()..]);
                qkv.entry(key).or_default()[i] = Some(t.clone());
                is_qkv = true;
            }
        }
        if !is_qkv {
            out.insert(n, t.clone());
        }
    }
    for (key, parts) in qkv {
        let parts: Vec<Tensor> = parts.into_iter().map(Option::unwrap).collect();
        out.insert(key, Tensor::cat(&parts, 0).unwrap());
    }
    NamedTensors::new("timm", out)
}

#[test]
fn timm_and_microsoft_layouts_load_to_the_same_network() {
    let dev = Device::Cpu;
    let dir = fixtures().join("tiny/backbone");
    let geometry = vmt_hub::model::backbone::read_config(&dir.join("config.json")).unwrap();
    let hf = NamedTensors::load(&dir.join("model.safetensors"), &dev).unwrap();
    let reference = Swin::new(&canonical_names(hf.clone()).unwrap(), &geometry, &dev).unwrap();
    let pixels = Tensor::randn(0f32, 1f32, (1, 3, 48, 56), &dev).unwrap();
    let want = reference.forward_features(&pixels).unwrap();
    for at_end in [true, false] {
        let timm = canonical_names(to_timm_layout(&hf, at_end)).unwrap();
        let swin = Swin::new(&timm, &geometry, &dev).unwrap();
        let got = swin.forward_features(&pixels).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_close(
                &format!("downsample_at_end={at_end} stage {i}"),
                g,
                w,
                0.0,
                0.0,
            );
        }
    }
}

#[test]
fn any_input_size_gives_outputs_of_that_size() {
    let dev = Device::Cpu;
    let backbone = Backbone::load("random:tiny", &dev).unwrap();
    let cfg = config(
        SwinGeometry::tiny(),
        AdapterKind::Vmt,
        "semseg:segmentation:3,normals",
        8,
        16,
    );
    let t = from_raw(&randomized_bundle(&cfg, 1), "r", &dev).unwrap();
    let model = VmtModel::new(cfg, Arc::clone(&backbone.swin), &t).unwrap();
    for (h, w) in [(1, 1), (17, 9), (37, 70), (64, 64)] {
        let out = model
            .forward(&Tensor::randn(0f32, 1f32, (1, 3, h, w), &dev).unwrap())
            .unwrap();
        assert_eq!(out.task("semseg").unwrap().dims(), [1, 3, h, w]);
        assert_eq!(out.task("normals").unwrap().dims(), [1, 3, h, w]);
        let s0 = out.features[0].dims();
        assert_eq!((s0[2], s0[3]), (h.div_ceil(4), w.div_ceil(4)));
        let finite = out
            .task("semseg")
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(finite.is_finite(), "{h}x{w}");
    }
}

#[test]
fn zero_adapters_leave_the_backbone_unchanged() {
    // With up = 0, gamma = beta = 0 (a fresh bundle), generic features equal the plain Swin.
    let dev = Device::Cpu;
    let backbone = Backbone::load("random:tiny", &dev).unwrap();
    let cfg = config(SwinGeometry::tiny(), AdapterKind::Vmt, "sal", 8, 16);
    let t = from_raw(&init_bundle(&cfg, 5), "init", &dev).unwrap();
    let model = VmtModel::new(cfg, Arc::clone(&backbone.swin), &t).unwrap();
    let pixels = Tensor::randn(0f32, 1f32, (1, 3, 64, 64), &dev).unwrap();
    let out = model.forward(&pixels).unwrap();
    let plain = backbone.swin.forward_features(&pixels).unwrap();
    for (i, (g, p)) in out.features.iter().zip(&plain).enumerate() {
        assert_close(
            &format!("stage {i}"),
            g,
            &p.permute((0, 3, 1, 2)).unwrap(),
            0.0,
            0.0,
        );
    }
}

/// The vendored candle-core sums over any set of dimensions in runs (vendor/PATCHES.md):
/// every subset of the dimensions of a 4-D tensor, contiguous and transposed, against a
/// sum written out here; and the affine map on its parallel path, against `x * a + b`.
#[test]
fn reductions_over_any_dims_match_a_naive_sum() {
    let dims = [2usize, 3, 4, 5];
    let n: usize = dims.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect();
    let x = Tensor::from_vec(values.clone(), &dims[..], &Device::Cpu).unwrap();
    for mask in 1u32..16 {
        let reduce: Vec<usize> = (0..4).filter(|d| mask & (1 << d) != 0).collect();
        // The naive sum: every element into the cell with the reduced indices at 0.
        let out_dims: Vec<usize> = (0..4)
            .map(|d| if reduce.contains(&d) { 1 } else { dims[d] })
            .collect();
        let mut want = vec![0f32; out_dims.iter().product()];
        for (i, v) in values.iter().enumerate() {
            let idx = [i / 60, i / 20 % 3, i / 5 % 4, i % 5];
            let mut o = 0;
            for d in 0..4 {
                let k = if reduce.contains(&d) { 0 } else { idx[d] };
                o = o * out_dims[d] + k;
            }
            want[o] += v;
        }
        let got = x.sum_keepdim(reduce.clone()).unwrap();
        assert_eq!(got.dims(), &out_dims[..]);
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-3, "dims {reduce:?}: {g} vs {w}");
        }
        // The same through a non-contiguous layout.
        let t = x.transpose(1, 3).unwrap();
        let t_reduce: Vec<usize> = reduce
            .iter()
            .map(|&d| match d {
                1 => 3,
                3 => 1,
                d => d,
            })
            .collect();
        let back = t
            .sum_keepdim(t_reduce)
            .unwrap()
            .transpose(1, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (g, w) in back.iter().zip(&want) {
            assert!(
                (g - w).abs() < 1e-3,
                "transposed, dims {reduce:?}: {g} vs {w}"
            );
        }
    }
    // Affine, large enough for the parallel path, and strided.
    let big = Tensor::arange(0f32, 300_000f32, &Device::Cpu).unwrap();
    let y = big.affine(0.5, -3.0).unwrap().to_vec1::<f32>().unwrap();
    assert!(y
        .iter()
        .enumerate()
        .all(|(i, &v)| v == i as f32 * 0.5 - 3.0));
    let m = big.reshape((600, 500)).unwrap().t().unwrap();
    let y = m.affine(2.0, 1.0).unwrap();
    let want: Vec<f32> = m
        .contiguous()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v * 2.0 + 1.0)
        .collect();
    assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
}
