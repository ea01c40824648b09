//! The local registry: blobs on disk, a sled index over them, bundles as OCI manifests.
//!
//! Write order is blob first, index second: a crash in between leaves unreferenced
//! blobs (which `gc` removes), never a tag pointing at a missing blob.

pub mod blobs;
pub mod index;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::bundle::{
    bundle_tensors, dir::check_tensors, dir::parse_config, BundleConfig, BundleDir,
};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{
    canonical_json, Descriptor, Manifest, BUNDLE_ARTIFACT_TYPE, COMPONENT_MEDIA_TYPE,
    CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, REF_NAME_ANNOTATION, TITLE_ANNOTATION,
};
use crate::reference::{Reference, TagName};
use crate::safetensors_canon::{canonical_bytes, parse};
pub use blobs::BlobStore;
pub use index::{Index, ManifestRecord};

/// Test hook: when set, the process aborts after writing a bundle's blobs and before
/// updating the index, as a crash would.
pub const CRASH_HOOK_ENV: &str = "VMT_TEST_CRASH_AFTER_BLOBS";

/// A registry rooted at a directory: `blobs/sha256/`, `index/` (sled), `tmp/`.
pub struct Registry {
    root: PathBuf,
    pub blobs: BlobStore,
    pub index: Index,
}

/// What a publish wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub digest: Digest,
    /// Blob files newly written (0 when the bundle was already stored).
    pub new_blobs: usize,
    pub new_bytes: u64,
}

/// One row of `list`.
#[derive(Debug, Clone)]
pub struct ListEntry {
    pub tag: String,
    pub digest: Digest,
    pub tasks: Vec<String>,
    pub size: u64,
}

