//! Backbones from the Hugging Face Hub, against a mock Hub on 127.0.0.1 that speaks its
//! resolve protocol (commit and ETag headers, ranges, 401 for a gated repo, 404 for a
//! missing file) and serves the fixture's files.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{fixtures, output_without_panic, vmt_hub_command};
use sha2::{Digest as _, Sha256};

const COMMIT_MAIN: &str = "1111111111111111111111111111111111111111";
const COMMIT_V1: &str = "2222222222222222222222222222222222222222";
/// Where `main` points once the mock Hub's `moved` is set.
const COMMIT_NEXT: &str = "3333333333333333333333333333333333333333";
const TOKEN: &str = "hf_secret";

struct File {
    bytes: Vec<u8>,
    /// What the ETag says: sha256 for LFS files (may lie, for the tamper test).
    etag: String,
    lfs: bool,
}

/// A mock Hub: `/{owner}/{name}/resolve/{rev}/{file}`.
struct MockHub {
    url: String,
    requests: Arc<AtomicUsize>,
    /// Requests for a file's bytes (not the first byte only, as metadata requests are).
    downloads: Arc<AtomicUsize>,
    /// `main` moved on to COMMIT_NEXT (same files).
    moved: Arc<std::sync::atomic::AtomicBool>,
    server: Arc<tiny_http::Server>,
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn mock_hub() -> MockHub {
    mock_hub_with(Vec::new())
}

/// Files of an extra mock repo: `(file, bytes, is_lfs)`.
type RepoFiles = Vec<(&'static str, Vec<u8>, bool)>;

/// The mock Hub with extra repos.
fn mock_hub_with(extra: Vec<(&'static str, RepoFiles)>) -> MockHub {
    let dir = fixtures().join("tiny/backbone");
    let config = std::fs::read(dir.join("config.json")).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = |bytes: &Vec<u8>, lfs: bool| File {
        etag: if lfs {
            sha256_hex(bytes)
        } else {
            sha256_hex(bytes)[..40].to_string()
        },
        bytes: bytes.clone(),
        lfs,
    };
    let mut repos: HashMap<&str, HashMap<&str, File>> = HashMap::new();
    for repo in ["acme/swin-fixture", "acme/gated"] {
        repos.insert(
            repo,
            HashMap::from([
                ("config.json", file(&config, false)),
                ("model.safetensors", file(&weights, true)),
            ]),
        );
    }
    repos.insert(
        "acme/no-weights",
        HashMap::from([("config.json", file(&config, false))]),
    );
    let mut tampered = file(&weights, true);
    tampered.bytes[1000] ^= 0xff;
    repos.insert(
        "acme/tampered",
        HashMap::from([
            ("config.json", file(&config, false)),
            ("model.safetensors", tampered),
        ]),
    );
    for (repo, files) in extra {
        let files = files
            .iter()
            .map(|(name, bytes, lfs)| (*name, file(bytes, *lfs)))
            .collect();
        repos.insert(repo, files);
    }

    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let downloads = Arc::new(AtomicUsize::new(0));
    let moved = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (srv, count) = (Arc::clone(&server), Arc::clone(&requests));
    let (got, has_moved) = (Arc::clone(&downloads), Arc::clone(&moved));
    std::thread::spawn(move || {
        for req in srv.incoming_requests() {
            count.fetch_add(1, Ordering::SeqCst);
            let first_byte = req
                .headers()
                .iter()
                .any(|h| h.field.equiv("Range") && h.value.as_str() == "bytes=0-0");
            if *req.method() == tiny_http::Method::Get && !first_byte {
                got.fetch_add(1, Ordering::SeqCst);
            }
            let response = answer(&repos, &req, has_moved.load(Ordering::SeqCst));
            let _ = req.respond(response);
        }
    });
    MockHub {
        url,
        requests,
        downloads,
        moved,
        server,
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap()
}

fn answer(
    repos: &HashMap<&str, HashMap<&str, File>>,
    req: &tiny_http::Request,
    moved: bool,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let error = |code: u16, msg: &str| {
        tiny_http::Response::from_data(msg.as_bytes().to_vec())
            .with_status_code(code)
            .with_header(header("X-Error-Code", msg))
    };
    let path = req.url().split('?').next().unwrap().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if parts.len() != 5 || parts[2] != "resolve" {
        return error(404, "RepoNotFound");
    }
    let repo = format!("{}/{}", parts[0], parts[1]);
    let (rev, name) = (parts[3], parts[4]);
    let Some(files) = repos.get(repo.as_str()) else {
        return error(404, "RepoNotFound");
    };
    if repo == "acme/gated" {
        let auth = req
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str().to_string());
        if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
            return error(401, "GatedRepo");
        }
    }
    let commit = match rev {
        "main" if moved => COMMIT_NEXT,
        COMMIT_NEXT => COMMIT_NEXT,
        "main" | COMMIT_MAIN => COMMIT_MAIN,
        "v1" | COMMIT_V1 => COMMIT_V1,
        _ => return error(404, "RevisionNotFound"),
    };
    let Some(f) = files.get(name) else {
        return error(404, "EntryNotFound");
    };
    let size = f.bytes.len();
    let range = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Range"))
        .and_then(|h| h.value.as_str().strip_prefix("bytes=").map(String::from));
    let (status, body, content_range) = match range {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            let start: usize = a.parse().unwrap();
            let end: usize = if b.is_empty() {
                size - 1
            } else {
                b.parse::<usize>().unwrap().min(size - 1)
            };
            (
                206,
                f.bytes[start..=end].to_vec(),
                Some(format!("bytes {start}-{end}/{size}")),
            )
        }
        None => (200, f.bytes.clone(), None),
    };
    let is_head = *req.method() == tiny_http::Method::Head;
    let mut resp = tiny_http::Response::from_data(if is_head { Vec::new() } else { body })
        .with_status_code(status)
        .with_header(header("X-Repo-Commit", commit))
        .with_header(header("ETag", &format!("\"{}\"", f.etag)));
    if f.lfs {
        resp = resp
            .with_header(header("X-Linked-Etag", &format!("\"{}\"", f.etag)))
            .with_header(header("X-Linked-Size", &size.to_string()));
    }
    if let Some(cr) = content_range {
        resp = resp.with_header(header("Content-Range", &cr));
    }
    if is_head {
        resp = resp.with_header(header("Content-Length", &size.to_string()));
    }
    resp
}

fn vmt_hub(hub: &MockHub, hf_home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = vmt_hub_command();
    c.args(args)
        .env("HF_ENDPOINT", &hub.url)
        .env("HF_HOME", hf_home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE");
    c.envs(env.iter().copied());
    output_without_panic(&mut c)
}

fn fetch(hub: &MockHub, hf_home: &Path, env: &[(&str, &str)], repo: &str) -> Output {
    vmt_hub(hub, hf_home, env, &["backbone", "fetch", repo])
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn cache_repo(hf_home: &Path, repo: &str) -> PathBuf {
    hf_home
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")))
}

#[test]
fn fetch_then_cache_hit_then_offline() {
    let hub = mock_hub();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let o = fetch(&hub, &home, &[], "acme/swin-fixture");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(COMMIT_MAIN));
    let repo = cache_repo(&home, "acme/swin-fixture");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT_MAIN
    );
    let weights = repo
        .join("snapshots")
        .join(COMMIT_MAIN)
        .join("model.safetensors");
    let original = std::fs::read(fixtures().join("tiny/backbone/model.safetensors")).unwrap();
    assert_eq!(std::fs::read(&weights).unwrap(), original);
    assert!(
        repo.join("blobs").join(sha256_hex(&original)).is_file(),
        "blobs are named by their sha256"
    );
    assert!(text(&o).contains(&format!("sha256:{}", sha256_hex(&original))));

    // Fetched again online: the Hub is asked where main is (one metadata request per
    // file), nothing is downloaded again.
    let downloads = hub.downloads.load(Ordering::SeqCst);
    let o = fetch(&hub, &home, &[], "acme/swin-fixture");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        hub.downloads.load(Ordering::SeqCst),
        downloads,
        "a cached backbone is not downloaded again"
    );
    let before = hub.requests.load(Ordering::SeqCst);

