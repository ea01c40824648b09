//! Artifacts attached to bundles: signatures, SBOMs. Each is an OCI image manifest
//! ([`ArtifactManifest`]) about one bundle, its *subject*: named by the manifest's
//! `subject` field (image-spec v1.1, the referrers API), or by a tag in cosign's scheme
//! (`sha256-<hex of the subject>.sig`) for signers that write no subject.
//!
//! They are registry state beside the bundle, never inside it: attaching a signature
//! does not change the bundle's digest. Like the tag record they are files (the index
//! does not know them): `referrers/<subject hex>/<manifest hex>` holds
//! `{"repositories": {"team/seg": "sha256-<hex>.sig"}}`, the repositories the artifact
//! is attached in, each with its tag (or `null`). `gc` keeps an attached artifact while
//! its subject lives and frees it with its subject.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::Registry;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{ArtifactManifest, IndexDescriptor};
use crate::reference::valid_tag;
use crate::sign::cosign::{MAX_PAYLOAD_BYTES, SIMPLESIGNING_MEDIA_TYPE};

/// The folder of attachment records under a registry root.
pub const REFERRERS_DIR: &str = "referrers";

/// Serialises read-modify-write of records within a process (other processes are
/// kept out by the index lock, which every caller holds).
static WRITE: Mutex<()> = Mutex::new(());

#[derive(Debug, Default, Serialize, Deserialize)]
struct RecordFile {
    repositories: BTreeMap<String, Option<String>>,
}

/// An artifact attached to a bundle.
#[derive(Debug, Clone)]
pub struct Referrer {
    /// The artifact's manifest digest.
    pub digest: Digest,
    /// The bundle it is attached to.
    pub subject: Digest,
    /// Its manifest.
    pub manifest: ArtifactManifest,
    /// The manifest's size in bytes.
    pub size: u64,
    /// The repositories it is attached in, each with its tag (cosign's scheme) if any.
    pub repositories: BTreeMap<String, Option<String>>,
}

impl Referrer {
    /// Its descriptor in a referrers index.
    pub fn descriptor(&self) -> IndexDescriptor {
        IndexDescriptor {
            media_type: self.manifest.media_type.clone(),
            digest: self.digest,
            size: self.size,
            artifact_type: Some(self.manifest.artifact_type().to_string()),
            annotations: self.manifest.annotations.clone(),
        }
    }
}

/// The entries of `dir` named by a sha256 hex digest, sorted (none if it is absent).
fn digest_names(dir: &Path) -> Result<Vec<Digest>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let name = entry.map_err(|e| Error::io(dir, e))?.file_name();
        if let Ok(d) = format!("sha256:{}", name.to_string_lossy()).parse() {
            out.push(d);
        }
    }
    out.sort();
    Ok(out)
}

/// The subject a cosign-scheme tag names: `sha256-<hex>.<suffix>` → `sha256:<hex>`.
pub fn subject_of_tag(tag: &str) -> Option<Digest> {
    let (d, suffix) = tag.split_once('.')?;
    let ok = !suffix.is_empty() && suffix.chars().all(|c| c.is_ascii_lowercase());
    ok.then(|| d.replacen('-', ":", 1).parse().ok()).flatten()
}

/// The cosign-scheme tag of signatures of `subject`: `sha256-<hex>.sig`.
pub fn signature_tag(subject: &Digest) -> String {
    format!("sha256-{}.sig", subject.hex())
}

impl Registry {
    fn referrers_dir(&self) -> PathBuf {
        self.root.join(REFERRERS_DIR)
    }

    fn record_path(&self, subject: &Digest, d: &Digest) -> PathBuf {
        self.referrers_dir().join(subject.hex()).join(d.hex())
    }

