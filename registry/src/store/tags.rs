//! The tag record: which manifest each `name:tag` points to, kept beside the blobs as
//! one small file per tag, written by atomic rename. It is the registry's source of truth
//! for names (the sled index is a cache rebuilt from it and from the blobs), the way
//! git keeps refs as files beside its object store.
//!
//! `tags/<sha256 of "name:tag">` holds `{"tag":"name:tag","manifest":"sha256:..."}`.
//! Names are hashed into file names because `name:tag` can be longer than a file name
//! and contain `/`; the file repeats the tag, and a file whose tag does not hash to its
//! name is reported, never trusted.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::TagName;

/// The folder of tag files under a registry root.
pub const TAGS_DIR: &str = "tags";

#[derive(Debug, Serialize, Deserialize)]
struct TagFile {
    tag: String,
    manifest: Digest,
}

/// The tag files of one registry.
#[derive(Debug, Clone)]
pub(crate) struct TagRecord {
    dir: PathBuf,
    tmp: PathBuf,
}

impl TagRecord {
    /// The record under `root` (not created: see [`TagRecord::exists`]).
    pub(crate) fn at(root: &Path) -> Self {
        Self {
            dir: root.join(TAGS_DIR),
            tmp: root.join("tmp"),
        }
    }

    /// Whether the record exists (registries made before it have none yet).
    pub(crate) fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Creates the record with these tags, all at once: written into a temp folder
    /// that is renamed into place, so a crash leaves either no record or a whole one.
    pub(crate) fn create(&self, tags: &BTreeMap<String, Digest>) -> Result<()> {
        let staging = tempfile::Builder::new()
            .prefix("tags-")
            .tempdir_in(&self.tmp)
            .map_err(|e| Error::io(&self.tmp, e))?;
        let staged = Self {
            dir: staging.path().into(),
            tmp: self.tmp.clone(),
        };
        for (tag, d) in tags {
            staged.set(tag, d)?;
        }
        let path = staging.keep();
        std::fs::rename(&path, &self.dir).map_err(|e| Error::io(&self.dir, e))?;
        sync_dir(self.dir.parent().unwrap_or(&self.dir));
        Ok(())
    }

    fn path(&self, tag: &str) -> PathBuf {
        self.dir.join(Digest::of(tag.as_bytes()).hex())
    }

    /// Points `tag` at `d`, durably (temp file, fsync, rename, fsync of the folder).
    pub(crate) fn set(&self, tag: &str, d: &Digest) -> Result<()> {
        let body = serde_json::to_vec(&TagFile {
            tag: tag.into(),
            manifest: *d,
        })
        .expect("tag file serialises");
        let mut f =
            tempfile::NamedTempFile::new_in(&self.tmp).map_err(|e| Error::io(&self.tmp, e))?;
        f.write_all(&body).map_err(|e| Error::io(f.path(), e))?;
        f.as_file().sync_all().map_err(|e| Error::io(f.path(), e))?;
        let path = self.path(tag);
        f.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        sync_dir(&self.dir);
        Ok(())
    }

    /// Removes `tag` durably; absent is fine.
    pub(crate) fn remove(&self, tag: &str) -> Result<()> {
        let path = self.path(tag);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Every tag with its manifest. A file that cannot be read, does not parse, or
    /// whose tag does not hash to its name is an error naming the file: the record is
    /// the truth, so a damaged one stops whoever would act on it.
    pub(crate) fn all(&self) -> Result<BTreeMap<String, Digest>> {
        let mut out = BTreeMap::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        for e in entries {
            let e = e.map_err(|e| Error::io(&self.dir, e))?;
            let path = e.path();
            let bytes = crate::bundle::dir::read_bounded(&path, 4096)
                .map_err(|err| Error::io(&path, err))?;
            let damaged = |reason: String| Error::Corrupt {
                what: format!("tag record {}", path.display()),
                reason,
            };
            let file: TagFile =
                serde_json::from_slice(&bytes).map_err(|err| damaged(err.to_string()))?;
            if TagName::parse(&file.tag).map(|t| t.to_string()).ok() != Some(file.tag.clone())
                || self.path(&file.tag) != path
            {
                return Err(damaged(format!(
                    "names tag {:?}, which is not the tag this file stands for",
                    file.tag
                )));
            }
            out.insert(file.tag, file.manifest);
        }
        Ok(out)
    }
}

/// Makes a rename or removal durable (best effort: not every filesystem supports it).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}
