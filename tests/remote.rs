//! push and pull against a real OCI registry (Debian's `docker-registry`, distribution
//! 2.8, started here on 127.0.0.1) and against `vmt-hub serve`: round trips, dedup on the
//! wire, tampering, broken connections, authentication, malformed manifests, and `serve`
//! under load.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::servers::{distribution, servers, vmt_serve, Kind, Server};
use common::{blob_files, fixtures, output_without_panic, vmt_hub_command};
use vmt_registry::bundle::{bundle_tensors, BundleDir};
use vmt_registry::reference::TagName;
use vmt_registry::remote::client::{Client, Credentials};
use vmt_registry::remote::transfer::{pull, push, Quiet};
use vmt_registry::remote::RemoteRef;
use vmt_registry::Registry;

fn client(port: u16) -> Client {
    Client::new(&format!("http://127.0.0.1:{port}"), Credentials::default())
}

fn remote(port: u16, repo_tag: &str) -> RemoteRef {
    RemoteRef::parse(&format!("oci://127.0.0.1:{port}/{repo_tag}"), false).unwrap()
}

fn tag(s: &str) -> TagName {
    TagName::parse(s).unwrap()
}

/// The fixture bundle with only `tasks` (same shared adapter, same task components).
fn fixture_subset(tasks: &[&str]) -> BundleDir {
    let mut b = BundleDir::read(&fixtures().join("tiny/bundle")).unwrap();
    b.config.tasks.retain(|t| tasks.contains(&t.name.as_str()));
    let keep: Vec<String> = bundle_tensors(&b.config)
        .into_iter()
        .map(|s| s.name)
        .collect();
    b.tensors.retain(|n, _| keep.contains(n));
    b
}

fn vmt_hub(args: &[&str]) -> Output {
    output_without_panic(vmt_hub_command().args(args))
}

#[test]
fn push_pull_round_trip_gives_identical_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let case = fixtures().join("tiny");
    for server in servers(tmp.path()) {
        let dir = tmp.path().join(format!("{:?}", server.kind));
        let (a, b) = (dir.join("a"), dir.join("b"));
        let ra = a.to_str().unwrap();
        assert!(vmt_hub(&[
            "--registry",
            ra,
            "import",
            case.join("bundle").to_str().unwrap(),
            "--tag",
            "pascal/vmt:v1"
        ])
        .status
        .success());
        let url = format!("oci://127.0.0.1:{}/team/vmt:v1", server.port);
        let o = vmt_hub(&["--registry", ra, "push", "pascal/vmt:v1", &url, "--quiet"]);
        assert!(
            o.status.success(),
            "{:?} push: {}",
            server.kind,
            String::from_utf8_lossy(&o.stderr)
        );
        let rb = b.to_str().unwrap();
        let o = vmt_hub(&["--registry", rb, "pull", &url, "--quiet"]);
        assert!(
            o.status.success(),
            "{:?} pull: {}",
            server.kind,
            String::from_utf8_lossy(&o.stderr)
        );
        let (da, db) = (
            Registry::open(&a)
                .unwrap()
                .resolve("pascal/vmt:v1")
                .unwrap(),
            Registry::open(&b).unwrap().resolve("team/vmt:v1").unwrap(),
        );
        assert_eq!(
            da, db,
            "{:?}: the pulled manifest digest equals the pushed one",
            server.kind
        );
        let mut outs = Vec::new();
        for (reg, r) in [(ra, "pascal/vmt:v1"), (rb, "team/vmt:v1")] {
            let out = dir.join(format!("{}.safetensors", r.replace([':', '/'], "_")));
            let o = vmt_hub(&[
                "--registry",
                reg,
                "forward",
                "--bundle",
                r,
                "--backbone",
                case.join("backbone").to_str().unwrap(),
                "--input",
                case.join("input.safetensors").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            outs.push(std::fs::read(out).unwrap());
        }
        assert_eq!(
            outs[0], outs[1],
            "{:?}: forward outputs are bit-identical",
            server.kind
        );
    }
}

/// A TCP proxy that counts client-to-server bytes and can cut connections.
struct Proxy {
    port: u16,
    up_bytes: Arc<AtomicU64>,
}

/// `cut`: for the first `n` connections, drop the connection once `after` bytes of the
/// server's answer have been forwarded.
fn proxy(upstream: u16, cut: Option<(usize, u64)>) -> Proxy {
    proxy_with(upstream, cut, None)
}

/// Like [`proxy`], and `cut_on`: drop the connection right after forwarding a request
/// that contains this pattern, the first `n` times.
fn proxy_with(
    upstream: u16,
    cut: Option<(usize, u64)>,
    cut_on: Option<(&'static [u8], usize)>,
) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let up_bytes = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&up_bytes);
    let connections = Arc::new(AtomicUsize::new(0));
    let pattern_cuts = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { break };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let n = connections.fetch_add(1, Ordering::SeqCst);
            let limit = cut.filter(|(count, _)| n < *count).map(|(_, after)| after);
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let counter = Arc::clone(&counter);
            let pattern_cuts = Arc::clone(&pattern_cuts);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(k) = c_read.read(&mut buf) {
                    if k == 0 || s_write.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    counter.fetch_add(k as u64, Ordering::SeqCst);
                    if let Some((pat, n)) = cut_on {
                        let hit = buf[..k].windows(pat.len()).any(|w| w == pat);
                        if hit && pattern_cuts.fetch_add(1, Ordering::SeqCst) < n {
                            std::thread::sleep(Duration::from_millis(100));
                            let _ = c_read.shutdown(std::net::Shutdown::Both);
                            let _ = s_write.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                    }
                }
                let _ = s_write.shutdown(std::net::Shutdown::Write);
            });
            let (mut s_read, mut c_write) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut sent = 0u64;
                while let Ok(k) = s_read.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    let k = match limit {
                        Some(l) if sent + k as u64 > l => {
                            let _ = c_write.write_all(&buf[..(l - sent) as usize]);
                            let _ = c_write.shutdown(std::net::Shutdown::Both);
                            let _ = s_read.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        _ => k,
                    };
                    if c_write.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    sent += k as u64;
                }
                let _ = c_write.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    Proxy { port, up_bytes }
}

