//! The registry commands through the real `vmt-hub` binary: bad input writes nothing,
//! a crash between blobs and index leaves a working registry, a second process gets a
//! clear lock error, and a stored bundle runs `forward` like its directory.

mod common;
#[path = "../registry/tests/common/hostile.rs"]
mod hostile;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{blob_files, fails, fixtures, ok, vmt_hub_env as run};
use vmt_registry::bundle::RawTensor;
use vmt_registry::safetensors_canon::{canonical_bytes, parse};

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
    assert!(!root.exists(), "a refused import created the registry");
    fails(&root, &["list"], &["no registry here"]);
    std::fs::create_dir_all(&root).unwrap();
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
    // gc keeps what the crashed import left behind for the grace period (it may be an
    // import about to tag it), then removes exactly that.
    ok(&root, &["gc"]);
    assert!(blob_files(&root) > before, "gc deleted young blobs");
    ok(&root, &["gc", "--prune-older-than", "0s"]);
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

#[test]
fn hostile_bundles_and_names_are_refused_by_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");

    let b = copy_bundle(&tmp.path().join("nan"));
    edit(&b, |t| {
        let v = t.get_mut("tasks.sal.kem.stages.0.blocks.0.beta").unwrap();
        v.data[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    fails(
        &root,
        &["import", b.to_str().unwrap(), "--tag", "x:1"],
        &["tasks.sal.kem.stages.0.blocks.0.beta", "NaN"],
    );

    // A config whose depths would need a billion blocks: refused by field, no abort.
    let b = copy_bundle(&tmp.path().join("deep"));
    let p = b.join("bundle.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    cfg["backbone"]["depths"][0] = 1_000_000_000.into();
    std::fs::write(&p, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let o = run(&root, &["import", b.to_str().unwrap(), "--tag", "x:1"], &[]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("backbone.depths[0]"));

    // A 2 GB bundle.json (sparse) is refused without being read.
    let b = copy_bundle(&tmp.path().join("huge"));
    std::fs::File::options()
        .write(true)
        .open(b.join("bundle.json"))
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let start = std::time::Instant::now();
    fails(
        &root,
        &["import", b.to_str().unwrap(), "--tag", "x:1"],
        &["bundle.json", "larger than"],
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(10));

    let good = copy_bundle(&tmp.path().join("good"));
    for bad in ["a..b:v1", "a-:v1", "abcdef"] {
        fails(
            &root,
            &["import", good.to_str().unwrap(), "--tag", bad],
            &["invalid reference"],
        );
    }
    assert_eq!(blob_files(&root), 0, "a refused import writes no blob");
    ok(&root, &["import", good.to_str().unwrap(), "--tag", "a:v1"]);
    fails(&root, &["tag", "a:v1", "abcdef"], &["digest"]);
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let good = copy_bundle(&tmp.path().join("good"));
    ok(&root, &["import", good.to_str().unwrap(), "--tag", "a:v1"]);
    let bin = env!("CARGO_BIN_EXE_vmt-hub");
    // `true` exits at once, so every write of `show` meets a closed pipe; `head -1`
    // takes the first line and leaves.
    for (reader, first) in [("true", ""), ("head -1", "digest: sha256:")] {
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "'{bin}' --registry '{}' show a:v1 | {reader}",
                root.display()
            ))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        assert!(stderr.is_empty(), "{reader}: nothing on stderr: {stderr}");
        assert!(String::from_utf8_lossy(&o.stdout).starts_with(first));
    }
}

#[test]
fn lost_index_then_the_tools_advice_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let good = copy_bundle(&tmp.path().join("good"));
    ok(&root, &["import", good.to_str().unwrap(), "--tag", "a:v1"]);
    ok(&root, &["tag", "a:v1", "team/b:prod"]);
    let blobs = blob_files(&root);
    std::fs::remove_dir_all(root.join("index")).unwrap();
    let list = ok(&root, &["list"]);
    assert!(
        list.contains("a:v1") && list.contains("team/b:prod"),
        "{list}"
    );
    let verify = ok(&root, &["verify"]);
    assert!(
        !verify.contains("referenced by no tagged bundle"),
        "{verify}"
    );
    ok(&root, &["gc"]);
    assert_eq!(blob_files(&root), blobs, "gc deleted blobs");
    let rebuilt = ok(&root, &["verify", "--rebuild-index"]);
    assert!(rebuilt.contains("2 tag(s)"), "{rebuilt}");
    ok(
        &root,
        &[
            "export",
            "team/b:prod",
            tmp.path().join("out").to_str().unwrap(),
        ],
    );
}

#[test]
fn pull_from_an_endless_server_stays_within_a_memory_limit() {
    // The bundle the server pretends to hold; the layer body never ends.
    let bundle = vmt_registry::bundle::BundleDir::read(&fixtures().join("tiny/bundle")).unwrap();
    let blobs = vmt_registry::store::BundleBlobs::of(&bundle);
    for huge in [false, true] {
        let mut manifest = blobs.manifest();
        if huge {
            manifest.layers[0].size = 1_000_000_000_000;
        }
        let mbytes = manifest.to_canonical_bytes();
        let config = blobs.config.clone();
        let config_digest = manifest.config.digest.to_string();
        let h = hostile::start(move |_, path, s| {
            if path.contains("/manifests/") {
                hostile::respond(s, 200, &[], &mbytes)
            } else if path.ends_with(&config_digest) {
                hostile::respond(s, 200, &[], &config)
            } else {
                hostile::endless(s)
            }
        });
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("reg");
        let bin = env!("CARGO_BIN_EXE_vmt-hub");
        // 1 GB of address space: holding the body would end in an abort (exit 134).
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -v 1000000; exec '{bin}' --registry '{}' pull oci://127.0.0.1:{}/evil/b:v1 --timeout 20",
                root.display(),
                h.port
            ))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        let needle = if huge {
            "declared as 1000000000000 bytes"
        } else {
            "larger than"
        };
        assert!(stderr.contains(needle), "{stderr}");
        assert_eq!(blob_files(&root), 0);
    }
}
