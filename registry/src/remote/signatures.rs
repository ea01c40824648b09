//! A bundle's signatures over the wire, in cosign's tag scheme: the signature manifest
//! is `sha256-<hex of the bundle>.sig` in the bundle's repository. A push merges the
//! local signatures with those the remote already has (cosign appends, so does this);
//! a pull fetches them, bounded, before anything is stored.
//!
//! Where the remote answers the OCI 1.1 referrers API, a push also attaches the same
//! signatures with a `subject` (as cosign's `--registry-referrers-mode=oci-1-1` does:
//! config media type [`COSIGN_SIG_ARTIFACT_TYPE`], pushed by digest), and a pull that
//! finds no `.sig` tag reads the last such referrer.

use super::client::{sanitize, Client};
use super::transfer::{check_received, upload_blob, Progress};
use crate::bundle::check::MAX_MANIFEST_BYTES;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{
    ArtifactManifest, Descriptor, ImageIndex, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE,
    MAX_ARTIFACT_LAYERS,
};
use crate::sign::cosign::{
    signature_artifact, signatures_of, CosignSignature, COSIGN_SIG_ARTIFACT_TYPE,
    MAX_PAYLOAD_BYTES, SIMPLESIGNING_MEDIA_TYPE,
};
use crate::store::{signature_tag, Registry};

/// Signatures fetched from a remote: the manifest as it was there (under the `.sig`
/// tag, or a referrer: no tag), its config, and the signatures.
pub(crate) struct Fetched {
    pub(crate) tag: Option<String>,
    pub(crate) manifest: Vec<u8>,
    pub(crate) config: Vec<u8>,
    pub(crate) signatures: Vec<CosignSignature>,
}

/// GETs blob `desc` of `repo` whole, at most `limit` bytes, checked against its digest.
pub(crate) fn small_blob(
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
    let got = (Digest::of(&bytes), bytes.len() as u64);
    check_received(desc, got, &format!("{what} from {name}"))?;
    Ok(bytes)
}

/// The signatures of bundle `d` in `repo` of the remote (None when it has none).
pub(crate) fn fetch(
    client: &Client,
    repo: &str,
    d: &Digest,
    name: &str,
) -> Result<Option<Fetched>> {
    let tag = signature_tag(d);
    let (manifest, tag) = match get_manifest(client, repo, &tag, name)? {
        Some(m) => (m, Some(tag)),
        None => match last_referrer(client, repo, d, name)? {
            Some(m) => (m, None),
            None => return Ok(None),
        },
    };
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
    let signatures = signatures_of(&parsed, |l| {
        small_blob(client, repo, l, MAX_PAYLOAD_BYTES, name)
    })?;
    // Kept as the remote has it only when this registry can store it whole (its config
    // and signature layers, about this bundle); otherwise as vmt-hub writes the same
    // signatures.
    let whole = parsed
        .layers
        .iter()
        .all(|l| l.media_type == SIMPLESIGNING_MEDIA_TYPE && l.size <= MAX_PAYLOAD_BYTES)
        && parsed.subject.as_ref().is_none_or(|s| s.digest == *d);
    if !whole {
        let art = signature_artifact(&signatures);
        return Ok(Some(Fetched {
            tag: Some(signature_tag(d)),
            manifest: art.manifest,
            config: art.config,
            signatures,
        }));
    }
    let config = small_blob(client, repo, &parsed.config, MAX_PAYLOAD_BYTES, name)?;
    Ok(Some(Fetched {
        tag,
        manifest,
        config,
        signatures,
    }))
}

