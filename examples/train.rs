//! Train a VMT-Adapter for three tasks on synthetic scenes and store it in a registry.
//!
//! ```text
//! cargo run --release --example train -- [WORK_DIR] [STEPS]
//! ```
//! Everything goes under WORK_DIR (default: a temporary folder): `data/`, `run/`,
//! `registry/`. The backbone is the built-in `random:tiny` (nothing is downloaded).

use candle_core::Device;
use vmt_hub::data::synth::synthesize;
use vmt_hub::registry::reference::TagName;
use vmt_hub::registry::Registry;
use vmt_hub::train::{train, TrainOptions, TrainOutcome};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let tmp = tempfile::tempdir()?;
    let work = args
        .next()
        .map(Into::into)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let steps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(60);

    // 1. A dataset: 40 procedural scenes of 32x32 with exact labels for five tasks.
    let data = work.join("data");
    synthesize(&data, 40, 32, 1)?;

    // 2. Train three of its tasks at once on a frozen random Swin: only the shared
    //    adapter, the per-task KEMs and the decoders learn.
    let opts = TrainOptions {
        data,
        tasks: vec!["semseg".into(), "sal".into(), "normals".into()],
        steps,
        image_size: 32,
        run_dir: work.join("run"),
        ..TrainOptions::default()
    };
    let TrainOutcome::Finished(bundle) = train(&opts, &Device::Cpu)? else {
        anyhow::bail!("training stopped early");
    };

    // 3. Store it: a content-addressed bundle of safetensors components.
    let registry = Registry::open(&work.join("registry"))?;
    let tag = TagName::parse("example/vmt:v1")?;
    let stored = registry.publish(&bundle, &tag)?;
    println!(
        "{tag} -> {} ({} blobs written)",
        stored.digest, stored.new_blobs
    );
    println!("validation: {}", bundle.config.extra["metrics"]["val"]);
    Ok(())
}
