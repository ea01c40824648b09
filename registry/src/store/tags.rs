//! The tag record: which manifest each `name:tag` points to, kept beside the blobs as
//! one small file per tag, written by atomic rename. It is the registry's source of truth
//! for names (the sled index is a cache rebuilt from it and from the blobs), the way
//! git keeps refs as files beside its object store.
//!
//! `tags/<sha256 of "name:tag">` holds `{"tag":"name:tag","manifest":"sha256:..."}`.
//! Names are hashed into file names because `name:tag` can be longer than a file name
//! and contain `/`; the file repeats the tag, and a file whose tag does not hash to its
//! name is reported, never trusted.
//!
//! Beside it, `tags.log` is the history of every change to a tag, as git's reflog is
//! for refs: one JSON line per change (`{"time","tag","old","new","op"}`), appended
//! and fsynced *before* the tag file changes, never rewritten. A torn last line (a
//! crash mid-append) is skipped on reading. `gc` keeps what any tag pointed to within a
//! grace period, and a tag whose file vanished without `rm` is still known here: it is
//! reported and can be restored.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::TagName;

/// The folder of tag files under a registry root.
pub const TAGS_DIR: &str = "tags";

/// The tag history under a registry root.
pub const HISTORY_FILE: &str = "tags.log";

/// The largest tag history read (about two million changes).
const MAX_HISTORY_BYTES: u64 = 512 << 20;

/// One change of a tag, as recorded in `tags.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagEvent {
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// `name:tag`.
    pub tag: String,
    /// The manifest it pointed to before (none: the tag did not exist).
    pub old: Option<Digest>,
    /// The manifest it points to after (none: the tag was removed).
    pub new: Option<Digest>,
    /// What made the change: `set`, `rm`, `restore`, or `seed` (a registry made before
    /// the history existed records its tags once).
    pub op: String,
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

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
    history: PathBuf,
}

impl TagRecord {
    /// The record under `root` (not created: see [`TagRecord::exists`]).
    pub(crate) fn at(root: &Path) -> Self {
        Self {
            dir: root.join(TAGS_DIR),
            tmp: root.join("tmp"),
            history: root.join(HISTORY_FILE),
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
            history: staging.path().join(HISTORY_FILE),
        };
        for (tag, d) in tags {
            staged.write_file(tag, d)?;
        }
        let path = staging.keep();
        std::fs::rename(&path, &self.dir).map_err(|e| Error::io(&self.dir, e))?;
        sync_dir(self.dir.parent().unwrap_or(&self.dir));
        Ok(())
    }

    fn path(&self, tag: &str) -> PathBuf {
        self.dir.join(Digest::of(tag.as_bytes()).hex())
    }

    /// Points `tag` at `d`, durably: the history first, then the tag file (temp file,
    /// fsync, rename, fsync of the folder).
    pub(crate) fn set(&self, tag: &str, d: &Digest, op: &str) -> Result<()> {
        let old = self.get(tag)?;
        if old != Some(*d) {
            self.append(&[TagEvent {
                time: now_secs(),
                tag: tag.into(),
                old,
                new: Some(*d),
                op: op.into(),
            }])?;
        }
        self.write_file(tag, d)
    }

    fn write_file(&self, tag: &str, d: &Digest) -> Result<()> {
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

    /// The manifest `tag` points to, from its file.
    fn get(&self, tag: &str) -> Result<Option<Digest>> {
        let path = self.path(tag);
        match self.read_file(&path) {
            Ok(f) => Ok(Some(f.manifest)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes `tag` durably (the history first); absent is fine.
    pub(crate) fn remove(&self, tag: &str, old: Option<Digest>) -> Result<()> {
        let old = match self.get(tag)? {
            Some(d) => Some(d),
            None => old,
        };
        if old.is_some() {
            self.append(&[TagEvent {
                time: now_secs(),
                tag: tag.into(),
                old,
                new: None,
                op: "rm".into(),
            }])?;
        }
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

    /// Whether the history file exists (registries made before it have none).
    pub(crate) fn has_history(&self) -> bool {
        self.history.exists()
    }

    /// Appends events to the history, durably (one write, then fsync).
    pub(crate) fn append(&self, events: &[TagEvent]) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut text = String::new();
        for e in events {
            text.push_str(&serde_json::to_string(e).expect("event serialises"));
            text.push('\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.history)
            .map_err(|e| Error::io(&self.history, e))?;
        let regular = f.metadata().map(|m| m.is_file()).unwrap_or(false);
        if !regular {
            return Err(Error::io(
                &self.history,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io(&self.history, e))?;
        sync_dir(self.history.parent().unwrap_or(Path::new(".")));
        Ok(())
    }

    /// Every change recorded, oldest first (see [`parse_history`]).
    pub(crate) fn history(&self) -> Result<Vec<TagEvent>> {
        match crate::file::read_limited(&self.history, MAX_HISTORY_BYTES) {
            Ok(b) => Ok(parse_history(&b, &self.history)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(&self.history, e)),
        }
    }

    fn read_file(&self, path: &Path) -> Result<TagFile> {
        let bytes = crate::file::read_limited(path, 4096).map_err(|err| Error::io(path, err))?;
        let (tag, manifest) = parse_tag_file(&bytes, path)?;
        if self.path(&tag) != path {
            return Err(Error::Corrupt {
                what: format!("tag record {}", path.display()),
                reason: format!("names tag {tag:?}, which is not the tag this file stands for"),
            });
        }
        Ok(TagFile { tag, manifest })
    }

    /// Every tag with its manifest. A file that cannot be read, does not parse, or
    /// whose tag does not hash to its name is an error naming the file: the record is
    /// the truth, so a damaged one stops whoever would act on it.
    pub(crate) fn all(&self) -> Result<BTreeMap<String, Digest>> {
        let mut out = BTreeMap::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        for e in entries {
            let e = e.map_err(|e| Error::io(&self.dir, e))?;
            let file = self.read_file(&e.path())?;
            out.insert(file.tag, file.manifest);
        }
        Ok(out)
    }
}

/// The events of a tag history file, oldest first. Lines that do not parse (a torn
/// last line after a crash) are skipped with a warning naming `origin` and the line.
pub fn parse_history(bytes: &[u8], origin: &Path) -> Vec<TagEvent> {
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<TagEvent>(line) {
            Ok(e) => out.push(e),
            Err(e) => tracing::warn!("{}: line {} skipped: {e}", origin.display(), i + 1),
        }
    }
    out
}

/// A tag file's `(name:tag, manifest)`; the tag must be a valid, normalised `NAME:TAG`.
///
/// # Errors
/// [`Error::Corrupt`] naming `origin` for anything else.
pub fn parse_tag_file(bytes: &[u8], origin: &Path) -> Result<(String, Digest)> {
    let damaged = |reason: String| Error::Corrupt {
        what: format!("tag record {}", origin.display()),
        reason,
    };
    let file: TagFile = serde_json::from_slice(bytes).map_err(|err| damaged(err.to_string()))?;
    if TagName::parse(&file.tag).map(|t| t.to_string()).ok() != Some(file.tag.clone()) {
        return Err(damaged(format!(
            "names tag {:?}, which is not valid",
            file.tag
        )));
    }
    Ok((file.tag, file.manifest))
}

/// Makes a rename or removal durable (best effort: not every filesystem supports it).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}
