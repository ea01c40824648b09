//! TensorBoard event files of a training run, read by TensorBoard's own reader
//! (`EventAccumulator` of Python's `tensorboard` package): the scalar tags and their
//! steps are as docs/guide.md says, the prediction sheet decodes to a PNG of the size
//! its summary declares, and a run stopped and resumed logs each step exactly once.

mod common;

use std::path::Path;
use std::process::Command;

use common::ok;

/// Python with `tensorboard`, if here (see `common::tool_available`).
fn python_with_tensorboard() -> Option<String> {
    common::python_with(
        "tensorboard",
        "from tensorboard.backend.event_processing import event_accumulator",
        "tensorboard",
    )
}

/// What EventAccumulator reads from `run_dir`: `{"scalars": {tag: [steps]}, "images":
/// {tag: [[step, width, height, png_width, png_height]]}}`.
fn accumulated(python: &str, run_dir: &Path) -> serde_json::Value {
    let script = r#"
import io, json, sys
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea
acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
acc.Reload()
tags = acc.Tags()
out = {"scalars": {t: [e.step for e in acc.Scalars(t)] for t in tags["scalars"]},
       "images": {}}
for t in tags["images"]:
    rows = []
    for e in acc.Images(t):
        png = Image.open(io.BytesIO(e.encoded_image_string))
        assert png.format == "PNG", png.format
        rows.append([e.step, e.width, e.height, png.width, png.height])
    out["images"][t] = rows
print(json.dumps(out))
"#;
    let o = Command::new(python)
        .args(["-c", script])
        .arg(run_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn train(root: &Path, data: &Path, run: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--tasks",
        "semseg,sal",
        "--backbone",
        "random:tiny",
        "--steps",
        "4",
        "--batch",
        "2",
        "--image-size",
        "32",
        "--checkpoint-every",
        "2",
        "--run-dir",
        run.to_str().unwrap(),
        "--tag",
        "tb/run:v1",
    ];
    args.extend_from_slice(extra);
    ok(root, &args)
}

#[test]
fn tensorboard_reads_the_runs_scalars_and_sheets_and_a_resume_logs_each_step_once() {
    let Some(python) = python_with_tensorboard() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (root, data) = (tmp.path().join("reg"), tmp.path().join("data"));
    ok(
        &root,
        &[
            "data",
            "synth",
            "--out",
            data.to_str().unwrap(),
            "--count",
            "8",
            "--size",
            "32",
        ],
    );
    let baseline = tmp.path().join("baseline.json");
    std::fs::write(&baseline, r#"{"semseg": 10.0, "sal": 20.0}"#).unwrap();
    let b = baseline.to_str().unwrap();
    let whole = tmp.path().join("whole");
    train(&root, &data, &whole, &["--baseline", b]);
    let got = accumulated(&python, &whole);
    let steps = |tag: &str| got["scalars"][tag].clone();
    for tag in [
        "loss/total",
        "loss/semseg",
        "loss/sal",
        "train/lr",
        "train/grad_norm",
        "train/images_per_s",
        "train/step_time_s",
    ] {
        assert_eq!(steps(tag), serde_json::json!([1, 2, 3, 4]), "{tag}: {got}");
    }
    let val: Vec<&String> = got["scalars"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("val/"))
        .collect();
    assert!(val.iter().any(|k| k.starts_with("val/semseg/")), "{got}");
    assert!(val.iter().any(|k| k.starts_with("val/sal/")), "{got}");
    for k in &val {
        assert_eq!(steps(k), serde_json::json!([4]), "{k}");
    }
    assert_eq!(steps("val/delta_m"), serde_json::json!([4]), "{got}");
    let show = ok(&root, &["show", "tb/run:v1"]);
    assert!(
        show.contains("\"delta_m\""),
        "Δm is stored with the metrics: {show}"
    );
    let images = got["images"].as_object().unwrap();
    assert_eq!(images.len(), 1, "one fixed image: {got}");
    let (tag, rows) = images.iter().next().unwrap();
    assert!(tag.starts_with("predictions/"), "{tag}");
    let rows = rows.as_array().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r[0].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [2, 4]
    );
    for r in rows {
        assert_eq!(
            (&r[1], &r[2]),
            (&r[3], &r[4]),
            "the PNG is the size its summary says"
        );
        assert!(
            r[1].as_i64().unwrap() > 32,
            "a sheet, larger than the image: {r:?}"
        );
    }

    // Stopped after step 3 (checkpoint at 2 and 3), resumed: each step once.
    let resumed = tmp.path().join("resumed");
    train(
        &root,
        &data,
        &resumed,
        &["--stop-after", "3", "--baseline", b],
    );
    train(&root, &data, &resumed, &["--resume", "--baseline", b]);
    let again = accumulated(&python, &resumed);
    for tag in ["loss/total", "loss/sal", "train/lr"] {
        assert_eq!(
            again["scalars"][tag],
            serde_json::json!([1, 2, 3, 4]),
            "{tag}: {again}"
        );
    }
    for k in &val {
        assert_eq!(again["scalars"][k.as_str()], serde_json::json!([4]), "{k}");
    }
    assert_eq!(
        got["scalars"].as_object().unwrap().len(),
        again["scalars"].as_object().unwrap().len()
    );
}
