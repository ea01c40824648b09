//! The registry commands through the real `vmt-hub` binary: bad input writes nothing,
//! a crash between blobs and index leaves a working registry, a second process gets a
//! clear lock error, and a stored bundle runs `forward` like its directory.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{fixtures, output_without_panic, vmt_hub_command};
use vmt_registry::bundle::RawTensor;
use vmt_registry::safetensors_canon::{canonical_bytes, parse};

fn run(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = vmt_hub_command();
    c.arg("--registry")
        .arg(root)
        .args(args)
        .envs(env.iter().copied());
    output_without_panic(&mut c)
}

fn ok(root: &Path, args: &[&str]) -> String {
    let o = run(root, args, &[]);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(root: &Path, args: &[&str], needles: &[&str]) {
    let o = run(root, args, &[]);
    assert!(!o.status.success(), "{args:?} should fail");
    let stderr = String::from_utf8_lossy(&o.stderr);
    for n in needles {
        assert!(
            stderr.contains(n),
            "{args:?}: error should mention {n:?}: {stderr}"
        );
    }
}

fn blob_files(root: &Path) -> usize {
    std::fs::read_dir(root.join("blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn copy_bundle(to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for f in ["bundle.json", "adapter.safetensors"] {
        std::fs::copy(fixtures().join("tiny/bundle").join(f), to.join(f)).unwrap();
    }
    to.into()
}

fn edit(bundle: &Path, f: impl FnOnce(&mut BTreeMap<String, RawTensor>)) {
    let p = bundle.join("adapter.safetensors");
    let mut t = parse(&std::fs::read(&p).unwrap(), &p).unwrap();
    f(&mut t);
    std::fs::write(&p, canonical_bytes(&t)).unwrap();
}

#[test]
fn bad_bundles_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let b = copy_bundle(&tmp.path().join("missing"));
    std::fs::remove_file(b.join("adapter.safetensors")).unwrap();
    fails(
        &root,
        &["import", b.to_str().unwrap(), "--tag", "x:1"],
        &["adapter.safetensors", "missing"],
    );

    let b = copy_bundle(&tmp.path().join("nojson"));
    std::fs::remove_file(b.join("bundle.json")).unwrap();
    fails(
        &root,
        &["import", b.to_str().unwrap(), "--tag", "x:1"],
        &["bundle.json", "missing"],
    );

    let b = copy_bundle(&tmp.path().join("f16"));
    edit(&b, |t| {
        let name = "tasks.sal.kem.stages.0.blocks.0.beta";
        t.insert(
            name.into(),
            RawTensor {
                dtype: safetensors::Dtype::F16,
                shape: vec![32],
                data: vec![0; 64],
            },
        );
    });
    fails(
        &root,
        &["import", b.to_str().unwrap(), "--tag", "x:1"],
        &["tasks.sal.kem.stages.0.blocks.0.beta", "F16", "F32"],
    );

    let b = copy_bundle(&tmp.path().join("foreign"));
    edit(&b, |t| {
        t.insert(
            "model.layer.0.weight".into(),
            RawTensor::from_f32(vec![1], &[1.0]),
        );
    });
    fails(
        &root,
        &["import", b.to_str().unwrap(), "--tag", "x:1"],
        &["model.layer.0.weight", "naming scheme"],
    );

    let b = copy_bundle(&tmp.path().join("good"));
    fails(
        &root,
        &["import", b.to_str().unwrap(), "--tag", "Bad Tag"],
        &["invalid reference"],
    );

    assert_eq!(blob_files(&root), 0, "a refused import writes no blob");
    assert!(!ok(&root, &["list"]).contains("x:1"));
    fails(
        &root,
        &["show", "nothing:here"],
        &["no bundle matches", "nothing:here"],
    );
    fails(
        &root,
        &[
            "export",
            "sha256:abcd",
            tmp.path().join("out").to_str().unwrap(),
        ],
        &["no bundle matches"],
    );
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn crash_between_blobs_and_index_leaves_a_working_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let tiny = fixtures().join("tiny/bundle");
    ok(
        &root,
        &["import", tiny.to_str().unwrap(), "--tag", "safe:v1"],
    );
    let before = blob_files(&root);

    let lite = fixtures().join("tiny-lite/bundle");
    let o = run(
        &root,
        &["import", lite.to_str().unwrap(), "--tag", "crashed:v1"],
        &[("VMT_TEST_CRASH_AFTER_BLOBS", "1")],
    );
    assert!(!o.status.success(), "the crash hook must kill the import");
    assert!(
        blob_files(&root) > before,
        "the blobs were written before the crash"
    );

    let verify = ok(&root, &["verify"]);
    assert!(
        verify.contains("ok") && verify.contains("referenced by no tagged bundle"),
        "{verify}"
    );
    let list = ok(&root, &["list"]);
    assert!(
        list.contains("safe:v1") && !list.contains("crashed:v1"),
        "{list}"
    );
    let out = tmp.path().join("export");
    ok(&root, &["export", "safe:v1", out.to_str().unwrap()]);
    assert_eq!(
        parse(
            &std::fs::read(out.join("adapter.safetensors")).unwrap(),
            Path::new("a")
        )
        .unwrap(),
        parse(
            &std::fs::read(tiny.join("adapter.safetensors")).unwrap(),
            Path::new("b")
        )
        .unwrap()
    );
    // gc removes exactly what the crashed import left behind.
    ok(&root, &["gc"]);
    assert_eq!(blob_files(&root), before);
    // And the interrupted import can simply be run again.
    ok(
        &root,
        &["import", lite.to_str().unwrap(), "--tag", "crashed:v1"],
    );
    assert!(ok(&root, &["list"]).contains("crashed:v1"));
}

#[test]
fn a_second_process_gets_a_clear_lock_error() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let held = vmt_registry::Registry::open(&root).unwrap();
    let o = run(&root, &["list"], &[("VMT_LOCK_WAIT_MS", "300")]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("another vmt-hub process holds the registry"),
        "{stderr}"
    );
    drop(held);
    ok(&root, &["list"]);
}

#[test]
fn stored_bundle_forwards_like_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let case = fixtures().join("tiny");
    ok(
        &root,
        &[
            "import",
            case.join("bundle").to_str().unwrap(),
            "--tag",
            "t:v1",
        ],
    );
    let backbone = case.join("backbone");
    let input = case.join("input.safetensors");
    let (a, b) = (
        tmp.path().join("a.safetensors"),
        tmp.path().join("b.safetensors"),
    );
    for (bundle, out) in [
        (case.join("bundle").to_str().unwrap().to_string(), &a),
        ("t:v1".to_string(), &b),
    ] {
        ok(
            &root,
            &[
                "forward",
                "--bundle",
                &bundle,
                "--backbone",
                backbone.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}
