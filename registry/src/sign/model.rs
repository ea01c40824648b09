//! OpenSSF Model Signing signatures on exported bundle folders: `model.sig`, in the
//! format `model_signing` 1.x writes with an elliptic-curve key, so that
//! `model_signing verify key --signature DIR/model.sig --public_key NAME.pub DIR` checks
//! what vmt-hub signed, and vmt-hub checks what it signed.
//!
//! `model.sig` is a Sigstore bundle (`application/vnd.dev.sigstore.bundle.v0.3+json`)
//! whose verification material is the public key's hint (hex SHA-256 of its PEM) and
//! whose DSSE envelope carries an in-toto statement (`https://in-toto.io/Statement/v1`,
//! predicate `https://model_signing/signature/v1.0`): every regular file of the folder
//! by relative POSIX path with its SHA-256 (sorted by path), and as subject the folder's
//! name with the SHA-256 of the concatenated file digests. The signature is ECDSA-SHA256
//! (DER) over DSSE's pre-authentication encoding of the statement. Git's files and the
//! signature itself are left out, as `model_signing` leaves them out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::keys::{PublicKey, SigningKey};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// The signature file, in the folder it signs.
pub const SIGNATURE_FILE: &str = "model.sig";
/// Media type of the Sigstore bundle.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The in-toto statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// model_signing's predicate type (v1.0).
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// Paths left out of the signature, as model_signing leaves them out by default.
const IGNORED: [&str; 5] = [
    ".git",
    ".gitattributes",
    ".github",
    ".gitignore",
    SIGNATURE_FILE,
];
/// The largest `model.sig` read.
const MAX_SIGNATURE_BYTES: u64 = 16 << 20;

fn sig_error(dir: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Signature {
        what: dir.join(SIGNATURE_FILE).display().to_string(),
        reason: reason.to_string(),
    }
}

/// DSSE's pre-authentication encoding of `payload`.
fn pae(payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {PAYLOAD_TYPE} {} ",
        PAYLOAD_TYPE.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Every regular file under `dir` but the ignored ones: relative POSIX path -> SHA-256.
///
/// # Errors
/// A symbolic link (model_signing refuses them too), or a file that cannot be read.
fn hash_files(dir: &Path) -> Result<BTreeMap<String, [u8; 32]>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, [u8; 32]>) -> Result<()> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            let rel: Vec<String> = path
                .strip_prefix(root)
                .expect("below the root")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if rel.len() == 1 && IGNORED.contains(&rel[0].as_str()) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
            if meta.file_type().is_symlink() {
                return Err(Error::Signature {
                    what: path.display().to_string(),
                    reason: "a symbolic link: model signatures cover regular files only".into(),
                });
            } else if meta.is_dir() {
                walk(root, &path, out)?;
            } else {
                let d = Digest::of_file(&path)?;
                let raw: [u8; 32] = hex::decode(d.hex())
                    .expect("a digest is hex")
                    .try_into()
                    .expect("32 bytes");
                out.insert(rel.join("/"), raw);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// The in-toto statement over `files` of folder `name`.
fn statement(name: &str, files: &BTreeMap<String, [u8; 32]>) -> Value {
    let mut root = Sha256::new();
    for d in files.values() {
        root.update(d);
    }
    let resources: Vec<Value> = files
        .iter()
        .map(|(n, d)| json!({"name": n, "algorithm": "sha256", "digest": hex::encode(d)}))
        .collect();
    json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": hex::encode(root.finalize())}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": false,
                "ignore_paths": IGNORED,
            },
            "resources": resources,
        },
    })
}

/// Signs every file of `dir` with `key` into `dir/model.sig` (written by temp file and
/// rename); returns its path.
///
/// # Errors
/// A file that cannot be read, a symbolic link, the signature that cannot be written.
pub fn sign_dir(dir: &Path, key: &SigningKey) -> Result<PathBuf> {
    let files = hash_files(dir)?;
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let payload = serde_json::to_vec(&statement(&name, &files)).expect("statement serialises");
    let signature = key.sign(&pae(&payload));
    let hint = hex::encode(Sha256::digest(key.public().to_pem().as_bytes()));
    let bundle = json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": hint}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": B64.encode(&payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": B64.encode(signature), "keyid": ""}],
        },
    });
    let path = dir.join(SIGNATURE_FILE);
    crate::file::write_atomic(
        &path,
        &serde_json::to_vec(&bundle).expect("bundle serialises"),
    )
    .map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// The DSSE envelope of a `model.sig`: its payload and the DER signatures it carries
