//! The local registry: blobs on disk, a sled index over them, bundles as OCI manifests.
//!
//! Write order is blobs first, then the tag record (`tags/`, one file per tag, the
//! source of truth for names), then the sled index (a cache of both): a crash leaves
//! unreferenced blobs (which `gc` removes) or an index behind the record (which the next
//! open reconciles), never a tag pointing at a missing blob.

pub mod blobs;
pub mod index;
pub mod referrers;
pub(crate) mod tags;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::bundle::check::{check_component, check_layers, check_manifest};
use crate::bundle::{
    dir::check_tensors, dir::parse_config, BundleConfig, BundleDir, InvalidConfig,
};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{
    canonical_json, Descriptor, Manifest, BUNDLE_ARTIFACT_TYPE, COMPONENT_MEDIA_TYPE,
    CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, TITLE_ANNOTATION,
};
use crate::reference::{Reference, TagName};
use crate::safetensors_canon::{canonical_bytes, parse};
pub use blobs::BlobStore;
pub use index::{Index, ManifestRecord};
pub use referrers::{signature_tag, subject_of_tag, Referrer};
use tags::TagRecord;
pub use tags::{parse_history, parse_tag_file, TagEvent};

/// Test hook (builds with the `test-hooks` feature only): when set, the process aborts
/// after writing a bundle's blobs and before updating the index, as a crash would.
#[cfg(feature = "test-hooks")]
pub const CRASH_HOOK_ENV: &str = "VMT_TEST_CRASH_AFTER_BLOBS";

/// How a registry is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenOptions {
    /// How long a use of the index waits while another process holds it before
    /// [`Error::Locked`] (default 10 s).
    pub lock_wait: std::time::Duration,
    /// Test builds only: abort after a publish's blobs, before its index update.
    #[cfg(feature = "test-hooks")]
    pub crash_after_blobs: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            lock_wait: std::time::Duration::from_secs(10),
            #[cfg(feature = "test-hooks")]
            crash_after_blobs: false,
        }
    }
}

impl OpenOptions {
    /// The defaults, with `VMT_LOCK_WAIT_MS` (milliseconds) for the lock wait.
    pub fn from_env() -> Self {
        let ms = std::env::var("VMT_LOCK_WAIT_MS").ok();
        Self {
            lock_wait: ms
                .and_then(|v| v.parse().ok())
                .map(std::time::Duration::from_millis)
                .unwrap_or(Self::default().lock_wait),
            #[cfg(feature = "test-hooks")]
            crash_after_blobs: std::env::var_os(CRASH_HOOK_ENV).is_some(),
        }
    }

    /// These options with another lock wait.
    pub fn lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = wait;
        self
    }
}

/// A registry rooted at a directory: `blobs/sha256/`, `tags/` (the tag record),
/// `index/` (sled), `tmp/`.
pub struct Registry {
    root: PathBuf,
    options: OpenOptions,
    blobs: BlobStore,
    index: IndexSlot,
    tags: TagRecord,
}

/// The sled index of a registry, opened when first needed. sled allows one process at a
/// time, so a long-lived process that shares the registry (`serve`) releases it when
/// idle ([`Registry::release_index`]) and the next use opens it again.
struct IndexSlot {
    path: PathBuf,
    lock_wait: std::time::Duration,
    held: std::sync::Mutex<Option<std::sync::Arc<Index>>>,
}

/// The registry's index kept open ([`Registry::hold_index`]).
pub struct IndexHold(#[allow(dead_code)] std::sync::Arc<Index>);

/// `serve.lock` in a registry's folder, locked (`flock`) by a running `serve` for its
/// lifetime: other processes that open the registry then leave its upload sessions
/// (`tmp/uploads`) alone.
pub struct ServeLock(#[allow(dead_code)] std::fs::File);

/// The lock file's name under a registry's folder.
const SERVE_LOCK: &str = "serve.lock";

impl ServeLock {
    /// Takes the lock (trying for a second: another process's [`ServeLock::is_held`]
    /// probe holds it shared for an instant); `None`, with a warning, if another `serve`
    /// holds it.
    pub fn acquire(root: &Path) -> Option<Self> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(SERVE_LOCK))
            .ok()?;
        for _ in 0..50 {
            // SAFETY: flock on a file descriptor this function owns.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Some(Self(f));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tracing::warn!(
            "{}: another serve holds it; this one's upload sessions are not protected \
             from other processes",
            root.join(SERVE_LOCK).display()
        );
        None
    }

    /// Whether a `serve` (in this process or another) holds the lock of `root`.
    pub fn is_held(root: &Path) -> bool {
        use std::os::fd::AsRawFd;
        let Ok(f) = std::fs::File::open(root.join(SERVE_LOCK)) else {
            return false;
        };
        // SAFETY: flock on a file descriptor this function owns; closing it unlocks.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
    }
}

impl IndexSlot {
    fn get(&self) -> Result<std::sync::Arc<Index>> {
        let mut held = self.held.lock().expect("index slot");
        if let Some(i) = held.as_ref() {
            return Ok(std::sync::Arc::clone(i));
        }
        let i = std::sync::Arc::new(Index::open(&self.path, self.lock_wait)?);
        *held = Some(std::sync::Arc::clone(&i));
        Ok(i)
    }

    fn release(&self) -> bool {
        let mut held = self.held.lock().expect("index slot");
        if held
            .as_ref()
            .is_some_and(|i| std::sync::Arc::strong_count(i) == 1)
        {
            *held = None;
            return true;
        }
        false
    }
}

/// What a publish wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The manifest digest.
    pub digest: Digest,
    /// Blob files newly written (0 when the bundle was already stored).
    pub new_blobs: usize,
    /// Bytes newly written.
    pub new_bytes: u64,
}

/// One row of `list`.
#[derive(Debug, Clone)]
pub struct ListEntry {
    /// `name:tag`.
    pub tag: String,
    /// Its manifest.
    pub digest: Digest,
    /// Its tasks.
    pub tasks: Vec<String>,
    /// Bytes of its manifest, config and components.
    pub size: u64,
    /// The digest of its `shared` component: bundles with the same one form a family.
    pub shared: Option<Digest>,
}

