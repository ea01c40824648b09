//! Bad input gets a clear error that names the problem (file, tensor, field), never a
//! panic or a wrong answer. Run through the real `vmt-hub forward` binary.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixtures, output_without_panic, vmt_hub_command};
use safetensors::Dtype;
use vmt_registry::bundle::RawTensor;
use vmt_registry::safetensors_canon::{canonical_bytes, parse};

fn vmt_hub() -> Command {
    vmt_hub_command()
}

/// A writable copy of the tiny fixture's bundle and backbone in a temp dir.
fn scratch() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    let bundle = tmp.path().join("bundle");
    let backbone = tmp.path().join("backbone");
    copy(&fixtures().join("tiny/bundle"), &bundle);
    copy(&fixtures().join("tiny/backbone"), &backbone);
    (tmp, bundle, backbone)
}

fn pixels_file(dir: &Path, t: RawTensor) -> PathBuf {
    let p = dir.join("input.safetensors");
    std::fs::write(
        &p,
        canonical_bytes(&BTreeMap::from([("pixel_values".to_string(), t)])),
    )
    .unwrap();
    p
}

fn good_pixels(dir: &Path) -> PathBuf {
    pixels_file(
        dir,
        RawTensor::from_f32(vec![1, 3, 32, 32], &vec![0.5; 3 * 32 * 32]),
    )
}

/// Runs forward and returns (success, stderr).
fn forward(bundle: &Path, backbone: &str, input: &Path, out: &Path) -> (bool, String) {
    let o = output_without_panic(
        vmt_hub()
            .args(["forward", "--bundle"])
            .arg(bundle)
            .args(["--backbone", backbone, "--input"])
            .arg(input)
            .arg("--out")
            .arg(out),
    );
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn expect_error(bundle: &Path, backbone: &str, input: &Path, needles: &[&str]) {
    let out = bundle.parent().unwrap().join("out.safetensors");
    let (ok, stderr) = forward(bundle, backbone, input, &out);
    assert!(!ok, "expected a failure, got success");
    for n in needles {
        assert!(stderr.contains(n), "error should mention {n:?}: {stderr}");
    }
    assert!(!out.exists(), "no output may be written on error");
}

fn edit_tensors(bundle: &Path, f: impl FnOnce(&mut BTreeMap<String, RawTensor>)) {
    let p = bundle.join("adapter.safetensors");
    let mut t = parse(&std::fs::read(&p).unwrap(), &p).unwrap();
    f(&mut t);
    std::fs::write(&p, canonical_bytes(&t)).unwrap();
}

#[test]
fn the_good_case_works() {
    let (tmp, bundle, backbone) = scratch();
    let out = tmp.path().join("out.safetensors");
    let (ok, stderr) = forward(
        &bundle,
        backbone.to_str().unwrap(),
        &good_pixels(tmp.path()),
        &out,
    );
    assert!(ok, "{stderr}");
    let t = parse(&std::fs::read(&out).unwrap(), &out).unwrap();
    assert_eq!(t["semseg"].shape, [1, 5, 32, 32]);
    assert_eq!(t["features.stage3"].shape, [1, 256, 1, 1]);
}

#[test]
fn tensor_with_wrong_shape() {
    let (tmp, bundle, backbone) = scratch();
    let name = "adapter.stages.1.blocks.0.down.weight";
    edit_tensors(&bundle, |t| {
        t.insert(name.into(), RawTensor::from_f32(vec![16, 32], &[0.0; 512]));
    });
    expect_error(
        &bundle,
        backbone.to_str().unwrap(),
        &good_pixels(tmp.path()),
        &[name, "[16, 32]", "[16, 64]", "adapter.safetensors"],
    );
}

#[test]
fn tensor_outside_the_naming_scheme() {
    let (tmp, bundle, backbone) = scratch();
    edit_tensors(&bundle, |t| {
        t.insert(
            "extra.weight".into(),
            RawTensor::from_f32(vec![2], &[0.0; 2]),
        );
    });
    expect_error(
        &bundle,
        backbone.to_str().unwrap(),
        &good_pixels(tmp.path()),
        &["extra.weight", "naming scheme"],
    );
}

#[test]
fn tensor_of_a_task_the_config_lacks() {
    let (tmp, bundle, backbone) = scratch();
    edit_tensors(&bundle, |t| {
        t.insert(
            "tasks.depth.decoder.head.bias".into(),
            RawTensor::from_f32(vec![1], &[0.0]),
        );
    });
    expect_error(
        &bundle,
        backbone.to_str().unwrap(),
        &good_pixels(tmp.path()),
        &["tasks.depth.decoder.head.bias", "no task \"depth\""],
    );
}

#[test]
fn missing_tensor() {
    let (tmp, bundle, backbone) = scratch();
    let name = "tasks.sal.decoder.head.weight";
    edit_tensors(&bundle, |t| {
        t.remove(name);
    });
    expect_error(
        &bundle,
        backbone.to_str().unwrap(),
        &good_pixels(tmp.path()),
        &[name, "missing"],
    );
}

#[test]
fn tensor_not_f32() {
    let (tmp, bundle, backbone) = scratch();
    let name = "tasks.sal.decoder.head.bias";
    edit_tensors(&bundle, |t| {
        t.insert(
            name.into(),
            RawTensor {
                dtype: Dtype::F64,
                shape: vec![1],
                data: vec![0; 8],
            },
        );
    });
    expect_error(
        &bundle,
        backbone.to_str().unwrap(),
        &good_pixels(tmp.path()),
        &[name, "F64"],
    );
}

#[test]
fn unknown_format() {
    let (tmp, bundle, backbone) = scratch();
    let p = bundle.join("bundle.json");
    let s = std::fs::read_to_string(&p)
        .unwrap()
        .replace("vmt-bundle/1", "vmt-bundle/9");
    std::fs::write(&p, s).unwrap();
    expect_error(
        &bundle,
        backbone.to_str().unwrap(),
        &good_pixels(tmp.path()),
        &["bundle.json", "unknown format", "vmt-bundle/9"],
    );
}

#[test]
fn truncated_and_foreign_safetensors() {
    let (tmp, bundle, backbone) = scratch();
    let p = bundle.join("adapter.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    expect_error(
        &bundle,
        backbone.to_str().unwrap(),
        &good_pixels(tmp.path()),
        &["adapter.safetensors", "not a valid safetensors"],
    );
    std::fs::write(&p, b"PK\x03\x04 this is a zip file, not safetensors").unwrap();
    expect_error(
        &bundle,
        backbone.to_str().unwrap(),
        &good_pixels(tmp.path()),
        &["adapter.safetensors", "not a valid safetensors"],
    );
}

#[test]
fn input_not_bchw_f32() {
    let (tmp, bundle, backbone) = scratch();
    let bb = backbone.to_str().unwrap();
    let three_d = pixels_file(
        tmp.path(),
        RawTensor::from_f32(vec![3, 32, 32], &vec![0.0; 3 * 1024]),
    );
    expect_error(
        &bundle,
        bb,
        &three_d,
        &["pixel_values", "[3, 32, 32]", "[B, 3, H, W]"],
    );
    let gray = pixels_file(
        tmp.path(),
        RawTensor::from_f32(vec![1, 1, 32, 32], &vec![0.0; 1024]),
    );
    expect_error(&bundle, bb, &gray, &["pixel_values", "[1, 1, 32, 32]"]);
    let f64s = pixels_file(
        tmp.path(),
        RawTensor {
            dtype: Dtype::F64,
            shape: vec![1, 3, 2, 2],
            data: vec![0; 96],
        },
    );
    expect_error(&bundle, bb, &f64s, &["pixel_values", "F64", "F32"]);
    let p = tmp.path().join("other.safetensors");
    std::fs::write(
        &p,
        canonical_bytes(&BTreeMap::from([(
            "image".to_string(),
            RawTensor::from_f32(vec![1], &[0.0]),
        )])),
    )
    .unwrap();
    expect_error(&bundle, bb, &p, &["pixel_values", "missing"]);
}

#[test]
fn backbone_config_not_swin() {
    let (tmp, bundle, backbone) = scratch();
    let p = backbone.join("config.json");
    let s = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"model_type\": \"swin\"", "\"model_type\": \"vit\"");
    std::fs::write(&p, s).unwrap();
    expect_error(
        &bundle,
        backbone.to_str().unwrap(),
        &good_pixels(tmp.path()),
        &["config.json", "not a Swin", "vit"],
    );
}

