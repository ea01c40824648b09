//! ECDSA P-256 keys in cosign's files.
//!
//! - `NAME.key`: PEM `ENCRYPTED SIGSTORE PRIVATE KEY` (cosign 1.x wrote `ENCRYPTED
//!   COSIGN PRIVATE KEY`; both are read) around compact JSON
//!   `{"kdf":{"name":"scrypt","params":{"N","r","p"},"salt"},"cipher":{"name":
//!   "nacl/secretbox","nonce"},"ciphertext"}` (go-securesystemslib's `encrypted`):
//!   scrypt(passphrase, 32-byte salt) gives a 32-byte key that opens a NaCl secretbox
//!   (XSalsa20-Poly1305, 24-byte nonce) around the PKCS#8 DER private key. Written with
//!   N = 32768 (what every cosign reads); read with N of 32768, 65536 or 131072 only
//!   (cosign's own rule, which also bounds the memory a hostile file can ask for).
//!   Unencrypted PKCS#8 (`PRIVATE KEY`) and SEC1 (`EC PRIVATE KEY`) PEM are read too.
//! - `NAME.pub`: PEM `PUBLIC KEY` (PKIX SubjectPublicKeyInfo).

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{DerSignature, Signature};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// PEM label of cosign's encrypted private key (cosign 2 and later).
pub const ENCRYPTED_KEY_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// PEM label of cosign 1.x's encrypted private key (read, not written).
pub const LEGACY_ENCRYPTED_KEY_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// scrypt's cost written into new keys.
pub const SCRYPT_N: u32 = 32768;
/// The largest key file read.
const MAX_KEY_FILE: u64 = 64 << 10;

/// An ECDSA P-256 private key that signs.
#[derive(Clone)]
pub struct SigningKey(p256::ecdsa::SigningKey);

/// An ECDSA P-256 public key that verifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(p256::ecdsa::VerifyingKey);

#[derive(Serialize, Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u32,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

#[derive(Serialize, Deserialize)]
struct EncryptedKey {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

fn key_error(origin: &str, reason: impl std::fmt::Display) -> Error {
    Error::Key {
        origin: origin.into(),
        reason: reason.to_string(),
    }
}

fn secretbox_key(password: &str, salt: &[u8], n: u32, origin: &str) -> Result<[u8; 32]> {
    let log_n = match n {
        32768 => 15,
        65536 => 16,
        131072 => 17,
        _ => return Err(key_error(origin, format!("unsupported scrypt cost N={n}"))),
    };
    let params = scrypt::Params::new(log_n, 8, 1, 32).expect("valid scrypt parameters");
    let mut key = [0u8; 32];
    scrypt::scrypt(password.as_bytes(), salt, &params, &mut key)
        .map_err(|e| key_error(origin, e))?;
    Ok(key)
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self(p256::ecdsa::SigningKey::random(&mut OsRng))
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(*self.0.verifying_key())
    }

