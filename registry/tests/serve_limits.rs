//! `serve` against a hostile client: every invalid manifest gets a 4xx and stores
//! nothing, unauthenticated bodies are refused unread, idle connections are closed,
//! upload sessions are bounded, expire and are cleaned, Content-Range is checked, and a
//! blob that rotted on disk is neither served nor vouched for, so a push repairs it.
//! Tags pushed under other names survive an index rebuild.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::micro_bundle;
use ureq2 as ureq;
use vmt_registry::bundle::RawTensor;
use vmt_registry::oci::{Manifest, MANIFEST_MEDIA_TYPE};
use vmt_registry::reference::TagName;
use vmt_registry::remote::client::{Client, Credentials};
use vmt_registry::remote::server::{serve_until, ServeOptions};
use vmt_registry::remote::transfer::{pull, push, Quiet};
use vmt_registry::remote::RemoteRef;
use vmt_registry::safetensors_canon::canonical_bytes;
use vmt_registry::store::BundleBlobs;
use vmt_registry::{Digest, Registry};

/// A `serve` on its own runtime; stopped when dropped.
struct Serve {
    addr: SocketAddr,
    root: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Serve {
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn start(root: &Path, tune: impl FnOnce(&mut ServeOptions)) -> Serve {
    let mut opts = ServeOptions::new("127.0.0.1:0".parse().unwrap());
    tune(&mut opts);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (tx, rx) = std::sync::mpsc::channel();
    let r = root.to_path_buf();
    let thread = std::thread::spawn(move || {
        let reg = Registry::open(&r).unwrap();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(serve_until(reg, opts, |a| tx.send(a).unwrap(), async {
                let _ = stopped.await;
            }))
            .unwrap();
    });
    let addr = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    Serve {
        addr,
        root: root.into(),
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// A registry at `root` holding one small bundle as `m:v1`.
fn local_with_m_v1(root: &Path) -> Registry {
    let local = Registry::open(root).unwrap();
    local
        .publish(
            &micro_bundle(&["seg"], 1, 1),
            &TagName::parse("m:v1").unwrap(),
        )
        .unwrap();
    local
}

fn status(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{e}"),
    }
}

fn upload(base: &str, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    let (code, body) =
        status(ureq::post(&format!("{base}/v2/x/blobs/uploads/?digest={d}")).send_bytes(bytes));
    assert_eq!(code, 201, "{body}");
    d
}

fn put_manifest(base: &str, m: &[u8]) -> (u16, String) {
    status(
        ureq::put(&format!("{base}/v2/x/manifests/v1"))
            .set("Content-Type", MANIFEST_MEDIA_TYPE)
            .send_bytes(m),
    )
}

#[test]
fn every_invalid_manifest_gets_a_4xx_and_nothing_is_tagged() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path(), |_| {});
    let base = s.base();
    let bundle = micro_bundle(&["seg", "sal"], 1, 2);
    let blobs = BundleBlobs::of(&bundle);
    upload(&base, &blobs.config);
    for (_, b) in &blobs.components {
        upload(&base, b);
    }
    let good = blobs.manifest();
    // A component with a wrong shape, one with NaN, one not safetensors at all.
    let mut shapes = bundle.component_tensors("task/seg");
    let (name, t) = shapes.iter_mut().find(|(_, t)| t.shape.len() == 2).unwrap();
    let name = name.clone();
    *t = RawTensor::from_f32(vec![t.numel()], &t.to_f32());
    let bad_shape = canonical_bytes(&shapes);
    let mut nan = bundle.component_tensors("task/seg");
    nan.get_mut(&name).unwrap().data[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let nan = canonical_bytes(&nan);
    let junk = vec![7u8; good.layers[1].size as usize];
    let mut variants: Vec<(&str, Manifest)> = Vec::new();
    let mut m = good.clone();
    m.layers.pop();
    variants.push(("a component missing", m));
    for (what, bytes) in [
        ("wrong shape", &bad_shape),
        ("NaN", &nan),
        ("not safetensors", &junk),
    ] {
        let d = upload(&base, bytes);
        let mut m = good.clone();
        m.layers[1].digest = d;
        m.layers[1].size = bytes.len() as u64;
        variants.push((what, m));
    }
    let mut m = good.clone();
    let (a, b) = (
        m.layers[1].annotations.clone(),
        m.layers[2].annotations.clone(),
    );
    m.layers[1].annotations = b;
    m.layers[2].annotations = a;
    variants.push(("swapped titles", m));
    let mut m = good.clone();
    m.layers = vec![m.layers[0].clone(); 3000];
    variants.push(("3000 layers", m));
    let mut m = good.clone();
    m.layers[0].size += 1;
    variants.push(("a lying size", m));
    let mut m = good.clone();
    m.layers.push(m.layers[1].clone());
    variants.push(("a duplicate layer", m));
    for (what, m) in &variants {
        let (code, body) = put_manifest(&base, &m.to_canonical_bytes());
        assert!((400..500).contains(&code), "{what}: {code} {body}");
        assert!(
            !body.contains(&*tmp.path().to_string_lossy()),
            "{what}: {body}"
        );
    }
    let (code, _) = status(ureq::get(&format!("{base}/v2/x/tags/list")).call());
    assert_eq!(code, 404, "no invalid manifest was tagged");
    let (code, body) = put_manifest(&base, &good.to_canonical_bytes());
    assert_eq!(code, 201, "the valid one is stored: {body}");
}

#[test]
fn unauthenticated_bodies_are_refused_unread() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path(), |o| o.token = Some("secret".into()));
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Announce 200 MB, send 1 KiB: the answer must come without the rest.
    c.write_all(
        b"PATCH /v2/x/blobs/uploads/abc HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n",
    )
    .unwrap();
    c.write_all(&[0u8; 1024]).unwrap();
    let mut head = [0u8; 64];
    let n = c
        .read(&mut head)
        .expect("an answer before the body was sent");
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
}

