//! cosign's key-based signatures of a manifest, in the registry layout cosign, skopeo
//! (containers/image), zot and Harbor read.
//!
//! A signature is the *simple-signing payload*
//! `{"critical":{"identity":{"docker-reference":REPO},"image":{"docker-manifest-digest":
//! DIGEST},"type":"cosign container image signature"},"optional":null}` and an
//! ECDSA-SHA256 signature of those bytes (ASN.1 DER, standard base64). The signatures
//! of one manifest live in one OCI image manifest tagged `sha256-<hex>.sig` in the
//! same repository: one layer per signature (media type [`SIMPLESIGNING_MEDIA_TYPE`],
//! the payload as its blob, the signature in the annotation [`SIGNATURE_ANNOTATION`]),
//! and an image config whose `rootfs.diff_ids` lists the payloads' digests.
//! `cosign verify --key` checks the signature and that `docker-manifest-digest` is the
//! image's digest; so does [`CosignSignature::verify`].

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use super::keys::{PublicKey, SigningKey};
use crate::digest::Digest;
use crate::oci::{ArtifactManifest, Descriptor, MANIFEST_MEDIA_TYPE};

/// Media type of a signature layer (the simple-signing payload).
pub const SIMPLESIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Layer annotation holding the base64 DER signature of the payload.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Media type of the signature manifest's config (an OCI image config).
pub const IMAGE_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Config media type (and so artifact type) of a cosign signature manifest attached
/// by the OCI 1.1 referrers API (cosign's `--registry-referrers-mode=oci-1-1`).
pub const COSIGN_SIG_ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// `critical.type` of a cosign payload.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
/// The largest payload read.
pub const MAX_PAYLOAD_BYTES: u64 = 64 << 10;

/// One signature: the payload bytes and the base64 DER signature over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignSignature {
    /// The simple-signing payload, as signed.
    pub payload: Vec<u8>,
    /// The signature annotation (base64 ASN.1 DER); empty when the layer had none.
    pub signature: String,
}

/// The simple-signing payload cosign writes for `digest` in repository
/// `docker_reference` (`host/repo`, no tag), byte for byte.
pub fn payload(docker_reference: &str, digest: &Digest) -> Vec<u8> {
    // serde_json keeps insertion order here (the crate's `preserve_order`), cosign's order.
    let v = json!({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest.to_string()},
            "type": PAYLOAD_TYPE,
        },
        "optional": null,
    });
    serde_json::to_vec(&v).expect("payload serialises")
}

impl CosignSignature {
    /// Signs `digest` as in repository `docker_reference`.
    pub fn new(key: &SigningKey, docker_reference: &str, digest: &Digest) -> Self {
        let payload = payload(docker_reference, digest);
        let signature = B64.encode(key.sign(&payload));
        Self { payload, signature }
    }

    /// Checks it as `cosign verify --key` does: the signature verifies with one of
    /// `keys` and the payload is a cosign payload for `digest`. Returns the fingerprint
    /// of the key that verified it.
    ///
    /// # Errors
    /// Why it is refused, in words.
    pub fn verify(&self, keys: &[PublicKey], digest: &Digest) -> Result<Digest, String> {
        if self.signature.is_empty() {
            return Err(format!("no {SIGNATURE_ANNOTATION} annotation"));
        }
        let der = B64
            .decode(&self.signature)
            .map_err(|e| format!("the signature is not base64: {e}"))?;
        let key = keys
            .iter()
            .find(|k| k.verifies(&self.payload, &der))
            .ok_or("not signed by any of the keys (or the payload was changed)")?;
        let v: Value = serde_json::from_slice(&self.payload)
            .map_err(|e| format!("the payload is not JSON: {e}"))?;
        let critical = &v["critical"];
        if critical["type"] != PAYLOAD_TYPE {
            return Err(format!("the payload's type is not {PAYLOAD_TYPE:?}"));
        }
        let signed = critical["image"]["docker-manifest-digest"].as_str();
        if signed != Some(digest.to_string().as_str()) {
            return Err(format!(
                "signed by {} over another manifest ({}), not {digest}",
                key.fingerprint(),
                signed.unwrap_or("none")
            ));
        }
        Ok(key.fingerprint())
    }

    /// The repository the payload names (`critical.identity.docker-reference`).
    pub fn docker_reference(&self) -> Option<String> {
        let v: Value = serde_json::from_slice(&self.payload).ok()?;
        v["critical"]["identity"]["docker-reference"]
            .as_str()
            .map(String::from)
    }
}

/// A signature manifest and the blobs it references.
#[derive(Debug, Clone)]
pub struct SignatureArtifact {
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
    /// The image config.
    pub config: Vec<u8>,
    /// The payloads, one per layer.
    pub payloads: Vec<Vec<u8>>,
}

