//! Which signatures a pull requires: keys given on the command line, or a trust
//! policy in the format of containers-policy.json(5) (what skopeo and podman read), of
//! which vmt-hub reads the `docker` transport:
//!
//! ```json
//! {"default": [{"type": "reject"}],
//!  "transports": {"docker": {
//!     "registry.example:5000/team": [{"type": "sigstoreSigned", "keyPath": "team.pub"}],
//!     "registry.example:5000/scratch": [{"type": "insecureAcceptAnything"}]}}}
//! ```
//!
//! The most specific scope wins (`host/repo`, then each shorter `host/namespace`
//! prefix, then `host`), else `default`. Every requirement of the list must hold:
//! `reject` refuses, `insecureAcceptAnything` accepts, `sigstoreSigned` needs a
//! signature by its key (`keyPath`, `keyPaths` or `keyData`, base64 of the PEM;
//! relative paths are relative to the policy file).

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;

use super::cosign::{require_signed, CosignSignature};
use super::keys::PublicKey;
use crate::digest::Digest;
use crate::error::{Error, Result};

/// What a pull requires of a bundle's signatures.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// Nothing (no keys, no policy): signatures are carried, not checked.
    #[default]
    Anything,
    /// Refuse every bundle.
    Reject {
        /// Why (the policy scope that rejects).
        why: String,
    },
    /// One valid signature per requirement: by one of its keys, for an identity it
    /// accepts.
    SignedBy(Vec<Signer>),
}

/// One `sigstoreSigned` requirement (or the keys of `--verify-key`).
#[derive(Debug, Clone)]
pub struct Signer {
    /// A signature by any one of these keys.
    pub keys: Vec<PublicKey>,
    /// The `docker-reference` the payload must name (containers' `signedIdentity`,
    /// resolved for the image pulled); None: any (what `cosign verify` checks).
    pub identity: Option<IdentityRule>,
}

impl Signer {
    /// Any of `keys`, any identity (`--verify-key`, as `cosign verify --key`).
    pub fn keys(keys: Vec<PublicKey>) -> Self {
        Self {
            keys,
            identity: None,
        }
    }
}

/// What a payload's `docker-reference` must be, for the image being pulled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityRule {
    /// Exactly this (`host/repo:tag`).
    Exact(String),
    /// This repository (`host/repo`), with any tag or digest.
    Repository(String),
}

impl IdentityRule {
    fn accepts(&self, reference: Option<&str>) -> bool {
        let Some(r) = reference else { return false };
        match self {
            IdentityRule::Exact(want) => r == want,
            IdentityRule::Repository(want) => repository_of(r) == want,
        }
    }
}

/// `host/repo` of `host/repo[:tag][@digest]` (a port's colon is kept).
fn repository_of(reference: &str) -> &str {
    let r = reference.split('@').next().unwrap_or(reference);
    match r.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => r,
    }
}

impl Trust {
    /// Checks `signatures` of `digest`: the fingerprints of the keys that signed.
    ///
    /// # Errors
    /// [`Error::Signature`] naming `what` (the bundle) and why.
    pub fn check(
        &self,
        what: &str,
        signatures: &[CosignSignature],
        digest: &Digest,
    ) -> Result<Vec<Digest>> {
        let refuse = |reason: String| Error::Signature {
            what: what.into(),
            reason,
        };
        match self {
            Trust::Anything => Ok(Vec::new()),
            Trust::Reject { why } => Err(refuse(format!("refused by the trust policy ({why})"))),
            Trust::SignedBy(signers) => signers
                .iter()
                .map(|s| {
                    let ok: Vec<CosignSignature> = match &s.identity {
                        None => signatures.to_vec(),
                        Some(rule) => signatures
                            .iter()
                            .filter(|sig| rule.accepts(sig.docker_reference().as_deref()))
                            .cloned()
                            .collect(),
                    };
                    if ok.is_empty() && !signatures.is_empty() {
                        return Err(refuse(format!(
                            "no signature is for the identity the trust policy requires \
                             ({:?}; signatures name {:?})",
                            s.identity,
                            signatures
                                .iter()
                                .map(|s| s.docker_reference().unwrap_or_default())
                                .collect::<Vec<_>>()
                        )));
                    }
                    require_signed(&ok, &s.keys, digest).map_err(refuse)
                })
                .collect(),
        }
    }