#[test]
fn idle_connections_are_closed_and_the_cap_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path(), |o| {
        o.header_timeout = Duration::from_millis(500);
        o.max_connections = 8;
    });
    // More idle sockets than the cap: each is closed, and a real client gets through.
    let idle: Vec<TcpStream> = (0..12)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    let start = Instant::now();
    let (code, _) = status(
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build()
            .get(&format!("{}/v2/", s.base()))
            .call(),
    );
    assert_eq!(code, 200);
    assert!(start.elapsed() < Duration::from_secs(8));
    for mut c in idle.into_iter().take(8) {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 16];
        match c.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("an idle connection stayed open: {other:?}"),
        }
    }
    // A keep-alive connection that goes quiet after a request is closed too.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    let _ = c.read_to_end(&mut all);
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
}

fn uploads_on_disk(root: &Path) -> usize {
    std::fs::read_dir(root.join("tmp/uploads"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn new_session(base: &str) -> (u16, String) {
    match ureq::post(&format!("{base}/v2/x/blobs/uploads/")).send_bytes(&[]) {
        Ok(r) => (r.status(), r.header("Location").unwrap().to_string()),
        Err(ureq::Error::Status(c, _)) => (c, String::new()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn upload_sessions_are_bounded_checked_expire_and_are_cleaned() {
    let tmp = tempfile::tempdir().unwrap();
    // Left by an earlier run: removed at start.
    std::fs::create_dir_all(tmp.path().join("tmp/uploads")).unwrap();
    std::fs::write(tmp.path().join("tmp/uploads/stale"), b"old").unwrap();
    let s = start(tmp.path(), |o| {
        o.max_uploads = 3;
        o.upload_ttl = Duration::from_millis(700);
        o.max_blob = 1000;
    });
    let base = s.base();
    assert_eq!(
        uploads_on_disk(&s.root),
        0,
        "stale sessions removed at start"
    );
    let sessions: Vec<String> = (0..3)
        .map(|_| {
            let (code, loc) = new_session(&base);
            assert_eq!(code, 202);
            loc
        })
        .collect();
    assert_eq!(new_session(&base).0, 429, "a fourth session is refused");
    let url = format!("{base}{}", sessions[0]);
    let patch = |range: &str, body: &[u8]| {
        status(
            ureq::request("PATCH", &url)
                .set("Content-Range", range)
                .send_bytes(body),
        )
        .0
    };
    assert_eq!(patch("0-9", &[1; 10]), 202);
    assert_eq!(patch("5-14", &[1; 10]), 416, "must continue at 10");
    assert_eq!(patch("10-29", &[1; 10]), 416, "announced 20, sent 10");
    assert_eq!(
        patch("10-19", &[1; 10]),
        202,
        "the refused chunks left no trace"
    );
    assert_eq!(
        patch("20-1019", &[1; 1000]),
        413,
        "the session would pass max_blob"
    );
    // Abandoned sessions expire.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(uploads_on_disk(&s.root), 0, "expired sessions deleted");
    let (code, _) = status(ureq::get(&url).call());
    assert_eq!(code, 404);
    assert_eq!(new_session(&base).0, 202, "room again");
    drop(s);
    // gc removes what a stopped server left.
    std::fs::write(tmp.path().join("tmp/uploads/left"), b"x").unwrap();
    let reg = Registry::open(tmp.path()).unwrap();
    assert_eq!(uploads_on_disk(tmp.path()), 0, "open cleans them as well");
    std::fs::write(tmp.path().join("tmp/uploads/left"), b"x").unwrap();
    assert_eq!(
        reg.gc(&vmt_registry::store::GcOptions::now())
            .unwrap()
            .uploads_removed,
        1
    );
}

#[test]
fn a_rotten_blob_is_not_served_and_a_push_repairs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tmp.path().join("server"), |_| {});
    let local = local_with_m_v1(&tmp.path().join("local"));
    let remote = RemoteRef::parse(&format!("oci://{}/m:v1", s.addr), false).unwrap();
    let client = || Client::new(&s.base(), Credentials::default());
    push(&local, "m:v1", &remote, &client(), &mut Quiet).unwrap();
    // Flip a byte of the largest blob on the server.
    let blob_dir = s.root.join("blobs/sha256");
    let (path, hex) = std::fs::read_dir(&blob_dir)
        .unwrap()
        .map(|e| e.unwrap())
        .max_by_key(|e| e.metadata().unwrap().len())
        .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let url = format!("{}/v2/m/blobs/sha256:{hex}", s.base());
    assert_eq!(
        status(ureq::head(&url).call()).0,
        404,
        "HEAD vouches for a rotten blob"
    );
    let (code, body) = status(ureq::get(&url).call());
    assert_eq!(code, 404);
    assert!(!body.contains(&*tmp.path().to_string_lossy()), "{body}");
    let report = push(&local, "m:v1", &remote, &client(), &mut Quiet).unwrap();
    assert_eq!(report.blobs_sent, 1, "the push re-sends the rotten blob");
    assert_eq!(status(ureq::head(&url).call()).0, 200);
    let other = Registry::open(&tmp.path().join("other")).unwrap();
    pull(&other, &remote, &client(), None, &mut Quiet).unwrap();
}

#[test]
fn tags_pushed_under_other_names_survive_an_index_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let server_root = tmp.path().join("server");
    let local = Registry::open(&tmp.path().join("local")).unwrap();
    let b = micro_bundle(&["seg"], 1, 1);
    let d = local
        .publish(&b, &TagName::parse("mine:v1").unwrap())
        .unwrap()
        .digest;
    {
        let s = start(&server_root, |_| {});
        let client = Client::new(&s.base(), Credentials::default());
        for name in ["team/a:v1", "team/b:prod"] {
            let remote = RemoteRef::parse(&format!("oci://{}/{name}", s.addr), false).unwrap();
            push(&local, "mine:v1", &remote, &client, &mut Quiet).unwrap();
        }
        // Pull under a local name of our choosing.
        let remote = RemoteRef::parse(&format!("oci://{}/team/a:v1", s.addr), false).unwrap();
        pull(
            &local,
            &remote,
            &client,
            Some(&TagName::parse("pulled:x").unwrap()),
            &mut Quiet,
        )
        .unwrap();
    }
    drop(local);
    for root in [server_root, tmp.path().join("local")] {
        std::fs::remove_dir_all(root.join("index")).ok();
        let report = vmt_registry::store::rebuild_index(&root).unwrap();
        let tags: BTreeMap<String, Digest> = report.tags.into_iter().collect();
        assert!(tags.values().all(|t| *t == d), "{tags:?}");
        let names: Vec<&str> = tags.keys().map(String::as_str).collect();
        if root.ends_with("server") {
            assert_eq!(names, ["team/a:v1", "team/b:prod"]);
        } else {
            assert_eq!(names, ["mine:v1", "pulled:x"]);
        }
    }
}

#[test]
fn catalog_and_tags_list_paginate_with_link_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let local = local_with_m_v1(&tmp.path().join("local"));
    let s = start(&tmp.path().join("server"), |_| {});
    let client = Client::new(&s.base(), Credentials::default());
    let repos = ["a/x", "b", "c/y/z", "d", "e"];
    let tags = ["t1", "t2", "t3", "t4", "t5", "t6", "t7"];
    for r in repos {
        for t in &tags[..2] {
            let remote = RemoteRef::parse(&format!("oci://{}/{r}:{t}", s.addr), false).unwrap();
            push(&local, "m:v1", &remote, &client, &mut Quiet).unwrap();
        }
    }
    for t in &tags[2..] {
        let remote = RemoteRef::parse(&format!("oci://{}/b:{t}", s.addr), false).unwrap();
        push(&local, "m:v1", &remote, &client, &mut Quiet).unwrap();
    }
    // Walks the pages by following Link headers; every item exactly once, in order.
    let walk = |first: &str, key: &str| -> (Vec<String>, usize) {
        let mut url = format!("{}{first}", s.base());
        let (mut items, mut pages) = (Vec::new(), 0);
        loop {
            let r = ureq::get(&url).call().unwrap();
            let link = r.header("Link").map(String::from);
            let v: serde_json::Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
            let page: Vec<String> = v[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect();
            assert!(page.len() <= 2, "{page:?}");
            items.extend(page);
            pages += 1;
            match link {
                None => return (items, pages),
                Some(l) => {
                    assert!(l.ends_with("; rel=\"next\""), "{l}");
                    let target = l.trim_start_matches('<').split('>').next().unwrap();
                    url = format!("{}{target}", s.base());
                }
            }
        }
    };
    let (got, pages) = walk("/v2/_catalog?n=2", "repositories");
    assert_eq!(got, repos);
    assert_eq!(pages, 3);
    let (got, pages) = walk("/v2/b/tags/list?n=2", "tags");
    assert_eq!(got, tags);
    assert_eq!(pages, 4);
    // Without n: everything at once, no Link.
    let r = ureq::get(&format!("{}/v2/b/tags/list", s.base()))
        .call()
        .unwrap();
    assert!(r.header("Link").is_none());
    let r = ureq::get(&format!("{}/v2/_catalog?last=c/y/z", s.base()))
        .call()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["d", "e"]));
}

#[test]
fn a_manifest_without_artifact_type_is_stored_and_pulls() {
    // What oras-py pushes: no artifactType, the vmt config media type on the config.
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tmp.path().join("server"), |_| {});
    let base = s.base();
    let blobs = BundleBlobs::of(&micro_bundle(&["seg"], 1, 1));
    upload(&base, &blobs.config);
    for (_, b) in &blobs.components {
        upload(&base, b);
    }
    let mut m = blobs.manifest();
    m.artifact_type = None;
    let bytes = m.to_canonical_bytes();
    assert!(!String::from_utf8_lossy(&bytes).contains("artifactType"));
    let (code, body) = put_manifest(&base, &bytes);
    assert_eq!(code, 201, "{body}");
    let local = Registry::open(&tmp.path().join("local")).unwrap();
    let remote = RemoteRef::parse(&format!("oci://{}/x:v1", s.addr), false).unwrap();
    let client = Client::new(&base, Credentials::default());
    pull(&local, &remote, &client, None, &mut Quiet).unwrap();
    assert_eq!(local.resolve("x:v1").unwrap(), Digest::of(&bytes));
    local.load(&Digest::of(&bytes)).unwrap();
}

