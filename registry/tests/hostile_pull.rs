//! A pull from a hostile server ends with a clear error naming the host, in bounded
//! time and memory, and leaves the local registry as it was: endless bodies, lying
//! sizes, thousands of layers, servers that hang or drip, escape sequences in errors.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::hostile::{self, respond};
use common::micro_bundle;
use vmt_registry::oci::{Manifest, MANIFEST_MEDIA_TYPE};
use vmt_registry::reference::TagName;
use vmt_registry::remote::client::{Client, Credentials, Timeouts};
use vmt_registry::remote::transfer::{pull, Quiet};
use vmt_registry::remote::RemoteRef;
use vmt_registry::store::BundleBlobs;
use vmt_registry::{Digest, Registry};

/// A valid bundle's manifest, config and components, to be served or twisted.
struct Served {
    manifest: Manifest,
    config: Vec<u8>,
    components: Vec<(Digest, Vec<u8>)>,
}

fn served() -> Served {
    let blobs = BundleBlobs::of(&micro_bundle(&["seg", "sal"], 1, 2));
    Served {
        manifest: blobs.manifest(),
        config: blobs.config.clone(),
        components: blobs
            .components
            .iter()
            .map(|(_, b)| (Digest::of(b), b.clone()))
            .collect(),
    }
}

/// Answers the manifest and the config honestly; `layer` answers layer requests.
fn server(
    manifest: Manifest,
    config: Vec<u8>,
    layer: impl Fn(&str, &mut TcpStream) + Send + Sync + 'static,
) -> hostile::Hostile {
    let mbytes = manifest.to_canonical_bytes();
    let config_digest = manifest.config.digest.to_string();
    hostile::start(move |_, path, s| {
        if path.contains("/manifests/") {
            respond(
                s,
                200,
                &[("Content-Type", MANIFEST_MEDIA_TYPE.to_string())],
                &mbytes,
            )
        } else if path.ends_with(&config_digest) {
            respond(s, 200, &[], &config)
        } else {
            layer(path, s)
        }
    })
}

/// Serves every blob of `s` as it is (whatever the manifest says of them).
fn honest(s: Served) -> hostile::Hostile {
    let comps = s.components;
    server(s.manifest, s.config, move |path, stream| {
        let (_, bytes) = comps
            .iter()
            .find(|(d, _)| path.ends_with(&d.to_string()))
            .unwrap();
        respond(stream, 200, &[], bytes)
    })
}

fn client(h: &hostile::Hostile) -> Client {
    Client::with_timeouts(
        &h.base(),
        Credentials::default(),
        Timeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(1),
            total: Duration::from_secs(4),
            min_rate: 1024,
        },
    )
}

/// Pulls `repo:v1` into a fresh registry, expecting an error; checks the time it took
/// and that nothing was stored. Returns the error text.
fn pull_fails(h: &hostile::Hostile) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(tmp.path()).unwrap();
    let remote = RemoteRef::parse(&format!("oci://127.0.0.1:{}/evil/b:v1", h.port), false).unwrap();
    let start = Instant::now();
    let err = pull(&reg, &remote, &client(h), None, &mut Quiet)
        .unwrap_err()
        .to_string();
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}: {err}",
        start.elapsed()
    );
    assert!(reg.tag_list().unwrap().is_empty(), "{err}");
    assert!(
        reg.blob_digests().unwrap().is_empty(),
        "stored something: {err}"
    );
    assert!(!err.contains('\x1b'), "raw escape in {err:?}");
    err
}

#[test]
fn endless_layer_body_is_cut_at_its_declared_size() {
    let s = served();
    let h = server(s.manifest, s.config, |_, stream| hostile::endless(stream));
    let err = pull_fails(&h);
    assert!(
        err.contains("larger than") && err.contains("127.0.0.1"),
        "{err}"
    );
}

#[test]
fn lying_sizes_are_refused_before_any_download() {
    for size in [1_000_000_000_000u64, u64::MAX, 3] {
        let mut s = served();
        s.manifest.layers[0].size = size;
        let h = server(s.manifest, s.config, |_, _| {
            panic!("no layer may be fetched")
        });
        let err = pull_fails(&h);
        assert!(err.contains(&format!("declared as {size} bytes")), "{err}");
    }
}