/// A blob `gc` removes or keeps, and why.
#[derive(Debug, Clone)]
pub struct GcEntry {
    /// The blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Why it is removed or kept.
    pub reason: String,
}

/// How `gc` decides: what it may delete and whether it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Only report.
    pub dry_run: bool,
    /// Keep whatever a tag pointed to within this long (git's `gc.pruneExpire`), and
    /// whatever a tag that vanished without `rm` points to. `None`: only the tags
    /// now in the record count (`gc --now`).
    pub grace: Option<std::time::Duration>,
}

/// The default grace period of `gc`: 14 days, as git's `gc.pruneExpire`.
pub const DEFAULT_GC_GRACE: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

impl Default for GcOptions {
    /// Deletes, with the [`DEFAULT_GC_GRACE`] period.
    fn default() -> Self {
        Self {
            dry_run: false,
            grace: Some(DEFAULT_GC_GRACE),
        }
    }
}

impl GcOptions {
    /// Deletes everything no tag of the record needs, whatever the history says.
    pub fn now() -> Self {
        Self {
            dry_run: false,
            grace: None,
        }
    }
}

/// What `gc` removed and kept.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// Blobs removed (or that would be, in a dry run).
    pub removed: Vec<GcEntry>,
    /// Blobs kept, with the bundles that need them.
    pub kept: Vec<GcEntry>,
    /// Abandoned upload sessions of `serve` deleted.
    pub uploads_removed: usize,
}

/// What `verify` checked and found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Blobs re-hashed.
    pub blobs_checked: usize,
    /// Bytes re-hashed.
    pub bytes_checked: u64,
    /// Each problem names the bundle, the component and the digest.
    pub problems: Vec<String>,
    /// Blobs no manifest references (harmless; `gc` removes them).
    pub unreferenced: Vec<Digest>,
    /// Tags whose file vanished without `rm`, with what the history says they pointed
    /// to (also counted in `problems`).
    pub vanished: Vec<(String, Digest)>,
}

impl VerifyReport {
    /// No problem found.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The registry a user means when they name none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRoot(pub PathBuf);

impl DefaultRoot {
    /// `$VMT_HOME`, else `~/.vmt-hub`.
    pub fn from_env() -> Self {
        if let Some(h) = std::env::var_os("VMT_HOME") {
            return Self(PathBuf::from(h));
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        Self(home.join(".vmt-hub"))
    }
}

/// `$VMT_HOME`, else `~/.vmt-hub` ([`DefaultRoot::from_env`]).
pub fn default_root() -> PathBuf {
    DefaultRoot::from_env().0
}

/// Per-component layer bytes and the config bytes of a bundle.
pub struct BundleBlobs {
    /// `bundle.json` as canonical JSON.
    pub config: Vec<u8>,
    /// `(component, canonical safetensors bytes)` in component order.
    pub components: Vec<(String, Vec<u8>)>,
}

impl BundleBlobs {
    /// The blobs of a bundle.
    pub fn of(bundle: &BundleDir) -> Self {
        let config =
            canonical_json(&serde_json::to_value(&bundle.config).expect("config serialises"));
        let components = bundle
            .components()
            .into_iter()
            .map(|c| {
                let bytes = canonical_bytes(&bundle.component_tensors(&c));
                (c, bytes)
            })
            .collect();
        Self { config, components }
    }

    /// The manifest for these blobs. It names no tag: one content, one digest.
    pub fn manifest(&self) -> Manifest {
        let layers = self
            .components
            .iter()
            .map(|(c, b)| descriptor(COMPONENT_MEDIA_TYPE, b, Some(c)))
            .collect();
        bundle_manifest(&self.config, layers)
    }
}

fn descriptor(media: &str, bytes: &[u8], title: Option<&str>) -> Descriptor {
    Descriptor {
        media_type: media.into(),
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
        annotations: title
            .map(|t| BTreeMap::from([(TITLE_ANNOTATION.to_string(), t.to_string())]))
            .unwrap_or_default(),
    }
}

/// The manifest of a bundle whose config is `config` (canonical JSON) and whose
/// component layers are `layers`.
fn bundle_manifest(config: &[u8], layers: Vec<Descriptor>) -> Manifest {
    Manifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE.into(),
        artifact_type: Some(BUNDLE_ARTIFACT_TYPE.into()),
        config: descriptor(CONFIG_MEDIA_TYPE, config, None),
        layers,
        annotations: BTreeMap::new(),
    }
}

/// The parent bundle a config records (`provenance.parent`), if any.
pub fn parent_of(config: &BundleConfig) -> Option<Digest> {
    config.provenance()?.parent?.parse().ok()
}

/// The index record of a manifest whose config is `config`.
fn record_of(manifest: &Manifest, manifest_size: u64, config: &BundleConfig) -> ManifestRecord {
    ManifestRecord {
        config: manifest.config.digest,
        layers: manifest
            .layers
            .iter()
            .map(|l| (l.title().unwrap_or("?").to_string(), l.digest, l.size))
            .collect(),
        size: manifest
            .blobs()
            .fold(manifest_size, |acc, d| acc.saturating_add(d.size)),
        tasks: config.tasks.iter().map(|t| t.name.clone()).collect(),
        parent: parent_of(config),
    }
}

impl Registry {
    /// Opens (creating) the registry at `root`. A registry made before the tag record
    /// existed gets one from its index; an index that disagrees with the record (lost,
    /// or behind after a crash) is brought back in line with it.
    ///
    /// # Errors
    /// [`Error::Locked`] while another process holds the registry; I/O errors naming
    /// the path; [`Error::Corrupt`] for a damaged tag file.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_with(root, OpenOptions::default())
    }