#[test]
fn a_refused_chunk_leaves_the_session_as_it_was() {
    // A chunk over --max-body gets 413; the session keeps its old end, and the right
    // chunks then finish the blob with its digest (repeated: the refused bytes were
    // once written by a background write that could land after the truncate).
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path(), |o| o.max_body = 64 << 10);
    let base = s.base();
    for round in 0..20u8 {
        let blob: Vec<u8> = (0..20u8).map(|i| i.wrapping_add(round)).collect();
        let (code, loc) = new_session(&base);
        assert_eq!(code, 202);
        let url = format!("{base}{loc}");
        let patch = |range: &str, body: &[u8]| {
            status(
                ureq::request("PATCH", &url)
                    .set("Content-Range", range)
                    .send_bytes(body),
            )
            .0
        };
        assert_eq!(patch("0-9", &blob[..10]), 202);
        let huge = vec![7u8; 256 << 10];
        // 413, or the connection closed under a client still sending the body (the
        // server answers and closes as soon as the limit is passed): refused either way.
        let over = ureq::request("PATCH", &url)
            .set("Content-Range", &format!("10-{}", 10 + huge.len() - 1))
            .send_bytes(&huge);
        match over {
            Err(ureq::Error::Status(413, _)) | Err(ureq::Error::Transport(_)) => {}
            Ok(r) => panic!("round {round}: an oversized chunk got {}", r.status()),
            Err(e) => panic!("round {round}: {e}"),
        }
        let r = ureq::get(&url).call().unwrap();
        assert_eq!(r.header("Range"), Some("0-9"), "round {round}");
        assert_eq!(patch("10-19", &blob[10..]), 202, "round {round}");
        let d = Digest::of(&blob);
        let (code, body) = status(ureq::put(&format!("{url}?digest={d}")).send_bytes(&[]));
        assert_eq!(code, 201, "round {round}: {body}");
    }
}