#[test]
fn backbone_of_another_geometry() {
    let (tmp, bundle, _) = scratch();
    expect_error(
        &bundle,
        "random:swin-t",
        &good_pixels(tmp.path()),
        &["embed 32", "embed 96"],
    );
}

#[test]
fn backbone_with_other_weights_than_recorded() {
    let (tmp, bundle, backbone) = scratch();
    let p = bundle.join("bundle.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let recorded = format!("sha256:{}", "ab".repeat(32));
    v["backbone"]["digest"] = recorded.clone().into();
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let actual = vmt_registry::Digest::of_file(&backbone.join("model.safetensors"))
        .unwrap()
        .to_string();
    expect_error(
        &bundle,
        backbone.to_str().unwrap(),
        &good_pixels(tmp.path()),
        &[&recorded, &actual],
    );
}

#[test]
fn predict_writes_one_png_per_task_and_a_sheet_at_any_size() {
    let (tmp, bundle, backbone) = scratch();
    let img = tmp.path().join("odd.png");
    image::RgbImage::from_fn(37, 53, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 4) as u8, 90])
    })
    .save(&img)
    .unwrap();
    let out = tmp.path().join("pred");
    let o = vmt_hub()
        .args([
            "predict",
            bundle.to_str().unwrap(),
            "--backbone",
            backbone.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for task in ["semseg", "human_parts", "sal", "normals"] {
        let p = image::open(out.join(format!("odd.{task}.png"))).unwrap();
        assert_eq!((p.width(), p.height()), (37, 53), "{task}");
    }
    // The sheet: five panels (input + four tasks), upscaled to at least 192 pixels on
    // the longer side (4x here), with captions above them.
    let sheet = image::open(out.join("odd.sheet.png")).unwrap();
    assert!(
        sheet.width() >= 5 * 37 * 4 && sheet.height() > 53 * 4,
        "{:?}",
        (sheet.width(), sheet.height())
    );
    // A corrupt image is named.
    std::fs::write(&img, b"not a png").unwrap();
    let o = vmt_hub()
        .args([
            "predict",
            bundle.to_str().unwrap(),
            "--backbone",
            backbone.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("odd.png"));
}