    /// [`Registry::open`] with `options`.
    ///
    /// # Errors
    /// As [`Registry::open`].
    pub fn open_with(root: &Path, options: OpenOptions) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let index = IndexSlot {
            path: root.join("index"),
            lock_wait: options.lock_wait,
            held: std::sync::Mutex::new(None),
        };
        // Only the lock holder may clean temp files: open the index first.
        index.get()?;
        let blobs = BlobStore::open(root)?;
        let tags = TagRecord::at(root);
        let reg = Self {
            root: root.into(),
            options,
            blobs,
            index,
            tags,
        };
        if !reg.tags.exists() {
            let from_index: BTreeMap<String, Digest> = reg.index()?.tags()?.into_iter().collect();
            reg.tags.create(&from_index)?;
        }
        if !reg.tags.has_history() {
            reg.seed_history()?;
        }
        reg.reconcile()?;
        Ok(reg)
    }

    /// The options it was opened with.
    pub fn options(&self) -> &OpenOptions {
        &self.options
    }

    /// Opens the registry at `root` only if its folder exists: for what only reads, so
    /// that a mistyped path is an error instead of a new, empty registry.
    ///
    /// # Errors
    /// [`Error::MissingFile`] naming `root` when it is not a folder; then as [`Registry::open`].
    pub fn open_existing(root: &Path) -> Result<Self> {
        Self::open_existing_with(root, OpenOptions::default())
    }

    /// [`Registry::open_existing`] with `options`.
    ///
    /// # Errors
    /// As [`Registry::open_existing`].
    pub fn open_existing_with(root: &Path, options: OpenOptions) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::MissingFile {
                path: root.into(),
                what: "no registry here: the folder does not exist (commands that only read never create one)",
            });
        }
        Self::open_with(root, options)
    }

    /// Starts the tag history of a registry made before it: every tag of the record,
    /// and every tag the index still knows (a tag file deleted by hand before this
    /// version is then reported as vanished, not lost).
    fn seed_history(&self) -> Result<()> {
        let mut tags: BTreeMap<String, Digest> = self.index()?.tags()?.into_iter().collect();
        tags.extend(self.tags.all()?);
        let time = tags::now_secs();
        let events: Vec<TagEvent> = tags
            .into_iter()
            .map(|(tag, d)| TagEvent {
                time,
                tag,
                old: None,
                new: Some(d),
                op: "seed".into(),
            })
            .collect();
        self.tags.append(&events)
    }

    /// The recorded history of every tag (or of one), oldest first.
    pub fn tag_history(&self, tag: Option<&str>) -> Result<Vec<TagEvent>> {
        let mut all = self.tags.history()?;
        if let Some(t) = tag {
            let t = TagName::parse(t)?.to_string();
            all.retain(|e| e.tag == t);
        }
        Ok(all)
    }

    /// Tags whose file is gone although the history never recorded their removal
    /// (deleted by hand, or lost), with the manifest each pointed to.
    pub fn vanished_tags(&self) -> Result<Vec<(String, Digest)>> {
        let record = self.tags.all()?;
        let mut last: BTreeMap<String, Option<Digest>> = BTreeMap::new();
        for e in self.tags.history()? {
            last.insert(e.tag, e.new);
        }
        Ok(last
            .into_iter()
            .filter_map(|(tag, d)| Some((tag, d?)))
            .filter(|(tag, _)| !record.contains_key(tag))
            .collect())
    }

    /// Points `tag` again at what the history last says it pointed to: a vanished tag
    /// at its manifest, a removed one at the manifest it had before `rm`.
    ///
    /// # Errors
    /// A tag the history never saw, a tag that exists (move it with `tag`), or a
    /// manifest whose blobs are gone.
    pub fn restore_tag(&self, tag: &str) -> Result<Digest> {
        let tag = TagName::parse(tag)?;
        let key = tag.to_string();
        if let Some(d) = self.tags.all()?.get(&key) {
            return Err(Error::InvalidReference {
                reference: key,
                reason: format!("the tag exists (it points to {d}); nothing to restore"),
            });
        }
        let d = self
            .tags
            .history()?
            .into_iter()
            .rev()
            .filter(|e| e.tag == key)
            .find_map(|e| e.new.or(e.old))
            .ok_or_else(|| Error::InvalidReference {
                reference: key.clone(),
                reason: "the tag history has no record of this tag (`vmt-hub log`)".into(),
            })?;
        let record = match self.index()?.manifest(&d)? {
            Some(r) => r,
            None => self.record_from_blobs(&d)?,
        };
        self.tags.set(&key, &d, "restore")?;
        self.index()?.publish(&key, &d, &record)?;
        Ok(d)
    }

    /// Manifests the history holds: what a tag pointed to within `grace`, and what a
    /// vanished tag points to, each with the reason.
    fn held_by_history(&self, grace: std::time::Duration) -> Result<BTreeMap<Digest, String>> {
        let now = tags::now_secs();
        let record = self.tags.all()?;
        let mut held = BTreeMap::new();
        let mut current: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
        for e in self.tags.history()? {
            if let Some((d, _)) = current.remove(&e.tag) {
                if now.saturating_sub(e.time) < grace.as_secs() {
                    let ago = now.saturating_sub(e.time);
                    held.entry(d).or_insert(format!(
                        "{} pointed to it {} ago (grace period {})",
                        e.tag,
                        human_secs(ago),
                        human_secs(grace.as_secs())
                    ));
                }
            }
            if let Some(d) = e.new {
                current.insert(e.tag, (d, e.time));
            }
        }
        for (tag, (d, _)) in current {
            if record.get(&tag) != Some(&d) {
                held.entry(d).or_insert(format!(
                    "tag {tag} vanished without `rm` (`vmt-hub tag --restore {tag}`)"
                ));
            }
        }
        Ok(held)
    }

    /// Makes the index's tags equal to the tag record, recording from the blobs any
    /// manifest the index does not know. Returns the tags it had to change.
    fn reconcile(&self) -> Result<Vec<String>> {
        let record = self.tags.all()?;
        let indexed: BTreeMap<String, Digest> = self.index()?.tags()?.into_iter().collect();
        if record == indexed {
            return Ok(Vec::new());
        }
        let mut changed = Vec::new();
        for (tag, d) in &record {
            if indexed.get(tag) == Some(d) {
                continue;
            }
            match self.index()?.manifest(d)? {
                Some(r) => {
                    self.index()?.publish(tag, d, &r)?;
                }
                None => match self.record_from_blobs(d) {
                    Ok(r) => {
                        self.index()?.publish(tag, d, &r)?;
                    }
                    Err(e) => {
                        // Keep the name; `verify` reports the bundle, `gc` refuses to run.
                        tracing::warn!("tag {tag}: {e}");
                        self.index()?.set_tag(tag, d)?;
                    }
                },
            }
            changed.push(tag.clone());
        }
        for tag in indexed.keys().filter(|t| !record.contains_key(*t)) {
            self.index()?.untag(tag)?;
            changed.push(tag.clone());
        }
        Ok(changed)
    }

    /// The index record of a stored manifest, read from its (verified) blobs.
    fn record_from_blobs(&self, d: &Digest) -> Result<ManifestRecord> {
        let bytes = self.blobs.get(d, "manifest")?;
        let manifest = Manifest::parse(&bytes).map_err(|reason| Error::Corrupt {
            what: format!("manifest {d}"),
            reason,
        })?;
        let config = parse_config(
            &self.blobs.get(&manifest.config.digest, "config")?,
            Path::new(&format!("config {}", manifest.config.digest)),
        )?;
        Ok(record_of(&manifest, bytes.len() as u64, &config))
    }

    /// The sled index, opened (waiting for another process to let go of it) if it is
    /// not open.
    fn index(&self) -> Result<std::sync::Arc<Index>> {
        self.index.get()
    }

    /// Opens the index if needed and keeps it open until the hold is dropped: `serve`
    /// holds it for each request, so no other process uses the registry mid-request.
    ///
    /// # Errors
    /// [`Error::Locked`] when another process keeps it past the lock wait.
    pub fn hold_index(&self) -> Result<IndexHold> {
        Ok(IndexHold(self.index()?))
    }

    /// Closes the sled index if no call is using it, so that another process can open
    /// the registry; the next call that needs it opens it again, waiting for the lock
    /// (`VMT_LOCK_WAIT_MS`). `serve` calls this whenever it has no request in flight.
    /// Returns whether it was released.
    pub fn release_index(&self) -> bool {
        self.index.release()
    }

    /// The registry's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The parent a bundle records (`provenance.parent`), from the index.
    pub fn parent(&self, d: &Digest) -> Result<Option<Digest>> {
        self.index()?.parent(d)
    }

    /// Whether the store holds blob `d` (present; not re-hashed).
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blobs.contains(d)
    }

    /// Reads blob `d`, checked against its digest; `what` names it in errors.
    pub fn blob(&self, d: &Digest, what: &str) -> Result<Vec<u8>> {
        self.blobs.get(d, what)
    }

    /// The blob store (read access and verified writes for `serve` and pulls).
    pub(crate) fn blob_store(&self) -> &BlobStore {
        &self.blobs
    }

    /// A temp file beside the blobs, for a blob being received.
    pub(crate) fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        self.blobs.temp_file()
    }

    /// Stores bytes as a blob (no tag or index change: a later manifest refers to it).
    pub(crate) fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        Ok(self.blobs.put(bytes)?.0)
    }

    /// Moves a received file into the store as blob `d`, after hashing it.
    pub(crate) fn put_blob_file(&self, file: &Path, d: &Digest) -> Result<()> {
        self.blobs.put_file(file, d).map(|_| ())
    }

    /// Every blob in the store, sorted.
    pub fn blob_digests(&self) -> Result<Vec<Digest>> {
        self.blobs.list()
    }

    /// The file of blob `d` (which may not exist).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs.path(d)
    }

    /// What the index keeps about manifest `d`.
    pub fn manifest_record(&self, d: &Digest) -> Result<Option<ManifestRecord>> {
        self.index()?.manifest(d)
    }

    /// How many known manifests reference blob `d`.
    pub fn refcount(&self, d: &Digest) -> Result<u64> {
        self.index()?.refcount(d)
    }

    /// Every `(name:tag, manifest)`, sorted by tag.
    pub fn tag_list(&self) -> Result<Vec<(String, Digest)>> {
        self.index()?.tags()
    }

    /// The manifest `name:tag` points to.
    pub fn tag_target(&self, tag: &str) -> Result<Option<Digest>> {
        self.index()?.tag(tag)
    }

    /// Whether the index knows manifest `d` (tagged or not).
    pub fn knows_manifest(&self, d: &Digest) -> Result<bool> {
        Ok(self.index()?.manifest(d)?.is_some())
    }

    /// Remembers that `repo` on `host` holds blob `d` (for cross-repository mounts).
    pub fn note_remote_blob(&self, host: &str, d: &Digest, repo: &str) -> Result<()> {
        self.index()?.note_remote_blob(host, d, repo)
    }

    /// A repository on `host` known to hold blob `d`.
    pub fn remote_blob(&self, host: &str, d: &Digest) -> Result<Option<String>> {
        self.index()?.remote_blob(host, d)
    }

    /// Remembers that repository `repo` (the name part of this registry's tags) holds
    /// blob `d`: it was uploaded or mounted there.
    pub fn note_repo_blob(&self, repo: &str, d: &Digest) -> Result<()> {
        self.index()?.note_repo_blob(repo, d)
    }

    /// Whether repository `repo` holds blob `d`: uploaded or mounted there, or the
    /// manifest, config or a layer of a bundle tagged `repo:*`. What `serve` answers a
    /// blob or manifest request in `repo` with (a blob of another repository is 404
    /// until mounted, as in distribution).
    pub fn repo_has_blob(&self, repo: &str, d: &Digest) -> Result<bool> {
        let index = self.index()?;
        if index.repo_noted(repo, d)? {
            return Ok(true);
        }
        for (tag, m) in index.tags()? {
            if tag.rsplit_once(':').map(|(n, _)| n) != Some(repo) {
                continue;
            }
            if m == *d
                || index
                    .manifest(&m)?
                    .is_some_and(|r| r.blobs().any(|b| b == *d))
            {
                return Ok(true);
            }
        }
        drop(index);
        // Or an artifact attached in `repo`: its manifest and blobs.
        for subject in self.attached_subjects()? {
            for r in self.referrers(&subject)? {
                let here = r.repositories.contains_key(repo);
                if here && (r.digest == *d || r.manifest.blobs().any(|b| b.digest == *d)) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Stores a bundle under `tag`: components and config first, then the manifest,
    /// then the index. Re-publishing identical content writes nothing.
    pub fn publish(&self, bundle: &BundleDir, tag: &TagName) -> Result<Published> {
        let blobs = BundleBlobs::of(bundle);
        let manifest = blobs.manifest();
        let manifest_bytes = manifest.to_canonical_bytes();
        let digest = Digest::of(&manifest_bytes);
        let mut published = Published {
            digest,
            new_blobs: 0,
            new_bytes: 0,
        };
        let mut put = |bytes: &[u8]| -> Result<()> {
            if self.blobs.put(bytes)?.1 {
                published.new_blobs += 1;
                published.new_bytes += bytes.len() as u64;
            }
            Ok(())
        };
        for (_, bytes) in &blobs.components {
            put(bytes)?;
        }
        put(&blobs.config)?;
        put(&manifest_bytes)?;
        #[cfg(feature = "test-hooks")]
        if self.options.crash_after_blobs {
            eprintln!("{CRASH_HOOK_ENV} set: aborting after the blobs, before the index");
            std::process::abort();
        }
        let record = record_of(&manifest, manifest_bytes.len() as u64, &bundle.config);
        self.tag_manifest(tag, &digest, &record)?;
        tracing::info!(
            "{tag} -> {digest}: {} new blob(s), {} bytes",
            published.new_blobs,
            published.new_bytes
        );
        Ok(published)
    }

    /// Stores a bundle made of `config` and layers already in the store (composition:
    /// no tensor is copied). The whole bundle is validated first (as a pull would), so
    /// nothing is written for one that would not load; then the config, the manifest,
    /// the tag.
    ///
    /// # Errors
    /// A config that does not validate, layers that are not exactly its components or
    /// whose content does not match it, a missing blob.
    pub fn publish_composed(
        &self,
        config: &BundleConfig,
        layers: Vec<Descriptor>,
        tag: &TagName,
    ) -> Result<Published> {
        let origin = format!("new bundle {tag}");
        config
            .validate()
            .map_err(|InvalidConfig(reason)| Error::BadBundle {
                path: origin.clone().into(),
                reason,
            })?;
        let config_bytes =
            canonical_json(&serde_json::to_value(config).expect("config serialises"));
        let manifest = bundle_manifest(&config_bytes, layers);
        check_manifest(&manifest, &origin)?;
        check_layers(&manifest, config, &origin)?;
        for layer in &manifest.layers {
            let title = layer.title().unwrap_or("?");
            check_component(
                config,
                title,
                &self.blobs.get(&layer.digest, title)?,
                &origin,
            )?;
        }
        let manifest_bytes = manifest.to_canonical_bytes();
        let mut published = Published {
            digest: Digest::of(&manifest_bytes),
            new_blobs: 0,
            new_bytes: 0,
        };
        for bytes in [&config_bytes, &manifest_bytes] {
            if self.blobs.put(bytes)?.1 {
                published.new_blobs += 1;
                published.new_bytes += bytes.len() as u64;
            }
        }
        let record = record_of(&manifest, manifest_bytes.len() as u64, config);
        self.tag_manifest(tag, &published.digest, &record)?;
        Ok(published)
    }

    /// Points `tag` at a stored manifest: the tag record first, the index last.
    fn tag_manifest(&self, tag: &TagName, digest: &Digest, record: &ManifestRecord) -> Result<()> {
        let tag_key = tag.to_string();
        // The lock first: no other process (a gc) runs between the tag and the index.
        let index = self.index()?;
        self.tags.set(&tag_key, digest, "set")?;
        index.publish(&tag_key, digest, record)?;
        Ok(())
    }

    /// Stores a manifest received as bytes (keeping its digest) whose blobs are already
    /// in the store, checked by the caller, and tags it (or, without a tag, records it
    /// untagged, as a push by digest does). Manifest blob first, index last.
    pub fn store_manifest(
        &self,
        manifest_bytes: &[u8],
        tag: Option<&TagName>,
        config: &BundleConfig,
    ) -> Result<Digest> {
        let manifest = Manifest::parse(manifest_bytes).map_err(|reason| Error::Corrupt {
            what: "manifest".into(),
            reason,
        })?;
        for desc in manifest.blobs() {
            if !self.blobs.contains(&desc.digest) {
                return Err(Error::MissingBlob {
                    digest: desc.digest.to_string(),
                    what: desc.title().unwrap_or("config").into(),
                });
            }
        }
        let (digest, _) = self.blobs.put(manifest_bytes)?;
        let record = record_of(&manifest, manifest_bytes.len() as u64, config);
        match tag {
            Some(tag) => self.tag_manifest(tag, &digest, &record)?,
            None => self.index()?.record(&digest, &record)?,
        }
        Ok(digest)
    }

    /// Resolves a reference to a known manifest digest.
    pub fn resolve(&self, reference: &str) -> Result<Digest> {
        match Reference::parse(reference)? {
            Reference::Tag(t) => self
                .index()?
                .tag(&t.to_string())?
                .ok_or_else(|| Error::NotFound(reference.into())),
            Reference::Digest(d) => {
                if self.index()?.manifest(&d)?.is_some() {
                    Ok(d)
                } else {
                    Err(Error::NotFound(reference.into()))
                }
            }
            Reference::Prefix(p) => {
                let matches: Vec<Digest> = self
                    .index()?
                    .manifests()?
                    .into_iter()
                    .map(|(d, _)| d)
                    .filter(|d| d.hex().starts_with(&p))
                    .collect();
                match matches.len() {
                    0 => Err(Error::NotFound(reference.into())),
                    1 => Ok(matches[0]),
                    _ => Err(Error::Ambiguous {
                        reference: reference.into(),
                        candidates: matches.iter().map(|d| d.short()).collect(),
                    }),
                }
            }
        }
    }

    /// Tags pointing at `d`.
    pub fn tags_of(&self, d: &Digest) -> Result<Vec<String>> {
        Ok(self
            .index()?
            .tags()?
            .into_iter()
            .filter(|(_, t)| t == d)
            .map(|(n, _)| n)
            .collect())
    }

    /// A display name for a manifest: its first tag, else its short digest.
    fn label(&self, d: &Digest) -> String {
        self.tags_of(d)
            .ok()
            .and_then(|t| t.into_iter().next())
            .unwrap_or_else(|| d.short())
    }

    /// Reads and verifies a manifest blob.
    pub fn manifest(&self, d: &Digest) -> Result<Manifest> {
        let bytes = self
            .blobs
            .get(d, &format!("manifest of {}", self.label(d)))?;
        Manifest::parse(&bytes).map_err(|reason| Error::Corrupt {
            what: format!("manifest {d}"),
            reason,
        })
    }

    /// Reads a bundle, verifying every blob against its digest.
    pub fn load(&self, d: &Digest) -> Result<BundleDir> {
        let manifest = self.manifest(d)?;
        let label = self.label(d);
        let config_bytes = self
            .blobs
            .get(&manifest.config.digest, &format!("config of {label}"))?;
        let origin = PathBuf::from(format!("{label} config {}", manifest.config.digest));
        let config = parse_config(&config_bytes, &origin)?;
        let mut tensors = BTreeMap::new();
        for layer in &manifest.layers {
            let component = layer.title().unwrap_or("?");
            let what = format!("component {component} of {label}");
            let bytes = self.blobs.get(&layer.digest, &what)?;
            tensors.extend(parse(&bytes, Path::new(&what))?);
        }
        check_tensors(&config, &tensors, Path::new(&label))?;
        Ok(BundleDir { config, tensors })
    }

    /// Every tag with its bundle's digest, tasks and total size.
    pub fn list(&self) -> Result<Vec<ListEntry>> {
        let mut out = Vec::new();
        for (tag, digest) in self.index()?.tags()? {
            let record = self.index()?.manifest(&digest)?;
            out.push(ListEntry {
                tag,
                digest,
                tasks: record.as_ref().map(|r| r.tasks.clone()).unwrap_or_default(),
                size: record.as_ref().map(|r| r.size).unwrap_or(0),
                shared: record.and_then(|r| {
                    r.layers
                        .iter()
                        .find(|l| l.0 == crate::bundle::SHARED_COMPONENT)
                        .map(|l| l.1)
                }),
            });
        }
        Ok(out)
    }

    /// Gives the bundle at `reference` another tag. Nothing but the tag is written: the
    /// bundle keeps its digest.
    pub fn tag(&self, reference: &str, new_tag: &str) -> Result<Published> {
        let d = self.resolve(reference)?;
        let tag = TagName::parse(new_tag)?;
        let record = match self.index()?.manifest(&d)? {
            Some(r) => r,
            None => self.record_from_blobs(&d)?,
        };
        self.tag_manifest(&tag, &d, &record)?;
        Ok(Published {
            digest: d,
            new_blobs: 0,
            new_bytes: 0,
        })
    }

    /// Removes a tag (or every tag of a digest reference); returns the removed tags.
    /// A vanished tag (see [`Registry::vanished_tags`]) is removed from the history's
    /// point of view, so that `gc` may free its bundle.
    pub fn remove(&self, reference: &str) -> Result<Vec<String>> {
        let tags = match Reference::parse(reference)? {
            Reference::Tag(t) => {
                let key = t.to_string();
                if let Some((_, d)) = self.vanished_tags()?.into_iter().find(|(v, _)| *v == key) {
                    self.tags.remove(&key, Some(d))?;
                    return Ok(vec![key]);
                }
                self.resolve(reference)?;
                vec![key]
            }
            _ => {
                let d = self.resolve(reference)?;
                self.tags_of(&d)?
            }
        };
        for t in &tags {
            self.tags.remove(t, None)?;
            self.index()?.untag(t)?;
        }
        Ok(tags)
    }

    /// Why each blob is needed: `component of tag` for every tag of the tag record,
    /// read from the manifests themselves (not from the index, which is a cache).
    ///
    /// # Errors
    /// When the index disagrees with the record, or a tagged manifest cannot be read,
    /// what is reachable is unknown: an error that says so, so that `gc` deletes nothing.
    fn reachable(&self) -> Result<BTreeMap<Digest, Vec<String>>> {
        let record = self.tags.all()?;
        let indexed: BTreeMap<String, Digest> = self.index()?.tags()?.into_iter().collect();
        if record != indexed {
            return Err(Error::Corrupt {
                what: format!("registry index {}", self.index.path.display()),
                reason: "it disagrees with the tag record; nothing was deleted \
                         (reopen the registry or run `vmt-hub verify --rebuild-index`)"
                    .into(),
            });
        }
        let mut keep: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        for (tag, d) in record {
            let unknown = |e: Error| Error::Corrupt {
                what: format!("bundle {tag}"),
                reason: format!(
                    "{e}; what it references is unknown, so gc deletes nothing \
                     (see `vmt-hub verify`; `vmt-hub rm {tag}` gives the bundle up)"
                ),
            };
            let m = self.manifest(&d).map_err(unknown)?;
            keep.entry(d)
                .or_default()
                .push(format!("manifest of {tag}"));
            keep.entry(m.config.digest)
                .or_default()
                .push(format!("config of {tag}"));
            for layer in &m.layers {
                keep.entry(layer.digest)
                    .or_default()
                    .push(format!("{} of {tag}", layer.title().unwrap_or("?")));
            }
        }
        Ok(keep)
    }

    /// Deletes every blob that no tagged bundle needs (or only lists them), and
    /// abandoned upload sessions of `serve`. With a grace period, a bundle some tag
    /// pointed to within it, or that a vanished tag points to, is kept too (see
    /// [`GcOptions`]).
    ///
    /// # Errors
    /// Refuses (deleting nothing) while the index disagrees with the tag record or a
    /// tagged manifest is missing or corrupt.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        let dry_run = opts.dry_run;
        let mut keep = self.reachable()?;
        // As git's prune expiry: a blob no bundle references yet is kept while it is
        // younger than the grace period (a transfer in another process may be about to
        // reference it).
        let young = |d: &Digest| {
            opts.grace.is_some_and(|grace| {
                std::fs::metadata(self.blobs.path(d))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age < grace)
            })
        };
        if let Some(grace) = opts.grace {
            self.keep_held_by_history(grace, &mut keep)?;
        }
        let dead_subjects = self.keep_referrers(&mut keep, &young)?;
        let known: BTreeSet<Digest> = self
            .index()?
            .manifests()?
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        let mut report = GcReport::default();
        for d in self.blobs.list()? {
            let size = self.blobs.size(&d).unwrap_or(0);
            match keep.get(&d) {
                Some(why) => report.kept.push(GcEntry {
                    digest: d,
                    size,
                    reason: why.join(", "),
                }),
                None if young(&d) => report.kept.push(GcEntry {
                    digest: d,
                    size,
                    reason: "referenced by no bundle yet, written within the grace period \
                             (an import, pull or push may be about to tag it)"
                        .into(),
                }),
                None => {
                    let reason = if known.contains(&d) {
                        "untagged manifest".to_string()
                    } else if self.index()?.refcount(&d)? > 0 {
                        "needed only by untagged manifests".to_string()
                    } else {
                        "referenced by no manifest".to_string()
                    };
                    report.removed.push(GcEntry {
                        digest: d,
                        size,
                        reason,
                    });
                }
            }
        }
        if !dry_run {
            // Records first: a crash after them leaves unreferenced blobs, never a
            // record naming a blob that is gone.
            for subject in &dead_subjects {
                self.forget_referrers(subject)?;
            }
            for e in &report.removed {
                if known.contains(&e.digest) {
                    self.index()?.forget_manifest(&e.digest)?;
                }
                self.blobs.remove(&e.digest)?;
            }
            for d in known.iter().filter(|d| !keep.contains_key(d)) {
                self.index()?.forget_manifest(d)?;
            }
            report.uploads_removed = self.blobs.clean_uploads()?;
        }
        Ok(report)
    }

    /// Adds to `keep` every blob of a manifest the tag history still holds (a tag moved
    /// or removed within `grace`), with why.
    fn keep_held_by_history(
        &self,
        grace: std::time::Duration,
        keep: &mut BTreeMap<Digest, Vec<String>>,
    ) -> Result<()> {
        for (d, why) in self.held_by_history(grace)? {
            // A held manifest whose blobs are gone holds nothing more.
            let Ok(m) = self.manifest(&d) else { continue };
            keep.entry(d).or_default().push(format!("manifest: {why}"));
            keep.entry(m.config.digest)
                .or_default()
                .push(format!("config: {why}"));
            for layer in &m.layers {
                keep.entry(layer.digest)
                    .or_default()
                    .push(format!("{}: {why}", layer.title().unwrap_or("?")));
            }
        }
        Ok(())
    }

    /// Adds to `keep` every blob of an artifact attached to a kept bundle (a
    /// signature lives as long as its bundle; a bundle `young` keeps counts as kept);
    /// returns the bundles no longer kept that still have attachments (gc forgets those).
    fn keep_referrers(
        &self,
        keep: &mut BTreeMap<Digest, Vec<String>>,
        young: &dyn Fn(&Digest) -> bool,
    ) -> Result<Vec<Digest>> {
        let mut dead = Vec::new();
        for subject in self.attached_subjects()? {
            if !keep.contains_key(&subject) && !young(&subject) {
                dead.push(subject);
                continue;
            }
            for r in self.referrers(&subject)? {
                let why = format!("{} attached to {subject}", r.manifest.artifact_type());
                keep.entry(r.digest)
                    .or_default()
                    .push(format!("manifest of {why}"));
                for b in r.manifest.blobs() {
                    keep.entry(b.digest).or_default().push(why.clone());
                }
            }
        }
        Ok(dead)
    }

    /// Reads one blob of a bundle for `verify`, recording a problem that names the
    /// bundle, the part (`component task/sal`) and the digest.
    fn check_blob(
        &self,
        report: &mut VerifyReport,
        seen: &mut BTreeSet<Digest>,
        label: &str,
        what: &str,
        digest: &Digest,
    ) -> Option<Vec<u8>> {
        // Counted once however many bundles share it (but checked for each).
        let first = seen.insert(*digest);
        if first {
            report.blobs_checked += 1;
        }
        match self.blobs.get(digest, what) {
            Ok(b) => {
                if first {
                    report.bytes_checked += b.len() as u64;
                }
                Some(b)
            }
            Err(e) => {
                report.problems.push(format!("bundle {label}: {e}"));
                None
            }
        }
    }

    /// Re-hashes blobs and checks each bundle's manifest, config and components.
    /// With a reference, only that bundle; without, every bundle and every blob.
    pub fn verify(&self, reference: Option<&str>) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let targets: Vec<(String, Digest)> = match reference {
            Some(r) => vec![(r.to_string(), self.resolve(r)?)],
            None => self.tags.all()?.into_iter().collect(),
        };
        let mut seen = BTreeSet::new();
        if reference.is_none() {
            for (tag, d) in self.vanished_tags()? {
                report.problems.push(format!(
                    "tag {tag} vanished from the tag record without `vmt-hub rm` (it pointed \
                     to {d}): `vmt-hub tag --restore {tag}` brings it back, `vmt-hub rm {tag}` \
                     lets gc free it"
                ));
                report.vanished.push((tag, d));
            }
        }
        for (label, d) in &targets {
            self.verify_bundle(&mut report, &mut seen, label, d);
            self.verify_referrers(&mut report, &mut seen, label, d);
        }
        if reference.is_none() {
            // Every other blob: intact, but referenced by no tagged bundle.
            for d in self.blobs.list()? {
                if seen.contains(&d) {
                    continue;
                }
                report.blobs_checked += 1;
                match Digest::of_file(&self.blobs.path(&d)) {
                    Ok(actual) if actual == d => report.unreferenced.push(d),
                    Ok(actual) => report.problems.push(format!(
                        "unreferenced blob {d} is corrupt (its content hashes to {actual})"
                    )),
                    Err(e) => report.problems.push(e.to_string()),
                }
            }
        }
        Ok(report)
    }

    /// Verifies one bundle (`label`, manifest `d`): each blob hashes to its digest, the
    /// config parses, the manifest and every component fit the config. Problems go to
    /// `report`; the blobs checked to `seen`.
    fn verify_bundle(
        &self,
        report: &mut VerifyReport,
        seen: &mut BTreeSet<Digest>,
        label: &str,
        d: &Digest,
    ) {
        let Some(mbytes) = self.check_blob(report, seen, label, "manifest", d) else {
            return;
        };
        let manifest = match Manifest::parse(&mbytes) {
            Ok(m) => m,
            Err(e) => {
                report
                    .problems
                    .push(format!("bundle {label}: manifest {d}: {e}"));
                return;
            }
        };
        let config = self
            .check_blob(report, seen, label, "config", &manifest.config.digest)
            .and_then(|b| match parse_config(&b, Path::new("config")) {
                Ok(c) => Some(c),
                Err(e) => {
                    report.problems.push(format!("bundle {label}: {e}"));
                    None
                }
            });
        if let Some(cfg) = &config {
            if let Err(e) =
                check_manifest(&manifest, label).and_then(|()| check_layers(&manifest, cfg, label))
            {
                report.problems.push(format!("bundle {e}"));
            }
        }
        for layer in &manifest.layers {
            let title = layer.title().unwrap_or("?");
            let component = format!("component {title}");
            if let Some(bytes) = self.check_blob(report, seen, label, &component, &layer.digest) {
                let checked = match &config {
                    Some(cfg) => check_component(cfg, title, &bytes, label).map(|_| ()),
                    None => parse(&bytes, Path::new(&component)).map(|_| ()),
                };
                if let Err(e) = checked {
                    report.problems.push(format!("bundle {label}: {e}"));
                }
            }
        }
    }
}