#[test]
fn an_empty_page_has_no_link() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tmp.path().join("server"), |_| {});
    let local = local_with_m_v1(&tmp.path().join("local"));
    let remote = RemoteRef::parse(&format!("oci://{}/m:v1", s.addr), false).unwrap();
    push(
        &local,
        "m:v1",
        &remote,
        &Client::new(&s.base(), Credentials::default()),
        &mut Quiet,
    )
    .unwrap();
    for (path, key) in [
        ("/v2/_catalog?n=0", "repositories"),
        ("/v2/m/tags/list?n=0", "tags"),
    ] {
        let r = ureq::get(&format!("{}{path}", s.base())).call().unwrap();
        assert!(r.header("Link").is_none(), "{path}: a Link to itself loops");
        let v: serde_json::Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
        assert_eq!(v[key], serde_json::json!([]), "{path}");
    }
}

/// Restarts `serve` (same address, same registry) at the `at`-th progress step.
struct RestartAt {
    serve: Option<Serve>,
    at: usize,
    calls: usize,
    restarted: bool,
}

impl vmt_registry::remote::transfer::Progress for RestartAt {
    fn advance(&mut self, _bytes: u64) {
        self.calls += 1;
        if self.calls == self.at {
            let old = self.serve.take().unwrap();
            let (root, addr) = (old.root.clone(), old.addr);
            drop(old);
            self.serve = Some(start(&root, |o| {
                o.addr = addr;
                o.header_timeout = Duration::from_millis(300);
            }));
            self.restarted = true;
        }
    }
}

