//! `vmt-hub merge`, `drop-task`, `rename-task` and `diff`: composition over stored
//! bundles (one config and one manifest written, no tensor copied).

use std::path::Path;

use clap::Args;
use vmt_registry::compose;
use vmt_registry::reference::TagName;
use vmt_registry::store::Published;

use super::registry::{human_bytes, open};

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Bundles that share their shared adapter (two or more).
    #[arg(required = true, num_args = 2..)]
    pub references: Vec<String>,
    /// NAME:TAG of the new bundle.
    #[arg(long)]
    pub tag: String,
}

#[derive(Debug, Args)]
pub struct DropTaskArgs {
    /// The bundle: NAME:TAG, digest or prefix.
    pub reference: String,
    /// The task to leave out.
    #[arg(long)]
    pub task: String,
    /// NAME:TAG of the new bundle.
    #[arg(long)]
    pub tag: String,
}

#[derive(Debug, Args)]
pub struct RenameTaskArgs {
    /// The bundle: NAME:TAG, digest or prefix.
    pub reference: String,
    /// OLD=NEW
    #[arg(long)]
    pub task: String,
    /// NAME:TAG of the new bundle.
    #[arg(long)]
    pub tag: String,
}

fn report(tag: &TagName, p: &Published, tasks: &[String]) {
    println!(
        "{tag} -> {} ({} new blob(s), {}); tasks {}",
        p.digest,
        p.new_blobs,
        human_bytes(p.new_bytes),
        tasks.join(", ")
    );
}

fn tasks_of(root: Option<&Path>, tag: &TagName) -> anyhow::Result<Vec<String>> {
    let reg = open(root)?;
    let s = compose::Stored::read(&reg, &tag.to_string())?;
    Ok(s.config.tasks.iter().map(|t| t.name.clone()).collect())
}

pub fn merge(root: Option<&Path>, a: MergeArgs) -> anyhow::Result<()> {
    let tag = TagName::parse(&a.tag)?;
    let refs: Vec<&str> = a.references.iter().map(String::as_str).collect();
    let p = compose::merge(&open(root)?, &refs, &tag)?;
    report(&tag, &p, &tasks_of(root, &tag)?);
    Ok(())
}

pub fn drop_task(root: Option<&Path>, a: DropTaskArgs) -> anyhow::Result<()> {
    let tag = TagName::parse(&a.tag)?;
    let p = compose::drop_task(&open(root)?, &a.reference, &a.task, &tag)?;
    report(&tag, &p, &tasks_of(root, &tag)?);
    Ok(())
}

pub fn rename_task(root: Option<&Path>, a: RenameTaskArgs) -> anyhow::Result<()> {
    let tag = TagName::parse(&a.tag)?;
    let (old, new) = a
        .task
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--task takes OLD=NEW, not {:?}", a.task))?;
    let p = compose::rename_task(&open(root)?, &a.reference, old, new, &tag)?;
    report(&tag, &p, &tasks_of(root, &tag)?);
    Ok(())
}

pub fn diff(root: Option<&Path>, a: &str, b: &str) -> anyhow::Result<()> {
    let d = compose::diff(&super::registry::open_existing(root)?, a, b)?;
    let show = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into())
    };
    println!("components:");
    for c in &d.added {
        println!(
            "  + {:<24} {:>10}  {}",
            c.component,
            human_bytes(c.size),
            c.digest
        );
    }
    for c in &d.removed {
        println!(
            "  - {:<24} {:>10}  {}",
            c.component,
            human_bytes(c.size),
            c.digest
        );
    }
    for (x, y) in &d.changed {
        println!(
            "  ~ {:<24} {:>10} -> {:<10} {} -> {}",
            x.component,
            human_bytes(x.size),
            human_bytes(y.size),
            x.digest.short(),
            y.digest.short()
        );
    }
    if d.added.is_empty() && d.removed.is_empty() && d.changed.is_empty() {
        println!("  (the same)");
    }
    println!("config:");
    for (k, x, y) in &d.config {
        println!("  {k}: {} -> {}", show(x), show(y));
    }
    if d.config.is_empty() {
        println!("  (the same)");
    }
    println!("metrics:");
    for (k, x, y) in &d.metrics {
        println!("  {k}: {} -> {}", show(x), show(y));
    }
    if d.metrics.is_empty() {
        println!("  (the same)");
    }
    println!("provenance:");
    for (k, x, y) in &d.provenance {
        println!("  {k}: {} -> {}", show(x), show(y));
    }
    if d.provenance.is_empty() {
        println!("  (the same)");
    }
    Ok(())
}