#[test]
fn a_second_bundle_sharing_the_adapter_sends_no_byte_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    for server in servers(tmp.path()) {
        let local = Registry::open(&tmp.path().join(format!("local-{:?}", server.kind))).unwrap();
        let full = fixture_subset(&["semseg", "human_parts", "sal", "normals"]);
        let two = fixture_subset(&["semseg", "sal"]);
        local.publish(&full, &tag("m:full")).unwrap();
        local.publish(&two, &tag("m:two")).unwrap();
        let shared_size = local
            .manifest_record(&local.resolve("m:full").unwrap())
            .unwrap()
            .unwrap()
            .layers[0]
            .2;
        let p = proxy(server.port, None);
        let first = push(
            &local,
            "m:full",
            &remote(p.port, "dedup/vmt:full"),
            &client(p.port),
            &mut Quiet,
        )
        .unwrap();
        assert_eq!(first.blobs_sent, 6, "{:?}", server.kind);
        let before = p.up_bytes.load(Ordering::SeqCst);
        assert!(
            before > shared_size,
            "the first push carries the shared adapter"
        );
        let second = push(
            &local,
            "m:two",
            &remote(p.port, "dedup/vmt:two"),
            &client(p.port),
            &mut Quiet,
        )
        .unwrap();
        let sent = p.up_bytes.load(Ordering::SeqCst) - before;
        assert_eq!(
            (second.blobs_sent, second.blobs_skipped),
            (1, 3),
            "{:?}: only the new config travels",
            server.kind
        );
        assert!(
            sent < shared_size / 10,
            "{:?}: {sent} bytes went up; the shared blob alone is {shared_size}",
            server.kind
        );

        // The same bundle to another repository of the same registry: both mount every
        // blob from the repository the client pushed it to (neither lets another
        // repository read a blob before it is mounted there).
        let before = p.up_bytes.load(Ordering::SeqCst);
        let third = push(
            &local,
            "m:full",
            &remote(p.port, "elsewhere/vmt:full"),
            &client(p.port),
            &mut Quiet,
        )
        .unwrap();
        let sent = p.up_bytes.load(Ordering::SeqCst) - before;
        assert_eq!(third.blobs_sent, 0, "{:?}", server.kind);
        assert_eq!(third.blobs_mounted, 6, "{:?} mounts", server.kind);
        assert!(
            sent < shared_size / 10,
            "{:?}: {sent} bytes went up",
            server.kind
        );
    }
}

/// Flips a byte of a blob in the server's own storage.
fn tamper(server: &Server, d: &vmt_registry::Digest) {
    let path = match server.kind {
        Kind::Distribution => server
            .root
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
            .join("data"),
        Kind::VmtServe => server.root.join("blobs/sha256").join(d.hex()),
    };
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
}

fn snapshot(reg_root: &Path) -> (usize, Vec<String>) {
    let reg = Registry::open(reg_root).unwrap();
    let tags = reg
        .list()
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {}", e.tag, e.digest))
        .collect();
    (blob_files(reg_root), tags)
}