#[test]
fn a_push_survives_a_serve_restart_between_chunks_and_the_final_put() {
    // The first blob goes up in two PATCH chunks; the server restarts after the second,
    // so the final PUT meets a session it no longer knows (404 BLOB_UPLOAD_UNKNOWN):
    // the client starts that blob again, and the push completes.
    let tmp = tempfile::tempdir().unwrap();
    let server_root = tmp.path().join("server");
    let s = start(&server_root, |o| {
        o.header_timeout = Duration::from_millis(300)
    });
    let local = local_with_m_v1(&tmp.path().join("local"));
    let d = local.resolve("m:v1").unwrap();
    let first = local.manifest(&d).unwrap().blobs().next().unwrap().size as usize;
    let remote = RemoteRef::parse(&format!("oci://{}/m:v1", s.addr), false).unwrap();
    let mut client = Client::new(&s.base(), Credentials::default());
    client.chunk_size = first.div_ceil(2);
    let mut progress = RestartAt {
        serve: Some(s),
        at: 2,
        calls: 0,
        restarted: false,
    };
    let report = push(&local, "m:v1", &remote, &client, &mut progress).unwrap();
    assert!(progress.restarted);
    assert_eq!(report.manifest, Some(d));
    drop(progress);
    let reg = Registry::open(&server_root).unwrap();
    assert_eq!(reg.resolve("m:v1").unwrap(), d);
    assert!(reg.verify(None).unwrap().ok());
}

/// `curl ARGS URL`: (HTTP status, headers, body).
fn curl(args: &[&str], url: &str) -> (u16, String, Vec<u8>) {
    let o = std::process::Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/stderr"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs");
    let head = String::from_utf8_lossy(&o.stdout).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, o.stderr)
}

#[test]
fn serve_auth_that_standard_clients_follow_json_base_and_blob_ranges() {
    // curl is part of every Debian image; it stands in for what skopeo, oras and docker
    // send with a user and password: basic auth.
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("curl is needed by this test");
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tmp.path().join("server"), |o| {
        o.token = Some("s3cret".into())
    });
    let base = s.base();
    // Without credentials: 401 with a Basic challenge a client can answer.
    let (code, head, _) = curl(&[], &format!("{base}/v2/"));
    assert_eq!(code, 401);
    assert!(head.contains("Basic realm=\"vmt-hub\""), "{head}");
    // The token as the password of basic auth (any user), or as a bearer token.
    let (code, head, body) = curl(&["-u", "anyone:s3cret"], &format!("{base}/v2/"));
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    assert_eq!(body, b"{}");
    let (code, _, _) = curl(
        &["-H", "Authorization: Bearer s3cret"],
        &format!("{base}/v2/"),
    );
    assert_eq!(code, 200);
    let (code, _, _) = curl(&["-u", "anyone:wrong"], &format!("{base}/v2/"));
    assert_eq!(code, 401);
    // A push with the token through our client (basic, user + password).
    let local = local_with_m_v1(&tmp.path().join("local"));
    let remote = RemoteRef::parse(&format!("oci://{}/m:v1", s.addr), false).unwrap();
    let creds = Credentials {
        user: Some("me".into()),
        password: Some("s3cret".into()),
        token: None,
        source: None,
    };
    push(
        &local,
        "m:v1",
        &remote,
        &Client::new(&base, creds),
        &mut Quiet,
    )
    .unwrap();
    // Range on a blob GET: 206 with exactly those bytes; outside the blob: 416.
    let d = local.resolve("m:v1").unwrap();
    let layer = local.manifest(&d).unwrap().layers[0].clone();
    let whole = std::fs::read(local.blob_path(&layer.digest)).unwrap();
    let url = format!("{base}/v2/m/blobs/{}", layer.digest);
    let (code, head, body) = curl(&["-u", "x:s3cret", "-H", "Range: bytes=10-99"], &url);
    assert_eq!(code, 206, "{head}");
    assert_eq!(body, &whole[10..100]);
    assert!(
        head.contains(&format!("bytes 10-99/{}", whole.len())),
        "{head}"
    );
    let (code, _, body) = curl(&["-u", "x:s3cret", "-H", "Range: bytes=-5"], &url);
    assert_eq!((code, body.as_slice()), (206, &whole[whole.len() - 5..]));
    let (code, _, _) = curl(
        &[
            "-u",
            "x:s3cret",
            "-H",
            &format!("Range: bytes={}-", whole.len()),
        ],
        &url,
    );
    assert_eq!(code, 416);
    let (code, _, body) = curl(&["-u", "x:s3cret"], &url);
    assert_eq!((code, body), (200, whole));
}

