//! What went in comes out, and nobody but the user decides what a name points to:
//! the tag record survives a lost index (and the `gc` that used to follow it), one
//! content has one digest under any name, and configs and weights that could only
//! hurt are refused before anything is sized from them.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{micro_bundle, micro_config};
use vmt_registry::bundle::dir::parse_config;
use vmt_registry::bundle::BundleDir;
use vmt_registry::reference::TagName;
use vmt_registry::{Digest, Error, Registry};

fn tag(s: &str) -> TagName {
    TagName::parse(s).unwrap()
}

/// Three bundles under four tags (one set by `tag`); returns tag -> digest.
fn populate(root: &Path) -> BTreeMap<String, Digest> {
    let reg = Registry::open(root).unwrap();
    let mut want = BTreeMap::new();
    let tasks: [&[&str]; 3] = [&["seg"], &["seg", "sal"], &["parts"]];
    for (i, t) in ["a:v1", "a:v2", "team/b:latest"].iter().enumerate() {
        let d = reg
            .publish(&micro_bundle(tasks[i], 1, 1), &tag(t))
            .unwrap()
            .digest;
        want.insert(t.to_string(), d);
    }
    want.insert("a:prod".into(), reg.tag("a:v2", "a:prod").unwrap().digest);
    want
}

fn blob_files(root: &Path) -> usize {
    std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .count()
}

#[test]
fn lost_index_then_gc_then_rebuild_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let want = populate(root);
    let blobs = blob_files(root);
    std::fs::remove_dir_all(root.join("index")).unwrap();
    {
        // The tool's own advice after a lost index used to delete every blob.
        let reg = Registry::open(root).unwrap();
        let listed: BTreeMap<String, Digest> = reg
            .list()
            .unwrap()
            .into_iter()
            .map(|e| (e.tag, e.digest))
            .collect();
        assert_eq!(listed, want, "list after the index was lost");
        let report = reg.verify(None).unwrap();
        assert!(report.ok() && report.unreferenced.is_empty(), "{report:?}");
        let gc = reg.gc(&vmt_registry::store::GcOptions::now()).unwrap();
        assert!(gc.removed.is_empty(), "gc deleted {:?}", gc.removed);
    }
    assert_eq!(blob_files(root), blobs);
    let report = vmt_registry::store::rebuild_index(root).unwrap();
    let rebuilt: BTreeMap<String, Digest> = report.tags.into_iter().collect();
    assert_eq!(rebuilt, want);
    let reg = Registry::open(root).unwrap();
    for d in want.values() {
        reg.load(d).unwrap();
    }
}

#[test]
fn gc_deletes_nothing_when_a_tagged_manifest_is_unreadable() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let want = populate(root);
    let blobs = blob_files(root);
    // The manifest of a:v1 is lost: what it references is unknown.
    std::fs::remove_file(root.join("blobs/sha256").join(want["a:v1"].hex())).unwrap();
    let reg = Registry::open(root).unwrap();
    let err = reg
        .gc(&vmt_registry::store::GcOptions::now())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a:v1") && err.contains("deletes nothing"),
        "{err}"
    );
    assert_eq!(blob_files(root), blobs - 1);
    // Giving the bundle up lets gc run again.
    reg.remove("a:v1").unwrap();
    reg.gc(&vmt_registry::store::GcOptions::now()).unwrap();
}

#[test]
fn one_content_has_one_digest_under_every_name() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(tmp.path()).unwrap();
    let b = micro_bundle(&["seg", "sal"], 1, 2);
    let d1 = reg.publish(&b, &tag("x:v1")).unwrap();
    let before = blob_files(tmp.path());
    let d2 = reg.publish(&b, &tag("team/y:v2")).unwrap();
    let d3 = reg.tag("x:v1", "z:prod").unwrap();
    assert_eq!((d1.digest, d2.digest), (d3.digest, d1.digest));
    assert_eq!((d2.new_blobs, d3.new_blobs), (0, 0));
    assert_eq!(blob_files(tmp.path()), before, "a new name wrote a blob");
    let mut tags = reg.tags_of(&d1.digest).unwrap();
    tags.sort();
    assert_eq!(tags, ["team/y:v2", "x:v1", "z:prod"]);
    // Removing one name leaves the others and the content.
    reg.remove("x:v1").unwrap();
    reg.gc(&vmt_registry::store::GcOptions::now()).unwrap();
    assert_eq!(reg.resolve("z:prod").unwrap(), d1.digest);
    reg.load(&d1.digest).unwrap();
}

