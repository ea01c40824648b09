//! The local-registry commands: import, export, list, show, tag, rm, gc, verify.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use vmt_registry::bundle::BundleDir;
use vmt_registry::reference::TagName;
use vmt_registry::store::{config_value, rebuild_index, DefaultRoot, OpenOptions};
use vmt_registry::Registry;

/// The registry chosen by `--registry`, else `VMT_HOME`, else `~/.vmt-hub`.
pub fn root(given: Option<&Path>) -> PathBuf {
    given
        .map(PathBuf::from)
        .unwrap_or_else(|| DefaultRoot::from_env().0)
}

/// Opens the registry chosen by `--registry` / `VMT_HOME`, creating it: for commands
/// that write.
pub fn open(given: Option<&Path>) -> anyhow::Result<Registry> {
    Ok(Registry::open_with(&root(given), OpenOptions::from_env())?)
}

/// Opens an existing registry: for commands that only read, so that a mistyped
/// `--registry` is an error, not a new empty registry.
pub fn open_existing(given: Option<&Path>) -> anyhow::Result<Registry> {
    Ok(Registry::open_existing_with(
        &root(given),
        OpenOptions::from_env(),
    )?)
}

/// Human-readable byte counts.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// An exported bundle directory (bundle.json + adapter.safetensors).
    pub dir: PathBuf,
    /// NAME:TAG of the new bundle.
    #[arg(long)]
    pub tag: String,
    /// Require DIR/model.sig (OpenSSF Model Signing) to be signed by this public key
    /// (repeatable: any one of them), over exactly the files of DIR.
    #[arg(long = "verify-key")]
    pub verify_key: Vec<PathBuf>,
}