    // Offline: a hit works, a miss fails at once, saying why; neither makes a request.
    let o = fetch(&hub, &home, &[("HF_HUB_OFFLINE", "1")], "acme/swin-fixture");
    assert!(o.status.success(), "{}", text(&o));
    let o = fetch(
        &hub,
        &home,
        &[("HF_HUB_OFFLINE", "1")],
        "acme/swin-fixture@v1",
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("HF_HUB_OFFLINE") && text(&o).contains("not in the cache"),
        "{}",
        text(&o)
    );
    assert_eq!(hub.requests.load(Ordering::SeqCst), before);

    // backbone list shows it with its commit, digest and parameter count.
    let o = vmt_hub(
        &hub,
        &home,
        &[("HF_HUB_OFFLINE", "1")],
        &["backbone", "list"],
    );
    let listing = text(&o);
    assert!(
        listing.contains("acme/swin-fixture")
            && listing.contains(&COMMIT_MAIN[..12])
            && listing.contains(&sha256_hex(&original)),
        "{listing}"
    );
    let params = vmt_hub::model::swin::parameter_count(&vmt_registry::bundle::SwinGeometry::tiny())
        .to_string();
    assert!(listing.contains(&params), "{listing}");
}

/// `main` moved on the Hub: offline, fetch stays on the cached commit and says so; online,
/// it follows main to the new commit, and the files whose blobs are already cached are
/// linked, not downloaded again (the mock Hub counts the downloads).
#[test]
fn a_moved_main_is_followed_online_and_kept_offline() {
    let hub = mock_hub();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let o = fetch(&hub, &home, &[], "acme/swin-fixture");
    assert!(
        o.status.success() && text(&o).contains(COMMIT_MAIN),
        "{}",
        text(&o)
    );
    let downloads = hub.downloads.load(Ordering::SeqCst);
    assert_eq!(downloads, 2, "config.json and the weights");
    hub.moved.store(true, Ordering::SeqCst);

    let requests = hub.requests.load(Ordering::SeqCst);
    let o = fetch(&hub, &home, &[("HF_HUB_OFFLINE", "1")], "acme/swin-fixture");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(COMMIT_MAIN)
            && text(&o).contains("HF_HUB_OFFLINE")
            && text(&o).contains("may have moved"),
        "offline stays on the cached commit and says so: {}",
        text(&o)
    );
    assert_eq!(
        hub.requests.load(Ordering::SeqCst),
        requests,
        "offline asks nothing"
    );

    let o = fetch(&hub, &home, &[], "acme/swin-fixture");
    assert!(
        o.status.success() && text(&o).contains(COMMIT_NEXT),
        "{}",
        text(&o)
    );
    let repo = cache_repo(&home, "acme/swin-fixture");
    let main = std::fs::read_to_string(repo.join("refs/main")).unwrap();
    assert_eq!(main.trim(), COMMIT_NEXT, "refs/main follows the Hub");
    let next = repo.join("snapshots").join(COMMIT_NEXT);
    let original = std::fs::read(fixtures().join("tiny/backbone/model.safetensors")).unwrap();
    assert_eq!(
        std::fs::read(next.join("model.safetensors")).unwrap(),
        original
    );
    assert_eq!(
        hub.downloads.load(Ordering::SeqCst),
        downloads,
        "the blobs were cached: nothing downloaded again"
    );
    // The old snapshot stays (a bundle may record it).
    assert!(repo
        .join("snapshots")
        .join(COMMIT_MAIN)
        .join("config.json")
        .is_file());
}

