//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod servers;

use std::path::PathBuf;

use candle_core::Tensor;

/// `tests/fixtures`: the parity fixtures made by `reference/make_fixtures.py` (or the
/// folder `VMT_FIXTURES` names, to check a freshly made set).
pub fn fixtures() -> PathBuf {
    std::env::var_os("VMT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

/// Largest `|a - b| - rel*|b|` over all elements; <= abs means within tolerance.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, abs: f32, rel: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut worst = (0usize, 0f32);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let excess = (a - b).abs() - rel * b.abs();
        assert!(a.is_finite(), "{what}: element {i} is {a}");
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    assert!(
        worst.1 <= abs,
        "{what}: element {} is {} but the reference has {} (tolerance {abs} + {rel}·|ref|)",
        worst.0,
        g[worst.0],
        w[worst.0]
    );
}

/// Gradient tolerance of the fixtures: max |a - b| within `rel` of max |b|.
pub fn assert_grad_close(what: &str, got: &Tensor, want: &Tensor, rel: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = g
        .iter()
        .zip(&w)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(scale > 0.0, "{what}: the reference gradient is all zero");
    assert!(
        err <= rel * scale,
        "{what}: max error {err} exceeds {rel} x max |grad| {scale}"
    );
}

/// The `vmt-hub` binary under test.
pub fn vmt_hub_command() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_vmt-hub"))
}

/// `vmt-hub --registry ROOT ARGS...`, run to completion.
pub fn vmt_hub(root: &std::path::Path, args: &[&str]) -> std::process::Output {
    vmt_hub_env(root, args, &[])
}

/// [`vmt_hub`] with environment variables set.
pub fn vmt_hub_env(
    root: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut c = vmt_hub_command();
    c.arg("--registry")
        .arg(root)
        .args(args)
        .envs(env.iter().copied());
    output_without_panic(&mut c)
}

/// [`vmt_hub`] that must succeed; its stdout.
pub fn ok(root: &std::path::Path, args: &[&str]) -> String {
    ok_with_stderr(root, args).0
}

/// [`vmt_hub`] that must succeed; its stdout and stderr.
pub fn ok_with_stderr(root: &std::path::Path, args: &[&str]) -> (String, String) {
    let o = vmt_hub(root, args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "{args:?}: {err}");
    (out, err)
}

/// [`vmt_hub`] that must fail with an error naming each of `needles`.
pub fn fails(root: &std::path::Path, args: &[&str], needles: &[&str]) {
    let o = vmt_hub(root, args);
    assert!(!o.status.success(), "{args:?} should fail");
    let stderr = String::from_utf8_lossy(&o.stderr);
    for n in needles {
        assert!(
            stderr.contains(n),
            "{args:?}: error should mention {n:?}: {stderr}"
        );
    }
}

/// The size of every blob file of the registry at `root` (none if it has no blobs).
pub fn blob_sizes(root: &std::path::Path) -> Vec<u64> {
    std::fs::read_dir(root.join("blobs/sha256"))
        .map(|d| d.map(|e| e.unwrap().metadata().unwrap().len()).collect())
        .unwrap_or_default()
}

/// How many blob files the registry at `root` holds.
pub fn blob_files(root: &std::path::Path) -> usize {
    blob_sizes(root).len()
}

/// Runs one named step of a scenario test: a failure in it says which step failed.
pub fn step<T>(name: &str, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("step {name:?} failed: {msg}")
        }
    }
}

/// Runs a command to completion; a panic in the process fails the test.
pub fn output_without_panic(cmd: &mut std::process::Command) -> std::process::Output {
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    o
}

/// Whether an external tool a test needs is here. Under `CI=true` a missing tool fails
/// the test (`.ci/run` installs every one); elsewhere the test says what it skips and
/// how to install the tool.
pub fn tool_available(what: &str, available: bool, install: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what} is not installed and CI=true: {install}");
    }
    eprintln!("SKIPPED: {what} is not installed, so its part of this test did not run; install it with: {install}");
    false
}

/// Whether skopeo is installed (see [`tool_available`]).
pub fn skopeo() -> bool {
    let here = std::process::Command::new("skopeo")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    tool_available("skopeo", here, "apt-get install -y skopeo")
}

/// The Python (`VMT_PYTHON`, else python3) if `import` runs in it (see
/// [`tool_available`]; `what` names it, `packages` are what pip installs).
pub fn python_with(what: &str, import: &str, packages: &str) -> Option<String> {
    let python = std::env::var("VMT_PYTHON").unwrap_or_else(|_| "python3".into());
    let here = std::process::Command::new(&python)
        .args(["-c", import])
        .output()
        .is_ok_and(|o| o.status.success());
    let install = format!("python3 -m pip install {packages}");
    tool_available(&format!("python3 with {what}"), here, &install).then_some(python)
}

/// The Python with oras-py, if it has it.
pub fn python_with_oras() -> Option<String> {
    python_with("oras", "import oras.client", "oras")
}

/// Debian's docker-registry (distribution 2.8), if installed.
pub fn docker_registry() -> Option<&'static str> {
    let bin = ["/usr/bin/docker-registry", "/usr/local/bin/docker-registry"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    tool_available(
        "docker-registry",
        bin.is_some(),
        "apt-get install -y docker-registry",
    )
    .then(|| bin.expect("checked"))
}

/// A child process killed (and reaped) when dropped: a server a test started.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `vmt-hub --registry root serve --addr 127.0.0.1:0 extra...`, and the port it says it
/// listens on. The caller kills the child.
pub fn spawn_serve(root: &std::path::Path, extra: &[&str]) -> (std::process::Child, u16) {
    use std::io::BufRead;
    let mut child = vmt_hub_command()
        .arg("--registry")
        .arg(root)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("serve said {line:?}"));
    (child, port)
}
