//! add-task: a new task on a trained bundle trains only its KEMs and decoder; the
//! backbone, the shared adapter and the existing tasks stay bit-identical, and the
//! registry stores only the delta (one component, one config, one manifest).

use std::path::Path;
use std::process::Output;

mod common;

use common::{output_without_panic, vmt_hub_command};
use vmt_hub::data::synth::synthesize;
use vmt_registry::Registry;

fn vmt_hub(root: &Path, args: &[&str]) -> Output {
    output_without_panic(vmt_hub_command().arg("--registry").arg(root).args(args))
}

fn ok(root: &Path, args: &[&str]) -> String {
    let o = vmt_hub(root, args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn blob_files(root: &Path) -> usize {
    std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .count()
}

#[test]
fn add_task_stores_only_the_delta_and_leaves_existing_tasks_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, root) = (tmp.path().join("data"), tmp.path().join("reg"));
    synthesize(&data, 12, 32, 4).unwrap();
    let d = data.to_str().unwrap();
    let run = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let common = [
        "--steps",
        "6",
        "--batch",
        "2",
        "--image-size",
        "32",
        "--quiet",
    ];
    let mut args = vec![
        "train",
        "--data",
        d,
        "--tasks",
        "semseg,sal",
        "--tag",
        "m:v1",
    ];
    let r1 = run("run1");
    args.extend(["--run-dir", &r1]);
    args.extend(common);
    ok(&root, &args);
    let before = blob_files(&root);

    let r2 = run("run2");
    let mut args = vec![
        "add-task",
        "m:v1",
        "--task",
        "human_parts",
        "--data",
        d,
        "--tag",
        "m:v2",
        "--run-dir",
        &r2,
    ];
    args.extend(common);
    ok(&root, &args);
    assert_eq!(
        blob_files(&root),
        before + 3,
        "one new component, one config, one manifest"
    );

    let reg = Registry::open(&root).unwrap();
    let (v1, v2) = (reg.resolve("m:v1").unwrap(), reg.resolve("m:v2").unwrap());
    let (m1, m2) = (
        reg.manifest_record(&v1).unwrap().unwrap(),
        reg.manifest_record(&v2).unwrap().unwrap(),
    );
    let layers = |m: &vmt_registry::store::ManifestRecord| {
        m.layers
            .iter()
            .map(|l| (l.0.clone(), l.1))
            .collect::<Vec<_>>()
    };
    let (l1, l2) = (layers(&m1), layers(&m2));
    assert_eq!(
        &l2[..l1.len()],
        &l1[..],
        "shared and existing task components are the same blobs"
    );
    assert_eq!(l2.last().unwrap().0, "task/human_parts");
    assert_eq!(m2.parent, Some(v1), "lineage: v2's parent is v1");
    let (b1, b2) = (reg.load(&v1).unwrap(), reg.load(&v2).unwrap());
    for (name, t) in &b1.tensors {
        assert_eq!(b2.tensors.get(name), Some(t), "{name} changed");
    }
    let val = &b2.config.extra["metrics"]["val"];
    assert!(
        val["human_parts"]["metrics"]["mIoU"].is_number()
            && val["semseg"]["metrics"]["mIoU"].is_number(),
        "{val}"
    );
    drop(reg);
    assert!(
        ok(&root, &["show", "m:v2"]).contains(&v1.to_string()),
        "show prints the lineage"
    );

    // Forward: the old tasks' outputs are bit-identical; the new task is there.
    let img = tmp.path().join("x.png");
    image::RgbImage::from_fn(40, 24, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 9) as u8, 77])
    })
    .save(&img)
    .unwrap();
    let (p1, p2) = (tmp.path().join("p1"), tmp.path().join("p2"));
    ok(
        &root,
        &[
            "predict",
            "m:v1",
            "--image",
            img.to_str().unwrap(),
            "--out",
            p1.to_str().unwrap(),
        ],
    );
    ok(
        &root,
        &[
            "predict",
            "m:v2",
            "--image",
            img.to_str().unwrap(),
            "--out",
            p2.to_str().unwrap(),
        ],
    );
    for task in ["semseg", "sal"] {
        let f = format!("x.{task}.png");
        assert_eq!(
            std::fs::read(p1.join(&f)).unwrap(),
            std::fs::read(p2.join(&f)).unwrap(),
            "{task}"
        );
    }
    assert!(p2.join("x.human_parts.png").is_file());

    // Bad requests: a task the bundle has, a task the dataset lacks.
    let o = vmt_hub(
        &root,
        &[
            "add-task",
            "m:v1",
            "--task",
            "sal",
            "--data",
            d,
            "--tag",
            "m:bad",
            "--steps",
            "1",
            "--quiet",
            "--run-dir",
            &run("bad1"),
        ],
    );
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains(r#"already has a task "sal""#),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = vmt_hub(
        &root,
        &[
            "add-task",
            "m:v1",
            "--task",
            "edges",
            "--data",
            d,
            "--tag",
            "m:bad",
            "--steps",
            "1",
            "--quiet",
            "--run-dir",
            &run("bad2"),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success() && err.contains("dataset.json") && err.contains("edges"),
        "{err}"
    );
    assert!(!ok(&root, &["list"]).contains("m:bad"));
}
