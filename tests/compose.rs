//! add-task: a new task on a trained bundle trains only its KEMs and decoder; the
//! backbone, the shared adapter and the existing tasks stay bit-identical, and the
//! registry stores only the delta (one component, one config, one manifest).

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use common::{blob_files, blob_sizes, ok, step, vmt_hub};
use vmt_hub::data::synth::synthesize;
use vmt_registry::Registry;

/// Six steps of two 32 px images: a run long enough to learn something, short for a test.
const SHORT_RUN: [&str; 7] = [
    "--steps",
    "6",
    "--batch",
    "2",
    "--image-size",
    "32",
    "--quiet",
];

/// A registry with `m:v1` (semseg, sal) trained on synthetic data, for the add-task
/// scenario.
struct AddTaskScene {
    tmp: tempfile::TempDir,
    data: String,
    root: PathBuf,
}

impl AddTaskScene {
    fn run_dir(&self, name: &str) -> String {
        self.tmp.path().join(name).to_str().unwrap().to_string()
    }

    /// `add-task REFERENCE --task TASK --tag TAG`, 6 steps at 32 px; its output.
    fn add_task(&self, reference: &str, task: &str, tag: &str, run: &str) -> Output {
        let run = self.run_dir(run);
        let data = self.data.as_str();
        let args = [
            "add-task", reference, "--task", task, "--data", data, "--tag", tag,
        ];
        vmt_hub(
            &self.root,
            &[&args[..], &["--run-dir", run.as_str()], &SHORT_RUN].concat(),
        )
    }
}

fn train_m_v1() -> AddTaskScene {
    let tmp = tempfile::tempdir().unwrap();
    let (data, root) = (tmp.path().join("data"), tmp.path().join("reg"));
    synthesize(&data, 12, 32, 4).unwrap();
    let s = AddTaskScene {
        data: data.to_str().unwrap().to_string(),
        root,
        tmp,
    };
    let run = s.run_dir("run1");
    let args = [
        "train",
        "--data",
        &s.data,
        "--tasks",
        "semseg,sal",
        "--tag",
        "m:v1",
    ];
    ok(
        &s.root,
        &[&args[..], &["--run-dir", run.as_str()], &SHORT_RUN].concat(),
    );
    s
}

/// m:v2 shares m:v1's blobs and tensors, adds one component, has metrics of every task
/// and m:v1 as its parent.
fn v2_extends_v1(s: &AddTaskScene) {
    let reg = Registry::open(&s.root).unwrap();
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
        ok(&s.root, &["show", "m:v2"]).contains(&v1.to_string()),
        "show prints the lineage"
    );
}

/// `predict` of m:v1 and m:v2 draws the old tasks' pictures bit for bit the same.
fn old_tasks_predict_the_same(s: &AddTaskScene) {
    let img = s.tmp.path().join("x.png");
    image::RgbImage::from_fn(40, 24, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 9) as u8, 77])
    })
    .save(&img)
    .unwrap();
    let predict = |reference: &str, out: &str| {
        let out = s.tmp.path().join(out);
        let args = [
            "predict",
            reference,
            "--image",
            img.to_str().unwrap(),
            "--out",
        ];
        let mut args = args.to_vec();
        args.push(out.to_str().unwrap());
        ok(&s.root, &args);
        out
    };
    let (p1, p2) = (predict("m:v1", "p1"), predict("m:v2", "p2"));
    for task in ["semseg", "sal"] {
        let f = format!("x.{task}.png");
        assert_eq!(
            std::fs::read(p1.join(&f)).unwrap(),
            std::fs::read(p2.join(&f)).unwrap(),
            "{task}"
        );
    }
    assert!(p2.join("x.human_parts.png").is_file());
}

/// add-task refuses a task the bundle has and a task the dataset lacks, naming them.
fn add_task_refusals(s: &AddTaskScene) {
    let o = s.add_task("m:v1", "sal", "m:bad", "bad1");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success() && err.contains(r#"already has a task "sal""#),
        "{err}"
    );
    let o = s.add_task("m:v1", "edges", "m:bad", "bad2");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success() && err.contains("dataset.json") && err.contains("edges"),
        "{err}"
    );
    assert!(!ok(&s.root, &["list"]).contains("m:bad"));
}