    /// Whether signatures must be fetched and checked.
    pub fn requires_signatures(&self) -> bool {
        !matches!(self, Trust::Anything)
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum Requirement {
    #[serde(rename = "insecureAcceptAnything")]
    AcceptAnything,
    #[serde(rename = "reject")]
    Reject,
    #[serde(rename = "sigstoreSigned")]
    SigstoreSigned {
        #[serde(rename = "keyPath")]
        key_path: Option<String>,
        #[serde(rename = "keyPaths")]
        key_paths: Option<Vec<String>>,
        #[serde(rename = "keyData")]
        key_data: Option<String>,
        #[serde(rename = "signedIdentity")]
        signed_identity: Option<SignedIdentity>,
    },
}

/// containers-policy.json's `signedIdentity` (the forms about the image itself).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum SignedIdentity {
    #[serde(rename = "matchRepoDigestOrExact")]
    RepoDigestOrExact,
    #[serde(rename = "matchRepository")]
    Repository,
    #[serde(rename = "matchExact")]
    Exact,
    #[serde(rename = "exactRepository")]
    ExactRepository {
        #[serde(rename = "dockerRepository")]
        docker_repository: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: Vec<Requirement>,
    #[serde(default)]
    transports: BTreeMap<String, BTreeMap<String, Vec<Requirement>>>,
}

/// A trust policy file.
#[derive(Debug)]
pub struct Policy {
    file: PolicyFile,
    dir: std::path::PathBuf,
    origin: String,
}

impl Policy {
    /// Reads the policy at `path`.
    ///
    /// # Errors
    /// I/O errors naming `path`; [`Error::Json`]-like errors for a policy that does not
    /// parse (an unknown requirement type among them: refusing beats ignoring).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = crate::file::read_limited(path, 1 << 20).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes, path)
    }

    /// Parses the bytes of the policy file at `path` (key paths are relative to its
    /// folder).
    ///
    /// # Errors
    /// [`Error::Key`] naming `path` for a policy that does not parse.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let file: PolicyFile = serde_json::from_slice(bytes).map_err(|e| Error::Key {
            origin: path.display().to_string(),
            reason: format!("not a trust policy (containers-policy.json): {e}"),
        })?;
        Ok(Self {
            file,
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            origin: path.display().to_string(),
        })
    }

    /// What it requires of `host/repo` pulled by `reference` (a tag, or `sha256:...`).
    /// Scopes, most specific first: `host/repo:tag` (or `@digest`), `host/repo`, each
    /// shorter `host/namespace`, `host`, the transport's `""`, then `default`.
    ///
    /// # Errors
    /// A key the policy names that cannot be read; an empty requirement list (invalid,
    /// as containers/image says).
    pub fn trust_for(&self, host: &str, repo: &str, reference: &str) -> Result<Trust> {
        let full = format!("{host}/{repo}");
        let sep = if reference.starts_with("sha256:") {
            "@"
        } else {
            ":"
        };
        let image = format!("{full}{sep}{reference}");
        let scopes = self.file.transports.get("docker");
        let mut candidates = vec![image.clone()];
        let mut scope = full.as_str();
        loop {
            candidates.push(scope.to_string());
            match scope.rsplit_once('/') {
                Some((shorter, _)) => scope = shorter,
                None => break,
            }
        }
        candidates.push(String::new());
        let (name, reqs) = candidates
            .iter()
            .find_map(|c| scopes.and_then(|s| s.get(c)).map(|r| (format!("{c:?}"), r)))
            .unwrap_or(("default".to_string(), &self.file.default));
        if reqs.is_empty() {
            return Err(Error::Key {
                origin: self.origin.clone(),
                reason: format!("scope {name} has an empty requirement list (invalid)"),
            });
        }
        let by_digest = sep == "@";
        let mut sets = Vec::new();
        for r in reqs {
            match r {
                Requirement::AcceptAnything => {}
                Requirement::Reject => {
                    return Ok(Trust::Reject {
                        why: format!("{}: scope {name}", self.origin),
                    })
                }
                Requirement::SigstoreSigned {
                    key_path,
                    key_paths,
                    key_data,
                    signed_identity,
                } => {
                    let identity = match signed_identity {
                        None | Some(SignedIdentity::RepoDigestOrExact) if by_digest => {
                            IdentityRule::Repository(full.clone())
                        }
                        None
                        | Some(SignedIdentity::RepoDigestOrExact)
                        | Some(SignedIdentity::Exact) => IdentityRule::Exact(image.clone()),
                        Some(SignedIdentity::Repository) => IdentityRule::Repository(full.clone()),
                        Some(SignedIdentity::ExactRepository { docker_repository }) => {
                            IdentityRule::Repository(docker_repository.clone())
                        }
                    };
                    sets.push(Signer {
                        keys: self.keys(key_path, key_paths, key_data)?,
                        identity: Some(identity),
                    })
                }
            }
        }
        Ok(if sets.is_empty() {
            Trust::Anything
        } else {
            Trust::SignedBy(sets)
        })
    }

    fn keys(
        &self,
        key_path: &Option<String>,
        key_paths: &Option<Vec<String>>,
        key_data: &Option<String>,
    ) -> Result<Vec<PublicKey>> {
        let mut keys = Vec::new();
        for p in key_path.iter().chain(key_paths.iter().flatten()) {
            keys.push(PublicKey::read(&self.dir.join(p))?);
        }
        if let Some(data) = key_data {
            let pem = B64.decode(data).map_err(|e| Error::Key {
                origin: format!("{} keyData", self.origin),
                reason: e.to_string(),
            })?;
            keys.push(PublicKey::from_pem(
                &String::from_utf8_lossy(&pem),
                &format!("{} keyData", self.origin),
            )?);
        }
        if keys.is_empty() {
            return Err(Error::Key {
                origin: self.origin.clone(),
                reason: "a sigstoreSigned requirement names no key".into(),
            });
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_scope_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let key = super::super::keys::SigningKey::generate();
        std::fs::write(tmp.path().join("team.pub"), key.public().to_pem()).unwrap();
        let policy = r#"{"default":[{"type":"reject"}],"transports":{"docker":{
            "reg:5000/team":[{"type":"sigstoreSigned","keyPath":"team.pub"}],
            "reg:5000/team/scratch":[{"type":"insecureAcceptAnything"}]}}}"#;
        let path = tmp.path().join("policy.json");
        std::fs::write(&path, policy).unwrap();
        let p = Policy::read(&path).unwrap();
        let Trust::SignedBy(s) = p.trust_for("reg:5000", "team/seg", "v1").unwrap() else {
            panic!("team/seg needs a signature")
        };
        assert_eq!(s[0].keys, [key.public()]);
        let exact = IdentityRule::Exact("reg:5000/team/seg:v1".into());
        assert_eq!(
            s[0].identity,
            Some(exact),
            "containers' default: matchRepoDigestOrExact"
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let Trust::SignedBy(s) = p.trust_for("reg:5000", "team/seg", &digest).unwrap() else {
            panic!()
        };
        let repository = IdentityRule::Repository("reg:5000/team/seg".into());
        assert_eq!(s[0].identity, Some(repository));
        let t = |h: &str, r: &str| p.trust_for(h, r, "v1").unwrap();
        assert!(matches!(t("reg:5000", "team/scratch"), Trust::Anything));
        assert!(matches!(t("reg:5000", "other"), Trust::Reject { .. }));
        assert!(matches!(t("elsewhere", "team/seg"), Trust::Reject { .. }));
        // Strict as containers/image: unknown types and fields, empty lists.
        for bad in [
            r#"{"default":[{"type":"signedBy","keyType":"GPGKeys"}]}"#,
            r#"{"default":[{"type":"sigstoreSigned","keyPath":"team.pub","fulcio":{}}]}"#,
            r#"{"default":[{"type":"reject"}],"extra":1}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = Policy::read(&path).unwrap_err().to_string();
            assert!(e.contains("policy.json"), "{e}");
        }
        std::fs::write(&path, r#"{"default":[]}"#).unwrap();
        let e = Policy::read(&path).unwrap().trust_for("h", "r", "v1");
        let e = e.unwrap_err().to_string();
        assert!(e.contains("empty requirement list"), "{e}");
    }

    #[test]
    fn identity_rules_read_the_payloads_reference() {
        let r = IdentityRule::Repository("reg:5000/team/seg".into());
        assert!(r.accepts(Some("reg:5000/team/seg")));
        assert!(r.accepts(Some("reg:5000/team/seg:v1")));
        assert!(!r.accepts(Some("reg:5000/team/other")));
        assert!(!r.accepts(None));
        let e = IdentityRule::Exact("reg:5000/team/seg:v1".into());
        assert!(e.accepts(Some("reg:5000/team/seg:v1")));
        assert!(!e.accepts(Some("reg:5000/team/seg")));
    }
}