/// serve's error codes are `ErrorCode` values on both sides: the client gets the code of
/// serve's answer as a variant, not as text.
#[test]
fn error_codes_reach_the_client_as_variants() {
    use vmt_registry::oci::ErrorCode;
    let tmp = tempfile::tempdir().unwrap();
    let serve = start(&tmp.path().join("remote"), |_| {});
    let local = Registry::open(&tmp.path().join("local")).unwrap();
    let missing = RemoteRef::parse(&format!("oci://{}/m:nope", serve.addr), false).unwrap();
    let client = Client::new(&missing.base, Credentials::default());
    match pull(&local, &missing, &client, None, &mut Quiet) {
        Err(vmt_registry::Error::Remote {
            status: Some(404),
            code: Some(ErrorCode::ManifestUnknown),
            ..
        }) => {}
        other => panic!("expected MANIFEST_UNKNOWN, got {:?}", other.err()),
    }
    let bad = client.send("GET", "/v2/m/blobs/sha256:zz", &[], None, "a blob");
    assert!(
        matches!(
            bad,
            Err(vmt_registry::Error::Remote {
                status: Some(400),
                code: Some(ErrorCode::DigestInvalid),
                ..
            })
        ),
        "{:?}",
        bad.err()
    );
}

/// A blob belongs to the repositories it was uploaded or mounted to: 404 elsewhere
/// until mounted from a repository that has it; a manifest may reference only its own
/// repository's blobs; a mount from a repository without the blob is a plain upload.
#[test]
fn blobs_are_scoped_to_their_repository_until_mounted() {
    let tmp = tempfile::tempdir().unwrap();
    let serve = start(&tmp.path().join("remote"), |_| {});
    let base = serve.base();
    let bytes = b"a blob pushed to repository a only";
    let d = Digest::of(bytes);
    let (code, body) =
        status(ureq::post(&format!("{base}/v2/a/blobs/uploads/?digest={d}")).send_bytes(bytes));
    assert_eq!(code, 201, "{body}");
    let head = |repo: &str| status(ureq::head(&format!("{base}/v2/{repo}/blobs/{d}")).call()).0;
    assert_eq!(head("a"), 200);
    assert_eq!(head("b"), 404, "another repository cannot read it");
    // A manifest in b naming it is refused.
    let (code, body) = status(
        ureq::put(&format!("{base}/v2/b/manifests/v1"))
            .set("Content-Type", MANIFEST_MEDIA_TYPE)
            .send_bytes(micro_manifest_naming(&d, bytes.len()).as_bytes()),
    );
    assert!(
        code == 400 && body.contains("MANIFEST_BLOB_UNKNOWN"),
        "{code} {body}"
    );
    // A mount from a repository without it: a plain upload session, still 404.
    let (code, _) =
        status(ureq::post(&format!("{base}/v2/c/blobs/uploads/?mount={d}&from=b")).send_bytes(&[]));
    assert_eq!(code, 202);
    assert_eq!(head("c"), 404);
    // Mounted from a: b reads it.
    let (code, _) =
        status(ureq::post(&format!("{base}/v2/b/blobs/uploads/?mount={d}&from=a")).send_bytes(&[]));
    assert_eq!(code, 201);
    assert_eq!(head("b"), 200);
    let (code, _) = status(
        ureq::post(&format!(
            "{base}/v2/team/x/blobs/uploads/?mount={d}&from=b%2F..%2Fa"
        ))
        .send_bytes(&[]),
    );
    assert_eq!(code, 202, "an invalid `from` is no mount");
    let (code, _) = status(
        ureq::post(&format!(
            "{base}/v2/team/y/blobs/uploads/?mount={d}&from=team%2Fz"
        ))
        .send_bytes(&[]),
    );
    assert_eq!(code, 202, "team/z does not have it");
    let (code, _) = status(
        ureq::post(&format!("{base}/v2/team/z/blobs/uploads/?mount={d}&from=b")).send_bytes(&[]),
    );
    assert_eq!(code, 201);
    let (code, _) = status(
        ureq::post(&format!(
            "{base}/v2/team/y/blobs/uploads/?mount={d}&from=team%2Fz"
        ))
        .send_bytes(&[]),
    );
    assert_eq!(code, 201, "from= decoded as Go clients escape it");
    assert_eq!(head("team/y"), 200);
}