#[test]
fn add_task_stores_only_the_delta_and_leaves_existing_tasks_unchanged() {
    let s = step("train m:v1 (semseg, sal)", train_m_v1);
    let before = blob_files(&s.root);
    step("add-task human_parts as m:v2 stores the delta only", || {
        let o = s.add_task("m:v1", "human_parts", "m:v2", "run2");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            blob_files(&s.root),
            before + 3,
            "one new component, one config, one manifest"
        );
    });
    step("m:v2 extends m:v1", || v2_extends_v1(&s));
    step("old tasks predict the same", || {
        old_tasks_predict_the_same(&s)
    });
    step("add-task refusals", || add_task_refusals(&s));
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

/// A registry for the composition scenario: m:v1 (semseg, sal), its add-task children
/// m:parts, m:normals and m:parts2 (human_parts again, other seed), and other:v1 trained
/// on its own; with a forward input.
struct ComposeScene {
    tmp: tempfile::TempDir,
    root: PathBuf,
    input: PathBuf,
}

impl ComposeScene {
    /// `forward` outputs of `reference` on the scene's input, by tensor name.
    fn out(&self, reference: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
        let file = self
            .tmp
            .path()
            .join(format!("{}.st", reference.replace(':', "_")));
        outputs(&self.root, reference, &self.input, &file)
    }

    /// A command that must fail with an error naming `needle`.
    fn refused(&self, args: &[&str], needle: &str) {
        let o = vmt_hub(&self.root, args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(
            !o.status.success() && err.contains(needle),
            "{args:?}: {err}"
        );
    }
}

fn compose_scene() -> ComposeScene {
    let tmp = tempfile::tempdir().unwrap();
    let (data, root) = (tmp.path().join("data"), tmp.path().join("reg"));
    synthesize(&data, 12, 32, 4).unwrap();
    let d = data.to_str().unwrap();
    let mut n = 0;
    let mut run = |args: &[&str]| {
        n += 1;
        let run = tmp.path().join(format!("run{n}"));
        let run = run.to_str().unwrap().to_string();
        let mut a: Vec<&str> = args.to_vec();
        a.extend([
            "--data",
            d,
            "--steps",
            "4",
            "--batch",
            "2",
            "--image-size",
            "32",
        ]);
        a.extend(["--quiet", "--run-dir", &run]);
        ok(&root, &a);
    };
    run(&["train", "--tasks", "semseg,sal", "--tag", "m:v1"]);
    // Two siblings of m:v1, and a stranger trained on its own.
    run(&[
        "add-task",
        "m:v1",
        "--task",
        "human_parts",
        "--tag",
        "m:parts",
    ]);
    run(&[
        "add-task",
        "m:v1",
        "--task",
        "normals",
        "--tag",
        "m:normals",
    ]);
    run(&[
        "train", "--tasks", "semseg", "--tag", "other:v1", "--seed", "9",
    ]);
    // Same task name as m:parts, other weights.
    let parts2 = [
        "add-task",
        "m:v1",
        "--task",
        "human_parts",
        "--tag",
        "m:parts2",
    ];
    run(&[&parts2[..], &["--seed", "5"]].concat());
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
    ComposeScene { tmp, root, input }
}

/// merge: one bundle with all four tasks, two new blobs, each task's outputs bit for bit.
fn merge_keeps_outputs(s: &ComposeScene) {
    let root = &s.root;
    let (blobs, bytes) = (blob_files(root), store_bytes(root));
    let said = ok(root, &["merge", "m:parts", "m:normals", "--tag", "m:all"]);
    assert!(said.contains("2 new blob(s)"), "{said}");
    assert_eq!(blob_files(root), blobs + 2, "a config and a manifest");
    let grown = store_bytes(root) - bytes;
    assert!(grown < 16 << 10, "the registry grew by {grown} bytes");
    let all = s.out("m:all");
    let (parts, normals) = (s.out("m:parts"), s.out("m:normals"));
    assert_eq!(all.len(), 4);
    for (task, want) in parts.iter().chain(normals.iter()) {
        assert_eq!(all.get(task), Some(want), "{task} differs after merge");
    }
}

/// drop-task and rename-task: two blobs each, the remaining outputs bit for bit.
fn drop_and_rename_keep_outputs(s: &ComposeScene) {
    let root = &s.root;
    let blobs = blob_files(root);
    ok(
        root,
        &["drop-task", "m:all", "--task", "sal", "--tag", "m:nosal"],
    );
    let rename = [
        "rename-task",
        "m:all",
        "--task",
        "semseg=seg",
        "--tag",
        "m:renamed",
    ];
    ok(root, &rename);
    assert_eq!(blob_files(root), blobs + 4);
    let all = s.out("m:all");
    let nosal = s.out("m:nosal");
    assert_eq!(nosal.len(), 3);
    for (task, got) in &nosal {
        assert_eq!(Some(got), all.get(task), "{task} after drop-task");
    }
    let renamed = s.out("m:renamed");
    assert_eq!(renamed.get("seg"), all.get("semseg"), "renamed task output");
    assert!(!renamed.contains_key("semseg"));
}

/// Every bundle kind (trained, added, merged, dropped, renamed) exports and re-imports
/// as the same digest: its stored numbers (metrics) round-trip exactly.
fn export_import_keeps_digests(s: &ComposeScene) {
    let reg = Registry::open(&s.root).unwrap();
    let tags: Vec<(String, vmt_registry::Digest)> = reg.tag_list().unwrap();
    drop(reg);
    for (i, (tag, digest)) in tags.iter().enumerate() {
        let exported = s.tmp.path().join(format!("export-{i}"));
        ok(&s.root, &["export", tag, exported.to_str().unwrap()]);
        let again_tag = format!("again:{i}");
        let again = ok(
            &s.root,
            &["import", exported.to_str().unwrap(), "--tag", &again_tag],
        );
        assert!(
            again.contains(&digest.to_string()),
            "{tag} came back as another bundle: {again}"
        );
    }
}

/// diff names exactly the changed components; show the lineage; list --tree families.
fn diff_lineage_and_families(s: &ComposeScene) {
    let root = &s.root;
    let diff = ok(root, &["diff", "m:parts", "m:all"]);
    let comp: Vec<&str> = diff
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("config:"))
        .collect();
    assert_eq!(comp.len(), 1, "{diff}");
    assert!(comp[0].starts_with("  + task/normals"), "{diff}");
    assert!(diff.contains("tasks.normals.kind"), "{diff}");
    let diff = ok(root, &["diff", "m:parts", "m:parts2"]);
    assert!(diff.contains("  ~ task/human_parts"), "{diff}");
    let show = ok(root, &["show", "m:all"]);
    assert!(
        show.contains("merge: +normals") || show.contains("merge: +human_parts +normals"),
        "{show}"
    );
    let tree = ok(root, &["list", "--tree"]);
    let families: Vec<&str> = tree.lines().filter(|l| l.starts_with("shared ")).collect();
    assert_eq!(families.len(), 2, "m:* and other:v1\n{tree}");
}

