//! docs/guide.md as written: every `vmt-hub` command of its code blocks runs, in order,
//! from a fresh registry and working folder, with small sizes and step counts, the
//! `random:tiny` backbone in place of the Hub's, and a local `vmt-hub serve` in place of
//! `ghcr.io`. A step that needs a file no earlier step made fails here. The claims the
//! guide makes about what a command does are checked where it makes them.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{blob_files as blob_count, vmt_hub_command};

/// The `vmt-hub` command lines of the guide's shell blocks, continuation lines joined,
/// `&&` chains split, comments dropped.
fn guide_commands() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/guide.md"))
        .unwrap();
    let mut out = Vec::new();
    let mut in_shell = false;
    let mut pending = String::new();
    for line in text.lines() {
        if let Some(lang) = line.strip_prefix("```") {
            in_shell = !in_shell && lang.trim().is_empty();
            continue;
        }
        if !in_shell {
            continue;
        }
        let line = match line.find("  #") {
            Some(i) => &line[..i],
            None => line,
        };
        pending.push_str(line.trim_end().trim_end_matches('\\'));
        pending.push(' ');
        if line.trim_end().ends_with('\\') {
            continue;
        }
        for part in pending.split("&&") {
            let cmd = part.split_whitespace().collect::<Vec<_>>().join(" ");
            if cmd.starts_with("vmt-hub ") || cmd.starts_with("export ") {
                out.push(cmd);
            }
        }
        pending.clear();
    }
    out
}

/// The guide's sizes and places, made small and local.
fn localise(cmd: &str, port: u16) -> String {
    [
        ("microsoft/swin-tiny-patch4-window7-224", "random:tiny"),
        ("--count 2000 --size 224", "--count 10 --size 64"),
        (
            "--image-size 224 --batch 8 --steps 20000",
            "--image-size 64 --batch 2 --steps 3",
        ),
        ("--steps 5000", "--steps 2 --batch 2"),
        ("oci://ghcr.io/", &format!("oci://127.0.0.1:{port}/")),
        (" --user me", ""),
    ]
    .iter()
    .fold(cmd.to_string(), |c, (from, to)| c.replace(from, to))
}

/// `vmt-hub serve` on its own registry; its port.
fn serve(root: &Path) -> (common::KillOnDrop, u16) {
    let (child, port) = common::spawn_serve(root, &[]);
    (common::KillOnDrop(child), port)
}

#[test]
fn the_guide_runs_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&work).unwrap();
    let (_served, port) = serve(&tmp.path().join("served"));
    let commands = guide_commands();
    assert!(commands.len() >= 25, "{commands:?}");
    let mut outputs: Vec<(String, String)> = Vec::new();
    let mut env: Vec<(String, String)> = Vec::new();
    for cmd in &commands {
        // `export NAME='VALUE'`: set for the steps after it.
        if let Some((name, value)) = cmd.strip_prefix("export ").and_then(|a| a.split_once('=')) {
            env.push((name.into(), value.trim_matches('\'').into()));
            continue;
        }
        // Needs the network, or runs until stopped: the test has its own serve.
        if cmd.starts_with("vmt-hub backbone fetch") || cmd.starts_with("vmt-hub serve") {
            continue;
        }
        let cmd = localise(cmd, port);
        let (cmd, redirect) = match cmd.split_once(" > ") {
            Some((c, file)) => (c.to_string(), Some(file.trim().to_string())),
            None => (cmd, None),
        };
        let args: Vec<&str> = cmd.split_whitespace().skip(1).collect();
        let blobs_before = blob_count(&home);
        let o = Command::new(vmt_hub_command().get_program())
            .args(&args)
            .current_dir(&work)
            .env("VMT_HOME", &home)
            .env("HF_HOME", tmp.path().join("hf"))
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("VMT_REGISTRY_PASSWORD")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        assert!(o.status.success(), "guide step `{cmd}` failed:\n{err}");
        assert!(!err.contains("panicked"), "`{cmd}`: {err}");
        if let Some(file) = redirect {
            std::fs::write(work.join(file), &out).unwrap();
        }
        let new_blobs = blob_count(&home) - blobs_before;
        // What the guide says of this step.
        match args.first().copied() {
            Some("tag") => assert_eq!(new_blobs, 0, "`{cmd}`: tag writes no blob"),
            Some("add-task") => assert_eq!(
                new_blobs, 3,
                "`{cmd}`: one new component, a config and a manifest"
            ),
            Some("merge" | "drop-task" | "rename-task") => {
                assert_eq!(new_blobs, 2, "`{cmd}`: one config and one manifest")
            }
            _ => {}
        }
        eprintln!("ran: {cmd}");
        outputs.push((cmd, out));
    }
    let said = |prefix: &str| {
        outputs
            .iter()
            .find(|(c, _)| c.starts_with(prefix))
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("the guide has no `{prefix}`"))
    };
    // Section 6: the signed bundle is verified on pull.
    let pulled = said("vmt-hub pull oci://127.0.0.1");
    let verified = outputs
        .iter()
        .find(|(c, _)| c.contains("--verify-key team.pub"))
        .map(|(_, o)| o.clone())
        .expect("the guide pulls with --verify-key");
    assert!(
        verified.contains("verified: signed by key sha256:"),
        "{verified}"
    );
    assert!(pulled.contains("pulled"), "{pulled}");
    // Section 7: v2 names v1 as its parent; Δm against v1.
    let v1 = said("vmt-hub show pascal/vmt:v1");
    let v1_digest = v1.lines().next().unwrap().trim_start_matches("digest: ");
    assert!(said("vmt-hub show pascal/vmt:v2").contains(v1_digest));
    assert!(said("vmt-hub eval pascal/vmt:v2").contains("Δm"));
    // Section 8: families and per-task provenance.
    assert!(said("vmt-hub list --tree").contains("shared "));
    assert!(said("vmt-hub show pascal/vmt:all").contains("tasks (how each was trained)"));
    // Section 5: the history knows the removed tag.
    assert!(said("vmt-hub log other:v1").contains("rm"));
    // Section 4 and 9: pictures and outputs were written.
    assert!(std::fs::read_dir(work.join("pictures")).unwrap().count() > 0);
    assert!(work.join("y.safetensors").is_file());
    serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(work.join("v1.json")).unwrap(),
    )
    .expect("eval --json prints JSON");
}
