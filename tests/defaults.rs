//! Defaults a user following the guide relies on: commands that run a stored bundle use
//! the image size it was trained at; a run directory that holds a run is never mixed
//! with a new one; a read-only command on a registry folder that does not exist says
//! so instead of creating an empty registry.

mod common;

use std::path::Path;
use std::process::Output;

use common::{ok_with_stderr as ok, vmt_hub};
use vmt_hub::data::synth::synthesize;

/// `--steps STEPS --batch 2 --quiet --run-dir RUN --tag TAG`.
fn run_flags<'a>(steps: &'a str, run: &'a Path, tag: &'a str) -> [&'a str; 9] {
    let run = run.to_str().unwrap();
    [
        "--steps",
        steps,
        "--batch",
        "2",
        "--quiet",
        "--run-dir",
        run,
        "--tag",
        tag,
    ]
}

fn train(root: &Path, data: &Path, run: &Path, size: Option<&str>, tag: &str) -> Output {
    let data = data.to_str().unwrap();
    let mut args = vec!["train", "--data", data, "--tasks", "semseg,sal"];
    args.extend(run_flags("2", run, tag));
    if let Some(s) = size {
        args.extend(["--image-size", s]);
    }
    vmt_hub(root, &args)
}

/// `add-task BASE --task TASK` for `steps` steps of batch 2 into `run`, tagged `tag`.
#[allow(clippy::too_many_arguments)]
fn add_task(
    root: &Path,
    base: &str,
    task: &str,
    data: &Path,
    steps: &str,
    run: &Path,
    tag: &str,
    extra: &[&str],
) -> (String, String) {
    let mut args = vec![
        "add-task",
        base,
        "--task",
        task,
        "--data",
        data.to_str().unwrap(),
    ];
    args.extend(run_flags(steps, run, tag));
    args.extend_from_slice(extra);
    ok(root, &args)
}

#[test]
fn eval_and_add_task_use_the_image_size_the_bundle_was_trained_at() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let data = tmp.path().join("data");
    synthesize(&data, 8, 48, 1).unwrap();
    let o = train(&root, &data, &tmp.path().join("run"), Some("48"), "s:v1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let d = data.to_str().unwrap();
    let (out, err) = ok(&root, &["eval", "s:v1", "--data", d]);
    assert!(err.contains("image size 48"), "{err}");
    assert!(out.contains("48x48"), "{out}");
    // A flag still overrides.
    let (out, _) = ok(&root, &["eval", "s:v1", "--data", d, "--image-size", "32"]);
    assert!(out.contains("32x32"), "{out}");

    let run2 = tmp.path().join("run2");
    let (_, err) = add_task(&root, "s:v1", "normals", &data, "2", &run2, "s:v2", &[]);
    assert!(err.contains("image size 48"), "{err}");
    let out = tmp.path().join("out");
    ok(&root, &["export", "s:v2", out.to_str().unwrap()]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("bundle.json")).unwrap()).unwrap();
    assert_eq!(config["provenance"]["image_size"], 48, "{config}");

    // Provenance per task: a task added at another size says so, the inherited ones
    // keep their run's; a merge keeps each task's record and names every source.
    let run3 = tmp.path().join("run3");
    let size = ["--image-size", "32"];
    add_task(
        &root,
        "s:v1",
        "human_parts",
        &data,
        "3",
        &run3,
        "s:v3",
        &size,
    );
    let line = |show: &str, task: &str| {
        show.lines()
            .find(|l| l.trim_start().starts_with(&format!("{task} ")))
            .unwrap_or_else(|| panic!("no line for {task}: {show}"))
            .to_string()
    };
    let (show, _) = ok(&root, &["show", "s:v3"]);
    assert!(line(&show, "semseg").contains("2 steps at 48 px"), "{show}");
    assert!(
        line(&show, "human_parts").contains("3 steps at 32 px"),
        "{show}"
    );
    assert!(line(&show, "human_parts").contains("at 32 px"), "{show}");
    // diff names what differs in provenance, not "the same".
    let (diff, _) = ok(&root, &["diff", "s:v1", "s:v3"]);
    let prov = diff.split("provenance:").nth(1).unwrap_or("");
    assert!(prov.contains("tasks.human_parts.image_size"), "{diff}");
    ok(&root, &["merge", "s:v2", "s:v3", "--tag", "s:all"]);
    let (show, _) = ok(&root, &["show", "s:all"]);
    assert!(
        line(&show, "normals").contains("2 steps at 48 px"),
        "{show}"
    );
    assert!(
        line(&show, "human_parts").contains("3 steps at 32 px"),
        "{show}"
    );
    let merged = tmp.path().join("merged");
    ok(&root, &["export", "s:all", merged.to_str().unwrap()]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(merged.join("bundle.json")).unwrap()).unwrap();
    assert_eq!(
        config["provenance"]["merged_from"].as_array().map(Vec::len),
        Some(2),
        "{config}"
    );
}

#[test]
fn add_task_refuses_a_task_spec_that_does_not_parse() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let data = tmp.path().join("data");
    synthesize(&data, 4, 32, 1).unwrap();
    let o = vmt_hub(
        &root,
        &[
            "add-task",
            "nothing:v1",
            "--task",
            "human_parts:segmentaton:7",
            "--data",
            data.to_str().unwrap(),
            "--tag",
            "x:v1",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("segmentaton"), "{err}");
}

#[test]
fn a_run_directory_that_holds_a_run_is_refused_without_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let data = tmp.path().join("data");
    synthesize(&data, 4, 32, 1).unwrap();
    let run = tmp.path().join("run");
    let first = train(&root, &data, &run, Some("32"), "r:v1");
    assert!(first.status.success());
    let before: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let again = train(&root, &data, &run, Some("32"), "r:v2");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "a second run mixed into {run:?}");
    assert!(err.contains("--resume") && err.contains("run"), "{err}");
    let after: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "the old run's checkpoints changed");
    assert!(
        run.join("metrics.jsonl").exists(),
        "the old run's metrics were removed"
    );
    let (list, _) = ok(&root, &["list"]);
    assert!(!list.contains("r:v2"), "{list}");
}

#[test]
fn a_read_command_on_a_missing_registry_names_it_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let typo = tmp.path().join("typo");
    for args in [
        &["list"][..],
        &["show", "a:v1"],
        &["verify"],
        &["log"],
        &["export", "a:v1", "/tmp/never-written"],
    ] {
        let o = vmt_hub(&typo, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains(typo.to_str().unwrap()), "{args:?}: {err}");
        assert!(!typo.exists(), "{args:?} created the registry");
    }
}