#[test]
fn a_crash_between_the_tag_record_and_the_index_is_reconciled() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let want = populate(root);
    // Simulate an index that is behind the record: an old copy of the index.
    let old_index = tmp.path().join("old-index");
    copy_dir(&root.join("index"), &old_index);
    {
        let reg = Registry::open(root).unwrap();
        reg.publish(&micro_bundle(&["depth"], 1, 1), &tag("a:v1"))
            .unwrap();
        reg.remove("team/b:latest").unwrap();
    }
    let record_now: BTreeMap<String, Digest> = {
        let reg = Registry::open(root).unwrap();
        reg.tag_list().unwrap().into_iter().collect()
    };
    assert_ne!(record_now, want);
    std::fs::remove_dir_all(root.join("index")).unwrap();
    copy_dir(&old_index, &root.join("index"));
    let reg = Registry::open(root).unwrap();
    let now: BTreeMap<String, Digest> = reg.tag_list().unwrap().into_iter().collect();
    assert_eq!(now, record_now, "the index follows the tag record");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn absurd_configs_are_refused_by_field_before_any_allocation() {
    let base = serde_json::to_value(micro_config(&["seg"])).unwrap();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "/backbone/depths/0",
            1_000_000_000.into(),
            "backbone.depths[0]",
        ),
        (
            "/backbone/embed_dim",
            1_000_000_000.into(),
            "backbone.embed_dim",
        ),
        (
            "/backbone/num_heads/1",
            1_000_000.into(),
            "backbone.num_heads[1]",
        ),
        (
            "/backbone/window_size",
            100_000.into(),
            "backbone.window_size",
        ),
        (
            "/backbone/patch_size",
            100_000.into(),
            "backbone.patch_size",
        ),
        ("/decoder/dim", 1_000_000_000.into(), "decoder.dim"),
        ("/decoder/hidden", 1_000_000_000.into(), "decoder.hidden"),
        ("/tasks/0/channels", 1_000_000_000.into(), "channels"),
    ];
    for (pointer, value, needle) in cases {
        let mut v = base.clone();
        *v.pointer_mut(pointer).unwrap() = value;
        let err = parse_config(&serde_json::to_vec(&v).unwrap(), Path::new("bundle.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle) && err.contains("limit"),
            "{pointer}: {err}"
        );
        assert!(err.contains("bundle.json"), "{err}");
    }
    // Too many tasks.
    let mut v = base.clone();
    let task = v["tasks"][0].clone();
    v["tasks"] = serde_json::Value::Array(
        (0..500)
            .map(|i| {
                let mut t = task.clone();
                t["name"] = format!("t{i}").into();
                t
            })
            .collect(),
    );
    let err = parse_config(&serde_json::to_vec(&v).unwrap(), Path::new("bundle.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tasks (count) = 500"), "{err}");
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let good = micro_bundle(&["seg"], 1, 1);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut tensors = good.tensors.clone();
        let name = tensors.keys().nth(3).unwrap().clone();
        let t = tensors.get_mut(&name).unwrap();
        t.data[4..8].copy_from_slice(&bad.to_le_bytes());
        let err = BundleDir::new(
            good.config.clone(),
            tensors,
            Path::new("adapter.safetensors"),
        )
        .unwrap_err();
        assert!(matches!(err, Error::NonFinite { index: 1, .. }), "{err}");
        assert!(err.to_string().contains(&name), "{err}");
    }
}

#[test]
fn names_follow_the_oci_grammar_and_never_read_as_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(tmp.path()).unwrap();
    let b = micro_bundle(&["seg"], 1, 1);
    for bad in ["a..b:v1", "a-:v1", "a._b:v1", "abcdef", "sha256:abcd"] {
        assert!(TagName::parse(bad).is_err(), "{bad}");
    }
    reg.publish(&b, &tag("a:v1")).unwrap();
    for bad in ["abcdef", "a..b:v1", "0123456789"] {
        assert!(reg.tag("a:v1", bad).is_err(), "{bad}");
    }
    assert_eq!(reg.tag_list().unwrap().len(), 1);
}

#[test]
fn a_damaged_tag_file_is_reported_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    populate(tmp.path());
    let tags = tmp.path().join("tags");
    let file = std::fs::read_dir(&tags)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // A file that claims another tag than the one it is named for.
    std::fs::write(
        &file,
        format!(r#"{{"tag":"evil:v1","manifest":"{}"}}"#, Digest::of(b"x")),
    )
    .unwrap();
    let err = Registry::open(tmp.path()).err().unwrap().to_string();
    assert!(
        err.contains("tag record") && err.contains("evil:v1"),
        "{err}"
    );
}