#[test]
fn tampered_blob_cut_connections_and_malformed_manifests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for server in servers(tmp.path()) {
        let local_root = tmp.path().join(format!("local-{:?}", server.kind));
        let src = Registry::open(&tmp.path().join(format!("src-{:?}", server.kind))).unwrap();
        src.publish(&fixture_subset(&["semseg", "sal"]), &tag("m:v1"))
            .unwrap();
        push(
            &src,
            "m:v1",
            &remote(server.port, "fault/vmt:v1"),
            &client(server.port),
            &mut Quiet,
        )
        .unwrap();
        let d = src.resolve("m:v1").unwrap();
        let record = src.manifest_record(&d).unwrap().unwrap();

        // A chunked upload whose connection breaks after a PATCH resumes where the
        // registry says it is, and the bundle arrives intact.
        let p = proxy_with(server.port, None, Some((b"PATCH /", 2)));
        let mut chunked = client(p.port);
        chunked.chunk_size = 65536;
        push(
            &src,
            "m:v1",
            &remote(p.port, "chunked/vmt:v1"),
            &chunked,
            &mut Quiet,
        )
        .unwrap();
        let check = Registry::open(&tmp.path().join(format!("chunked-{:?}", server.kind))).unwrap();
        pull(
            &check,
            &remote(server.port, "chunked/vmt:v1"),
            &client(server.port),
            None,
            &mut Quiet,
        )
        .unwrap();
        assert_eq!(check.resolve("chunked/vmt:v1").unwrap(), d);
        assert!(check.verify(None).unwrap().ok());

        // A connection cut mid-blob once is retried; cut every time, it fails cleanly.
        {
            let local = Registry::open(&local_root).unwrap();
            let p = proxy(server.port, Some((1, 20_000)));
            let r = pull(
                &local,
                &remote(p.port, "fault/vmt:v1"),
                &client(p.port),
                Some(&tag("cut:once")),
                &mut Quiet,
            )
            .unwrap();
            assert_eq!(r.manifest, Some(d));
            assert!(local.verify(None).unwrap().ok());
        }
        let cut_root = tmp.path().join(format!("cut-{:?}", server.kind));
        let before = snapshot(&cut_root);
        {
            let local = Registry::open(&cut_root).unwrap();
            let p = proxy(server.port, Some((usize::MAX, 20_000)));
            let c = client(p.port);
            let err = pull(
                &local,
                &remote(p.port, "fault/vmt:v1"),
                &c,
                Some(&tag("cut:always")),
                &mut Quiet,
            )
            .unwrap_err();
            assert!(err.to_string().contains("blob"), "{err}");
        }
        assert_eq!(
            snapshot(&cut_root),
            before,
            "{:?}: a failed pull leaves the registry as it was",
            server.kind
        );

        // A blob altered in the remote's storage is refused, naming its digest.
        let shared = record.layers[0].1;
        tamper(&server, &shared);
        let fresh_root = tmp.path().join(format!("fresh-{:?}", server.kind));
        let before = snapshot(&fresh_root);
        let fresh = Registry::open(&fresh_root).unwrap();
        let err = pull(
            &fresh,
            &remote(server.port, "fault/vmt:v1"),
            &client(server.port),
            None,
            &mut Quiet,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&shared.to_string()),
            "{:?}: {err}",
            server.kind
        );
        drop(fresh);
        assert_eq!(
            snapshot(&fresh_root),
            before,
            "{:?}: a tampered pull leaves the registry as it was",
            server.kind
        );
    }
}

/// POST then PUT: the upload every registry supports.
fn upload_blob(base: &str, repo: &str, d: &vmt_registry::Digest, bytes: &[u8]) {
    let r = ureq::post(&format!("{base}/v2/{repo}/blobs/uploads/"))
        .send_bytes(&[])
        .unwrap();
    let loc = r.header("Location").unwrap().to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    ureq::put(&format!("{loc}{sep}digest={d}"))
        .send_bytes(bytes)
        .unwrap();
}

#[test]
fn malformed_manifests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    if common::docker_registry().is_none() {
        return;
    }
    let dist = distribution(&tmp.path().join("d"), None);
    // A valid OCI image manifest that is not a vmt bundle, uploaded straight to the registry.
    let (config, layer) = (&b"{}"[..], &b"some layer bytes"[..]);
    let (cd, ld) = (
        vmt_registry::Digest::of(config),
        vmt_registry::Digest::of(layer),
    );
    let base = format!("http://127.0.0.1:{}", dist.port);
    for (d, b) in [(cd, config), (ld, layer)] {
        upload_blob(&base, "other/thing", &d, b);
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{}}}]}}"#,
        layer.len()
    );
    ureq::put(&format!("{base}/v2/other/thing/manifests/v1"))
        .set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .send_string(&manifest)
        .unwrap();
    let local = Registry::open(&tmp.path().join("local")).unwrap();
    let err = pull(
        &local,
        &remote(dist.port, "other/thing:v1"),
        &client(dist.port),
        None,
        &mut Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("malformed manifest refused") && err.contains("not a vmt bundle"),
        "{err}"
    );
    assert_eq!(blob_files(&tmp.path().join("local")), 0);

    // vmt-hub serve refuses to store one at all.
    let serve = vmt_serve(&tmp.path().join("v"), &[]);
    let base = format!("http://127.0.0.1:{}", serve.port);
    for (d, b) in [(cd, config), (ld, layer)] {
        upload_blob(&base, "other/thing", &d, b);
    }
    for body in [manifest.as_str(), "{not json", r#"{"schemaVersion":2}"#] {
        match ureq::put(&format!("{base}/v2/other/thing/manifests/v1"))
            .set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .send_string(body)
        {
            Err(ureq::Error::Status(400, r)) => {
                assert!(r.into_string().unwrap().contains("MANIFEST_INVALID"))
            }
            other => panic!("expected 400 MANIFEST_INVALID, got {other:?}"),
        }
    }
}