/// GETs manifest `reference` of `repo` (None on 404), bounded. With the Accept header:
/// distribution answers 404 to a request for an OCI manifest without it.
fn get_manifest(
    client: &Client,
    repo: &str,
    reference: &str,
    name: &str,
) -> Result<Option<Vec<u8>>> {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let accept = [("Accept", MANIFEST_MEDIA_TYPE)];
    match client.send("GET", &path, &accept, None, "signature manifest") {
        Ok(r) => {
            let bytes = r.body(MAX_MANIFEST_BYTES, "signature manifest", name)?;
            if let Ok(want) = reference.parse::<Digest>() {
                if Digest::of(&bytes) != want {
                    return Err(Error::DigestMismatch {
                        what: format!("signature manifest from {name}"),
                        expected: want.to_string(),
                        actual: Digest::of(&bytes).to_string(),
                    });
                }
            }
            Ok(Some(bytes))
        }
        Err(Error::Remote {
            status: Some(404), ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The referrers index of `d` in `repo` filtered to cosign signatures; None where the
/// remote does not answer the referrers API.
fn referrers(client: &Client, repo: &str, d: &Digest, name: &str) -> Result<Option<ImageIndex>> {
    let path = format!(
        "/v2/{repo}/referrers/{d}?artifactType={}",
        COSIGN_SIG_ARTIFACT_TYPE
            .replace('/', "%2F")
            .replace('+', "%2B")
    );
    let reply = match client.send(
        "GET",
        &path,
        &[("Accept", INDEX_MEDIA_TYPE)],
        None,
        "referrers",
    ) {
        Ok(r) => r,
        Err(Error::Remote {
            status: Some(400 | 404 | 405),
            ..
        }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let is_index = reply
        .header("Content-Type")
        .is_some_and(|t| t.starts_with(INDEX_MEDIA_TYPE));
    let body = reply.body(MAX_MANIFEST_BYTES, "referrers", name)?;
    Ok(is_index
        .then(|| serde_json::from_slice(&body).ok())
        .flatten())
}

/// The last cosign signature manifest attached to `d` by the referrers API (cosign
/// reads the last one too).
fn last_referrer(client: &Client, repo: &str, d: &Digest, name: &str) -> Result<Option<Vec<u8>>> {
    let Some(index) = referrers(client, repo, d, name)? else {
        return Ok(None);
    };
    let last = index
        .manifests
        .iter()
        .rev()
        .find(|m| m.artifact_type.as_deref() == Some(COSIGN_SIG_ARTIFACT_TYPE));
    match last {
        Some(m) => get_manifest(client, repo, &m.digest.to_string(), name),
        None => Ok(None),
    }
}

/// Stores fetched signatures of bundle `d` beside it in `repository`, as they were on
/// the remote (same manifest digest).
pub(crate) fn store(reg: &Registry, repository: &str, d: &Digest, f: &Fetched) -> Result<()> {
    reg.put_blob(&f.config)?;
    for s in &f.signatures {
        reg.put_blob(&s.payload)?;
    }
    reg.attach(repository, &f.manifest, d, f.tag.as_deref())?;
    Ok(())
}

/// The signature manifest `bytes` as cosign's OCI 1.1 mode attaches it: the config's
/// media type [`COSIGN_SIG_ARTIFACT_TYPE`], and bundle `d` as its subject.
fn with_subject(bytes: &[u8], d: &Digest, size: u64) -> Result<Vec<u8>> {
    let mut m = ArtifactManifest::parse(bytes).map_err(|reason| Error::Corrupt {
        what: "signature manifest".into(),
        reason,
    })?;
    m.config.media_type = COSIGN_SIG_ARTIFACT_TYPE.into();
    m.subject = Some(Descriptor {
        media_type: MANIFEST_MEDIA_TYPE.into(),
        digest: *d,
        size,
        annotations: Default::default(),
    });
    Ok(serde_json::to_vec(&m).expect("manifest serialises"))
}

/// Pushes the local signatures of bundle `d`, merged with the remote's, to `repo`;
/// returns how many signatures the remote now has (0: nothing to push).
pub(crate) fn push(
    reg: &Registry,
    client: &Client,
    repo: &str,
    (d, subject_size): (&Digest, u64),
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
    if all.len() > MAX_ARTIFACT_LAYERS {
        return Err(Error::remote(
            name,
            None,
            format!(
                "{} signatures: more than the {MAX_ARTIFACT_LAYERS} one signature manifest holds",
                all.len()
            ),
        ));
    }
    let art = signature_artifact(&all);
    for bytes in std::iter::once(&art.config).chain(&art.payloads) {
        upload_blob(client, repo, bytes, progress)?;
    }
    let put = |reference: &str, bytes: &[u8]| {
        client.send(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", MANIFEST_MEDIA_TYPE)],
            Some(bytes),
            "signature manifest upload",
        )
    };
    put(&signature_tag(d), &art.manifest)?;
    if referrers(client, repo, d, name)?.is_some() {
        let copy = with_subject(&art.manifest, d, subject_size)?;
        put(&Digest::of(&copy).to_string(), &copy)?;
    }
    Ok(all.len())
}