/// The manifest holding `signatures`, in cosign's layout.
pub fn signature_artifact(signatures: &[CosignSignature]) -> SignatureArtifact {
    let diff_ids: Vec<String> = signatures
        .iter()
        .map(|s| Digest::of(&s.payload).to_string())
        .collect();
    let history: Vec<Value> = signatures
        .iter()
        .map(|_| json!({"created": "0001-01-01T00:00:00Z"}))
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": history,
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    }))
    .expect("config serialises");
    let layers: Vec<Descriptor> = signatures
        .iter()
        .map(|s| Descriptor {
            media_type: SIMPLESIGNING_MEDIA_TYPE.into(),
            digest: Digest::of(&s.payload),
            size: s.payload.len() as u64,
            annotations: BTreeMap::from([(SIGNATURE_ANNOTATION.into(), s.signature.clone())]),
        })
        .collect();
    let manifest = ArtifactManifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE.into(),
        artifact_type: None,
        config: Descriptor {
            media_type: IMAGE_CONFIG_MEDIA_TYPE.into(),
            digest: Digest::of(&config),
            size: config.len() as u64,
            annotations: BTreeMap::new(),
        },
        layers,
        subject: None,
        annotations: BTreeMap::new(),
    };
    SignatureArtifact {
        manifest: serde_json::to_vec(&manifest).expect("manifest serialises"),
        config,
        payloads: signatures.iter().map(|s| s.payload.clone()).collect(),
    }
}

/// The signatures a signature manifest holds, each payload read by `blob` (which must
/// check the digest). Layers of other media types, and payloads over
/// [`MAX_PAYLOAD_BYTES`], are skipped.
///
/// # Errors
/// What `blob` returns.
pub fn signatures_of<E>(
    manifest: &ArtifactManifest,
    mut blob: impl FnMut(&Descriptor) -> Result<Vec<u8>, E>,
) -> Result<Vec<CosignSignature>, E> {
    let mut out = Vec::new();
    for layer in &manifest.layers {
        // Oversized payloads are no cosign signature, and are never read.
        if layer.media_type != SIMPLESIGNING_MEDIA_TYPE || layer.size > MAX_PAYLOAD_BYTES {
            continue;
        }
        out.push(CosignSignature {
            payload: blob(layer)?,
            signature: layer
                .annotations
                .get(SIGNATURE_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Checks that one of `signatures` verifies for `digest` with one of `keys`: the
/// fingerprint of the key that did, or why every one was refused.
///
/// # Errors
/// A message listing each signature's refusal and the fingerprints of the keys tried.
pub fn require_signed(
    signatures: &[CosignSignature],
    keys: &[PublicKey],
    digest: &Digest,
) -> Result<Digest, String> {
    let tried: Vec<String> = keys.iter().map(|k| k.fingerprint().to_string()).collect();
    if signatures.is_empty() {
        return Err(format!(
            "no signature (keys required: {}); sign it with `vmt-hub sign`",
            tried.join(", ")
        ));
    }
    let mut why = Vec::new();
    for (i, s) in signatures.iter().enumerate() {
        match s.verify(keys, digest) {
            Ok(k) => return Ok(k),
            Err(e) => why.push(format!("signature {}: {e}", i + 1)),
        }
    }
    Err(format!(
        "no valid signature: {} (keys tried: {})",
        why.join("; "),
        tried.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_cosigns_byte_for_byte() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let p = String::from_utf8(payload("localhost:5000/team/seg", &d)).unwrap();
        assert_eq!(
            p,
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"localhost:5000/team/seg"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
            )
        );
    }

    #[test]
    fn each_tampering_is_refused_with_its_reason() {
        let key = SigningKey::generate();
        let d = Digest::of(b"bundle");
        let good = CosignSignature::new(&key, "team/seg", &d);
        let keys = [key.public()];
        assert_eq!(good.verify(&keys, &d), Ok(key.public().fingerprint()));
        let other = Digest::of(b"other");
        assert!(good
            .verify(&keys, &other)
            .unwrap_err()
            .contains("another manifest"));
        let stranger = [SigningKey::generate().public()];
        assert!(good
            .verify(&stranger, &d)
            .unwrap_err()
            .contains("not signed by"));
        let mut edited = good.clone();
        edited.payload = payload("team/evil", &d);
        assert!(edited
            .verify(&keys, &d)
            .unwrap_err()
            .contains("not signed by"));
        let bare = CosignSignature {
            signature: String::new(),
            ..good.clone()
        };
        assert!(bare.verify(&keys, &d).unwrap_err().contains("annotation"));
        let e = require_signed(&[bare, edited], &keys, &d).unwrap_err();
        assert!(
            e.contains("signature 1") && e.contains("signature 2"),
            "{e}"
        );
        assert!(e.contains(&key.public().fingerprint().to_string()), "{e}");
    }

    #[test]
    fn an_artifact_reads_back_its_signatures() {
        let key = SigningKey::generate();
        let sigs = [
            CosignSignature::new(&key, "a", &Digest::of(b"1")),
            CosignSignature::new(&key, "b", &Digest::of(b"1")),
        ];
        let art = signature_artifact(&sigs);
        let m = ArtifactManifest::parse(&art.manifest).unwrap();
        assert_eq!(m.config.digest, Digest::of(&art.config));
        let back = signatures_of(&m, |l| {
            let p = art
                .payloads
                .iter()
                .find(|p| Digest::of(p) == l.digest)
                .unwrap();
            Ok::<_, ()>(p.clone())
        })
        .unwrap();
        assert_eq!(back, sigs);
    }
}