/// A blob `gc` removes or keeps, and why.
#[derive(Debug, Clone)]
pub struct GcEntry {
    pub digest: Digest,
    pub size: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub removed: Vec<GcEntry>,
    pub kept: Vec<GcEntry>,
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub blobs_checked: usize,
    pub bytes_checked: u64,
    /// Each problem names the bundle, the component and the digest.
    pub problems: Vec<String>,
    /// Blobs no manifest references (harmless; `gc` removes them).
    pub unreferenced: Vec<Digest>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// `$VMT_HOME`, else `~/.vmt-hub`.
pub fn default_root() -> PathBuf {
    if let Some(h) = std::env::var_os("VMT_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".vmt-hub")
}

/// Per-component layer bytes and the config bytes of a bundle.
pub struct BundleBlobs {
    pub config: Vec<u8>,
    /// `(component, canonical safetensors bytes)` in component order.
    pub components: Vec<(String, Vec<u8>)>,
}

impl BundleBlobs {
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

    /// The manifest for these blobs, annotated with the tag it is published under.
    pub fn manifest(&self, tag: &TagName) -> Manifest {
        let desc = |media: &str, bytes: &[u8], title: Option<&str>| Descriptor {
            media_type: media.into(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            annotations: title
                .map(|t| BTreeMap::from([(TITLE_ANNOTATION.to_string(), t.to_string())]))
                .unwrap_or_default(),
        };
        Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.into(),
            artifact_type: Some(BUNDLE_ARTIFACT_TYPE.into()),
            config: desc(CONFIG_MEDIA_TYPE, &self.config, None),
            layers: self
                .components
                .iter()
                .map(|(c, b)| desc(COMPONENT_MEDIA_TYPE, b, Some(c)))
                .collect(),
            annotations: BTreeMap::from([(REF_NAME_ANNOTATION.to_string(), tag.to_string())]),
        }
    }
}

/// The parent bundle a config records (`provenance.parent`), if any.
pub fn parent_of(config: &BundleConfig) -> Option<Digest> {
    config
        .extra
        .get("provenance")?
        .get("parent")?
        .as_str()?
        .parse()
        .ok()
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
        size: manifest_size + manifest.blobs().map(|d| d.size).sum::<u64>(),
        tasks: config.tasks.iter().map(|t| t.name.clone()).collect(),
        parent: parent_of(config),
    }
}

impl Registry {
    /// Opens (creating) the registry at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let index = Index::open(&root.join("index"))?;
        // Only the lock holder may clean temp files: open the index first.
        let blobs = BlobStore::open(root)?;
        Ok(Self {
            root: root.into(),
            blobs,
            index,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stores a bundle under `tag`: components and config first, then the manifest,
    /// then the index. Re-publishing identical content writes nothing.
    pub fn publish(&self, bundle: &BundleDir, tag: &TagName) -> Result<Published> {
        let blobs = BundleBlobs::of(bundle);
        let manifest = blobs.manifest(tag);
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
        if std::env::var_os(CRASH_HOOK_ENV).is_some() {
            eprintln!("{CRASH_HOOK_ENV} set: aborting after the blobs, before the index");
            std::process::abort();
        }
        let record = record_of(&manifest, manifest_bytes.len() as u64, &bundle.config);
        self.tag_manifest(tag, &digest, &record)?;
        Ok(published)
    }

    /// Points `tag` at a stored manifest (index last); the manifest it pointed to before
    /// is dropped if no other tag needs it.
    fn tag_manifest(&self, tag: &TagName, digest: &Digest, record: &ManifestRecord) -> Result<()> {
        let tag_key = tag.to_string();
        if self.index.tag(&tag_key)? != Some(*digest) {
            self.blobs.touch(digest);
            if let Some(old) = self.index.publish(&tag_key, digest, record)? {
                self.drop_manifest_if_untagged(&old)?;
            }
        }
        Ok(())
    }

    /// Stores a manifest received as bytes (keeping its digest) with its blobs, all
    /// already verified by the caller, and tags it. Blobs first, index last.
    pub fn store_manifest(
        &self,
        manifest_bytes: &[u8],
        blobs: &[(Digest, Vec<u8>)],
        tag: &TagName,
        config: &BundleConfig,
    ) -> Result<Digest> {
        let manifest = Manifest::parse(manifest_bytes).map_err(|reason| Error::Corrupt {
            what: "manifest".into(),
            reason,
        })?;
        for (_, bytes) in blobs {
            self.blobs.put(bytes)?;
        }
        let (digest, _) = self.blobs.put(manifest_bytes)?;
        let record = record_of(&manifest, manifest_bytes.len() as u64, config);
        self.tag_manifest(tag, &digest, &record)?;
        Ok(digest)
    }

    /// Stores a manifest pushed by digest (no tag): its blob and its index record.
    pub fn store_untagged_manifest(
        &self,
        manifest_bytes: &[u8],
        config: &BundleConfig,
    ) -> Result<()> {
        let manifest = Manifest::parse(manifest_bytes).map_err(|reason| Error::Corrupt {
            what: "manifest".into(),
            reason,
        })?;
        let (digest, _) = self.blobs.put(manifest_bytes)?;
        self.index.record(
            &digest,
            &record_of(&manifest, manifest_bytes.len() as u64, config),
        )
    }

    /// A manifest no tag points to any more is forgotten and its blob deleted, so that
    /// an index rebuilt from the blobs does not resurrect the tag it names. Its config
    /// and components stay until `gc`.
    fn drop_manifest_if_untagged(&self, d: &Digest) -> Result<()> {
        if !self.index.is_tagged(d)? {
            self.index.forget_manifest(d)?;
            self.blobs.remove(d)?;
        }
        Ok(())
    }

    /// Resolves a reference to a known manifest digest.
    pub fn resolve(&self, reference: &str) -> Result<Digest> {
        match Reference::parse(reference)? {
            Reference::Tag(t) => self
                .index
                .tag(&t.to_string())?
                .ok_or_else(|| Error::NotFound(reference.into())),
            Reference::Digest(d) => {
                if self.index.manifest(&d)?.is_some() {
                    Ok(d)
                } else {
                    Err(Error::NotFound(reference.into()))
                }
            }
            Reference::Prefix(p) => {
                let matches: Vec<Digest> = self
                    .index
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
            .index
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
        for (tag, digest) in self.index.tags()? {
            let record = self.index.manifest(&digest)?;
            out.push(ListEntry {
                tag,
                digest,
                tasks: record.as_ref().map(|r| r.tasks.clone()).unwrap_or_default(),
                size: record.map(|r| r.size).unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Gives the bundle at `reference` another tag: a new manifest (annotated with the
    /// new tag) over the same config and components.
    pub fn tag(&self, reference: &str, new_tag: &str) -> Result<Published> {
        let d = self.resolve(reference)?;
        let tag = TagName::parse(new_tag)?;
        let bundle = self.load(&d)?;
        self.publish(&bundle, &tag)
    }

    /// Removes a tag (or every tag of a digest reference); returns the removed tags.
    pub fn remove(&self, reference: &str) -> Result<Vec<String>> {
        let tags = match Reference::parse(reference)? {
            Reference::Tag(t) => {
                self.resolve(reference)?;
                vec![t.to_string()]
            }
            _ => {
                let d = self.resolve(reference)?;
                self.tags_of(&d)?
            }
        };
        for t in &tags {
            if let Some(d) = self.index.untag(t)? {
                self.drop_manifest_if_untagged(&d)?;
            }
        }
        Ok(tags)
    }

    /// Why each blob is needed: `component of tag` for every tagged manifest.
    fn reachable(&self) -> Result<BTreeMap<Digest, Vec<String>>> {
        let mut keep: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        for (tag, d) in self.index.tags()? {
            keep.entry(d)
                .or_default()
                .push(format!("manifest of {tag}"));
            let record = match self.index.manifest(&d)? {
                Some(r) => r,
                None => {
                    let m = self.manifest(&d)?;
                    let config = parse_config(
                        &self.blobs.get(&m.config.digest, "config")?,
                        Path::new("config"),
                    )?;
                    record_of(&m, 0, &config)
                }
            };
            keep.entry(record.config)
                .or_default()
                .push(format!("config of {tag}"));
            for (component, digest, _) in &record.layers {
                keep.entry(*digest)
                    .or_default()
                    .push(format!("{component} of {tag}"));
            }
        }
        Ok(keep)
    }

    /// Deletes every blob that no tagged bundle needs (or only lists them).
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let keep = self.reachable()?;
        let known: BTreeSet<Digest> = self
            .index
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
                None => {
                    let reason = if known.contains(&d) {
                        "untagged manifest".to_string()
                    } else if self.index.refcount(&d)? > 0 {
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
            for e in &report.removed {
                if known.contains(&e.digest) {
                    self.index.forget_manifest(&e.digest)?;
                }
                self.blobs.remove(&e.digest)?;
            }
            for d in known.iter().filter(|d| !keep.contains_key(d)) {
                self.index.forget_manifest(d)?;
            }
        }
        Ok(report)
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
        report.blobs_checked += 1;
        seen.insert(*digest);
        match self.blobs.get(digest, what) {
            Ok(b) => {
                report.bytes_checked += b.len() as u64;
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
            None => self.index.tags()?,
        };
        let mut seen = BTreeSet::new();
        for (label, d) in &targets {
            let Some(mbytes) = self.check_blob(&mut report, &mut seen, label, "manifest", d) else {
                continue;
            };
            let manifest = match Manifest::parse(&mbytes) {
                Ok(m) => m,
                Err(e) => {
                    report
                        .problems
                        .push(format!("bundle {label}: manifest {d}: {e}"));
                    continue;
                }
            };
            let config = self
                .check_blob(
                    &mut report,
                    &mut seen,
                    label,
                    "config",
                    &manifest.config.digest,
                )
                .and_then(|b| match parse_config(&b, Path::new("config")) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        report.problems.push(format!("bundle {label}: {e}"));
                        None
                    }
                });
            for layer in &manifest.layers {
                let component = format!("component {}", layer.title().unwrap_or("?"));
                if let Some(bytes) =
                    self.check_blob(&mut report, &mut seen, label, &component, &layer.digest)
                {
                    if let Err(e) = parse(&bytes, Path::new(&component)) {
                        report.problems.push(format!("bundle {label}: {e}"));
                    }
                }
            }
            if let Some(cfg) = config {
                let expected: BTreeSet<String> = bundle_tensors(&cfg)
                    .into_iter()
                    .map(|s| s.component)
                    .collect();
                let found: BTreeSet<String> = manifest
                    .layers
                    .iter()
                    .filter_map(|l| l.title().map(String::from))
                    .collect();
                if expected != found {
                    report.problems.push(format!(
                        "bundle {label}: components {found:?} do not match the config's {expected:?}"
                    ));
                }
            }
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
}

/// What a rebuild found.
#[derive(Debug, Clone, Default)]
pub struct RebuildReport {
    pub manifests: usize,
    pub tags: Vec<(String, Digest)>,
    /// Blobs that are corrupt or manifests that could not be read: skipped.
    pub skipped: Vec<String>,
}

/// Rebuilds the sled index from the blobs alone: every manifest blob is recorded, and
/// each tag goes to the most recently written manifest that names it.
pub fn rebuild_index(root: &Path) -> Result<RebuildReport> {
    let index_dir = root.join("index");
    if index_dir.exists() {
        // A live process holding the lock must not lose its index under it; any
        // other failure to open is the corruption being repaired.
        if let Err(e @ Error::Locked { .. }) = Index::open(&index_dir) {
            return Err(e);
        }
        std::fs::remove_dir_all(&index_dir).map_err(|e| Error::io(&index_dir, e))?;
    }
    let reg = Registry::open(root)?;
    let mut report = RebuildReport::default();
    let mut claims: BTreeMap<String, (std::time::SystemTime, Digest)> = BTreeMap::new();
    for d in reg.blobs.list()? {
        let Ok(bytes) = reg.blobs.get(&d, "blob") else {
            report.skipped.push(format!("{d}: corrupt"));
            continue;
        };
        // Only JSON manifests of our artifact type count; components and configs don't.
        if bytes.first() != Some(&b'{') {
            continue;
        }
        let Ok(manifest) = Manifest::parse(&bytes) else {
            continue;
        };
        let config = match reg
            .blobs
            .get(&manifest.config.digest, "config")
            .and_then(|b| parse_config(&b, Path::new("config")))
        {
            Ok(c) => c,
            Err(e) => {
                report.skipped.push(format!("manifest {d}: {e}"));
                continue;
            }
        };
        let record = record_of(&manifest, bytes.len() as u64, &config);
        report.manifests += 1;
        // Record the manifest now; its tag is set once the newest claim is known.
        reg.index.record(&d, &record)?;
        if let Some(tag) = manifest.ref_name().and_then(|t| TagName::parse(t).ok()) {
            let when = reg.blobs.modified(&d).unwrap_or(std::time::UNIX_EPOCH);
            if claims.get(&tag.to_string()).is_none_or(|(t, _)| when > *t) {
                claims.insert(tag.to_string(), (when, d));
            }
        }
    }
    for (tag, (_, d)) in claims {
        let record = reg.index.manifest(&d)?.expect("recorded above");
        reg.index.publish(&tag, &d, &record)?;
        report.tags.push((tag, d));
    }
    Ok(report)
}

/// A bundle config as pretty JSON for `show`.
pub fn config_value(config: &BundleConfig) -> Value {
    serde_json::to_value(config).expect("config serialises")
}