impl Registry {
    /// Verifies the artifacts attached to bundle `d`: each manifest and blob hashes to
    /// its digest.
    fn verify_referrers(
        &self,
        report: &mut VerifyReport,
        seen: &mut BTreeSet<Digest>,
        label: &str,
        d: &Digest,
    ) {
        let referrers = match self.referrers(d) {
            Ok(r) => r,
            Err(e) => {
                report.problems.push(format!("bundle {label}: {e}"));
                return;
            }
        };
        for r in referrers {
            let what = format!("attached {} {}", r.manifest.artifact_type(), r.digest);
            self.check_blob(report, seen, label, &what, &r.digest);
            for b in r.manifest.blobs() {
                self.check_blob(report, seen, label, &what, &b.digest);
            }
        }
    }
}

/// What a rebuild found.
#[derive(Debug, Clone, Default)]
pub struct RebuildReport {
    /// Manifests recorded.
    pub manifests: usize,
    /// Every tag, from the tag record.
    pub tags: Vec<(String, Digest)>,
    /// Blobs that are corrupt or manifests that could not be read: skipped.
    pub skipped: Vec<String>,
}

/// Rebuilds the sled index from the tag record and the blobs: every manifest blob is
/// recorded, and every tag of the record is set. Manifests' own annotations are never
/// read as tags (a pusher could write any).
pub fn rebuild_index(root: &Path) -> Result<RebuildReport> {
    let index_dir = root.join("index");
    if index_dir.exists() {
        // A live process holding the lock must not lose its index under it; any
        // other failure to open is the corruption being repaired.
        let wait = OpenOptions::default().lock_wait;
        if let Err(e @ Error::Locked { .. }) = Index::open(&index_dir, wait) {
            return Err(e);
        }
        std::fs::remove_dir_all(&index_dir).map_err(|e| Error::io(&index_dir, e))?;
    }
    // Opening reconciles the fresh index with the tag record.
    let reg = Registry::open(root)?;
    let mut report = RebuildReport::default();
    for d in reg.blobs.list()? {
        // Only JSON manifests of our artifact type count; components and configs don't.
        if reg.blobs.first_byte(&d) != Some(b'{') {
            continue;
        }
        let Ok(bytes) = reg.blobs.get(&d, "blob") else {
            report.skipped.push(format!("{d}: corrupt"));
            continue;
        };
        let Ok(manifest) = Manifest::parse(&bytes) else {
            continue;
        };
        match reg.record_from_blobs(&d) {
            Ok(record) => {
                report.manifests += 1;
                if reg.index()?.manifest(&d)?.is_none() {
                    reg.index()?.record(&d, &record)?;
                }
            }
            Err(e) => report.skipped.push(format!(
                "manifest {d} (config {}): {e}",
                manifest.config.digest
            )),
        }
    }
    report.tags = reg.index()?.tags()?;
    Ok(report)
}

/// `90 s`, `5 min`, `3 h`, `14 days`.
fn human_secs(s: u64) -> String {
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

/// A bundle config as pretty JSON for `show`.
pub fn config_value(config: &BundleConfig) -> Value {
    serde_json::to_value(config).expect("config serialises")
}