pub fn import(root: Option<&Path>, args: ImportArgs) -> anyhow::Result<()> {
    let tag = TagName::parse(&args.tag)?;
    // Read and check everything before anything is written.
    if !args.verify_key.is_empty() {
        let keys = super::sign::read_keys(&args.verify_key)?;
        let k = vmt_registry::sign::model::verify_dir(&args.dir, &keys)?;
        println!(
            "{}: signed by key {k}",
            args.dir.join("model.sig").display()
        );
    }
    let bundle = BundleDir::read(&args.dir)?;
    let reg = open(root)?;
    let p = reg.publish(&bundle, &tag)?;
    println!(
        "{tag} -> {} ({} new blob(s), {})",
        p.digest,
        p.new_blobs,
        human_bytes(p.new_bytes)
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The bundle: NAME:TAG, digest or prefix.
    pub reference: String,
    /// The folder to write bundle.json and adapter.safetensors into (created if needed).
    pub dir: PathBuf,
    /// Also sign the folder with this private key: DIR/model.sig in OpenSSF Model
    /// Signing's format (`model_signing verify key` checks it).
    #[arg(long)]
    pub sign: Option<PathBuf>,
}

pub fn export(root: Option<&Path>, args: ExportArgs) -> anyhow::Result<()> {
    let reg = open_existing(root)?;
    let d = reg.resolve(&args.reference)?;
    let bundle = reg.load(&d)?;
    let key = args
        .sign
        .as_deref()
        .map(super::sign::read_private)
        .transpose()?;
    bundle.write(&args.dir)?;
    println!("{} -> {}", d, args.dir.display());
    if let Some(key) = key {
        let sig = vmt_registry::sign::model::sign_dir(&args.dir, &key)?;
        println!(
            "signed: {} (key {})",
            sig.display(),
            key.public().fingerprint()
        );
    }
    Ok(())
}

pub fn list(root: Option<&Path>, tree: bool) -> anyhow::Result<()> {
    let reg = open_existing(root)?;
    let rows = reg.list()?;
    for (tag, d) in reg.vanished_tags()? {
        eprintln!(
            "warning: tag {tag} (-> {}) vanished from the tag record without `vmt-hub rm`; \
             `vmt-hub tag --restore {tag}` brings it back",
            d.short()
        );
    }
    let mut signed = std::collections::BTreeMap::new();
    for r in &rows {
        // A damaged signature record must not hide the listing (`verify` reports it).
        let n = match vmt_registry::sign::signatures(&reg, &r.digest, None) {
            Ok(s) => s.len(),
            Err(e) => {
                eprintln!("warning: {}: signatures unreadable: {e}", r.tag);
                0
            }
        };
        signed.insert(r.digest, n);
    }
    let line = |r: &vmt_registry::store::ListEntry, indent: &str| {
        let sigs = match signed.get(&r.digest) {
            Some(&n) if n > 0 => format!("  [{n} signature(s)]"),
            _ => String::new(),
        };
        println!(
            "{indent}{:<32} {:<14} {:>10}  {}{sigs}",
            r.tag,
            r.digest.short(),
            human_bytes(r.size),
            r.tasks.join(",")
        )
    };
    if !tree {
        println!("{:<32} {:<14} {:>10}  TASKS", "NAME:TAG", "DIGEST", "SIZE");
        for r in &rows {
            line(r, "");
        }
        return Ok(());
    }
    // Families: bundles that share a `shared` component (the adapter is stored once).
    let mut families: std::collections::BTreeMap<String, Vec<&vmt_registry::store::ListEntry>> =
        Default::default();
    for r in &rows {
        let key = r
            .shared
            .map(|d| d.to_string())
            .unwrap_or_else(|| "?".into());
        families.entry(key).or_default().push(r);
    }
    for (shared, members) in families {
        let bundles: std::collections::BTreeSet<_> = members.iter().map(|r| r.digest).collect();
        println!(
            "shared {shared} ({} bundle(s), {} tag(s))",
            bundles.len(),
            members.len()
        );
        for r in members {
            line(r, "  ");
        }
    }
    Ok(())
}

/// The lineage of `d`, oldest first: each step with its tags, how it was made and
/// which tasks it added or removed.
fn print_lineage(reg: &vmt_registry::Registry, d: &vmt_registry::Digest) -> anyhow::Result<()> {
    let steps = vmt_registry::compose::lineage(reg, d)?;
    if steps.len() == 1 {
        println!("lineage: (no parent)");
        return Ok(());
    }
    println!("lineage (oldest first):");
    for (i, step) in steps.iter().enumerate() {
        let label = match step.tags.is_empty() {
            true => step.digest.to_string(),
            false => format!("{} ({})", step.digest, step.tags.join(", ")),
        };
        let added = step.added.iter().map(|t| format!("+{t}"));
        let removed = step.removed.iter().map(|t| format!("-{t}"));
        let change = added.chain(removed).collect::<Vec<_>>().join(" ");
        let change = if change.is_empty() {
            "(tasks unchanged)".to_string()
        } else {
            change
        };
        println!("  {}{label}  {}: {change}", "  ".repeat(i), step.operation);
    }
    Ok(())
}

/// One line per task: the run that trained it and where its metrics were measured.
fn print_task_provenance(config: &vmt_registry::bundle::BundleConfig) {
    let Some(p) = config.provenance() else {
        return;
    };
    let metrics = config.metrics().unwrap_or_default();
    println!("tasks (how each was trained):");
    for t in &config.tasks {
        let r = p.task(&t.name);
        let opt = |v: Option<String>| v.unwrap_or_else(|| "?".into());
        let mut line = format!(
            "  {:<14} {} steps at {} px, batch {}, lr {}, seed {}, data {}",
            t.name,
            opt(r.steps.map(|v| v.to_string())),
            opt(r.image_size.map(|v| v.to_string())),
            opt(r.batch.map(|v| v.to_string())),
            opt(r.lr.map(|v| v.to_string())),
            opt(r.seed.map(|v| v.to_string())),
            r.data_digest
                .as_deref()
                .map(|d| d.chars().take(19).collect::<String>())
                .unwrap_or_else(|| "?".into()),
        );
        if let Some(m) = metrics.val.get(&t.name) {
            let value = m.metrics.get(&m.primary).copied().unwrap_or(f64::NAN);
            line.push_str(&format!(
                "; {} {value:.2} at {} px",
                m.primary,
                opt(r.metrics_image_size.map(|v| v.to_string()))
            ));
        }
        println!("{line}");
    }
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// NAME:TAG, digest or prefix; or oci://HOST[:PORT]/REPO:TAG to read a remote
    /// bundle's manifest and config without pulling it.
    pub reference: String,
    #[command(flatten)]
    pub auth: super::remote::AuthArgs,
}

pub fn show(root: Option<&Path>, args: ShowArgs) -> anyhow::Result<()> {
    if args.reference.starts_with("oci://") {
        return super::remote::run_show_remote(&args.reference, &args.auth);
    }
    let reference = args.reference.as_str();
    let reg = open_existing(root)?;
    let d = reg.resolve(reference)?;
    let manifest = reg.manifest(&d)?;
    let bundle = reg.load(&d)?;
    println!("digest: {d}");
    println!("tags: {}", reg.tags_of(&d)?.join(", "));
    print_summary(&manifest, &bundle.config);
    print_lineage(&reg, &d)?;
    let sigs = vmt_registry::sign::signatures(&reg, &d, None)?;
    println!(
        "signatures: {}",
        if sigs.is_empty() {
            "none".into()
        } else {
            sigs.len().to_string()
        }
    );
    for s in &sigs {
        println!(
            "  cosign signature for {}",
            vmt_registry::remote::client::sanitize(
                &s.docker_reference().unwrap_or_else(|| "?".into())
            )
        );
    }
    println!(
        "config:\n{}",
        serde_json::to_string_pretty(&config_value(&bundle.config))?
    );
    Ok(())
}

/// What `show` prints of a bundle from its manifest and config: backbone, adapter,
/// components with sizes and parameters, and how each task was trained.
pub fn print_summary(
    manifest: &vmt_registry::oci::Manifest,
    config: &vmt_registry::bundle::BundleConfig,
) {
    let per_component = vmt_registry::bundle::component_params(config);
    let params = |component: &str| per_component.get(component).copied().unwrap_or(0);
    let g = &config.backbone;
    println!(
        "backbone: {} ({})",
        g.source.as_deref().unwrap_or("<unknown source>"),
        g.describe()
    );
    if let Some(rev) = &g.revision {
        println!("backbone revision: {rev}");
    }
    if let Some(digest) = &g.digest {
        println!("backbone weights: {digest}");
    }
    println!(
        "adapter: {}, reduction {}, scale {}",
        config.adapter.kind, config.adapter.reduction, config.adapter.scale
    );
    println!("components:");
    let mut total = 0;
    for layer in &manifest.layers {
        let name = layer.title().unwrap_or("?");
        let n = params(name);
        total += n;
        println!(
            "  {:<24} {:>10}  {:>10} params  {}",
            name,
            human_bytes(layer.size),
            n,
            layer.digest
        );
    }
    println!("trainable parameters: {total}");
    print_task_provenance(config);
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// The bundle (NAME:TAG, digest or prefix); with --restore, the tag to bring back.
    pub reference: String,
    /// The new NAME:TAG.
    #[arg(required_unless_present = "restore")]
    pub new_tag: Option<String>,
    /// Point REFERENCE (a NAME:TAG) again at what the tag history last says it pointed
    /// to: a tag whose file vanished, or one removed with `rm`.
    #[arg(long, conflicts_with = "new_tag")]
    pub restore: bool,
}

pub fn tag(root: Option<&Path>, args: TagArgs) -> anyhow::Result<()> {
    let reg = open(root)?;
    match args.new_tag {
        Some(new_tag) if !args.restore => {
            let p = reg.tag(&args.reference, &new_tag)?;
            println!("{new_tag} -> {}", p.digest);
        }
        _ => {
            let d = reg.restore_tag(&args.reference)?;
            println!("restored {} -> {d}", args.reference);
        }
    }
    Ok(())
}

pub fn log(root: Option<&Path>, tag: Option<&str>) -> anyhow::Result<()> {
    let reg = open_existing(root)?;
    let short = |d: &Option<vmt_registry::Digest>| d.map_or("-".to_string(), |d| d.short());
    for e in reg.tag_history(tag)? {
        println!(
            "{} {:<8} {:<32} {} -> {}",
            e.time,
            e.op,
            e.tag,
            short(&e.old),
            short(&e.new)
        );
    }
    Ok(())
}

pub fn rm(root: Option<&Path>, reference: &str) -> anyhow::Result<()> {
    let reg = open(root)?;
    for t in reg.remove(reference)? {
        println!("untagged {t}");
    }
    println!("(run `vmt-hub gc` to delete blobs no other bundle needs)");
    Ok(())
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// List what would be deleted and why the rest is kept.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep what any tag pointed to within this long (`14d`, `12h`, `30m`, `0s`).
    #[arg(long, value_parser = parse_duration, default_value = "14d")]
    pub prune_older_than: std::time::Duration,
    /// Ignore the tag history: delete everything no current tag needs.
    #[arg(long, conflicts_with = "prune_older_than")]
    pub now: bool,
}

/// `14d`, `12h`, `30m`, `45s` (or a plain number of seconds).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: a number and a unit, such as 14d, 12h, 30m, 45s"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return Err(format!("{s:?}: the unit is one of s, m, h, d, w")),
    };
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}