    /// ECDSA-SHA256 over `message`, ASN.1 DER.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let sig: Signature = self.0.sign(message);
        sig.to_der().as_bytes().to_vec()
    }

    /// cosign's encrypted key file, with `password` (may be empty, as cosign allows).
    pub fn to_encrypted_pem(&self, password: &str) -> String {
        let der = self.0.to_pkcs8_der().expect("P-256 key encodes");
        let mut salt = [0u8; 32];
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut salt);
        OsRng.fill_bytes(&mut nonce);
        let key = secretbox_key(password, &salt, SCRYPT_N, "new key").expect("N is supported");
        let ciphertext = XSalsa20Poly1305::new(&key.into())
            .encrypt(&nonce.into(), der.as_bytes())
            .expect("secretbox seals");
        let body = serde_json::to_vec(&EncryptedKey {
            kdf: Kdf {
                name: "scrypt".into(),
                params: ScryptParams {
                    n: SCRYPT_N,
                    r: 8,
                    p: 1,
                },
                salt: B64.encode(salt),
            },
            cipher: Cipher {
                name: "nacl/secretbox".into(),
                nonce: B64.encode(nonce),
            },
            ciphertext: B64.encode(ciphertext),
        })
        .expect("key serialises");
        pem_encode(ENCRYPTED_KEY_LABEL, &body)
    }

    /// Reads a private key from PEM text: cosign's encrypted format (opened with
    /// `password()`, asked only then), PKCS#8 or SEC1. `origin` names it in errors.
    ///
    /// # Errors
    /// [`Error::Key`] naming `origin`: not PEM, an unknown label, a wrong passphrase,
    /// unsupported scrypt parameters, not a P-256 key.
    pub fn from_pem(
        text: &str,
        origin: &str,
        password: impl FnOnce() -> Result<String>,
    ) -> Result<Self> {
        let (label, der) = pem_decode(text, origin)?;
        let key = match label.as_str() {
            ENCRYPTED_KEY_LABEL | LEGACY_ENCRYPTED_KEY_LABEL => {
                let enc: EncryptedKey = serde_json::from_slice(&der)
                    .map_err(|e| key_error(origin, format!("not a cosign key: {e}")))?;
                if enc.kdf.name != "scrypt" || enc.cipher.name != "nacl/secretbox" {
                    return Err(key_error(
                        origin,
                        format!(
                            "unsupported kdf {:?} / cipher {:?}",
                            enc.kdf.name, enc.cipher.name
                        ),
                    ));
                }
                let n = enc.kdf.params.n;
                if (enc.kdf.params.r, enc.kdf.params.p) != (8, 1)
                    || ![32768, 65536, 131072].contains(&n)
                {
                    return Err(key_error(
                        origin,
                        format!(
                            "unsupported scrypt cost N={n} r={} p={} (cosign's are N of 32768, 65536 or 131072, r=8, p=1)",
                            enc.kdf.params.r, enc.kdf.params.p
                        ),
                    ));
                }
                let b64 = |what: &str, v: &str| {
                    B64.decode(v)
                        .map_err(|e| key_error(origin, format!("{what}: {e}")))
                };
                let salt = b64("salt", &enc.kdf.salt)?;
                let nonce: [u8; 24] = b64("nonce", &enc.cipher.nonce)?
                    .try_into()
                    .map_err(|_| key_error(origin, "the nonce is not 24 bytes"))?;
                let ciphertext = b64("ciphertext", &enc.ciphertext)?;
                let key = secretbox_key(&password()?, &salt, enc.kdf.params.n, origin)?;
                let plain = XSalsa20Poly1305::new(&key.into())
                    .decrypt(&nonce.into(), ciphertext.as_slice())
                    .map_err(|_| key_error(origin, "wrong passphrase (or a damaged key)"))?;
                p256::ecdsa::SigningKey::from_pkcs8_der(&plain)
                    .map_err(|e| key_error(origin, format!("not a P-256 key: {e}")))?
            }
            "PRIVATE KEY" => p256::ecdsa::SigningKey::from_pkcs8_der(&der)
                .map_err(|e| key_error(origin, format!("not a P-256 key: {e}")))?,
            "EC PRIVATE KEY" => p256::SecretKey::from_sec1_der(&der)
                .map(Into::into)
                .map_err(|e| key_error(origin, format!("not a P-256 key: {e}")))?,
            other => {
                return Err(key_error(
                    origin,
                    format!("PEM {other:?} is not a private key cosign or vmt-hub writes"),
                ))
            }
        };
        Ok(Self(key))
    }

    /// [`SigningKey::from_pem`] of the file at `path`.
    ///
    /// # Errors
    /// I/O errors naming `path`; then as [`SigningKey::from_pem`].
    pub fn read(path: &Path, password: impl FnOnce() -> Result<String>) -> Result<Self> {
        let text = read_key_file(path)?;
        Self::from_pem(&text, &path.display().to_string(), password)
    }
}

impl PublicKey {
    /// PEM `PUBLIC KEY` (PKIX), as cosign writes `cosign.pub`.
    pub fn to_pem(&self) -> String {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .expect("P-256 key encodes")
    }

    /// Reads a PEM `PUBLIC KEY`; `origin` names it in errors.
    ///
    /// # Errors
    /// [`Error::Key`] naming `origin`.
    pub fn from_pem(text: &str, origin: &str) -> Result<Self> {
        p256::ecdsa::VerifyingKey::from_public_key_pem(text.trim())
            .map(Self)
            .map_err(|e| {
                key_error(
                    origin,
                    format!("not a P-256 public key (PEM PUBLIC KEY): {e}"),
                )
            })
    }