/// A manifest (not a valid bundle; it is refused before validation when a blob is not in
/// the repository) naming one layer.
fn micro_manifest_naming(d: &Digest, size: usize) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_MEDIA_TYPE}","artifactType":"application/vnd.vmt.bundle.v1+json","config":{{"mediaType":"application/vnd.vmt.bundle.config.v1+json","digest":"{d}","size":{size}}},"layers":[]}}"#
    )
}

/// Uploads `bytes` to repository `repo`.
fn upload_to(base: &str, repo: &str, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    let url = format!("{base}/v2/{repo}/blobs/uploads/?digest={d}");
    let (code, body) = status(ureq::post(&url).send_bytes(bytes));
    assert_eq!(code, 201, "{body}");
    d
}

/// An artifact manifest: a config, one layer, and a subject if given.
fn artifact(
    base: &str,
    artifact_type: Option<&str>,
    layer: (&str, &[u8]),
    subject: Option<(Digest, u64)>,
) -> Vec<u8> {
    let cfg = upload_to(base, "x", b"{}");
    let l = upload_to(base, "x", layer.1);
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": 2},
        "layers": [{"mediaType": layer.0, "digest": l, "size": layer.1.len(),
                    "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="}}],
        "annotations": {"org.opencontainers.image.created": "2026-11-29T00:00:00Z"},
    });
    if let Some(t) = artifact_type {
        m["artifactType"] = t.into();
    }
    if let Some((d, size)) = subject {
        m["subject"] =
            serde_json::json!({"mediaType": MANIFEST_MEDIA_TYPE, "digest": d, "size": size});
    }
    serde_json::to_vec(&m).unwrap()
}

