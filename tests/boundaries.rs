//! Every boundary bounded, through the real `vmt-hub` binary: silent and trickling
//! servers end a pull or push within about `--read-timeout`; devices, FIFOs and
//! oversized files are refused quickly in bounded memory; export never writes through
//! a symlink; a tag file deleted by hand loses nothing; a full disk on stdout is a clean
//! error; a missing password without a terminal says what to set.

mod common;
#[path = "../registry/tests/common/hostile.rs"]
mod hostile;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{blob_files as blob_count, fixtures, vmt_hub_command};

/// Address space the tool gets where a test says "bounded memory" (`ulimit -v`, KiB).
const ULIMIT_V_KIB: u64 = 2 << 20;

/// Runs `vmt-hub --registry root args` under `ulimit -v`, killing it after `limit`
/// (a hang fails the test instead of stalling the suite). Returns the output and the
/// time it took.
fn run_bounded(root: &Path, args: &[&str], limit: Duration) -> (Output, Duration) {
    let bin = vmt_hub_command().get_program().to_owned();
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -v {ULIMIT_V_KIB} && exec \"$0\" \"$@\""))
        .arg(bin)
        .arg("--registry")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "{args:?} still running after {limit:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    (o, start.elapsed())
}

fn ok(root: &Path, args: &[&str]) -> String {
    let (o, _) = run_bounded(root, args, Duration::from_secs(120));
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a command that must fail within `limit`; returns its stderr.
fn fails_within(root: &Path, args: &[&str], limit: Duration) -> String {
    let (o, took) = run_bounded(root, args, limit);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{args:?} should fail: {stderr}");
    assert!(took < limit, "{args:?} took {took:?}");
    stderr
}

fn copy_bundle(fixture: &str, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for f in ["bundle.json", "adapter.safetensors"] {
        std::fs::copy(fixtures().join(fixture).join("bundle").join(f), to.join(f)).unwrap();
    }
    to.into()
}

/// Every file under the registry's blobs, tags and tag history, with its bytes.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.join("blobs"), root.join("tags")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    if let Ok(b) = std::fs::read(root.join("tags.log")) {
        out.insert(root.join("tags.log"), b);
    }
    out
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {p:?}"
    );
}

/// A registry holding the tiny fixture as `a:v1`.
fn registry_with_a(dir: &Path) -> PathBuf {
    let root = dir.join("reg");
    let b = copy_bundle("tiny", &dir.join("a"));
    ok(&root, &["import", b.to_str().unwrap(), "--tag", "a:v1"]);
    root
}

#[test]
fn pull_and_push_end_within_the_read_timeout_on_silent_and_trickling_servers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = registry_with_a(tmp.path());
    let before = snapshot(&root);
    let silent = hostile::start(|_, _, _| std::thread::sleep(Duration::from_secs(600)));
    let dripping_body = hostile::start(|_, _, s| hostile::drip(s, Duration::from_millis(700)));
    let dripping_head = hostile::start(|_, _, s: &mut TcpStream| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX-Slow: ");
        for _ in 0..1000 {
            std::thread::sleep(Duration::from_millis(700));
            if s.write_all(b"a").is_err() {
                return;
            }
        }
    });
    // With --read-timeout 2: a silent request ends after 2 s and is retried once; a
    // trickle is cut after one 2 s window; --timeout (600 s) never comes into it.
    let limit = Duration::from_secs(25);
    for (server, what) in [
        (&silent, "silent"),
        (&dripping_body, "trickling body"),
        (&dripping_head, "trickling headers"),
    ] {
        let remote = format!("oci://127.0.0.1:{}/team/a:v1", server.port);
        let bounds = ["--read-timeout", "2", "--timeout", "600", "--quiet"];
        // A push reads no response body worth trickling: the body case is pull's.
        let cmds: &[&str] = if what == "trickling body" {
            &["pull"]
        } else {
            &["pull", "push"]
        };
        for &cmd in cmds {
            let mut args = vec![cmd];
            if cmd == "push" {
                args.push("a:v1");
            }
            args.push(&remote);
            args.extend(bounds);
            let err = fails_within(&root, &args, limit);
            assert!(
                err.contains(&format!("127.0.0.1:{}", server.port)),
                "{what} {cmd}: the error names the host: {err}"
            );
            assert!(
                err.contains("--read-timeout") || err.contains("--min-rate"),
                "{what} {cmd}: the error names the bound: {err}"
            );
        }
    }
    assert_eq!(
        snapshot(&root),
        before,
        "a failed pull or push changed the registry"
    );
}

