//! The sled index: tags, known manifests, lineage and blob reference counts. It is a
//! cache of the tag record and the blobs and is rebuilt from them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// What the index keeps about a manifest, so `list` and `show` need no blob reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    /// Its config blob.
    pub config: Digest,
    /// `(component, digest, size)` per layer.
    pub layers: Vec<(String, Digest, u64)>,
    /// Total bytes: manifest, config and layers.
    pub size: u64,
    /// Its task names.
    pub tasks: Vec<String>,
    /// The bundle it was derived from.
    pub parent: Option<Digest>,
}

impl ManifestRecord {
    /// Config and layers: the blobs this manifest needs besides itself.
    pub fn blobs(&self) -> impl Iterator<Item = Digest> + '_ {
        std::iter::once(self.config).chain(self.layers.iter().map(|l| l.1))
    }
}

/// The sled index of a registry.
pub struct Index {
    db: sled::Db,
    tags: sled::Tree,
    manifests: sled::Tree,
    lineage: sled::Tree,
    refs: sled::Tree,
    /// `"<host> <digest>"` -> a repository on that host known to hold the blob (for
    /// cross-repository mounts on push).
    remote_blobs: sled::Tree,
    /// `"<repo>\0<digest>"`: a blob uploaded or mounted into a repository of this
    /// registry (`serve` scopes blob reads to the repository).
    repo_blobs: sled::Tree,
    path: PathBuf,
}

