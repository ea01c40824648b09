//! push and pull of bundles over the OCI Distribution API.
//!
//! Push: HEAD each blob and skip what the remote has, upload the rest (one PUT for
//! small blobs, PATCH chunks that resume after a broken connection for large ones),
//! then PUT the manifest by tag. Pull: the manifest (with the OCI `Accept` header), then
//! every blob, each checked against its digest and size; the bundle is checked whole
//! and only then published locally, so a failed pull changes nothing.
//!
//! A pull trusts nothing the remote declares: the manifest is bounded in size and layer
//! count, the config is fetched first (at most 1 MiB) and validated, each layer's
//! declared size must be one its config allows, and each blob is streamed to a temp
//! file with a cap at its declared size, hashed on the way. Memory stays constant
//! whatever the server sends; the client's deadlines bound the time.

use std::path::Path;

use super::client::{sanitize, Client};
use super::{RemoteRef, RemoteTarget};
use crate::bundle::check::{check_component, check_layers, check_manifest, MAX_MANIFEST_BYTES};
use crate::bundle::dir::parse_config;
use crate::bundle::BundleConfig;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{Manifest, MANIFEST_MEDIA_TYPE};
use crate::reference::TagName;
use crate::sign::policy::Trust;
use crate::store::Registry;

/// Progress callbacks: `start(what, total bytes)`, `advance(bytes)`, `finish()`.
pub trait Progress {
    /// A transfer of `total` bytes begins.
    fn start(&mut self, _what: &str, _total: u64) {}
    /// `bytes` more went.
    fn advance(&mut self, _bytes: u64) {}
    /// The transfer ended.
    fn finish(&mut self) {}
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {}

/// What a push or pull did.
#[derive(Debug, Clone, Default)]
pub struct TransferReport {
    /// The manifest pushed or pulled.
    pub manifest: Option<Digest>,
    /// Blobs uploaded.
    pub blobs_sent: usize,
    /// Bytes uploaded.
    pub bytes_sent: u64,
    /// Blobs the remote already had.
    pub blobs_skipped: usize,
    /// Blobs the registry copied from another of its repositories (cross-repo mount).
    pub blobs_mounted: usize,
    /// Blobs downloaded.
    pub blobs_received: usize,
    /// Bytes downloaded.
    pub bytes_received: u64,
    /// Signatures the bundle has on the remote after a push, or that a pull brought.
    pub signatures: usize,
    /// Fingerprints of the keys whose signatures a pull checked.
    pub verified_by: Vec<Digest>,
}

/// Appends `digest=` to an upload location (which may already carry a query).
fn with_digest(location: &str, d: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={d}")
}

fn location(reply: &super::client::Reply, remote: &str) -> Result<String> {
    reply
        .header("Location")
        .ok_or_else(|| Error::remote(remote, None, "upload answer has no Location header"))
}

/// The offset after an upload's `Range: 0-<last>`, if it parses.
pub(crate) fn range_end(range: &str) -> Option<usize> {
    let (_, last) = range.trim().split_once('-')?;
    let last: usize = last.trim().parse().ok()?;
    last.checked_add(1)
}

/// How a blob got to the remote.
enum Sent {
    Uploaded,
    Mounted,
}

/// Opens an upload session (or, with `mount_from`, asks the registry to copy the blob
/// from another of its repositories: a 201 answer means it did).
fn start_upload(
    client: &Client,
    repo: &str,
    d: &Digest,
    mount_from: Option<&str>,
    what: &str,
) -> Result<super::client::Reply> {
    let path = match mount_from {
        Some(from) => format!("/v2/{repo}/blobs/uploads/?mount={d}&from={from}"),
        None => format!("/v2/{repo}/blobs/uploads/"),
    };
    client.send("POST", &path, &[("Content-Length", "0")], Some(&[]), what)
}

/// Uploads one blob, or mounts it from `mount_from` where the registry offers that.
/// A registry that forgot the upload session (404 BLOB_UPLOAD_UNKNOWN, as after a
/// restart) gets the blob again from the start, once.
fn upload(
    client: &Client,
    repo: &str,
    d: &Digest,
    bytes: &[u8],
    mount_from: Option<&str>,
    progress: &mut dyn Progress,
) -> Result<Sent> {
    match upload_once(client, repo, d, bytes, mount_from, progress) {
        Err(Error::Remote {
            status: Some(404),
            reason,
            ..
        }) => {
            tracing::warn!(
                "{}: upload of {d}: {reason}; the registry lost the upload session, starting this blob again",
                client.base
            );
            upload_once(client, repo, d, bytes, None, progress)
        }
        other => other,
    }
}

/// PATCHes `bytes` to the upload session at `loc` in chunks of the client's size; after
/// a failed chunk, asks the registry how much it has and goes on from there (a fresh
/// session when it cannot say), up to three times. Returns the session's last location.
fn upload_chunks(
    client: &Client,
    repo: &str,
    d: &Digest,
    bytes: &[u8],
    mut loc: String,
    what: &str,
    progress: &mut dyn Progress,
) -> Result<String> {
    let chunk = client.chunk_size.max(1);
    let (mut offset, mut failures) = (0usize, 0);
    while offset < bytes.len() {
        let end = (offset + chunk).min(bytes.len());
        let range = format!("{offset}-{}", end - 1);
        let headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", range.as_str()),
        ];
        match client.send("PATCH", &loc, &headers, Some(&bytes[offset..end]), what) {
            Ok(reply) => {
                loc = location(&reply, &client.base)?;
                progress.advance((end - offset) as u64);
                offset = end;
            }
            Err(e) if failures < 3 => {
                failures += 1;
                tracing::debug!("{what}: {e}; resuming");
                (offset, loc) = resume_point(client, repo, d, loc, bytes.len(), what)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(loc)
}

/// Where an interrupted upload goes on: the end of the range the registry says it has
/// (and its new location), or 0 in a fresh session when it cannot say (distribution's
/// upload state may have moved on).
fn resume_point(
    client: &Client,
    repo: &str,
    d: &Digest,
    loc: String,
    len: usize,
    what: &str,
) -> Result<(usize, String)> {
    match client.send("GET", &loc, &[], None, what) {
        Ok(status) => {
            let offset = status
                .header("Range")
                .and_then(|r| range_end(&r))
                .filter(|&end| end <= len)
                .unwrap_or(0);
            Ok((offset, status.header("Location").unwrap_or(loc)))
        }
        Err(_) => {
            let restart = start_upload(client, repo, d, None, what)?;
            Ok((0, location(&restart, &client.base)?))
        }
    }
}

fn upload_once(
    client: &Client,
    repo: &str,
    d: &Digest,
    bytes: &[u8],
    mount_from: Option<&str>,
    progress: &mut dyn Progress,
) -> Result<Sent> {
    let what = format!("upload of {d}");
    let start = start_upload(client, repo, d, mount_from, &what)?;
    if mount_from.is_some() && start.status == 201 {
        progress.advance(bytes.len() as u64);
        return Ok(Sent::Mounted);
    }
    let loc = location(&start, &client.base)?;
    if bytes.len() <= client.chunk_size.max(1) {
        client.send(
            "PUT",
            &with_digest(&loc, d),
            &[("Content-Type", "application/octet-stream")],
            Some(bytes),
            &what,
        )?;
        progress.advance(bytes.len() as u64);
        return Ok(Sent::Uploaded);
    }
    let loc = upload_chunks(client, repo, d, bytes, loc, &what, progress)?;
    client.send(
        "PUT",
        &with_digest(&loc, d),
        &[("Content-Length", "0")],
        Some(&[]),
        &what,
    )?;
    Ok(Sent::Uploaded)
}

/// Uploads `bytes` to `repo` unless the remote has them.
pub(crate) fn upload_blob(
    client: &Client,
    repo: &str,
    bytes: &[u8],
    progress: &mut dyn Progress,
) -> Result<()> {
    let d = Digest::of(bytes);
    if !client.exists(&format!("/v2/{repo}/blobs/{d}"), &format!("check of {d}"))? {
        upload(client, repo, &d, bytes, None, progress)?;
    }
    Ok(())
}

/// Uploads (or mounts) each blob of `manifest` the remote lacks; returns the digests now
/// on the remote.
fn push_blobs(
    reg: &Registry,
    manifest: &Manifest,
    mounts: &[Option<String>],
    repo: &str,
    client: &Client,
    report: &mut TransferReport,
    progress: &mut dyn Progress,
) -> Result<Vec<Digest>> {
    let mut on_remote = Vec::new();
    for (desc, from) in manifest.blobs().zip(mounts) {
        on_remote.push(desc.digest);
        if client.exists(
            &format!("/v2/{repo}/blobs/{}", desc.digest),
            &format!("check of {}", desc.digest),
        )? {
            report.blobs_skipped += 1;
            progress.advance(desc.size);
            continue;
        }
        let title = desc.title().unwrap_or("config");
        let bytes = reg.blob(&desc.digest, title)?;
        tracing::info!("{}: uploading {title} ({} bytes)", client.base, bytes.len());
        match upload(
            client,
            repo,
            &desc.digest,
            &bytes,
            from.as_deref(),
            progress,
        )? {
            Sent::Mounted => report.blobs_mounted += 1,
            Sent::Uploaded => {
                report.blobs_sent += 1;
                report.bytes_sent += bytes.len() as u64;
            }
        }
    }
    Ok(on_remote)
}

/// Pushes the bundle `local` to `remote` (which must name a tag).
pub fn push(
    reg: &Registry,
    local: &str,
    remote: &RemoteRef,
    client: &Client,
    progress: &mut dyn Progress,
) -> Result<TransferReport> {
    let RemoteTarget::Tag(tag) = &remote.reference else {
        return Err(Error::InvalidReference {
            reference: remote.to_string(),
            reason: "push needs a tag, not a digest".into(),
        });
    };
    let d = reg.resolve(local)?;
    let manifest_bytes = reg.blob(&d, &format!("manifest of {local}"))?;
    let manifest = Manifest::parse(&manifest_bytes).map_err(|reason| Error::Corrupt {
        what: format!("manifest {d}"),
        reason,
    })?;
    let mut report = TransferReport {
        manifest: Some(d),
        ..Default::default()
    };
    let repo = &remote.repo;
    // What the index knows (repositories of this host that hold a blob, to mount from)
    // is read now; then the index is let go for the network part, so that a `serve` or
    // another vmt-hub process can use this registry meanwhile.
    let mounts: Vec<Option<String>> = manifest
        .blobs()
        .map(|desc| {
            Ok(reg
                .remote_blob(&remote.host, &desc.digest)?
                .filter(|r| r != repo))
        })
        .collect::<Result<_>>()?;
    reg.release_index();
    let total: u64 = manifest.blobs().map(|b| b.size).sum();
    progress.start(&format!("push {remote}"), total);
    let on_remote = push_blobs(reg, &manifest, &mounts, repo, client, &mut report, progress)?;
    let reply = client.send(
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", MANIFEST_MEDIA_TYPE)],
        Some(&manifest_bytes),
        "manifest upload",
    )?;
    if let Some(echo) = reply.header("Docker-Content-Digest") {
        if echo != d.to_string() {
            return Err(Error::remote(
                &remote.to_string(),
                None,
                format!("stored the manifest as {}, expected {d}", sanitize(&echo)),
            ));
        }
    }
    report.signatures = super::signatures::push(
        reg,
        client,
        repo,
        (&d, manifest_bytes.len() as u64),
        &remote.to_string(),
        progress,
    )?;
    // Only an optimisation for later pushes (mounts): a failure here does not undo the
    // push that succeeded.
    for d in &on_remote {
        if let Err(e) = reg.note_remote_blob(&remote.host, d, repo) {
            tracing::warn!("pushed, but not recorded for later mounts: {e}");
            break;
        }
    }
    progress.finish();
    Ok(report)
}

/// Checks that what arrived (its digest and size) is what `desc` declares.
///
/// # Errors
/// [`Error::DigestMismatch`] naming `what`.
pub(crate) fn check_received(
    desc: &crate::oci::Descriptor,
    (actual, size): (Digest, u64),
    what: &str,
) -> Result<()> {
    if actual != desc.digest || size != desc.size {
        return Err(Error::DigestMismatch {
            what: what.into(),
            expected: format!("{} ({} bytes)", desc.digest, desc.size),
            actual: format!("{actual} ({size} bytes)"),
        });
    }
    Ok(())
}

/// GETs a blob into a temp file of the store (capped at its declared size, hashed on
/// the way), retrying when the connection breaks mid-body. The file is checked
/// against the declared digest and size before it is returned.
fn fetch_blob(
    reg: &Registry,
    client: &Client,
    repo: &str,
    desc: &crate::oci::Descriptor,
    name: &str,
    progress: &mut dyn Progress,
) -> Result<tempfile::NamedTempFile> {
    let what = format!(
        "blob {} ({})",
        desc.digest,
        desc.title().unwrap_or("config")
    );
    let mut attempt = 0;
    loop {
        let reply = client.send(
            "GET",
            &format!("/v2/{repo}/blobs/{}", desc.digest),
            &[],
            None,
            &what,
        )?;
        let mut file = reg.temp_file()?;
        let got = reply.copy_to(file.as_file_mut(), desc.size, &what, name, &mut |n| {
            progress.advance(n)
        });
        match got {
            Ok((size, actual)) => {
                check_received(desc, (actual, size), &format!("{what} from {name}"))?;
                return Ok(file);
            }
            // A body longer than declared is a lie, not a broken connection.
            Err(e @ Error::Oversized { .. }) => return Err(e),
            Err(e) if attempt < client.retries => {
                attempt += 1;
                tracing::debug!("{e}; retrying");
                std::thread::sleep(std::time::Duration::from_millis(200 * attempt as u64));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Pulls `remote` into `reg` under `tag` (default: the remote's repository and tag; a
/// pull by digest needs a tag, so that no remote decides what a local name points to).
///
/// # Errors
/// Every refusal names the remote and what it declared: a manifest or config too
/// large, too many or duplicate layers, sizes the config does not allow, a blob that
/// is longer than declared or does not hash to its digest, a bundle that does not
/// validate, a deadline passed. The local registry is unchanged on any error.
pub fn pull(
    reg: &Registry,
    remote: &RemoteRef,
    client: &Client,
    tag: Option<&TagName>,
    progress: &mut dyn Progress,
) -> Result<TransferReport> {
    pull_trusted(reg, remote, client, tag, &Trust::Anything, progress)
}

/// [`pull`], requiring of the bundle's signatures what `trust` says, before anything
/// is stored. The signatures the remote has (cosign's `sha256-<hex>.sig`) are stored
/// beside the bundle; with [`Trust::Anything`], a remote whose signatures cannot be
/// read still gives the bundle (and a warning).
///
/// # Errors
/// As [`pull`]; [`Error::Signature`] naming the remote, why each signature was refused
/// and the keys tried.
pub fn pull_trusted(
    reg: &Registry,
    remote: &RemoteRef,
    client: &Client,
    tag: Option<&TagName>,
    trust: &Trust,
    progress: &mut dyn Progress,
) -> Result<TransferReport> {
    let repo = &remote.repo;
    let name = remote.to_string();
    // The index is needed only to store the result: let it go for the network part.
    reg.release_index();
    let tag = pull_tag(tag, remote)?;
    let (manifest_bytes, d, manifest) = fetch_manifest(client, remote)?;
    check_manifest(&manifest, &name)?;
    let total: u64 = manifest
        .blobs()
        .fold(0u64, |acc, b| acc.saturating_add(b.size));
    progress.start(&format!("pull {name}"), total);
    let mut report = TransferReport {
        manifest: Some(d),
        ..Default::default()
    };
    let signed = match super::signatures::fetch(client, repo, &d, &name) {
        Ok(f) => f,
        Err(e) if !trust.requires_signatures() => {
            tracing::warn!("{name}: its signatures could not be read: {e}");
            None
        }
        Err(e) => return Err(e),
    };
    let sigs = signed.as_ref().map_or(&[][..], |f| &f.signatures[..]);
    report.verified_by = trust.check(&name, sigs, &d)?;
    report.signatures = sigs.len();
    // The config first: it says what every layer must be.
    let config_bytes = match reg.blob(&manifest.config.digest, "local copy") {
        Ok(b) => b,
        Err(_) => {
            let file = fetch_blob(reg, client, repo, &manifest.config, &name, progress)?;
            report.blobs_received += 1;
            report.bytes_received += manifest.config.size;
            std::fs::read(file.path()).map_err(|e| Error::io(file.path(), e))?
        }
    };
    let config = parse_config(&config_bytes, Path::new(&format!("{name} config")))?;
    check_layers(&manifest, &config, &name)?;
    let received = fetch_layers(
        reg,
        client,
        remote,
        &manifest,
        &config,
        &mut report,
        progress,
    )?;
    store_pulled(
        reg,
        &manifest_bytes,
        &manifest,
        &config,
        &config_bytes,
        &received,
        &tag,
    )?;
    // The bundle is stored (and verified when asked): signatures that cannot be kept
    // beside it are a warning, not a failed pull.
    if let Some(f) = &signed {
        if let Err(e) = super::signatures::store(reg, &tag.name, &d, f) {
            tracing::warn!("{name}: pulled, but its signatures were not stored: {e}");
        }
    }
    progress.finish();
    Ok(report)
}

/// The local tag a pull stores under: `tag`, else the remote's repository and tag.
fn pull_tag(tag: Option<&TagName>, remote: &RemoteRef) -> Result<TagName> {
    match (tag, &remote.reference) {
        (Some(t), _) => Ok(t.clone()),
        (None, RemoteTarget::Tag(t)) => TagName::parse(&format!("{}:{t}", remote.repo)),
        (None, RemoteTarget::Digest(_)) => Err(Error::InvalidReference {
            reference: remote.to_string(),
            reason: "pulling by digest needs --tag NAME:TAG (the local name to give it)".into(),
        }),
    }
}

/// GETs the manifest of `remote` (bounded), checks it against the digest asked for or
/// echoed, and parses it: (bytes, digest, manifest).
pub(crate) fn fetch_manifest(
    client: &Client,
    remote: &RemoteRef,
) -> Result<(Vec<u8>, Digest, Manifest)> {
    let (repo, name) = (&remote.repo, remote.to_string());
    let reply = client.send(
        "GET",
        &format!("/v2/{repo}/manifests/{}", remote.reference),
        &[("Accept", MANIFEST_MEDIA_TYPE)],
        None,
        "manifest",
    )?;
    let echoed = reply.header("Docker-Content-Digest");
    let manifest_bytes = reply.body(MAX_MANIFEST_BYTES, "manifest", &name)?;
    let d = Digest::of(&manifest_bytes);
    let claimed = match &remote.reference {
        RemoteTarget::Digest(want) => Some(want.to_string()),
        RemoteTarget::Tag(_) => echoed,
    };
    if let Some(c) = claimed {
        if c != d.to_string() {
            return Err(Error::DigestMismatch {
                what: format!("manifest of {name}"),
                expected: sanitize(&c),
                actual: d.to_string(),
            });
        }
    }
    let manifest = Manifest::parse(&manifest_bytes).map_err(|reason| {
        Error::remote(
            &name,
            None,
            format!("malformed manifest refused: {}", sanitize(&reason)),
        )
    })?;
    Ok((manifest_bytes, d, manifest))
}

/// Each layer the registry lacks, streamed to a temp file and validated there against
/// `config`; a layer already stored is checked under its title too.
fn fetch_layers(
    reg: &Registry,
    client: &Client,
    remote: &RemoteRef,
    manifest: &Manifest,
    config: &BundleConfig,
    report: &mut TransferReport,
    progress: &mut dyn Progress,
) -> Result<Vec<(Digest, tempfile::NamedTempFile)>> {
    // Then each layer, streamed to a temp file and validated from there.
    let (repo, name) = (&remote.repo, remote.to_string());
    let mut received: Vec<(Digest, tempfile::NamedTempFile)> = Vec::new();
    for layer in &manifest.layers {
        let title = layer.title().unwrap_or("?");
        if let Ok(local) = reg.blob(&layer.digest, "local copy") {
            // Same bytes as a stored blob, but maybe under another title: check it too.
            check_component(config, title, &local, &name)?;
            progress.advance(layer.size);
            continue;
        }
        let file = fetch_blob(reg, client, repo, layer, &name, progress)?;
        // Bounded by check_layers: the config allows this many bytes for the component.
        let bytes = std::fs::read(file.path()).map_err(|e| Error::io(file.path(), e))?;
        check_component(config, title, &bytes, &name)?;
        report.blobs_received += 1;
        report.bytes_received += layer.size;
        received.push((layer.digest, file));
    }
    Ok(received)
}

/// Stores a checked pull: blobs, then the manifest, the tag record and the index, all
/// under the registry's lock, so that no gc in another process runs in between; a local
/// blob reused must still be there.
fn store_pulled(
    reg: &Registry,
    manifest_bytes: &[u8],
    manifest: &Manifest,
    config: &BundleConfig,
    config_bytes: &[u8],
    received: &[(Digest, tempfile::NamedTempFile)],
    tag: &TagName,
) -> Result<()> {
    // Everything checked: blobs, then the manifest, the tag record and the index, all
    // under the registry's lock, so that no gc in another process runs in between; a
    // local blob reused above must still be there.
    let _hold = reg.hold_index()?;
    for layer in &manifest.layers {
        if !received.iter().any(|(d, _)| *d == layer.digest) && !reg.has_blob(&layer.digest) {
            return Err(Error::Corrupt {
                what: format!("local blob {}", layer.digest),
                reason: "removed while the pull ran (a gc in another process?); pull again".into(),
            });
        }
    }
    reg.put_blob(config_bytes)?;
    for (digest, file) in received {
        reg.put_blob_file(file.path(), digest)?;
    }
    reg.store_manifest(manifest_bytes, Some(tag), config)?;
    Ok(())
}
