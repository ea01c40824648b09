//! `vmt-hub forward` and `vmt-hub demo`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use vmt_registry::bundle::{trainable_count, BundleConfig, BundleDir, TaskKind, TaskSpec};

use crate::device::parse_device;
use crate::forward::{load_model, read_pixels, write_outputs};
use crate::model::Backbone;

#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// A bundle: a registry reference (NAME:TAG, digest) or an exported directory.
    #[arg(long)]
    pub bundle: String,
    /// Backbone: a directory (config.json + model.safetensors) or random:tiny / random:swin-t.
    /// Default: the source the bundle records.
    #[arg(long)]
    pub backbone: Option<String>,
    /// safetensors file with `pixel_values` [B,3,H,W] f32.
    #[arg(long)]
    pub input: PathBuf,
    /// Output safetensors: `<task>` [B,C,H,W] and `features.stage<i>` (NCHW).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print parameter counts and the time taken.
    #[arg(long, short)]
    pub verbose: bool,
}

/// The backbone a bundle records (`random:*`, `dir:<path>`, or `hf:<repo>` pinned to
/// the recorded commit), if usable as is.
fn recorded_backbone(config: &BundleConfig) -> Option<String> {
    let source = config.backbone.source.as_deref()?;
    if source.starts_with("random:") {
        return Some(source.into());
    }
    if let Some(repo) = source.strip_prefix("hf:") {
        return Some(match &config.backbone.revision {
            Some(commit) => format!("{repo}@{commit}"),
            None => repo.into(),
        });
    }
    source.strip_prefix("dir:").map(str::to_string)
}

/// Reads a bundle given as a directory or as a registry reference; returns it and a
/// name for error messages.
pub fn read_bundle(root: Option<&Path>, bundle: &str) -> anyhow::Result<(BundleDir, String)> {
    let dir = Path::new(bundle);
    if dir.is_dir() {
        let origin = dir.join("adapter.safetensors").display().to_string();
        return Ok((BundleDir::read(dir)?, origin));
    }
    let reg = super::registry::open(root)?;
    let d = reg.resolve(bundle)?;
    Ok((reg.load(&d)?, format!("{bundle} ({d})")))
}

/// The backbone to use: `--backbone` if given, else the one the bundle records.
pub fn backbone_spec(
    config: &BundleConfig,
    given: Option<&str>,
    bundle: &str,
) -> anyhow::Result<String> {
    match given
        .map(String::from)
        .or_else(|| recorded_backbone(config))
    {
        Some(s) => Ok(s),
        None => bail!("{bundle}: the bundle records no usable backbone source; pass --backbone"),
    }
}

pub fn forward(root: Option<&Path>, args: ForwardArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let device = parse_device(&args.device)?;
    let (bundle, origin) = read_bundle(root, &args.bundle)?;
    let spec = match args.backbone.or_else(|| recorded_backbone(&bundle.config)) {
        Some(s) => s,
        None => bail!(
            "{}: the bundle records no usable backbone source; pass --backbone",
            args.bundle
        ),
    };
    let backbone =
        Backbone::load(&spec, &device).with_context(|| format!("loading backbone {spec}"))?;
    let model = load_model(&bundle, &backbone, &origin)?;
    let pixels = read_pixels(&args.input, &device)?;
    let loaded = start.elapsed();
    let out = model.forward(&pixels)?;
    write_outputs(&args.out, &out)?;
    let total = start.elapsed();
    if args.verbose {
        print_summary(&backbone, &bundle.config);
        eprintln!(
            "input {:?}; load {:.3}s, forward + write {:.3}s, total {:.3}s",
            pixels.dims(),
            loaded.as_secs_f64(),
            (total - loaded).as_secs_f64(),
            total.as_secs_f64()
        );
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn print_summary(backbone: &Backbone, config: &BundleConfig) {
    let trainable = trainable_count(config);
    let frozen = backbone.parameter_count();
    let label = if backbone.is_random() {
        " (RANDOM weights)"
    } else {
        ""
    };
    eprintln!(
        "backbone {}{label}: {}",
        backbone.source,
        backbone.swin.geometry.describe()
    );
    eprintln!(
        "parameters: {trainable} trainable ({:.2}% of the backbone), {frozen} frozen",
        100.0 * trainable as f64 / frozen as f64
    );
}

/// Parses `semseg,human_parts,sal,normals` or `name:kind[:channels]` entries. The
/// PASCAL-Context names have defaults: semseg (21), human_parts (7), sal, normals, depth.
pub fn parse_tasks(list: &str) -> anyhow::Result<Vec<TaskSpec>> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|entry| {
            let parts: Vec<&str> = entry.trim().split(':').collect();
            let name = parts[0];
            let (kind, channels) = match (name, parts.len()) {
                (_, 2) | (_, 3) => {
                    let kind: TaskKind = parts[1].parse().map_err(anyhow::Error::msg)?;
                    let channels = match parts.get(2) {
                        Some(c) => c.parse().with_context(|| format!("task {entry:?}: channels"))?,
                        None => kind.fixed_channels().with_context(|| {
                            format!("task {entry:?}: a segmentation task needs its number of classes (NAME:segmentation:N)")
                        })?,
                    };
                    (kind, channels)
                }
                ("semseg", 1) => (TaskKind::Segmentation, 21),
                ("human_parts", 1) => (TaskKind::Segmentation, 7),
                ("sal", 1) => (TaskKind::Saliency, 1),
                ("normals", 1) => (TaskKind::Normals, 3),
                ("depth", 1) => (TaskKind::Depth, 1),
                _ => bail!("task {entry:?}: unknown name; write NAME:KIND[:CHANNELS] (kinds: segmentation, saliency, normals, depth)"),
            };
            Ok(TaskSpec::new(name, kind, channels))
        })
        .collect()
}