impl Index {
    /// Opens the index at `path`, waiting up to `lock_wait` while another process holds it.
    ///
    /// # Errors
    /// [`Error::Locked`] after the wait; sled's errors naming the path.
    pub fn open(path: &Path, lock_wait: Duration) -> Result<Self> {
        let start = Instant::now();
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if start.elapsed() >= lock_wait {
                        return Err(Error::Locked {
                            path: path.parent().unwrap_or(path).into(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                // Not damage: a rebuild could not help, so none is suggested.
                Err(sled::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::PermissionDenied
                            | std::io::ErrorKind::ReadOnlyFilesystem
                    ) =>
                {
                    return Err(Error::io(path, e));
                }
                Err(e) => {
                    return Err(Error::Corrupt {
                        what: format!("registry index {}", path.display()),
                        reason: format!(
                            "{e}; rebuild it from the blobs with `vmt-hub verify --rebuild-index`"
                        ),
                    })
                }
            }
        };
        Ok(Self {
            tags: db.open_tree("tags")?,
            manifests: db.open_tree("manifests")?,
            lineage: db.open_tree("lineage")?,
            refs: db.open_tree("refs")?,
            remote_blobs: db.open_tree("remote_blobs")?,
            repo_blobs: db.open_tree("repo_blobs")?,
            db,
            path: path.into(),
        })
    }

    /// Its folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The manifest `tag` points to.
    pub fn tag(&self, tag: &str) -> Result<Option<Digest>> {
        Ok(self.tags.get(tag)?.and_then(|v| parse_digest(&v)))
    }

    /// Every `(name:tag, manifest)`, sorted by tag.
    pub fn tags(&self) -> Result<Vec<(String, Digest)>> {
        let mut out = Vec::new();
        for kv in self.tags.iter() {
            let (k, v) = kv?;
            if let Some(d) = parse_digest(&v) {
                out.push((String::from_utf8_lossy(&k).into_owned(), d));
            }
        }
        Ok(out)
    }

    /// What the index keeps about manifest `d`.
    pub fn manifest(&self, d: &Digest) -> Result<Option<ManifestRecord>> {
        match self.manifests.get(d.to_string())? {
            Some(v) => Ok(serde_json::from_slice(&v).ok()),
            None => Ok(None),
        }
    }

    /// Every known manifest.
    pub fn manifests(&self) -> Result<Vec<(Digest, ManifestRecord)>> {
        let mut out = Vec::new();
        for kv in self.manifests.iter() {
            let (k, v) = kv?;
            if let (Some(d), Ok(r)) = (parse_digest(&k), serde_json::from_slice(&v)) {
                out.push((d, r));
            }
        }
        Ok(out)
    }

    /// The parent of manifest `d`.
    pub fn parent(&self, d: &Digest) -> Result<Option<Digest>> {
        Ok(self
            .lineage
            .get(d.to_string())?
            .and_then(|v| parse_digest(&v)))
    }

    /// How many known manifests reference blob `d`.
    pub fn refcount(&self, d: &Digest) -> Result<u64> {
        Ok(self
            .refs
            .get(d.to_string())?
            .map(|v| read_u64(&v))
            .unwrap_or(0))
    }

    /// Records a manifest (if new) and points `tag` at it, in one transaction. Returns
    /// the manifest the tag pointed to before, if it was another one.
    pub fn publish(
        &self,
        tag: &str,
        digest: &Digest,
        record: &ManifestRecord,
    ) -> Result<Option<Digest>> {
        self.record_and_tag(Some(tag), digest, record)
    }

    /// Records a manifest without tagging it (index rebuilds).
    pub fn record(&self, digest: &Digest, record: &ManifestRecord) -> Result<()> {
        self.record_and_tag(None, digest, record).map(|_| ())
    }

    fn record_and_tag(
        &self,
        tag: Option<&str>,
        digest: &Digest,
        record: &ManifestRecord,
    ) -> Result<Option<Digest>> {
        let key = digest.to_string();
        let value = serde_json::to_vec(record).expect("record serialises");
        let previous = (&self.tags, &self.manifests, &self.lineage, &self.refs)
            .transaction(|(tags, manifests, lineage, refs)| {
                if manifests.get(key.as_bytes())?.is_none() {
                    manifests.insert(key.as_bytes(), value.as_slice())?;
                    for b in record.blobs() {
                        let k = b.to_string();
                        let n = refs.get(k.as_bytes())?.map(|v| read_u64(&v)).unwrap_or(0);
                        refs.insert(k.as_bytes(), &(n + 1).to_be_bytes())?;
                    }
                    if let Some(p) = &record.parent {
                        lineage.insert(key.as_bytes(), p.to_string().as_bytes())?;
                    }
                }
                let old = match tag {
                    Some(tag) => tags.insert(tag.as_bytes(), key.as_bytes())?,
                    None => None,
                };
                Ok::<_, ConflictableTransactionError<Error>>(old.and_then(|v| parse_digest(&v)))
            })
            .map_err(tx_error)?;
        self.db.flush()?;
        Ok(previous.filter(|p| p != digest))
    }

    /// Remembers that `repo` on `host` holds blob `d`.
    pub fn note_remote_blob(&self, host: &str, d: &Digest, repo: &str) -> Result<()> {
        self.remote_blobs
            .insert(format!("{host} {d}"), repo.as_bytes())?;
        Ok(())
    }

    /// A repository on `host` known to hold blob `d`.
    pub fn remote_blob(&self, host: &str, d: &Digest) -> Result<Option<String>> {
        Ok(self
            .remote_blobs
            .get(format!("{host} {d}"))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Remembers that repository `repo` of this registry holds blob `d`.
    pub fn note_repo_blob(&self, repo: &str, d: &Digest) -> Result<()> {
        self.repo_blobs.insert(format!("{repo}\0{d}"), &[])?;
        Ok(())
    }

    /// Whether blob `d` was uploaded or mounted into repository `repo`.
    pub fn repo_noted(&self, repo: &str, d: &Digest) -> Result<bool> {
        Ok(self.repo_blobs.contains_key(format!("{repo}\0{d}"))?)
    }

    /// Points `tag` at `d` without a manifest record (a tag of the record whose
    /// manifest cannot be read: kept so that nothing forgets the name).
    pub fn set_tag(&self, tag: &str, d: &Digest) -> Result<()> {
        self.tags.insert(tag, d.to_string().as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Removes a tag; returns the manifest it pointed to.
    pub fn untag(&self, tag: &str) -> Result<Option<Digest>> {
        let old = self.tags.remove(tag)?.and_then(|v| parse_digest(&v));
        self.db.flush()?;
        Ok(old)
    }

    /// True when some tag points at `d`.
    pub fn is_tagged(&self, d: &Digest) -> Result<bool> {
        Ok(self.tags()?.iter().any(|(_, t)| t == d))
    }

    /// Forgets a manifest: its record, its lineage and its references to blobs.
    pub fn forget_manifest(&self, d: &Digest) -> Result<()> {
        let key = d.to_string();
        (&self.manifests, &self.lineage, &self.refs)
            .transaction(|(manifests, lineage, refs)| {
                if let Some(v) = manifests.remove(key.as_bytes())? {
                    if let Ok(record) = serde_json::from_slice::<ManifestRecord>(&v) {
                        for b in record.blobs() {
                            let k = b.to_string();
                            let n = refs.get(k.as_bytes())?.map(|v| read_u64(&v)).unwrap_or(0);
                            if n <= 1 {
                                refs.remove(k.as_bytes())?;
                            } else {
                                refs.insert(k.as_bytes(), &(n - 1).to_be_bytes())?;
                            }
                        }
                    }
                }
                lineage.remove(key.as_bytes())?;
                Ok::<_, ConflictableTransactionError<Error>>(())
            })
            .map_err(tx_error)?;
        self.db.flush()?;
        Ok(())
    }
}

fn tx_error(e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => Error::Index(e),
    }
}

fn parse_digest(v: &[u8]) -> Option<Digest> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn read_u64(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}
