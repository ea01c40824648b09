//! Signed bundles: cosign-compatible signatures over a bundle's manifest digest, kept
//! beside the bundle in the registry (never inside it: signing does not change the
//! bundle's digest), carried by push and pull, and required by a pull or `verify`
//! given keys.
//!
//! - [`keys`]: ECDSA P-256 keys in cosign's files.
//! - [`cosign`]: the payload, the signature manifest (`sha256-<hex>.sig`), checks.
//! - [`model`]: OpenSSF Model Signing (`model.sig`) on exported folders.
//! - [`policy`]: what a pull requires (keys, or a containers-policy.json file).

pub mod cosign;
pub mod keys;
pub mod model;
pub mod policy;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::Reference;
use crate::store::{signature_tag, Registry};
use cosign::{signature_artifact, signatures_of, CosignSignature};
use keys::{PublicKey, SigningKey};

/// What [`sign`] did.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The bundle signed.
    pub digest: Digest,
    /// The repository the signature is stored in.
    pub repository: String,
    /// The tag of the signature manifest (`sha256-<hex>.sig`).
    pub tag: String,
    /// The signature manifest's digest.
    pub manifest: Digest,
    /// Signatures the bundle now has in that repository.
    pub count: usize,
}

/// The repository a local reference belongs to: its name part, or the repository of
/// the bundle's first tag for a digest.
fn repository_of(reg: &Registry, reference: &str, d: &Digest) -> Result<String> {
    if let Reference::Tag(t) = Reference::parse(reference)? {
        return Ok(t.name);
    }
    let tags = reg.tags_of(d)?;
    tags.first()
        .and_then(|t| t.rsplit_once(':'))
        .map(|(n, _)| n.to_string())
        .ok_or_else(|| Error::InvalidReference {
            reference: reference.into(),
            reason: "an untagged bundle has no repository to keep a signature in; tag it first"
                .into(),
        })
}

/// The signatures of bundle `d` stored in `repository` (or in any, when `None`).
///
/// # Errors
/// A signature manifest or payload that cannot be read.
pub fn signatures(
    reg: &Registry,
    d: &Digest,
    repository: Option<&str>,
) -> Result<Vec<CosignSignature>> {
    let tag = signature_tag(d);
    let mut out: Vec<CosignSignature> = Vec::new();
    for r in reg.referrers(d)? {
        // Under cosign's tag, or attached as cosign's OCI 1.1 mode attaches it.
        let cosign = r.manifest.artifact_type() == cosign::COSIGN_SIG_ARTIFACT_TYPE;
        let here = r.repositories.iter().any(|(repo, t)| {
            repository.is_none_or(|want| want == repo) && (cosign || t.as_deref() == Some(&tag))
        });
        if !here {
            continue;
        }
        for s in signatures_of(&r.manifest, |l| reg.blob(&l.digest, "signature payload"))? {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// Signs bundle `reference` with `key`: one more signature in its repository's
/// `sha256-<hex>.sig` manifest. `identity` is the payload's `docker-reference` (default:
/// the repository; name the remote `host/repo` when a policy will check it).
///
/// # Errors
/// An unknown reference; an untagged bundle given by digest; storage errors.
pub fn sign(
    reg: &Registry,
    reference: &str,
    key: &SigningKey,
    identity: Option<&str>,
) -> Result<Signed> {
    let d = reg.resolve(reference)?;
    let repository = repository_of(reg, reference, &d)?;
    let mut all = signatures(reg, &d, Some(&repository))?;
    let new = CosignSignature::new(key, identity.unwrap_or(&repository), &d);
    if !all.contains(&new) {
        all.push(new);
    }
    let manifest = store_signatures(reg, &repository, &d, &all)?;
    Ok(Signed {
        digest: d,
        repository,
        tag: signature_tag(&d),
        manifest,
        count: all.len(),
    })
}

/// Stores `signatures` of bundle `d` as its signature manifest in `repository`
/// (replacing the one there): payloads and config first, the record last.
///
/// # Errors
/// Storage errors.
pub fn store_signatures(
    reg: &Registry,
    repository: &str,
    d: &Digest,
    signatures: &[CosignSignature],
) -> Result<Digest> {
    let art = signature_artifact(signatures);
    reg.put_blob(&art.config)?;
    for p in &art.payloads {
        reg.put_blob(p)?;
    }
    reg.attach(repository, &art.manifest, d, Some(&signature_tag(d)))
}

/// Checks that local bundle `reference` has a signature by one of `keys`: the key
/// that signed it.
///
/// # Errors
/// [`Error::Signature`] naming the bundle, why each signature was refused and the
/// fingerprints of the keys tried.
pub fn verify_local(reg: &Registry, reference: &str, keys: &[PublicKey]) -> Result<Digest> {
    let d = reg.resolve(reference)?;
    let sigs = signatures(reg, &d, None)?;
    cosign::require_signed(&sigs, keys, &d).map_err(|reason| Error::Signature {
        what: format!("bundle {reference} ({d})"),
        reason,
    })
}