/// (those that are not base64 are left out).
///
/// # Errors
/// Not JSON, not a Sigstore bundle, not an in-toto payload, a payload not base64.
pub fn read_envelope(bytes: &[u8]) -> std::result::Result<(Vec<u8>, Vec<Vec<u8>>), String> {
    let bundle: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if bundle["mediaType"] != BUNDLE_MEDIA_TYPE {
        return Err(format!("not a Sigstore bundle ({BUNDLE_MEDIA_TYPE})"));
    }
    let envelope = &bundle["dsseEnvelope"];
    if envelope["payloadType"] != PAYLOAD_TYPE {
        return Err(format!("the payload is not {PAYLOAD_TYPE}"));
    }
    let b64 = |v: &Value| B64.decode(v.as_str().unwrap_or_default());
    let payload = b64(&envelope["payload"]).map_err(|e| format!("payload: {e}"))?;
    let sigs = envelope["signatures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| b64(&s["sig"]).ok())
        .collect();
    Ok((payload, sigs))
}

/// The files a model_signing v1.0 statement signs (relative path -> SHA-256), once its
/// subject is checked to cover exactly their digests.
///
/// # Errors
/// Not such a statement, a resource without name or hex digest, a subject that does
/// not cover the files.
pub fn signed_files(payload: &[u8]) -> std::result::Result<BTreeMap<String, Vec<u8>>, String> {
    let st: Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    if st["_type"] != STATEMENT_TYPE || st["predicateType"] != PREDICATE_TYPE {
        return Err("not a model_signing v1.0 statement".into());
    }
    let mut signed = BTreeMap::new();
    let mut root = Sha256::new();
    for r in st["predicate"]["resources"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let (Some(name), Some(digest)) = (r["name"].as_str(), r["digest"].as_str()) else {
            return Err("a resource without name or digest".into());
        };
        let raw = hex::decode(digest).map_err(|e| format!("{name}: {e}"))?;
        root.update(&raw);
        signed.insert(name.to_string(), raw);
    }
    let subject = st["subject"][0]["digest"]["sha256"]
        .as_str()
        .unwrap_or_default();
    if subject != hex::encode(root.finalize()) {
        return Err("the subject's digest does not cover the files".into());
    }
    Ok(signed)
}

/// Checks `dir/model.sig` as `model_signing verify key` does: the signature by one of
/// `keys` over the statement, the statement's subject over its file digests, and the
/// files of `dir` exactly those of the statement with those digests. Returns the
/// fingerprint of the key that signed.
///
/// # Errors
/// [`Error::Signature`] naming `model.sig` and what does not hold (a missing, extra or
/// changed file by name).
pub fn verify_dir(dir: &Path, keys: &[PublicKey]) -> Result<Digest> {
    let path = dir.join(SIGNATURE_FILE);
    let bytes =
        crate::file::read_limited(&path, MAX_SIGNATURE_BYTES).map_err(|e| Error::io(&path, e))?;
    let (payload, sigs) = read_envelope(&bytes).map_err(|e| sig_error(dir, e))?;
    let message = pae(&payload);
    let key = sigs
        .iter()
        .find_map(|der| keys.iter().find(|k| k.verifies(&message, der)))
        .ok_or_else(|| {
            let tried: Vec<String> = keys.iter().map(|k| k.fingerprint().to_string()).collect();
            sig_error(
                dir,
                format!(
                    "not signed by any of the keys (keys tried: {})",
                    tried.join(", ")
                ),
            )
        })?;
    let signed = signed_files(&payload).map_err(|e| sig_error(dir, e))?;
    let actual = hash_files(dir)?;
    for (name, d) in &actual {
        match signed.get(name) {
            None => {
                return Err(sig_error(
                    dir,
                    format!("{name} is not signed (an extra file)"),
                ))
            }
            Some(s) if s[..] != d[..] => {
                return Err(sig_error(
                    dir,
                    format!("{name} changed since it was signed"),
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(missing) = signed.keys().find(|n| !actual.contains_key(*n)) {
        return Err(sig_error(dir, format!("{missing} is signed but missing")));
    }
    Ok(key.fingerprint())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_folder_verifies_until_a_byte_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bundle");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.txt"), "hello\n").unwrap();
        std::fs::write(dir.join("sub/b.bin"), "world\n").unwrap();
        std::fs::create_dir_all(dir.join(".git")).unwrap();
        std::fs::write(dir.join(".git/HEAD"), "x").unwrap();
        let key = SigningKey::generate();
        sign_dir(&dir, &key).unwrap();
        let keys = [key.public()];
        assert_eq!(verify_dir(&dir, &keys).unwrap(), key.public().fingerprint());
        let other = [SigningKey::generate().public()];
        assert!(verify_dir(&dir, &other)
            .unwrap_err()
            .to_string()
            .contains("keys tried"));
        std::fs::write(dir.join("sub/b.bin"), "World\n").unwrap();
        let e = verify_dir(&dir, &keys).unwrap_err();
        assert!(matches!(&e, Error::Signature { what, .. } if what.ends_with("model.sig")));
        let e = e.to_string();
        assert!(
            e.contains("sub/b.bin changed") && e.contains("model.sig"),
            "{e}"
        );
        std::fs::write(dir.join("sub/b.bin"), "world\n").unwrap();
        std::fs::write(dir.join("c.txt"), "new").unwrap();
        assert!(verify_dir(&dir, &keys)
            .unwrap_err()
            .to_string()
            .contains("c.txt is not signed"));
    }
}
