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
    /// One valid signature per key set: by one of that set's keys.
    SignedBy(Vec<Vec<PublicKey>>),
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
            Trust::SignedBy(sets) => sets
                .iter()
                .map(|keys| require_signed(signatures, keys, digest).map_err(refuse))
                .collect(),
        }
    }

    /// Whether signatures must be fetched and checked.
    pub fn requires_signatures(&self) -> bool {
        !matches!(self, Trust::Anything)
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
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
    },
}

#[derive(Debug, Deserialize)]
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
        let file: PolicyFile = serde_json::from_slice(&bytes).map_err(|e| Error::Key {
            origin: path.display().to_string(),
            reason: format!("not a trust policy (containers-policy.json): {e}"),
        })?;
        Ok(Self {
            file,
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            origin: path.display().to_string(),
        })
    }

    /// What it requires of `host/repo`.
    ///
    /// # Errors
    /// A key the policy names that cannot be read.
    pub fn trust_for(&self, host: &str, repo: &str) -> Result<Trust> {
        let full = format!("{host}/{repo}");
        let scopes = self.file.transports.get("docker");
        let mut scope = full.as_str();
        let (name, reqs) = loop {
            if let Some(r) = scopes.and_then(|s| s.get(scope)) {
                break (scope.to_string(), r);
            }
            match scope.rsplit_once('/') {
                Some((shorter, _)) => scope = shorter,
                None => break ("default".to_string(), &self.file.default),
            }
        };
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
                } => sets.push(self.keys(key_path, key_paths, key_data)?),
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
        assert!(
            matches!(p.trust_for("reg:5000", "team/seg").unwrap(), Trust::SignedBy(s) if s[0][0] == key.public())
        );
        assert!(matches!(
            p.trust_for("reg:5000", "team/scratch").unwrap(),
            Trust::Anything
        ));
        assert!(matches!(
            p.trust_for("reg:5000", "other").unwrap(),
            Trust::Reject { .. }
        ));
        assert!(matches!(
            p.trust_for("elsewhere", "team/seg").unwrap(),
            Trust::Reject { .. }
        ));
        std::fs::write(
            &path,
            r#"{"default":[{"type":"signedBy","keyType":"GPGKeys"}]}"#,
        )
        .unwrap();
        let e = Policy::read(&path).unwrap_err().to_string();
        assert!(e.contains("policy.json"), "{e}");
    }
}
