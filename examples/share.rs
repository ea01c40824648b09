//! Share a bundle over the OCI Distribution API: start `serve` in-process on loopback,
//! push a bundle to it, pull it into a second registry and verify it.
//!
//! ```text
//! cargo run --release --example share
//! ```
//! Any OCI registry works the same way (`oci://ghcr.io/OWNER/REPO:TAG`, ...).

use std::path::Path;

use vmt_hub::registry::bundle::BundleDir;
use vmt_hub::registry::reference::TagName;
use vmt_hub::registry::remote::client::{Client, Credentials};
use vmt_hub::registry::remote::server::{serve_until, ServeOptions};
use vmt_hub::registry::remote::transfer::{pull, push, Quiet};
use vmt_hub::registry::remote::RemoteRef;
use vmt_hub::registry::Registry;

fn main() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    // `cargo run` sets CARGO_MANIFEST_DIR at run time too; the compile-time value is the
    // fallback for a binary run by hand.
    let repo = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).into());
    let fixtures = repo.join("tests/fixtures/tiny");

    // Ours: a registry with one bundle.
    let mine = Registry::open(&tmp.path().join("mine"))?;
    mine.publish(
        &BundleDir::read(&fixtures.join("bundle"))?,
        &TagName::parse("fixture:tiny")?,
    )?;

    // A server over another registry, on a free loopback port, in a thread.
    let served = tmp.path().join("served");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let reg = Registry::open(&served)?;
        let opts = ServeOptions::new("127.0.0.1:0".parse()?);
        tokio::runtime::Runtime::new()?.block_on(serve_until(
            reg,
            opts,
            |addr| addr_tx.send(addr).expect("main thread waits"),
            async {
                let _ = stop_rx.await;
            },
        ))?;
        Ok(())
    });
    let addr = addr_rx.recv()?;

    // push: only blobs the server lacks travel.
    let remote = RemoteRef::parse(&format!("oci://{addr}/team/vmt:v1"), false)?;
    let client = Client::new(&remote.base, Credentials::default());
    let sent = push(&mine, "fixture:tiny", &remote, &client, &mut Quiet)?;
    println!(
        "pushed {} blobs ({} bytes)",
        sent.blobs_sent, sent.bytes_sent
    );

    // pull into a second registry: streamed, verified, validated, then stored.
    let theirs = Registry::open(&tmp.path().join("theirs"))?;
    let got = pull(&theirs, &remote, &client, None, &mut Quiet)?;
    println!(
        "pulled {} blobs ({} bytes)",
        got.blobs_received, got.bytes_received
    );
    let report = theirs.verify(None)?;
    println!(
        "verify: {} blobs checked, {} problem(s)",
        report.blobs_checked,
        report.problems.len()
    );
    assert_eq!(
        theirs.resolve("team/vmt:v1")?,
        mine.resolve("fixture:tiny")?
    );

    stop_tx.send(()).ok();
    server.join().expect("server thread")?;
    Ok(())
}