#[test]
fn wrong_credentials_get_an_auth_error_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let local_root = tmp.path().join("local");
    let case = fixtures().join("tiny/bundle");
    assert!(vmt_hub(&[
        "--registry",
        local_root.to_str().unwrap(),
        "import",
        case.to_str().unwrap(),
        "--tag",
        "m:v1"
    ])
    .status
    .success());
    let run = |url: &str, env: &[(&str, &str)], user: Option<&str>| -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vmt-hub"));
        c.args([
            "--registry",
            local_root.to_str().unwrap(),
            "push",
            "m:v1",
            url,
            "--quiet",
        ])
        .env_remove("VMT_REGISTRY_TOKEN")
        .env_remove("VMT_REGISTRY_PASSWORD");
        if let Some(u) = user {
            c.args(["--user", u]);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        let start = Instant::now();
        let o = c.stdin(Stdio::null()).output().unwrap();
        assert!(start.elapsed() < Duration::from_secs(30), "no hang");
        o
    };
    let serve = vmt_serve(&tmp.path().join("v"), &["--token", "s3cret"]);
    let url = format!("oci://127.0.0.1:{}/auth/vmt:v1", serve.port);
    let o = run(&url, &[("VMT_REGISTRY_TOKEN", "wrong")], None);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success() && err.contains("authentication failed"),
        "{err}"
    );
    assert!(!err.contains("wrong"), "the token is never printed: {err}");
    let o = run(&url, &[], None);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success()
            && err.contains("authentication failed")
            && err.contains("VMT_REGISTRY_TOKEN"),
        "{err}"
    );
    let o = run(&url, &[("VMT_REGISTRY_TOKEN", "s3cret")], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    if common::docker_registry().is_none() {
        return;
    }
    let dist = distribution(&tmp.path().join("d"), Some(("alice", "correct horse")));
    let url = format!("oci://127.0.0.1:{}/auth/vmt:v1", dist.port);
    let o = run(
        &url,
        &[("VMT_REGISTRY_PASSWORD", "battery staple")],
        Some("alice"),
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success() && err.contains("authentication failed"),
        "{err}"
    );
    assert!(
        !err.contains("battery"),
        "the password is never printed: {err}"
    );
    let o = run(
        &url,
        &[("VMT_REGISTRY_PASSWORD", "correct horse")],
        Some("alice"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Raw HTTP, so that paths are sent exactly as written.
fn raw_request(port: u16, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

#[test]
fn serve_under_load_and_bad_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let serve = vmt_serve(&tmp.path().join("v"), &["--max-body", "1048576"]);
    let port = serve.port;
    // 8 clients pushing and pulling different bundles at once, for a bounded time.
    let deadline = Instant::now() + Duration::from_secs(6);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let dir = tmp.path().join(format!("client{i}"));
            std::thread::spawn(move || {
                let mut rounds = 0;
                while rounds == 0 || Instant::now() < deadline {
                    let mut bundle = fixture_subset(&["semseg", "sal"]);
                    // Make each client's (and round's) bundle different.
                    let t = bundle
                        .tensors
                        .get_mut("tasks.sal.decoder.head.bias")
                        .unwrap();
                    *t = vmt_registry::bundle::RawTensor::from_f32(
                        vec![1],
                        &[(i * 1000 + rounds) as f32],
                    );
                    let src = Registry::open(&dir.join(format!("src{rounds}"))).unwrap();
                    src.publish(&bundle, &tag("m:v1")).unwrap();
                    let repo = format!("load/c{i}:r{rounds}");
                    push(
                        &src,
                        "m:v1",
                        &remote(port, &repo),
                        &client(port),
                        &mut Quiet,
                    )
                    .unwrap();
                    let dst = Registry::open(&dir.join(format!("dst{rounds}"))).unwrap();
                    pull(
                        &dst,
                        &remote(port, &repo),
                        &client(port),
                        Some(&tag("m:v1")),
                        &mut Quiet,
                    )
                    .unwrap();
                    let d = dst.resolve("m:v1").unwrap();
                    assert_eq!(dst.load(&d).unwrap(), bundle);
                    assert!(dst.verify(None).unwrap().ok());
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    let rounds: usize = handles
        .into_iter()
        .map(|h| h.join().expect("a client failed"))
        .sum();
    assert!(rounds >= 8);

    // Bad requests get 4xx, never a crash.
    let d = vmt_registry::Digest::of(b"x");
    for path in [
        "/v2/../../etc/passwd/blobs/",
        "/v2/a/../b/manifests/v1",
        "/v2/UPPER/tags/list",
        "/v2/a//b/blobs/",
    ] {
        let status = raw_request(
            port,
            format!("GET {path}{d} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!((400..500).contains(&status), "{path}: {status}");
    }
    let wrong = format!("POST /v2/a/blobs/uploads/?digest={d} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc");
    assert_eq!(raw_request(port, wrong.as_bytes()), 400);
    let big = vec![b'x'; 2 << 20];
    let mut req = format!("POST /v2/a/blobs/uploads/?digest={d} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", big.len()).into_bytes();
    req.extend_from_slice(&big);
    assert_eq!(raw_request(port, &req), 413);
    assert_eq!(
        raw_request(
            port,
            b"GET /v2/a/manifests/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ),
        404
    );
    // Still serving.
    assert_eq!(
        ureq::get(&format!("http://127.0.0.1:{port}/v2/"))
            .call()
            .unwrap()
            .status(),
        200
    );
}

/// The token flow a registry announces in `WWW-Authenticate` (as GHCR and Harbor do):
/// a mock registry that wants a bearer token from its realm, which wants basic auth.
#[test]
fn bearer_token_flow_from_the_challenge() {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    let (srv, seen) = (Arc::clone(&server), Arc::new(AtomicUsize::new(0)));
    let token_requests = Arc::clone(&seen);
    std::thread::spawn(move || {
        for req in srv.incoming_requests() {
            let auth = req
                .headers()
                .iter()
                .find(|h| h.field.equiv("Authorization"))
                .map(|h| h.value.as_str().to_string())
                .unwrap_or_default();
            let h = |k: &str, v: &str| {
                tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap()
            };
            let resp = if req.url().starts_with("/token") {
                token_requests.fetch_add(1, Ordering::SeqCst);
                let scoped = req.url().contains("scope=repository%3Ateam%2Fvmt%3Apull")
                    || req.url().contains("scope=repository:team/vmt:pull");
                // base64("alice:pw") = YWxpY2U6cHc=
                if auth == "Basic YWxpY2U6cHc=" && scoped {
                    tiny_http::Response::from_string(r#"{"token":"tok-123"}"#).with_status_code(200)
                } else {
                    tiny_http::Response::from_string("denied").with_status_code(401)
                }
            } else if auth == "Bearer tok-123" {
                tiny_http::Response::from_string("{}").with_status_code(200)
            } else {
                let challenge = format!(
                    r#"Bearer realm="http://127.0.0.1:{port}/token",service="mock",scope="repository:team/vmt:pull""#
                );
                tiny_http::Response::from_string("")
                    .with_status_code(401)
                    .with_header(h("WWW-Authenticate", &challenge))
            };
            let _ = req.respond(resp);
        }
    });
    let base = format!("http://127.0.0.1:{port}");
    let creds = |pw: &str| Credentials {
        user: Some("alice".into()),
        password: Some(pw.into()),
        token: None,
        source: None,
    };
    let good = Client::new(&base, creds("pw"));
    assert_eq!(
        good.send("GET", "/v2/team/vmt/tags/list", &[], None, "tags")
            .unwrap()
            .status,
        200
    );
    // The token is kept: a second request needs no new one.
    good.send("GET", "/v2/team/vmt/tags/list", &[], None, "tags")
        .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    let err = Client::new(&base, creds("nope"))
        .send("GET", "/v2/team/vmt/tags/list", &[], None, "tags")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("authentication failed") && !err.contains("nope"),
        "{err}"
    );
    server.unblock();
}

/// oras-py (a third-party OCI client that cannot set `artifactType`) pushes a bundle's
/// files to `vmt-hub serve`; vmt-hub pulls it back bit for bit.
#[test]
fn a_bundle_pushed_by_oras_py_pulls() {
    let Some(python) = common::python_with_oras() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let bundle = fixture_subset(&["semseg", "sal"]);
    let blobs = vmt_registry::store::BundleBlobs::of(&bundle);
    // The bundle as files an oras user would push: one per component, and the config.
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("bundle.json"), &blobs.config).unwrap();
    let mut layers = Vec::new();
    let mut titles = serde_json::Map::new();
    for (component, bytes) in &blobs.components {
        let path = files.join(format!("{}.safetensors", component.replace('/', "-")));
        std::fs::write(&path, bytes).unwrap();
        layers.push(format!(
            "{}:application/vnd.vmt.component.v1.safetensors",
            path.display()
        ));
        titles.insert(
            path.display().to_string(),
            serde_json::json!({"org.opencontainers.image.title": component}),
        );
    }
    let annotations = tmp.path().join("annotations.json");
    std::fs::write(&annotations, serde_json::to_vec(&titles).unwrap()).unwrap();
    let serve = vmt_serve(tmp.path(), &[]);
    let script = format!(
        "import oras.client\n\
         c = oras.client.OrasClient(insecure=True)\n\
         c.push(target='127.0.0.1:{port}/oras/vmt:v1', files={layers:?}, \
         manifest_config='{config}:application/vnd.vmt.bundle.config.v1+json', \
         annotation_file='{ann}', disable_path_validation=True)\n",
        port = serve.port,
        layers = layers,
        config = files.join("bundle.json").display(),
        ann = annotations.display(),
    );
    let o = Command::new(&python)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "oras push: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let local = tmp.path().join("local");
    let o = vmt_hub(&[
        "--registry",
        local.to_str().unwrap(),
        "pull",
        &format!("oci://127.0.0.1:{}/oras/vmt:v1", serve.port),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reg = Registry::open(&local).unwrap();
    let d = reg.resolve("oras/vmt:v1").unwrap();
    let manifest = String::from_utf8(reg.blob(&d, "manifest").unwrap()).unwrap();
    assert!(!manifest.contains("artifactType"), "{manifest}");
    assert_eq!(
        reg.load(&d).unwrap(),
        bundle,
        "the pulled bundle is the pushed one"
    );
}

#[test]
fn the_cli_works_in_a_registry_while_serve_serves_it() {
    // `serve` lets go of the registry between requests: imports, tags and a push from
    // the served registry succeed while a client keeps pulling from the server, and
    // everything each side wrote is there afterwards.
    let tmp = tempfile::tempdir().unwrap();
    let server = vmt_serve(tmp.path(), &[]);
    let served = server.root.to_str().unwrap().to_string();
    let tiny = fixtures().join("tiny/bundle");
    let lite = fixtures().join("tiny-lite/bundle");
    let cli = |args: &[&str]| {
        let mut all = vec!["--registry", served.as_str()];
        all.extend_from_slice(args);
        let o = vmt_hub(&all);
        assert!(
            o.status.success(),
            "{args:?} on the served registry: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    cli(&["import", tiny.to_str().unwrap(), "--tag", "team/a:v1"]);
    let port = server.port;
    let pulls = std::thread::spawn(move || {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..6 {
            let reg = Registry::open(&dir.path().join(format!("r{i}"))).unwrap();
            pull(
                &reg,
                &remote(port, "team/a:v1"),
                &client(port),
                None,
                &mut Quiet,
            )
            .unwrap();
        }
    });
    for i in 0..4 {
        cli(&["tag", "team/a:v1", &format!("team/a:t{i}")]);
    }
    cli(&["import", lite.to_str().unwrap(), "--tag", "team/b:v1"]);
    let target = format!("oci://127.0.0.1:{port}/team/c:v1");
    cli(&["push", "team/b:v1", &target, "--quiet"]);
    pulls.join().unwrap();
    let o = vmt_hub(&["--registry", &served, "list"]);
    let list = String::from_utf8_lossy(&o.stdout);
    for t in ["team/a:v1", "team/a:t3", "team/b:v1", "team/c:v1"] {
        assert!(list.contains(t), "{t} missing: {list}");
    }
    let fresh = Registry::open(&tmp.path().join("check")).unwrap();
    pull(
        &fresh,
        &remote(port, "team/c:v1"),
        &client(port),
        None,
        &mut Quiet,
    )
    .unwrap();
    assert!(fresh.verify(None).unwrap().ok());
}

/// `vmt-hub --registry ROOT ARGS` with only the given credential environment: no
/// VMT_REGISTRY_* variables, and HOME, XDG_* and DOCKER_CONFIG pointing into `home` so
/// that no login of the machine's user is read.
fn isolated(root: &Path, home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmt-hub"));
    c.arg("--registry").arg(root).args(args);
    for k in [
        "VMT_REGISTRY_TOKEN",
        "VMT_REGISTRY_PASSWORD",
        "REGISTRY_AUTH_FILE",
    ] {
        c.env_remove(k);
    }
    c.env("HOME", home)
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("DOCKER_CONFIG", home.join("docker"))
        .envs(env.iter().copied());
    output_without_panic(&mut c)
}

fn succeeded(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The login every OCI tool shares. `skopeo login` to docker-registry (htpasswd) writes
/// auth.json; `vmt-hub push` and `pull` use it with no flag or variable. The same login
/// from a docker config.json whose `credHelpers` names a helper (a script here).
/// `vmt-hub login` writes what `skopeo inspect --authfile` reads. Wrong credentials: a
/// 401 naming the host and the file they came from.
#[test]
fn logins_are_shared_with_skopeo_and_docker_credential_helpers() {
    if common::docker_registry().is_none() {
        return;
    }
    if !common::skopeo() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dist = distribution(&tmp.path().join("d"), Some(("alice", "s3cret")));
    let host = format!("127.0.0.1:{}", dist.port);
    let (local, home) = (tmp.path().join("local"), tmp.path().join("home"));
    let bundle = fixtures().join("tiny/bundle");
    succeeded(
        &isolated(
            &local,
            &home,
            &[],
            &["import", bundle.to_str().unwrap(), "--tag", "m:v1"],
        ),
        "import",
    );
    let url = |tag: &str| format!("oci://{host}/team/vmt:{tag}");

    // 1. skopeo login -> auth.json (REGISTRY_AUTH_FILE) -> push and pull with no flag.
    let auth = tmp.path().join("auth.json");
    let o = Command::new("skopeo")
        .args(["login", "--tls-verify=false", "--authfile"])
        .arg(&auth)
        .args(["-u", "alice", "-p", "s3cret", &host])
        .output()
        .unwrap();
    succeeded(&o, "skopeo login");
    let with_file = [("REGISTRY_AUTH_FILE", auth.to_str().unwrap())];
    succeeded(
        &isolated(
            &local,
            &home,
            &with_file,
            &["push", "m:v1", &url("v1"), "--quiet"],
        ),
        "push",
    );
    let pulled = tmp.path().join("pulled");
    let args = ["pull", &url("v1"), "--tag", "p:v1", "--quiet"];
    succeeded(&isolated(&pulled, &home, &with_file, &args), "pull");
    // Without the login: refused, naming the host.
    let o = isolated(&local, &home, &[], &["push", "m:v1", &url("v2"), "--quiet"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains(&host) && err.contains("401"),
        "{err}"
    );

    // 2. docker's config.json with a credential helper on PATH.
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-vmttest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread host\n[ \"$host\" = \"{host}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
             echo '{{\"ServerURL\":\"{host}\",\"Username\":\"alice\",\"Secret\":\"s3cret\"}}'\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(home.join("docker")).unwrap();
    let config = format!(r#"{{"credHelpers": {{"{host}": "vmttest"}}}}"#);
    std::fs::write(home.join("docker/config.json"), config).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let with_helper = [("PATH", path.as_str())];
    let args = ["push", "m:v1", &url("v3"), "--quiet"];
    succeeded(
        &isolated(&local, &home, &with_helper, &args),
        "push with a helper",
    );

    // 3. vmt-hub login writes what skopeo reads; logout removes it.
    let written = tmp.path().join("vmt-auth.json");
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmt-hub"));
    c.args([
        "login",
        &host,
        "-u",
        "alice",
        "--password-stdin",
        "--authfile",
    ])
    .arg(&written)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    succeeded(&child.wait_with_output().unwrap(), "vmt-hub login");
    let o = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--authfile"])
        .arg(&written)
        .arg(format!("docker://{host}/team/vmt:v1"))
        .output()
        .unwrap();
    succeeded(&o, "skopeo inspect with vmt-hub's login");
    assert!(String::from_utf8_lossy(&o.stdout).contains("application/vnd.vmt.bundle.v1+json"));
    let o = isolated(
        &local,
        &home,
        &[],
        &["logout", &host, "--authfile", written.to_str().unwrap()],
    );
    succeeded(&o, "logout");
    let o = isolated(
        &local,
        &home,
        &[],
        &["logout", &host, "--authfile", written.to_str().unwrap()],
    );
    assert!(
        !o.status.success(),
        "a second logout says there is no login"
    );

    // 4. Wrong credentials in the file: a 401 naming the host and the file.
    let bad = tmp.path().join("bad.json");
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice:wrong");
    std::fs::write(
        &bad,
        format!(r#"{{"auths": {{"{host}": {{"auth": "{b64}"}}}}}}"#),
    )
    .unwrap();
    let args = [
        "push",
        "m:v1",
        &url("v4"),
        "--quiet",
        "--authfile",
        bad.to_str().unwrap(),
    ];
    let o = isolated(&local, &home, &[], &args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains(&host)
            && err.contains("bad.json")
            && err.contains("rejected"),
        "{err}"
    );
    // Wrong password at login: refused, nothing written.
    let never = tmp.path().join("never.json");
    let o = isolated(
        &local,
        &home,
        &[("VMT_REGISTRY_PASSWORD", "wrong")],
        &[
            "login",
            &host,
            "-u",
            "alice",
            "--authfile",
            never.to_str().unwrap(),
        ],
    );
    assert!(
        !o.status.success() && !never.exists(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `serve --token`: skopeo (`--creds x:TOKEN`) and oras-py (basic auth) read from it;
/// without credentials skopeo is refused. `skopeo delete` of a tag and of a digest
/// untags; then `gc --now` on the server frees the blobs only they used, and what is
/// left still pulls.
#[test]
fn serve_speaks_to_skopeo_and_oras_with_its_token_and_deletes() {
    if !common::skopeo() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let served = tmp.path().join("served");
    let reg = Registry::open(&served).unwrap();
    let full = BundleDir::read(&fixtures().join("tiny/bundle")).unwrap();
    let d_full = reg.publish(&full, &tag("m:v1")).unwrap().digest;
    let d_two = reg
        .publish(&fixture_subset(&["semseg", "sal"]), &tag("n:v1"))
        .unwrap()
        .digest;
    reg.publish(&fixture_subset(&["semseg"]), &tag("k:v1"))
        .unwrap();
    drop(reg);
    let (child, port) = common::spawn_serve(&served, &["--token", "T0K"]);
    let _serve = common::KillOnDrop(child);
    let host = format!("127.0.0.1:{port}");
    let skopeo = |args: &[&str]| {
        Command::new("skopeo")
            .args(args)
            .arg("--tls-verify=false")
            .output()
            .unwrap()
    };
    let image = |r: &str| format!("docker://{host}/{r}");

    // Reads with the token as a basic-auth password; refused without it.
    let o = skopeo(&["inspect", "--raw", "--creds", "x:T0K", &image("m:v1")]);
    succeeded(&o, "skopeo inspect --creds");
    assert!(String::from_utf8_lossy(&o.stdout).contains("application/vnd.vmt.bundle.v1+json"));
    let o = skopeo(&["inspect", "--raw", &image("m:v1")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("unauthorized"), "{err}");
    if let Some(python) = common::python_with_oras() {
        let script = format!(
            "import oras.client\nc = oras.client.OrasClient(hostname='{host}', insecure=True, auth_backend='basic')\nc.login(username='x', password='T0K')\nprint(c.get_manifest('{host}/m:v1')['artifactType'])\n"
        );
        let o = Command::new(&python)
            .args(["-c", &script])
            .env("HOME", tmp.path())
            .output()
            .unwrap();
        succeeded(&o, "oras-py with basic auth");
        assert!(String::from_utf8_lossy(&o.stdout).contains("application/vnd.vmt.bundle.v1+json"));
    }

    // skopeo delete of a tag, then of a digest: both untagged, k:v1 kept.
    let blobs_before = blob_files(&served);
    succeeded(
        &skopeo(&["delete", "--creds", "x:T0K", &image("m:v1")]),
        "delete m:v1",
    );
    let by_digest = image(&format!("n@{d_two}"));
    succeeded(
        &skopeo(&["delete", "--creds", "x:T0K", &by_digest]),
        "delete n@digest",
    );
    let o = skopeo(&["inspect", "--raw", "--creds", "x:T0K", &image("m:v1")]);
    assert!(!o.status.success(), "m:v1 is gone");
    let o = skopeo(&["delete", "--creds", "x:T0K", &image("m:v1")]);
    assert!(!o.status.success(), "a second delete finds nothing");

    // gc on the server (while it serves) frees what only m:v1 and n:v1 used.
    let o = vmt_hub(&["--registry", served.to_str().unwrap(), "gc", "--now"]);
    succeeded(&o, "gc --now");
    let after = blob_files(&served);
    assert!(
        after < blobs_before,
        "gc freed nothing: {blobs_before} -> {after}"
    );
    let reg = Registry::open(&served).unwrap();
    assert!(
        !reg.has_blob(&d_full) && !reg.has_blob(&d_two),
        "the deleted manifests are freed"
    );
    assert!(reg.verify(None).unwrap().ok());
    drop(reg);
    let pulled = tmp.path().join("pulled");
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmt-hub"));
    c.arg("--registry")
        .arg(&pulled)
        .args(["pull", &format!("oci://{host}/k:v1"), "--quiet"])
        .env("VMT_REGISTRY_TOKEN", "T0K");
    succeeded(
        &output_without_panic(&mut c),
        "pull k:v1 after the deletes and gc",
    );
}

/// Remote inspection without pulling: `ls` lists a repository's tags page by page
/// (`--page-size 2` over three tags follows the `Link` header), `show oci://...` prints
/// the summary `show` prints for the local bundle, from the manifest and config only;
/// against serve and docker-registry, with a registry root that is never created.
#[test]
fn ls_and_show_read_a_remote_without_pulling() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let ra = a.to_str().unwrap();
    let bundle = fixtures().join("tiny/bundle");
    assert!(vmt_hub(&[
        "--registry",
        ra,
        "import",
        bundle.to_str().unwrap(),
        "--tag",
        "team/seg:v1"
    ])
    .status
    .success());
    let local = vmt_hub(&["--registry", ra, "show", "team/seg:v1"]);
    let local = String::from_utf8_lossy(&local.stdout).to_string();
    let summary = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("backbone:"))
            .take_while(|l| {
                !l.starts_with("lineage")
                    && !l.starts_with("parent:")
                    && !l.starts_with("signatures:")
            })
            .map(String::from)
            .collect()
    };
    assert!(
        summary(&local)
            .iter()
            .any(|l| l.starts_with("trainable parameters:")),
        "{local}"
    );
    for server in servers(tmp.path()) {
        let host = format!("127.0.0.1:{}", server.port);
        for t in ["v1", "v2", "v3"] {
            let o = vmt_hub(&[
                "--registry",
                ra,
                "push",
                "team/seg:v1",
                &format!("oci://{host}/team/seg:{t}"),
            ]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let never = tmp.path().join(format!("never-{:?}", server.kind));
        let rn = never.to_str().unwrap();
        let o = vmt_hub(&[
            "--registry",
            rn,
            "ls",
            &format!("oci://{host}/team/seg"),
            "--page-size",
            "2",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let tags: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(tags, ["v1", "v2", "v3"], "{:?}", server.kind);
        let o = vmt_hub(&[
            "--registry",
            rn,
            "show",
            &format!("oci://{host}/team/seg:v2"),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let remote = String::from_utf8_lossy(&o.stdout).to_string();
        assert_eq!(
            summary(&remote),
            summary(&local),
            "{:?}: {remote}",
            server.kind
        );
        assert_eq!(
            remote.lines().next(),
            local.lines().next(),
            "the same digest"
        );
        let o = vmt_hub(&["--registry", rn, "ls", &format!("oci://{host}/no/such")]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains(&host));
        assert!(!never.exists(), "nothing is written locally");
    }
}