#[test]
fn revisions_are_pinned_to_commits() {
    let hub = mock_hub();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let o = fetch(&hub, &home, &[], "acme/swin-fixture@v1");
    assert!(o.status.success(), "{}", text(&o));
    let repo = cache_repo(&home, "acme/swin-fixture");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/v1"))
            .unwrap()
            .trim(),
        COMMIT_V1
    );
    assert!(repo
        .join("snapshots")
        .join(COMMIT_V1)
        .join("config.json")
        .is_file());
    assert!(
        !repo.join("refs/main").exists(),
        "fetching v1 does not move main"
    );
    // A commit id works offline once cached, with no ref needed.
    let o = fetch(
        &hub,
        &home,
        &[("HF_HUB_OFFLINE", "1")],
        &format!("acme/swin-fixture@{COMMIT_V1}"),
    );
    assert!(o.status.success(), "{}", text(&o));
    // A bundle trained on it records the commit and the digest.
    let b = vmt_hub::model::hub::cached(
        &vmt_hub::model::hub::HubEnv {
            endpoint: hub.url.clone(),
            cache: home.join("hub"),
            token: None,
            offline: true,
            progress: false,
        },
        &vmt_hub::model::hub::HubRef::parse("acme/swin-fixture@v1").unwrap(),
    )
    .unwrap();
    assert_eq!(b.commit, COMMIT_V1);
    let data = tmp.path().join("data");
    vmt_hub::data::synth::synthesize(&data, 4, 32, 0).unwrap();
    let reg = tmp.path().join("reg");
    let o = vmt_hub(
        &hub,
        &home,
        &[("HF_HUB_OFFLINE", "1")],
        &[
            "--registry",
            reg.to_str().unwrap(),
            "train",
            "--data",
            data.to_str().unwrap(),
            "--tasks",
            "sal",
            "--steps",
            "1",
            "--batch",
            "2",
            "--image-size",
            "32",
            "--quiet",
            "--backbone",
            "acme/swin-fixture@v1",
            "--run-dir",
            tmp.path().join("run").to_str().unwrap(),
            "--tag",
            "hub:v1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let shown = text(&vmt_hub(
        &hub,
        &home,
        &[],
        &["--registry", reg.to_str().unwrap(), "show", "hub:v1"],
    ));
    assert!(
        shown.contains("hf:acme/swin-fixture")
            && shown.contains(COMMIT_V1)
            && shown.contains(&b.digest),
        "{shown}"
    );
    // With no --backbone, the recorded one (pinned to its commit) is found in the cache.
    let img = tmp.path().join("x.png");
    image::RgbImage::new(20, 20).save(&img).unwrap();
    let out = tmp.path().join("p");
    let o = vmt_hub(
        &hub,
        &home,
        &[("HF_HUB_OFFLINE", "1")],
        &[
            "--registry",
            reg.to_str().unwrap(),
            "predict",
            "hub:v1",
            "--image",
            img.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("x.sal.png").is_file());
}

