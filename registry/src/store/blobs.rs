//! Content-addressed blobs: files under `blobs/sha256/<hex>`, written through a temp
//! file that is fsynced and renamed, so a reader sees a whole blob or none.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The blob files of a registry: `blobs/sha256/<hex>`, written through `tmp/`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
}

impl BlobStore {
    /// Opens (creating) the store under `root`; leftover temp files of a crashed writer
    /// are removed (the caller holds the registry lock).
    pub fn open(root: &Path) -> Result<Self> {
        let dir = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        for d in [&dir, &tmp] {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        // Leftovers of a crashed writer: temp files and staged tag records an hour old,
        // and upload sessions of a `serve` that is no longer running.
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    if p.file_name().is_some_and(|n| n == "uploads") {
                        if super::ServeLock::is_held(root) {
                            continue; // a running `serve`'s sessions
                        }
                        if let Ok(inner) = std::fs::read_dir(&p) {
                            for f in inner.flatten() {
                                let _ = std::fs::remove_file(f.path());
                            }
                        }
                    } else if stale(&p) {
                        let _ = std::fs::remove_dir_all(&p);
                    }
                } else if stale(&p) {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        Ok(Self { dir, tmp })
    }

    /// The file of blob `d`.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// Whether blob `d` is present (not re-hashed).
    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// Stores `bytes`; returns its digest and whether a new file was written. An existing
    /// blob whose bytes no longer match (bit rot) is replaced.
    pub fn put(&self, bytes: &[u8]) -> Result<(Digest, bool)> {
        let d = Digest::of(bytes);
        let path = self.path(&d);
        if path.is_file() && Digest::of_file(&path).ok() == Some(d) {
            return Ok((d, false));
        }
        let mut f =
            tempfile::NamedTempFile::new_in(&self.tmp).map_err(|e| Error::io(&self.tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(f.path(), e))?;
        f.as_file().sync_all().map_err(|e| Error::io(f.path(), e))?;
        f.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        sync_dir(&self.dir);
        Ok((d, true))
    }

    /// Reads a blob (a regular file of at most [`MAX_STORED_BLOB`] bytes) and checks it
    /// against its digest; `what` names it in errors.
    pub fn get(&self, d: &Digest, what: &str) -> Result<Vec<u8>> {
        let path = self.path(d);
        let bytes =
            crate::file::read_limited(&path, MAX_STORED_BLOB).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::MissingBlob {
                    digest: d.to_string(),
                    what: what.into(),
                },
                _ => Error::io(&path, e),
            })?;
        let actual = Digest::of(&bytes);
        if actual != *d {
            return Err(Error::DigestMismatch {
                what: format!("{what} (blob {})", path.display()),
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Size in bytes, if present.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        std::fs::metadata(self.path(d)).ok().map(|m| m.len())
    }

    /// Every blob digest in the store (files with other names are ignored).
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let e = e.map_err(|e| Error::io(&self.dir, e))?;
            if let Some(d) = e.file_name().to_str().and_then(Digest::from_hex) {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes blob `d` (absent is fine).
    pub fn remove(&self, d: &Digest) -> Result<()> {
        let p = self.path(d);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(p, e)),
        }
    }

    /// The first byte of a blob (to tell JSON from safetensors without reading it all).
    pub fn first_byte(&self, d: &Digest) -> Option<u8> {
        use std::io::Read;
        let mut b = [0u8; 1];
        std::fs::File::open(self.path(d))
            .ok()?
            .read_exact(&mut b)
            .ok()?;
        Some(b[0])
    }

    /// The folder where `serve` streams upload sessions.
    pub fn uploads_dir(&self) -> PathBuf {
        self.tmp.join("uploads")
    }

    /// Deletes every upload session file (none while a `serve` runs on this registry);
    /// returns how many there were.
    pub fn clean_uploads(&self) -> Result<usize> {
        let dir = self.uploads_dir();
        if self.tmp.parent().is_some_and(super::ServeLock::is_held) {
            return Ok(0); // a running `serve`'s sessions
        }
        let mut n = 0;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if std::fs::remove_file(e.path()).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// A temp file in the store's folder, for a blob being received.
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        tempfile::NamedTempFile::new_in(&self.tmp).map_err(|e| Error::io(&self.tmp, e))
    }

    /// Moves a received file into the store as blob `d` after hashing it (streaming):
    /// a file that does not hash to `d` is refused and nothing is stored.
    pub fn put_file(&self, file: &Path, d: &Digest) -> Result<bool> {
        let actual = Digest::of_file(file)?;
        if actual != *d {
            return Err(Error::DigestMismatch {
                what: format!("received blob {d}"),
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        let path = self.path(d);
        if path.is_file() && Digest::of_file(&path).ok() == Some(*d) {
            return Ok(false);
        }
        std::fs::File::open(file)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(file, e))?;
        std::fs::rename(file, &path).map_err(|e| Error::io(&path, e))?;
        sync_dir(&self.dir);
        Ok(true)
    }
}

pub(crate) use super::tags::sync_dir;

/// Whether a temp file is a crashed writer's: untouched for an hour. A younger one may
/// belong to a process working now (a pull or a `serve` lets go of the registry's lock
/// while it transfers).
fn stale(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > std::time::Duration::from_secs(3600))
}

/// The largest blob read into memory (`serve` accepts at most 4 GiB).
pub const MAX_STORED_BLOB: u64 = 16 << 30;
