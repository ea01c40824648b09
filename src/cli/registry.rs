//! The local-registry commands: import, export, list, show, tag, rm, gc, verify.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use vmt_registry::bundle::{bundle_tensors, BundleDir};
use vmt_registry::reference::TagName;
use vmt_registry::store::{config_value, default_root, rebuild_index};
use vmt_registry::Registry;

/// Opens the registry chosen by `--registry` / `VMT_HOME`.
pub fn open(root: Option<&Path>) -> anyhow::Result<Registry> {
    let root = root.map(PathBuf::from).unwrap_or_else(default_root);
    Ok(Registry::open(&root)?)
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
    #[arg(long)]
    pub tag: String,
}

pub fn import(root: Option<&Path>, args: ImportArgs) -> anyhow::Result<()> {
    let tag = TagName::parse(&args.tag)?;
    // Read and check everything before anything is written.
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
    pub reference: String,
    pub dir: PathBuf,
}

pub fn export(root: Option<&Path>, args: ExportArgs) -> anyhow::Result<()> {
    let reg = open(root)?;
    let d = reg.resolve(&args.reference)?;
    let bundle = reg.load(&d)?;
    bundle.write(&args.dir)?;
    println!("{} -> {}", d, args.dir.display());
    Ok(())
}

pub fn list(root: Option<&Path>) -> anyhow::Result<()> {
    let reg = open(root)?;
    let rows = reg.list()?;
    println!("{:<32} {:<14} {:>10}  TASKS", "NAME:TAG", "DIGEST", "SIZE");
    for r in rows {
        println!(
            "{:<32} {:<14} {:>10}  {}",
            r.tag,
            r.digest.short(),
            human_bytes(r.size),
            r.tasks.join(",")
        );
    }
    Ok(())
}

pub fn show(root: Option<&Path>, reference: &str) -> anyhow::Result<()> {
    let reg = open(root)?;
    let d = reg.resolve(reference)?;
    let manifest = reg.manifest(&d)?;
    let bundle = reg.load(&d)?;
    let specs = bundle_tensors(&bundle.config);
    let params = |component: &str| -> usize {
        specs
            .iter()
            .filter(|s| s.component == component)
            .map(|s| s.numel())
            .sum()
    };
    println!("digest: {d}");
    println!("tags: {}", reg.tags_of(&d)?.join(", "));
    let g = &bundle.config.backbone;
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
        bundle.config.adapter.kind, bundle.config.adapter.reduction, bundle.config.adapter.scale
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
    let mut chain = Vec::new();
    let mut cur = reg.parent(&d)?;
    while let Some(p) = cur {
        chain.push(p);
        cur = reg.parent(&p)?;
    }
    if chain.is_empty() {
        println!("lineage: (no parent)");
    } else {
        let names: Vec<String> = chain.iter().map(|p| p.to_string()).collect();
        println!("lineage: {}", names.join(" <- "));
    }
    println!(
        "config:\n{}",
        serde_json::to_string_pretty(&config_value(&bundle.config))?
    );
    Ok(())
}

pub fn tag(root: Option<&Path>, reference: &str, new_tag: &str) -> anyhow::Result<()> {
    let reg = open(root)?;
    let p = reg.tag(reference, new_tag)?;
    println!("{new_tag} -> {}", p.digest);
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

pub fn gc(root: Option<&Path>, dry_run: bool) -> anyhow::Result<()> {
    let reg = open(root)?;
    let report = reg.gc(dry_run)?;
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
    /// Rebuild the index from the blobs (after it was lost or corrupted).
    #[arg(long)]
    pub rebuild_index: bool,
}

pub fn verify(root: Option<&Path>, args: VerifyArgs) -> anyhow::Result<()> {
    if args.rebuild_index {
        let dir = root.map(PathBuf::from).unwrap_or_else(default_root);
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
    let reg = open(root)?;
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
    println!("ok");
    Ok(())
}