/// Refusals, each naming the reason; nothing written.
fn refusals_write_nothing(s: &ComposeScene) {
    let blobs = blob_files(&s.root);
    s.refused(
        &["merge", "m:v1", "other:v1", "--tag", "x:1"],
        "different shared components",
    );
    s.refused(
        &["merge", "m:parts", "m:parts2", "--tag", "x:1"],
        "different weights",
    );
    s.refused(
        &["drop-task", "other:v1", "--task", "semseg", "--tag", "x:1"],
        "only task",
    );
    s.refused(
        &["drop-task", "m:v1", "--task", "depth", "--tag", "x:1"],
        "no task \"depth\"",
    );
    s.refused(
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
    let edited = s.tmp.path().join("edited");
    ok(&s.root, &["export", "m:normals", edited.to_str().unwrap()]);
    let p = edited.join("bundle.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    cfg["backbone"]["digest"] = format!("sha256:{}", "0".repeat(64)).into();
    std::fs::write(&p, serde_json::to_vec(&cfg).unwrap()).unwrap();
    ok(
        &s.root,
        &["import", edited.to_str().unwrap(), "--tag", "m:edited"],
    );
    let blobs = blobs + 2;
    s.refused(
        &["merge", "m:parts", "m:edited", "--tag", "x:1"],
        "different backbones",
    );
    assert_eq!(blob_files(&s.root), blobs, "a refusal writes nothing");
    assert!(!ok(&s.root, &["list"]).contains("x:1"));
}

#[test]
fn merge_drop_rename_and_diff_write_no_tensor_and_keep_outputs_exact() {
    let s = step("train m:v1, add-task siblings, other:v1", compose_scene);
    step("merge", || merge_keeps_outputs(&s));
    step("drop-task and rename-task", || {
        drop_and_rename_keep_outputs(&s)
    });
    step("export then import keeps every digest", || {
        export_import_keeps_digests(&s)
    });
    step("diff, lineage and families", || {
        diff_lineage_and_families(&s)
    });
    step("refusals", || refusals_write_nothing(&s));
}
