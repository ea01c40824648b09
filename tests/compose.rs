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

/// The size of every blob file.
fn blob_sizes(root: &Path) -> Vec<u64> {
    std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect()
}

fn blob_files(root: &Path) -> usize {
    blob_sizes(root).len()
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

/// Runs `forward` of `reference` on `input`; returns each output tensor's bytes.
fn outputs(
    root: &Path,
    reference: &str,
    input: &Path,
    out: &Path,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    ok(
        root,
        &[
            "forward",
            "--bundle",
            reference,
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let bytes = std::fs::read(out).unwrap();
    vmt_registry::safetensors_canon::parse(&bytes, out)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("features."))
        .map(|(k, t)| (k, t.data))
        .collect()
}

/// Bytes of every blob file.
fn store_bytes(root: &Path) -> u64 {
    blob_sizes(root).iter().sum()
}

#[test]
fn merge_drop_rename_and_diff_write_no_tensor_and_keep_outputs_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, root) = (tmp.path().join("data"), tmp.path().join("reg"));
    synthesize(&data, 12, 32, 4).unwrap();
    let d = data.to_str().unwrap();
    let mut n = 0;
    let mut step = |args: &[&str]| {
        n += 1;
        let run = tmp.path().join(format!("run{n}"));
        let mut a: Vec<&str> = args.to_vec();
        let run = run.to_str().unwrap().to_string();
        a.extend([
            "--data",
            d,
            "--steps",
            "4",
            "--batch",
            "2",
            "--image-size",
            "32",
            "--quiet",
            "--run-dir",
            &run,
        ]);
        ok(&root, &a);
    };
    step(&["train", "--tasks", "semseg,sal", "--tag", "m:v1"]);
    // Two siblings of m:v1, and a stranger trained on its own.
    step(&[
        "add-task",
        "m:v1",
        "--task",
        "human_parts",
        "--tag",
        "m:parts",
    ]);
    step(&[
        "add-task",
        "m:v1",
        "--task",
        "normals",
        "--tag",
        "m:normals",
    ]);
    step(&[
        "train", "--tasks", "semseg", "--tag", "other:v1", "--seed", "9",
    ]);
    // Same task name as m:parts, other weights.
    step(&[
        "add-task",
        "m:v1",
        "--task",
        "human_parts",
        "--tag",
        "m:parts2",
        "--seed",
        "5",
    ]);

    let input = tmp.path().join("x.safetensors");
    let pixels: Vec<f32> = (0..2 * 3 * 32 * 48)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    std::fs::write(
        &input,
        vmt_registry::safetensors_canon::canonical_bytes(&std::collections::BTreeMap::from([(
            "pixel_values".to_string(),
            vmt_registry::bundle::RawTensor::from_f32(vec![2, 3, 32, 48], &pixels),
        )])),
    )
    .unwrap();
    let out = |r: &str| {
        outputs(
            &root,
            r,
            &input,
            &tmp.path().join(format!("{}.st", r.replace(':', "_"))),
        )
    };

    // merge: one bundle with all four tasks; each task's outputs bit for bit.
    let (blobs, bytes) = (blob_files(&root), store_bytes(&root));
    let said = ok(&root, &["merge", "m:parts", "m:normals", "--tag", "m:all"]);
    assert!(said.contains("2 new blob(s)"), "{said}");
    assert_eq!(blob_files(&root), blobs + 2, "a config and a manifest");
    let grown = store_bytes(&root) - bytes;
    assert!(grown < 16 << 10, "the registry grew by {grown} bytes");
    let all = out("m:all");
    let (parts, normals) = (out("m:parts"), out("m:normals"));
    assert_eq!(all.len(), 4);
    for (task, want) in parts.iter().chain(normals.iter()) {
        assert_eq!(all.get(task), Some(want), "{task} differs after merge");
    }

    // drop-task and rename-task: likewise.
    let blobs = blob_files(&root);
    ok(
        &root,
        &["drop-task", "m:all", "--task", "sal", "--tag", "m:nosal"],
    );
    ok(
        &root,
        &[
            "rename-task",
            "m:all",
            "--task",
            "semseg=seg",
            "--tag",
            "m:renamed",
        ],
    );
    assert_eq!(blob_files(&root), blobs + 4);
    let nosal = out("m:nosal");
    assert_eq!(nosal.len(), 3);
    for (task, got) in &nosal {
        assert_eq!(Some(got), all.get(task), "{task} after drop-task");
    }
    let renamed = out("m:renamed");
    assert_eq!(renamed.get("seg"), all.get("semseg"), "renamed task output");
    assert!(!renamed.contains_key("semseg"));
    // Every bundle kind (trained, added, merged, dropped, renamed) exports and
    // re-imports as the same digest: its stored numbers (metrics) round-trip exactly.
    let reg = Registry::open(&root).unwrap();
    let tags: Vec<(String, vmt_registry::Digest)> = reg.tag_list().unwrap();
    drop(reg);
    for (i, (tag, digest)) in tags.iter().enumerate() {
        let exported = tmp.path().join(format!("export-{i}"));
        ok(&root, &["export", tag, exported.to_str().unwrap()]);
        let again = ok(
            &root,
            &[
                "import",
                exported.to_str().unwrap(),
                "--tag",
                &format!("again:{i}"),
            ],
        );
        assert!(
            again.contains(&digest.to_string()),
            "{tag} came back as another bundle: {again}"
        );
    }

    // diff names exactly the changed components.
    let diff = ok(&root, &["diff", "m:parts", "m:all"]);
    let comp: Vec<&str> = diff
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("config:"))
        .collect();
    assert_eq!(comp.len(), 1, "{diff}");
    assert!(comp[0].starts_with("  + task/normals"), "{diff}");
    assert!(diff.contains("tasks.normals.kind"), "{diff}");
    let diff = ok(&root, &["diff", "m:parts", "m:parts2"]);
    assert!(diff.contains("  ~ task/human_parts"), "{diff}");

    // Lineage and families.
    let show = ok(&root, &["show", "m:all"]);
    assert!(
        show.contains("merge: +normals") || show.contains("merge: +human_parts +normals"),
        "{show}"
    );
    let tree = ok(&root, &["list", "--tree"]);
    let families: Vec<&str> = tree.lines().filter(|l| l.starts_with("shared ")).collect();
    assert_eq!(families.len(), 2, "m:* and other:v1\n{tree}");

    // Refusals, each naming the reason, nothing written.
    let blobs = blob_files(&root);
    let refused = |args: &[&str], needle: &str| {
        let o = vmt_hub(&root, args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(
            !o.status.success() && err.contains(needle),
            "{args:?}: {err}"
        );
    };
    refused(
        &["merge", "m:v1", "other:v1", "--tag", "x:1"],
        "different shared components",
    );
    refused(
        &["merge", "m:parts", "m:parts2", "--tag", "x:1"],
        "different weights",
    );
    refused(
        &["drop-task", "other:v1", "--task", "semseg", "--tag", "x:1"],
        "only task",
    );
    refused(
        &["drop-task", "m:v1", "--task", "depth", "--tag", "x:1"],
        "no task \"depth\"",
    );
    refused(
        &[
            "rename-task",
            "m:v1",
            "--task",
            "semseg=sal",
            "--tag",
            "x:1",
        ],
        "already has a task",
    );
    // Same shared component, another backbone: a config edited by hand.
    let edited = tmp.path().join("edited");
    ok(&root, &["export", "m:normals", edited.to_str().unwrap()]);
    let p = edited.join("bundle.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    cfg["backbone"]["digest"] = format!("sha256:{}", "0".repeat(64)).into();
    std::fs::write(&p, serde_json::to_vec(&cfg).unwrap()).unwrap();
    ok(
        &root,
        &["import", edited.to_str().unwrap(), "--tag", "m:edited"],
    );
    let blobs = blobs + 2;
    refused(
        &["merge", "m:parts", "m:edited", "--tag", "x:1"],
        "different backbones",
    );
    assert_eq!(blob_files(&root), blobs, "a refusal writes nothing");
    assert!(!ok(&root, &["list"]).contains("x:1"));
}
