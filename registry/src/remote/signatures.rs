//! A bundle's signatures over the wire, in cosign's tag scheme: the signature manifest
//! is `sha256-<hex of the bundle>.sig` in the bundle's repository. A push merges the
//! local signatures with those the remote already has (cosign appends, so does this);
//! a pull fetches them, bounded, before anything is stored.

use super::client::{sanitize, Client};
use super::transfer::{upload_blob, Progress};
use crate::bundle::check::MAX_MANIFEST_BYTES;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{ArtifactManifest, Descriptor, MANIFEST_MEDIA_TYPE};
use crate::sign::cosign::{signature_artifact, signatures_of, CosignSignature, MAX_PAYLOAD_BYTES};
use crate::store::{signature_tag, Registry};

/// Signatures fetched from a remote: the manifest as it was there, its config, and
/// the signatures.
pub(crate) struct Fetched {
    pub(crate) manifest: Vec<u8>,
    pub(crate) config: Vec<u8>,
    pub(crate) signatures: Vec<CosignSignature>,
}

/// GETs blob `desc` of `repo` whole, at most `limit` bytes, checked against its digest.
fn small_blob(
    client: &Client,
    repo: &str,
    desc: &Descriptor,
    limit: u64,
    name: &str,
) -> Result<Vec<u8>> {
    let what = format!("signature blob {}", desc.digest);
    if desc.size > limit {
        return Err(Error::Oversized {
            remote: name.into(),
            what,
            limit,
        });
    }
    let reply = client.send(
        "GET",
        &format!("/v2/{repo}/blobs/{}", desc.digest),
        &[],
        None,
        &what,
    )?;
    let bytes = reply.body(desc.size, &what, name)?;
    let actual = Digest::of(&bytes);
    if actual != desc.digest || bytes.len() as u64 != desc.size {
        return Err(Error::DigestMismatch {
            what: format!("{what} from {name}"),
            expected: format!("{} ({} bytes)", desc.digest, desc.size),
            actual: format!("{actual} ({} bytes)", bytes.len()),
        });
    }
    Ok(bytes)
}

/// The signatures of bundle `d` in `repo` of the remote (None when it has none).
pub(crate) fn fetch(
    client: &Client,
    repo: &str,
    d: &Digest,
    name: &str,
) -> Result<Option<Fetched>> {
    let path = format!("/v2/{repo}/manifests/{}", signature_tag(d));
    // With the Accept header (distribution answers 404 to a request for an OCI
    // manifest without it), and 404 means unsigned.
    let accept = [("Accept", MANIFEST_MEDIA_TYPE)];
    let reply = match client.send("GET", &path, &accept, None, "signature manifest") {
        Ok(r) => r,
        Err(Error::Remote {
            status: Some(404), ..
        }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let manifest = reply.body(MAX_MANIFEST_BYTES, "signature manifest", name)?;
    let parsed = ArtifactManifest::parse(&manifest).map_err(|reason| {
        Error::remote(
            name,
            None,
            format!(
                "malformed signature manifest refused: {}",
                sanitize(&reason)
            ),
        )
    })?;
    let config = small_blob(client, repo, &parsed.config, MAX_PAYLOAD_BYTES, name)?;
    let signatures = signatures_of(&parsed, |l| {
        small_blob(client, repo, l, MAX_PAYLOAD_BYTES, name)
    })?;
    Ok(Some(Fetched {
        manifest,
        config,
        signatures,
    }))
}

/// Stores fetched signatures of bundle `d` beside it in `repository`, as they were on
/// the remote (same manifest digest).
pub(crate) fn store(reg: &Registry, repository: &str, d: &Digest, f: &Fetched) -> Result<()> {
    reg.put_blob(&f.config)?;
    for s in &f.signatures {
        reg.put_blob(&s.payload)?;
    }
    reg.attach(repository, &f.manifest, d, Some(&signature_tag(d)))?;
    Ok(())
}

/// Pushes the local signatures of bundle `d`, merged with the remote's, to `repo`;
/// returns how many signatures the remote now has (0: nothing to push).
pub(crate) fn push(
    reg: &Registry,
    client: &Client,
    repo: &str,
    d: &Digest,
    name: &str,
    progress: &mut dyn Progress,
) -> Result<usize> {
    let local = crate::sign::signatures(reg, d, None)?;
    if local.is_empty() {
        return Ok(0);
    }
    let mut all = fetch(client, repo, d, name)?
        .map(|f| f.signatures)
        .unwrap_or_default();
    let before = all.clone();
    for s in local {
        if !all.contains(&s) {
            all.push(s);
        }
    }
    if all == before {
        return Ok(all.len());
    }
    let art = signature_artifact(&all);
    for bytes in std::iter::once(&art.config).chain(&art.payloads) {
        upload_blob(client, repo, bytes, progress)?;
    }
    client.send(
        "PUT",
        &format!("/v2/{repo}/manifests/{}", signature_tag(d)),
        &[("Content-Type", MANIFEST_MEDIA_TYPE)],
        Some(&art.manifest),
        "signature manifest upload",
    )?;
    Ok(all.len())
}