/// The OCI 1.1 referrers API: a manifest with a `subject` pushed to `serve` gets
/// `OCI-Subject` and is listed by its subject's referrers (filtered by artifactType, per
/// repository, never 404); cosign's tag scheme (`sha256-<hex>.sig`, no subject) is read
/// back by tag (without a subject it is not listed); what names no bundle of the repository is refused. Both
/// live while their bundle lives: `gc` keeps them, and frees them once it is removed.
#[test]
fn artifacts_attached_to_a_bundle_are_listed_by_the_referrers_api() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("server");
    let s = start(&root, |_| {});
    let base = s.base();
    let blobs = BundleBlobs::of(&micro_bundle(&["seg"], 1, 1));
    upload(&base, &blobs.config);
    for (_, b) in &blobs.components {
        upload(&base, b);
    }
    let bundle = blobs.manifest().to_canonical_bytes();
    let (code, body) = put_manifest(&base, &bundle);
    assert_eq!(code, 201, "{body}");
    let b = Digest::of(&bundle);
    let referrers = |repo: &str, query: &str| {
        let r = ureq::get(&format!("{base}/v2/{repo}/referrers/{b}{query}"))
            .call()
            .unwrap();
        assert_eq!(r.content_type(), "application/vnd.oci.image.index.v1+json");
        let filtered = r.header("OCI-Filters-Applied").map(String::from);
        let v: serde_json::Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
        (v["manifests"].as_array().unwrap().clone(), filtered)
    };
    assert!(
        referrers("x", "").0.is_empty(),
        "no referrers yet: an empty index"
    );

    // An SBOM with a subject, pushed by digest.
    let sbom = artifact(
        &base,
        Some("application/spdx+json"),
        ("application/spdx+json", b"{\"spdxVersion\":\"SPDX-2.3\"}"),
        Some((b, bundle.len() as u64)),
    );
    let sbom_d = Digest::of(&sbom);
    let r = ureq::put(&format!("{base}/v2/x/manifests/{sbom_d}"))
        .set("Content-Type", MANIFEST_MEDIA_TYPE)
        .send_bytes(&sbom)
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.header("OCI-Subject"), Some(b.to_string().as_str()));
    let (listed, filtered) = referrers("x", "");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["digest"], sbom_d.to_string());
    assert_eq!(listed[0]["size"], sbom.len());
    assert_eq!(listed[0]["artifactType"], "application/spdx+json");
    assert_eq!(
        listed[0]["annotations"]["org.opencontainers.image.created"],
        "2026-11-29T00:00:00Z"
    );
    assert_eq!(filtered, None);
    let (listed, filtered) = referrers("x", "?artifactType=application%2Fspdx%2Bjson");
    assert_eq!(
        (listed.len(), filtered.as_deref()),
        (1, Some("artifactType"))
    );
    assert!(referrers("x", "?artifactType=text/plain").0.is_empty());
    assert!(referrers("y", "").0.is_empty(), "attached in x only");
    let got = ureq::get(&format!("{base}/v2/x/manifests/{sbom_d}"))
        .call()
        .unwrap();
    assert_eq!(got.content_type(), MANIFEST_MEDIA_TYPE);
    let mut bytes = Vec::new();
    got.into_reader().read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes, sbom);

    // A cosign signature by its tag scheme: no subject, the tag names the bundle.
    let sig = artifact(
        &base,
        None,
        (
            "application/vnd.dev.cosign.simplesigning.v1+json",
            b"{\"critical\":{}}",
        ),
        None,
    );
    let sig_tag = format!("sha256-{}.sig", b.hex());
    let r = ureq::put(&format!("{base}/v2/x/manifests/{sig_tag}"))
        .set("Content-Type", MANIFEST_MEDIA_TYPE)
        .send_bytes(&sig)
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.header("OCI-Subject"), None, "no subject, no OCI-Subject");
    let got = ureq::get(&format!("{base}/v2/x/manifests/{sig_tag}"))
        .call()
        .unwrap();
    assert_eq!(
        got.header("Docker-Content-Digest"),
        Some(Digest::of(&sig).to_string().as_str())
    );
    assert_eq!(
        referrers("x", "").0.len(),
        1,
        "a manifest without subject is read by its tag, not listed as a referrer"
    );
    // With a subject and no artifactType: the config's media type is its type.
    let untyped = artifact(
        &base,
        None,
        ("application/vnd.in-toto+json", b"{\"_type\":\"x\"}"),
        Some((b, bundle.len() as u64)),
    );
    let r = ureq::put(&format!("{base}/v2/x/manifests/{}", Digest::of(&untyped)))
        .set("Content-Type", MANIFEST_MEDIA_TYPE)
        .send_bytes(&untyped)
        .unwrap();
    assert_eq!(r.status(), 201);
    let (listed, _) = referrers(
        "x",
        "?artifactType=application/vnd.oci.image.config.v1%2Bjson",
    );
    assert_eq!(
        listed.len(),
        1,
        "without artifactType, the config's media type is the type"
    );

    // What names no bundle of x is refused; nothing is attached.
    let orphan = artifact(
        &base,
        Some("text/plain"),
        ("text/plain", b"x"),
        Some((Digest::of(b"none"), 1)),
    );
    let (code, body) = status(
        ureq::put(&format!("{base}/v2/x/manifests/{}", Digest::of(&orphan)))
            .set("Content-Type", MANIFEST_MEDIA_TYPE)
            .send_bytes(&orphan),
    );
    assert!(
        code == 404 && body.contains("MANIFEST_UNKNOWN"),
        "{code} {body}"
    );
    let plain = artifact(&base, Some("text/plain"), ("text/plain", b"y"), None);
    let (code, body) = status(
        ureq::put(&format!("{base}/v2/x/manifests/latest"))
            .set("Content-Type", MANIFEST_MEDIA_TYPE)
            .send_bytes(&plain),
    );
    assert!(
        code == 400 && body.contains("MANIFEST_INVALID"),
        "{code} {body}"
    );
    assert_eq!(referrers("x", "").0.len(), 2);
    drop(s);

    // gc keeps them while the bundle lives, and frees them with it.
    let reg = Registry::open(&root).unwrap();
    let attached = [sbom_d, Digest::of(&sig), Digest::of(&untyped)];
    let report = reg.gc(&vmt_registry::store::GcOptions::now()).unwrap();
    for d in &attached {
        assert!(report.kept.iter().any(|e| e.digest == *d), "{d} kept");
        assert!(reg.has_blob(d));
    }
    reg.remove("x:v1").unwrap();
    let report = reg.gc(&vmt_registry::store::GcOptions::now()).unwrap();
    for d in &attached {
        assert!(report.removed.iter().any(|e| e.digest == *d), "{d} freed");
        assert!(!reg.has_blob(d));
    }
    assert!(reg.referrers(&b).unwrap().is_empty());
}