pub fn gc(root: Option<&Path>, args: GcArgs) -> anyhow::Result<()> {
    let reg = open(root)?;
    let dry_run = args.dry_run;
    let report = reg.gc(&vmt_registry::store::GcOptions {
        dry_run,
        grace: (!args.now).then_some(args.prune_older_than),
    })?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    let freed: u64 = report.removed.iter().map(|e| e.size).sum();
    for e in &report.removed {
        println!(
            "{verb} {} ({}): {}",
            e.digest,
            human_bytes(e.size),
            e.reason
        );
    }
    if dry_run {
        for e in &report.kept {
            println!("keep {} ({}): {}", e.digest, human_bytes(e.size), e.reason);
        }
    }
    println!(
        "{verb} {} blob(s), {}; {} kept",
        report.removed.len(),
        human_bytes(freed),
        report.kept.len()
    );
    if report.uploads_removed > 0 {
        println!(
            "deleted {} abandoned upload session(s)",
            report.uploads_removed
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only this bundle (default: every bundle and every blob).
    pub reference: Option<String>,
    /// Rebuild the index from the tag record and the manifests (after it was lost or
    /// corrupted).
    #[arg(long)]
    pub rebuild_index: bool,
    /// Also require, of the bundle given (or of every bundle), a signature by this
    /// public key (repeatable: any one of them).
    #[arg(long)]
    pub key: Vec<PathBuf>,
}

pub fn verify(root: Option<&Path>, args: VerifyArgs) -> anyhow::Result<()> {
    if args.rebuild_index {
        let dir = self::root(root);
        let r = rebuild_index(&dir)
            .with_context(|| format!("rebuilding the index of {}", dir.display()))?;
        println!(
            "rebuilt the index: {} manifest(s), {} tag(s)",
            r.manifests,
            r.tags.len()
        );
        for (t, d) in &r.tags {
            println!("  {t} -> {d}");
        }
        for s in &r.skipped {
            println!("  skipped {s}");
        }
    }
    let reg = open_existing(root)?;
    let report = reg.verify(args.reference.as_deref())?;
    for p in &report.problems {
        println!("PROBLEM {p}");
    }
    if !report.unreferenced.is_empty() {
        println!(
            "{} blob(s) referenced by no tagged bundle (intact; `vmt-hub gc` removes them)",
            report.unreferenced.len()
        );
    }
    println!(
        "checked {} blob(s), {}",
        report.blobs_checked,
        human_bytes(report.bytes_checked)
    );
    if !report.ok() {
        bail!("{} problem(s) found", report.problems.len());
    }
    if !args.key.is_empty() {
        let keys = super::sign::read_keys(&args.key)?;
        let refs = match &args.reference {
            Some(r) => vec![r.clone()],
            None => reg.tag_list()?.into_iter().map(|(t, _)| t).collect(),
        };
        for r in refs {
            let k = vmt_registry::sign::verify_local(&reg, &r, &keys)?;
            println!("{r}: signed by key {k}");
        }
    }
    println!("ok");
    Ok(())
}