#[test]
fn import_refuses_devices_fifos_and_oversized_files_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let limit = Duration::from_secs(20);
    let case = |name: &str, prepare: &dyn Fn(&Path), needles: &[&str]| {
        let dir = copy_bundle("tiny", &tmp.path().join(name));
        prepare(&dir);
        let err = fails_within(
            &root,
            &["import", dir.to_str().unwrap(), "--tag", "x:v1"],
            limit,
        );
        for n in needles {
            assert!(err.contains(n), "{name}: error should mention {n:?}: {err}");
        }
    };
    let replace = |dir: &Path, file: &str, with: &dyn Fn(&Path)| {
        let p = dir.join(file);
        std::fs::remove_file(&p).unwrap();
        with(&p);
    };
    for dev in ["/dev/zero", "/dev/urandom"] {
        case(
            &format!("dev{}", dev.replace('/', "-")),
            &|d| {
                replace(d, "adapter.safetensors", &|p| {
                    std::os::unix::fs::symlink(dev, p).unwrap()
                })
            },
            &["adapter.safetensors", "character device"],
        );
    }
    for file in ["bundle.json", "adapter.safetensors"] {
        case(
            &format!("fifo-{file}"),
            &|d| replace(d, file, &mkfifo),
            &[file, "FIFO"],
        );
    }
    // A sparse file declaring 6 GB: refused by its size, nothing read.
    case(
        "sparse",
        &|d| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("adapter.safetensors"))
                .unwrap()
                .set_len(6 << 30)
                .unwrap()
        },
        &["adapter.safetensors", "larger than"],
    );
    // A 50 MB safetensors header: refused by the file's size before it is read.
    case(
        "huge-header",
        &|d| {
            let header = format!("{{\"pad\":\"{}\"}}", " ".repeat(50 << 20));
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            std::fs::write(d.join("adapter.safetensors"), bytes).unwrap();
        },
        &["adapter.safetensors", "larger than"],
    );
    assert!(
        !root.join("tags").exists() || std::fs::read_dir(root.join("tags")).unwrap().count() == 0,
        "a refused import tagged something"
    );
}

#[test]
fn export_replaces_symlinks_and_fifos_instead_of_writing_through_them() {
    let tmp = tempfile::tempdir().unwrap();
    let root = registry_with_a(tmp.path());
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let outside = tmp.path().join("precious.txt");
    std::fs::write(&outside, b"do not overwrite me\n").unwrap();
    std::os::unix::fs::symlink(&outside, out.join("bundle.json")).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("adapter.safetensors")).unwrap();
    ok(&root, &["export", "a:v1", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&outside).unwrap(), b"do not overwrite me\n");
    for f in ["bundle.json", "adapter.safetensors"] {
        let meta = std::fs::symlink_metadata(out.join(f)).unwrap();
        assert!(meta.is_file(), "{f} is a regular file now");
    }
    // The export is whole: it imports to the same digest.
    let again = ok(
        &root,
        &["import", out.to_str().unwrap(), "--tag", "a:again"],
    );
    let d = again
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap()
        .to_string();
    assert!(
        ok(&root, &["show", "a:v1"]).contains(&d),
        "export/import kept the digest {d}"
    );

    // A FIFO where a file goes is replaced, not opened (which would block).
    let fifo_dir = tmp.path().join("fifo-out");
    std::fs::create_dir_all(&fifo_dir).unwrap();
    mkfifo(&fifo_dir.join("bundle.json"));
    let (o, took) = run_bounded(
        &root,
        &["export", "a:v1", fifo_dir.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(o.status.success() && took < Duration::from_secs(20));
    assert!(std::fs::symlink_metadata(fifo_dir.join("bundle.json"))
        .unwrap()
        .is_file());
}

#[test]
fn a_fifo_in_the_tag_record_is_an_error_naming_it_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let root = registry_with_a(tmp.path());
    let fifo = root.join("tags").join("0".repeat(64));
    mkfifo(&fifo);
    let err = fails_within(&root, &["list"], Duration::from_secs(20));
    assert!(
        err.contains(&"0".repeat(64)) && err.contains("FIFO"),
        "{err}"
    );
}

