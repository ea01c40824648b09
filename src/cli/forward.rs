//! `vmt-hub forward` and `vmt-hub demo`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use vmt_registry::bundle::{trainable_count, BundleConfig};

use vmt_hub::adapter::{Adapter, BundleSource};
use vmt_hub::device::parse_device;
use vmt_hub::forward::{read_pixels, write_outputs};
use vmt_hub::model::{Backbone, BackboneSource};

#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// A bundle: a registry reference (NAME:TAG, digest) or an exported directory.
    #[arg(long)]
    pub bundle: String,
    /// Backbone: a directory (config.json + model.safetensors) or random:tiny / random:swin-t.
    /// Default: the source the bundle records.
    #[arg(long)]
    pub backbone: Option<String>,
    /// safetensors file with `pixel_values` [B,3,H,W] f32 (ImageNet-normalised).
    #[arg(long, required_unless_present = "image", conflicts_with = "image")]
    pub input: Option<PathBuf>,
    /// An image (PNG or JPEG, any size) instead of --input: normalised as `predict`
    /// does and run as a batch of one.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Output safetensors: `<task>` [B,C,H,W] and `features.stage<i>` (NCHW).
    #[arg(long)]
    pub out: PathBuf,
    /// Where to run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print parameter counts and the time taken.
    #[arg(long, short)]
    pub verbose: bool,
}

/// The bundle a command names: a directory, else a reference into the registry.
pub fn bundle_source(root: Option<&Path>, bundle: &str) -> BundleSource {
    BundleSource::parse(&super::registry::root(root), bundle)
}

/// `--backbone`, parsed, if given.
pub fn backbone_arg(given: Option<&str>) -> anyhow::Result<Option<BackboneSource>> {
    Ok(given.map(BackboneSource::parse).transpose()?)
}

pub fn forward(root: Option<&Path>, args: ForwardArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let device = parse_device(&args.device)?;
    let adapter = Adapter::open(
        &bundle_source(root, &args.bundle),
        backbone_arg(args.backbone.as_deref())?.as_ref(),
        &device,
    )?;
    let (backbone, bundle, model) = (&adapter.backbone, &adapter.loaded.bundle, &adapter.model);
    let pixels = match (&args.input, &args.image) {
        (Some(input), _) => read_pixels(input, &device)?,
        (None, Some(image)) => {
            let img = image::open(image)
                .with_context(|| format!("{}: cannot decode image", image.display()))?
                .to_rgb8();
            vmt_hub::predict::image_tensor(&img, &device)?
        }
        (None, None) => anyhow::bail!("--input or --image is needed"),
    };
    let loaded = start.elapsed();
    let out = model.forward(&pixels)?;
    write_outputs(&args.out, &out)?;
    let total = start.elapsed();
    if args.verbose {
        print_summary(backbone, &bundle.config);
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