#[test]
fn gated_missing_and_tampered_files_are_refused() {
    let hub = mock_hub();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let o = fetch(&hub, &home, &[], "acme/gated");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("401") && text(&o).contains("HF_TOKEN"),
        "{}",
        text(&o)
    );
    let o = fetch(&hub, &home, &[("HF_TOKEN", TOKEN)], "acme/gated");
    assert!(o.status.success(), "with the token: {}", text(&o));

    let o = fetch(&hub, &home, &[], "acme/no-weights");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("404") && text(&o).contains("pytorch_model.bin"),
        "{}",
        text(&o)
    );

    let o = fetch(&hub, &home, &[], "acme/tampered");
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("ETag") && t.contains("discarded"), "{t}");
    let blobs = cache_repo(&home, "acme/tampered").join("blobs");
    let weights_sha =
        sha256_hex(&std::fs::read(fixtures().join("tiny/backbone/model.safetensors")).unwrap());
    assert!(
        !blobs.join(&weights_sha).exists(),
        "the bad download is not kept"
    );
    // And it is not found in the cache afterwards either.
    let o = fetch(&hub, &home, &[("HF_HUB_OFFLINE", "1")], "acme/tampered");
    assert!(!o.status.success());
}

#[test]
fn fetched_backbone_forwards_like_the_local_directory() {
    let hub = mock_hub();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let case = fixtures().join("tiny");
    let (a, b) = (
        tmp.path().join("a.safetensors"),
        tmp.path().join("b.safetensors"),
    );
    for (backbone, out) in [
        (case.join("backbone").to_str().unwrap().to_string(), &a),
        ("acme/swin-fixture".to_string(), &b),
    ] {
        let o = vmt_hub(
            &hub,
            &home,
            &[],
            &[
                "forward",
                "--bundle",
                case.join("bundle").to_str().unwrap(),
                "--backbone",
                &backbone,
                "--input",
                case.join("input.safetensors").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

fn python_has_hub() -> bool {
    Command::new("python3")
        .args(["-c", "import huggingface_hub"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn cache_is_shared_with_python_huggingface_hub() {
    if !common::tool_available(
        "python3 with huggingface_hub",
        python_has_hub(),
        "python3 -m pip install huggingface_hub",
    ) {
        return;
    }
    let hub = mock_hub();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    // Ours -> Python.
    assert!(fetch(&hub, &home, &[], "acme/swin-fixture")
        .status
        .success());
    let script = format!(
        "from huggingface_hub import try_to_load_from_cache as t\n\
         p = t('acme/swin-fixture', 'model.safetensors', cache_dir='{cache}')\n\
         q = t('acme/swin-fixture', 'config.json', cache_dir='{cache}', revision='{COMMIT_MAIN}')\n\
         assert isinstance(p, str) and isinstance(q, str), (p, q)\n\
         print(p)",
        cache = home.join("hub").display()
    );
    let o = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "python: {}", text(&o));
    let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(fixtures().join("tiny/backbone/model.safetensors")).unwrap()
    );

    // Python -> ours: Python downloads v1 from the mock Hub, we find it offline.
    let home2 = tmp.path().join("hf2");
    let script = "from huggingface_hub import hf_hub_download as d\n\
                  for f in ('config.json', 'model.safetensors'):\n    d('acme/swin-fixture', f, revision='v1')";
    let o = Command::new("python3")
        .args(["-c", script])
        .env("HF_ENDPOINT", &hub.url)
        .env("HF_HOME", &home2)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_XET", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "python download: {}", text(&o));
    let o = fetch(
        &hub,
        &home2,
        &[("HF_HUB_OFFLINE", "1")],
        "acme/swin-fixture@v1",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(COMMIT_V1));
}

#[test]
fn pytorch_bin_is_read_when_a_repo_has_no_safetensors() {
    // A torch.save zip made without torch (tests/support/safetensors_to_pth.py).
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("pytorch_model.bin");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/safetensors_to_pth.py");
    let made = Command::new("python3")
        .arg(&script)
        .arg(fixtures().join("tiny/backbone/model.safetensors"))
        .arg(&bin)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !common::tool_available("python3", made, "apt-get install -y python3") {
        return;
    }
    let config = std::fs::read(fixtures().join("tiny/backbone/config.json")).unwrap();
    let hub = mock_hub_with(vec![(
        "acme/bin-only",
        vec![
            ("config.json", config, false),
            ("pytorch_model.bin", std::fs::read(&bin).unwrap(), true),
        ],
    )]);
    let home = tmp.path().join("hf");
    let o = fetch(&hub, &home, &[], "acme/bin-only");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("pytorch_model.bin"), "{}", text(&o));
    let case = fixtures().join("tiny");
    let (a, b) = (
        tmp.path().join("a.safetensors"),
        tmp.path().join("b.safetensors"),
    );
    for (backbone, out) in [
        (case.join("backbone").to_str().unwrap().to_string(), &a),
        ("acme/bin-only".to_string(), &b),
    ] {
        let o = vmt_hub(
            &hub,
            &home,
            &[("HF_HUB_OFFLINE", "1")],
            &[
                "forward",
                "--bundle",
                case.join("bundle").to_str().unwrap(),
                "--backbone",
                &backbone,
                "--input",
                case.join("input.safetensors").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "the .bin backbone gives the same outputs"
    );
}

#[test]
fn backbone_list_shows_hf_and_timm_caches_with_their_format() {
    let hub = mock_hub();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let weights = std::fs::read(fixtures().join("tiny/backbone/model.safetensors")).unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let configs = [
        (
            "timm/swin_tiny_patch4_window7_224.ms_in1k",
            r#"{"architecture": "swin_tiny_patch4_window7_224", "num_classes": 1000}"#.to_string(),
        ),
        (
            "acme/hf-swin",
            std::fs::read_to_string(fixtures().join("tiny/backbone/config.json")).unwrap(),
        ),
        ("acme/not-a-swin", r#"{"model_type": "vit"}"#.to_string()),
    ];
    for (repo, config) in &configs {
        let dir = cache_repo(&home, repo);
        let snap = dir.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(dir.join("refs")).unwrap();
        std::fs::write(dir.join("refs/main"), commit).unwrap();
        std::fs::write(snap.join("config.json"), config).unwrap();
        std::fs::write(snap.join("model.safetensors"), &weights).unwrap();
    }
    let o = vmt_hub(
        &hub,
        &home,
        &[("HF_HUB_OFFLINE", "1")],
        &["backbone", "list"],
    );
    let listing = text(&o);
    assert!(o.status.success(), "{listing}");
    let line = |repo: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(repo))
            .map(String::from)
    };
    let timm = line("timm/swin_tiny_patch4_window7_224.ms_in1k").expect(&listing);
    assert!(timm.split_whitespace().nth(1) == Some("timm"), "{timm}");
    let swin_t =
        vmt_hub::model::swin::parameter_count(&vmt_registry::bundle::SwinGeometry::swin_t());
    assert!(timm.contains(&swin_t.to_string()), "{timm}");
    let hf = line("acme/hf-swin").expect(&listing);
    assert!(hf.split_whitespace().nth(1) == Some("hf"), "{hf}");
    assert!(line("acme/not-a-swin").is_none(), "{listing}");
}