#[test]
fn a_tag_file_deleted_by_hand_is_kept_reported_and_restorable() {
    let tmp = tempfile::tempdir().unwrap();
    let root = registry_with_a(tmp.path());
    let lite = copy_bundle("tiny-lite", &tmp.path().join("lite"));
    ok(&root, &["import", lite.to_str().unwrap(), "--tag", "b:v1"]);
    let blobs = blob_count(&root);
    // Delete a:v1's tag file by hand.
    let tag_files: Vec<PathBuf> = std::fs::read_dir(root.join("tags"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let a_file = tag_files
        .iter()
        .find(|p| std::fs::read_to_string(p).unwrap().contains("\"a:v1\""))
        .unwrap();
    std::fs::remove_file(a_file).unwrap();

    // list: one bundle less, and a warning that says how to get it back.
    let (o, _) = run_bounded(&root, &["list"], Duration::from_secs(60));
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(!out.contains("a:v1") && out.contains("b:v1"), "{out}");
    assert!(
        err.contains("a:v1") && err.contains("vanished") && err.contains("--restore"),
        "{err}"
    );
    // verify reports it as a problem.
    let (o, _) = run_bounded(&root, &["verify"], Duration::from_secs(60));
    let verify = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "verify passed: {verify}");
    assert!(
        verify.contains("a:v1") && verify.contains("vanished"),
        "{verify}"
    );
    // gc with the default grace period deletes nothing.
    let gc = ok(&root, &["gc"]);
    assert_eq!(blob_count(&root), blobs, "gc deleted blobs: {gc}");
    // The history knows; the tag comes back to the same bundle.
    let log = ok(&root, &["log", "a:v1"]);
    assert!(log.contains("a:v1") && log.contains("set"), "{log}");
    let restored = ok(&root, &["tag", "--restore", "a:v1"]);
    assert!(restored.contains("restored a:v1"), "{restored}");
    assert!(ok(&root, &["list"]).contains("a:v1"));
    // verify counts each blob once, however many tags share it.
    ok(&root, &["tag", "a:v1", "a:alias"]);
    let verify = ok(&root, &["verify"]);
    assert!(
        verify.contains(&format!("checked {} blob(s)", blob_count(&root))),
        "{verify}"
    );
    ok(&root, &["rm", "a:alias"]);

    // rm records the removal: the bundle stays for the grace period, then goes.
    ok(&root, &["rm", "a:v1"]);
    ok(&root, &["gc"]);
    assert_eq!(blob_count(&root), blobs, "gc ignored the grace period");
    let dry = ok(&root, &["gc", "--dry-run", "--prune-older-than", "0s"]);
    assert!(dry.contains("would delete"), "{dry}");
    ok(&root, &["gc", "--prune-older-than", "0s"]);
    assert!(
        blob_count(&root) < blobs,
        "nothing freed after the grace period"
    );
    // And it can still be named in the history after it is gone, but not restored.
    let err = fails_within(
        &root,
        &["tag", "--restore", "a:v1"],
        Duration::from_secs(30),
    );
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn a_registry_from_before_the_history_keeps_a_tag_deleted_by_hand() {
    // The index still knows a tag whose file is gone and there is no tags.log yet (a
    // registry of the previous version): the first open records it as vanished.
    let tmp = tempfile::tempdir().unwrap();
    let root = registry_with_a(tmp.path());
    let blobs = blob_count(&root);
    std::fs::remove_file(root.join("tags.log")).unwrap();
    for e in std::fs::read_dir(root.join("tags")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    ok(&root, &["gc"]);
    assert_eq!(blob_count(&root), blobs);
    let (o, _) = run_bounded(&root, &["list"], Duration::from_secs(60));
    assert!(String::from_utf8_lossy(&o.stderr).contains("a:v1"));
    ok(&root, &["tag", "--restore", "a:v1"]);
    assert!(ok(&root, &["list"]).contains("a:v1"));
}

#[test]
fn writing_to_a_full_disk_is_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();
    let root = registry_with_a(tmp.path());
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = vmt_hub_command()
        .arg("--registry")
        .arg(&root)
        .args(["show", "a:v1"])
        .stdout(full)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write to standard output"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn a_password_with_no_terminal_says_what_to_set() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = registry_with_a(tmp.path());
    let mut c = vmt_hub_command();
    c.arg("--registry")
        .arg(&root)
        .args([
            "push",
            "a:v1",
            "oci://127.0.0.1:9/x/a:v1",
            "--user",
            "alice",
        ])
        .env_remove("VMT_REGISTRY_PASSWORD")
        .stdin(Stdio::null());
    // SAFETY: setsid only detaches the child from the controlling terminal.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("VMT_REGISTRY_PASSWORD") && err.contains("alice"),
        "{err}"
    );
}