    /// [`PublicKey::from_pem`] of the file at `path`.
    ///
    /// # Errors
    /// I/O errors naming `path`; then as [`PublicKey::from_pem`].
    pub fn read(path: &Path) -> Result<Self> {
        Self::from_pem(&read_key_file(path)?, &path.display().to_string())
    }

    /// Its fingerprint: `sha256:` of its PKIX DER (what errors and `show` name it by).
    pub fn fingerprint(&self) -> Digest {
        let der = self.0.to_public_key_der().expect("P-256 key encodes");
        Digest::of(der.as_bytes())
    }

    /// Whether `der` is a valid ECDSA-SHA256 signature of `message` by this key.
    pub fn verifies(&self, message: &[u8], der: &[u8]) -> bool {
        DerSignature::from_bytes(der)
            .ok()
            .and_then(|s| Signature::from_der(s.as_bytes()).ok())
            .is_some_and(|s| self.0.verify(message, &s).is_ok())
    }
}

fn read_key_file(path: &Path) -> Result<String> {
    let bytes = crate::file::read_limited(path, MAX_KEY_FILE).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes)
        .map_err(|_| key_error(&path.display().to_string(), "not a PEM text file"))
}

/// PEM with 64-character lines, as Go's `pem.EncodeToMemory` writes.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The label and bytes of the first PEM block of `text`.
fn pem_decode(text: &str, origin: &str) -> Result<(String, Vec<u8>)> {
    let begin = text
        .find("-----BEGIN ")
        .ok_or_else(|| key_error(origin, "not PEM (no -----BEGIN line)"))?;
    let rest = &text[begin + 11..];
    let (label, rest) = rest
        .split_once("-----")
        .ok_or_else(|| key_error(origin, "a broken PEM header"))?;
    let end = format!("-----END {label}-----");
    let body = rest
        .split_once(&end)
        .map(|(b, _)| b)
        .ok_or_else(|| key_error(origin, format!("no {end} line")))?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = B64
        .decode(b64)
        .map_err(|e| key_error(origin, format!("PEM body: {e}")))?;
    Ok((label.to_string(), der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encrypted_key_opens_with_its_passphrase_only() {
        let key = SigningKey::generate();
        let pem = key.to_encrypted_pem("hunter2");
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        let back = SigningKey::from_pem(&pem, "k.key", || Ok("hunter2".into())).unwrap();
        assert_eq!(back.public(), key.public());
        let wrong = SigningKey::from_pem(&pem, "k.key", || Ok("nope".into()));
        let msg = wrong.err().unwrap().to_string();
        assert!(
            msg.contains("k.key") && msg.contains("wrong passphrase"),
            "{msg}"
        );
    }

    #[test]
    fn signatures_verify_with_the_public_key_only() {
        let key = SigningKey::generate();
        let sig = key.sign(b"payload");
        let public = PublicKey::from_pem(&key.public().to_pem(), "k.pub").unwrap();
        assert!(public.verifies(b"payload", &sig));
        assert!(!public.verifies(b"payload!", &sig));
        assert!(!SigningKey::generate().public().verifies(b"payload", &sig));
        assert!(!public.verifies(b"payload", b"\x30\x02"));
    }

    #[test]
    fn hostile_key_files_get_errors_naming_them() {
        let costly = r#"{"kdf":{"name":"scrypt","params":{"N":1048576,"r":8,"p":1},"salt":"AA=="},"cipher":{"name":"nacl/secretbox","nonce":"AA=="},"ciphertext":"AA=="}"#;
        let pem = pem_encode(ENCRYPTED_KEY_LABEL, costly.as_bytes());
        let e = SigningKey::from_pem(&pem, "evil.key", || Ok(String::new()))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("evil.key") && e.to_string().contains("N=1048576"),
            "{e}"
        );
        let e = SigningKey::from_pem("hello", "x.key", || Ok(String::new()))
            .err()
            .unwrap();
        assert!(e.to_string().contains("not PEM"), "{e}");
        let e = PublicKey::from_pem(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "x.pub",
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("x.pub"), "{e}");
    }
}