#[test]
fn many_and_duplicate_layers_are_refused() {
    // 3,000 layers fit in the manifest size limit and meet the layer-count limit;
    // 10,000 do not even fit in the manifest limit.
    let first = served().manifest.layers[0].clone();
    for (n, needle) in [
        (3_000, "3000 layers"),
        (10_000, "larger than the 1048576 bytes"),
    ] {
        let mut s = served();
        s.manifest.layers = vec![first.clone(); n];
        let h = server(s.manifest, s.config, |_, _| {
            panic!("no layer may be fetched")
        });
        let err = pull_fails(&h);
        assert!(err.contains(needle), "{n} layers: {err}");
    }

    let mut s = served();
    s.manifest.layers.push(first);
    let h = server(s.manifest, s.config, |_, _| {
        panic!("no layer may be fetched")
    });
    let err = pull_fails(&h);
    assert!(err.contains("appears twice"), "{err}");
}

#[test]
fn hanging_and_dripping_servers_meet_the_deadlines() {
    let h = hostile::start(|_, _, s| hostile::hang(s));
    let err = pull_fails(&h);
    assert!(err.contains("127.0.0.1"), "{err}");

    let h = hostile::start(|_, _, s| hostile::drip(s, Duration::from_millis(300)));
    let err = pull_fails(&h);
    assert!(err.contains("127.0.0.1"), "{err}");
}

#[test]
fn escape_sequences_from_the_remote_are_not_printed_raw() {
    let h = hostile::start(|_, _, s| {
        let body =
            "{\"errors\":[{\"code\":\"DENIED\",\"message\":\"\\u001b[2J\\u001b[31mpwned\"}]}";
        respond(s, 404, &[], body.as_bytes())
    });
    let err = pull_fails(&h);
    assert!(err.contains("pwned") && err.contains("\\u{1b}"), "{err}");
}

#[test]
fn layers_that_do_not_match_the_config_are_refused() {
    // A layer of the right size whose tensors are another component's (swapped titles).
    let mut s = served();
    let (a, b) = (s.manifest.layers[1].clone(), s.manifest.layers[2].clone());
    let titles = (a.annotations.clone(), b.annotations.clone());
    s.manifest.layers[1].annotations = titles.1;
    s.manifest.layers[2].annotations = titles.0;
    let h = honest(s);
    let err = pull_fails(&h);
    assert!(err.contains("tensor") && err.contains("127.0.0.1"), "{err}");
}

#[test]
fn pull_by_digest_needs_a_local_tag_and_leaves_existing_tags_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(tmp.path()).unwrap();
    let mine = reg
        .publish(
            &micro_bundle(&["seg"], 7, 7),
            &TagName::parse("a:v1").unwrap(),
        )
        .unwrap()
        .digest;
    // A stranger's manifest that claims `a:v1` in its annotations.
    let mut s = served();
    s.manifest
        .annotations
        .insert("org.opencontainers.image.ref.name".into(), "a:v1".into());
    let d = Digest::of(&s.manifest.to_canonical_bytes());
    let h = honest(s);
    let remote =
        RemoteRef::parse(&format!("oci://127.0.0.1:{}/evil/b@{d}", h.port), false).unwrap();
    let err = pull(&reg, &remote, &client(&h), None, &mut Quiet).unwrap_err();
    assert!(err.to_string().contains("--tag"), "{err}");
    assert_eq!(reg.resolve("a:v1").unwrap(), mine);
    let tag = TagName::parse("theirs:v1").unwrap();
    pull(&reg, &remote, &client(&h), Some(&tag), &mut Quiet).unwrap();
    assert_eq!(reg.resolve("a:v1").unwrap(), mine, "a:v1 moved");
    assert_eq!(reg.resolve("theirs:v1").unwrap(), d);
    // A rebuilt index does not read tags from annotations either.
    drop(reg);
    let report = vmt_registry::store::rebuild_index(tmp.path()).unwrap();
    let tags: std::collections::BTreeMap<String, Digest> = report.tags.into_iter().collect();
    assert_eq!(tags.get("a:v1"), Some(&mine));
    assert_eq!(tags.get("theirs:v1"), Some(&d));
}