    fn read_record(&self, path: &Path) -> Result<Option<RecordFile>> {
        match crate::file::read_limited(path, 1 << 20) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    what: format!("attachment record {}", path.display()),
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn write_record(&self, subject: &Digest, d: &Digest, record: &RecordFile) -> Result<()> {
        let path = self.record_path(subject, d);
        if record.repositories.is_empty() {
            return match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(path, e)),
            };
        }
        let dir = path.parent().expect("record has a folder");
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let body = serde_json::to_vec(record).expect("record serialises");
        crate::file::write_atomic(&path, &body).map_err(|e| Error::io(&path, e))
    }

    /// Attaches the artifact manifest `bytes` to bundle `subject` in repository `repo`,
    /// under `tag` (cosign's scheme, which must name `subject`) or none. The bundle and
    /// every blob the manifest references must already be stored; the manifest blob is
    /// written first, the record last. Another artifact with the same tag in `repo` is
    /// detached (cosign re-pushes the signature manifest with one more layer).
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a manifest that does not parse or whose `subject` is not
    /// `subject`; [`Error::InvalidReference`] for a tag that does not name `subject`;
    /// [`Error::MissingBlob`] for an unknown bundle or a blob not stored.
    pub fn attach(
        &self,
        repo: &str,
        bytes: &[u8],
        subject: &Digest,
        tag: Option<&str>,
    ) -> Result<Digest> {
        let manifest = ArtifactManifest::parse(bytes).map_err(|reason| Error::Corrupt {
            what: "attached manifest".into(),
            reason,
        })?;
        if let Some(s) = &manifest.subject {
            if s.digest != *subject {
                return Err(Error::Corrupt {
                    what: "attached manifest".into(),
                    reason: format!("its subject is {}, not {subject}", s.digest),
                });
            }
        }
        if let Some(tag) = tag {
            if !valid_tag(tag) || subject_of_tag(tag) != Some(*subject) {
                return Err(Error::InvalidReference {
                    reference: tag.into(),
                    reason: format!(
                        "an attached artifact's tag must be sha256-<hex of {subject}>.<kind>"
                    ),
                });
            }
        }
        if !self.knows_manifest(subject)? {
            return Err(Error::MissingBlob {
                digest: subject.to_string(),
                what: "bundle the artifact is attached to".into(),
            });
        }
        for layer in &manifest.layers {
            if layer.media_type == SIMPLESIGNING_MEDIA_TYPE && layer.size > MAX_PAYLOAD_BYTES {
                return Err(Error::Corrupt {
                    what: "attached manifest".into(),
                    reason: format!(
                        "signature payload {} of {} bytes (at most {MAX_PAYLOAD_BYTES})",
                        layer.digest, layer.size
                    ),
                });
            }
        }
        for desc in manifest.blobs() {
            if self.blobs.size(&desc.digest) != Some(desc.size) {
                return Err(Error::MissingBlob {
                    digest: desc.digest.to_string(),
                    what: format!("blob of {} bytes of the attached artifact", desc.size),
                });
            }
        }
        let (d, _) = self.blobs.put(bytes)?;
        let _w = WRITE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tag) = tag {
            for other in self.referrers(subject)? {
                if other.digest != d && other.repositories.get(repo) == Some(&Some(tag.into())) {
                    let mut rec = RecordFile {
                        repositories: other.repositories,
                    };
                    rec.repositories.remove(repo);
                    self.write_record(subject, &other.digest, &rec)?;
                }
            }
        }
        let path = self.record_path(subject, &d);
        let mut rec = self.read_record(&path)?.unwrap_or_default();
        // Pushed again by digest, an artifact keeps the tag it has.
        match tag {
            Some(t) => {
                rec.repositories.insert(repo.into(), Some(t.into()));
            }
            None => {
                rec.repositories.entry(repo.into()).or_insert(None);
            }
        }
        self.write_record(subject, &d, &rec)?;
        Ok(d)
    }

    /// Detaches artifact `d` from repository `repo`; true if it was attached there.
    ///
    /// # Errors
    /// I/O errors naming the record.
    pub fn detach(&self, repo: &str, d: &Digest) -> Result<bool> {
        let _w = WRITE.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = self.referrer(d)? else {
            return Ok(false);
        };
        let mut rec = RecordFile {
            repositories: r.repositories,
        };
        let was = rec.repositories.remove(repo).is_some();
        self.write_record(&r.subject, d, &rec)?;
        Ok(was)
    }

    /// The artifacts attached to `subject` (in any repository), by digest.
    ///
    /// # Errors
    /// A record or manifest that cannot be read.
    pub fn referrers(&self, subject: &Digest) -> Result<Vec<Referrer>> {
        let mut out = Vec::new();
        // Other names are temp files of write_atomic.
        for d in digest_names(&self.referrers_dir().join(subject.hex()))? {
            if let Some(r) = self.load_referrer(subject, &d)? {
                out.push(r);
            }
        }
        out.sort_by_key(|r| r.digest);
        Ok(out)
    }

    fn load_referrer(&self, subject: &Digest, d: &Digest) -> Result<Option<Referrer>> {
        let Some(rec) = self.read_record(&self.record_path(subject, d))? else {
            return Ok(None);
        };
        let bytes = self.blobs.get(d, "attached manifest")?;
        let manifest = ArtifactManifest::parse(&bytes).map_err(|reason| Error::Corrupt {
            what: format!("attached manifest {d}"),
            reason,
        })?;
        Ok(Some(Referrer {
            digest: *d,
            subject: *subject,
            manifest,
            size: bytes.len() as u64,
            repositories: rec.repositories,
        }))
    }

    /// Attached artifact `d`, if it is one.
    ///
    /// # Errors
    /// A record or manifest that cannot be read.
    pub fn referrer(&self, d: &Digest) -> Result<Option<Referrer>> {
        for subject in self.attached_subjects()? {
            if let Some(r) = self.load_referrer(&subject, d)? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// The artifact tagged `tag` (cosign's scheme) in repository `repo`.
    ///
    /// # Errors
    /// A record or manifest that cannot be read.
    pub fn referrer_by_tag(&self, repo: &str, tag: &str) -> Result<Option<Referrer>> {
        let Some(subject) = subject_of_tag(tag) else {
            return Ok(None);
        };
        Ok(self
            .referrers(&subject)?
            .into_iter()
            .find(|r| r.repositories.get(repo) == Some(&Some(tag.into()))))
    }

    /// Every bundle something is attached to.
    pub(crate) fn attached_subjects(&self) -> Result<Vec<Digest>> {
        digest_names(&self.referrers_dir())
    }

    /// Forgets everything attached to `subject` (gc, once the bundle is freed).
    pub(crate) fn forget_referrers(&self, subject: &Digest) -> Result<()> {
        let dir = self.referrers_dir().join(subject.hex());
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(dir, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosign_tags_name_their_subject() {
        let d = Digest::of(b"bundle");
        let tag = signature_tag(&d);
        assert_eq!(subject_of_tag(&tag), Some(d));
        assert_eq!(subject_of_tag(&tag.replace(".sig", ".att")), Some(d));
        assert_eq!(subject_of_tag("v1"), None);
        assert_eq!(subject_of_tag(&tag.replace(".sig", ".")), None);
        assert_eq!(subject_of_tag("sha256-abc.sig"), None);
    }
}
