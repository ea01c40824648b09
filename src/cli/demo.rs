//! `vmt-hub demo` and `vmt-hub predict`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use vmt_registry::reference::TagName;

use vmt_hub::adapter::{read_bundle, Adapter, BundleSource};
use vmt_hub::data::Dataset;
use vmt_hub::device::parse_device;
use vmt_hub::eval::evaluate;
use vmt_hub::predict::predict_sample;
use vmt_hub::train::{TrainOptions, TrainOutcome, Trainer};

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A bundle: registry reference or exported directory.
    pub reference: String,
    /// Images (PNG or JPEG, any size).
    #[arg(long, num_args = 1.., required_unless_present = "data")]
    pub image: Vec<PathBuf>,
    /// A dataset: draw its images with their ground truth beside the predictions.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The dataset split to draw from.
    #[arg(long, default_value = "val")]
    pub split: String,
    /// How many images of the split to draw.
    #[arg(long, default_value_t = 4)]
    pub count: usize,
    /// Folder for the pictures (one PNG per task and image, and a sheet per image).
    #[arg(long)]
    pub out: PathBuf,
    /// Backbone (default: the one the bundle records): a repo id[@revision], a
    /// directory, or random:tiny / random:swin-t.
    #[arg(long)]
    pub backbone: Option<String>,
    /// Where to run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run_predict(root: Option<&Path>, a: PredictArgs) -> anyhow::Result<()> {
    let device = parse_device(&a.device)?;
    let adapter = Adapter::open(
        &super::forward::bundle_source(root, &a.reference),
        super::forward::backbone_arg(a.backbone.as_deref())?.as_ref(),
        &device,
    )?;
    let model = &adapter.model;
    for img in &a.image {
        let files = adapter.predict_image(img, &a.out)?;
        println!(
            "{} -> {} file(s) in {}",
            img.display(),
            files.len(),
            a.out.display()
        );
    }
    if let Some(data) = &a.data {
        let dataset = Dataset::open(data)?;
        for id in dataset.split(&a.split)?.iter().take(a.count) {
            let files = predict_sample(model, &dataset, id, &a.out)?;
            println!(
                "{id} (with ground truth) -> {} file(s) in {}",
                files.len(),
                a.out.display()
            );
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the dataset, run, registry and pictures go.
    #[arg(long, default_value = "vmt-demo")]
    pub out: PathBuf,
    /// Optimisation steps.
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Scenes to synthesise.
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    /// Square image side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Backbone: a Hugging Face repo id[@revision], a directory, or random:tiny / random:swin-t.
    #[arg(long, default_value = "random:tiny")]
    pub backbone: String,
    /// Where to run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The whole story on the embedded default: synthesise scenes, train four tasks on a
/// random backbone, evaluate, and draw predictions. Nothing is downloaded.
pub fn run_demo(root: Option<&Path>, a: DemoArgs) -> anyhow::Result<()> {
    let device = parse_device(&a.device)?;
    let data = a.out.join("data");
    let registry = root
        .map(PathBuf::from)
        .unwrap_or_else(|| a.out.join("registry"));
    println!(
        "1/4 synthesising {} scenes of {}x{} -> {}",
        a.count,
        a.size,
        a.size,
        data.display()
    );
    vmt_hub::data::synth::synthesize(&data, a.count, a.size, 0)?;
    let tasks: Vec<String> = ["semseg", "human_parts", "sal", "normals"]
        .map(String::from)
        .to_vec();
    let run_dir = a.out.join("run");
    let _ = std::fs::remove_dir_all(&run_dir);
    let opts = TrainOptions {
        data: data.clone(),
        tasks,
        backbone: a.backbone.clone(),
        steps: a.steps,
        image_size: a.size,
        run_dir: run_dir.clone(),
        ..TrainOptions::default()
    };
    println!(
        "2/4 training semseg, human_parts, sal, normals on {} ({} steps) -> {}",
        a.backbone,
        a.steps,
        run_dir.display()
    );
    let mut trainer = Trainer::new(opts, &device)?;
    let TrainOutcome::Finished(bundle) = trainer.run(&mut ())? else {
        anyhow::bail!("training stopped early");
    };
    let reg = vmt_registry::Registry::open(&registry)?;
    let tag = TagName::parse("demo:v1")?;
    let digest = reg.publish(&bundle, &tag)?.digest;
    drop(reg);
    println!("   stored as {tag} ({digest}) in {}", registry.display());
    println!("3/4 evaluating on the validation split");
    // The bundle as stored, on the backbone it was trained on.
    let source = BundleSource::Registry {
        root: registry.clone(),
        reference: digest.to_string(),
    };
    let adapter = Adapter::with_backbone(read_bundle(&source)?, trainer.backbone().clone())?;
    let model = &adapter.model;
    let dataset = Arc::new(Dataset::open(&data)?);
    let val = dataset.split("val")?;
    let report = evaluate(model, Arc::clone(&dataset), "val", a.size, 8, 2)?;
    print!("{}", report.table());
    let pictures = a.out.join("predictions");
    println!("4/4 drawing predictions -> {}", pictures.display());
    for id in val.iter().take(4) {
        predict_sample(model, &dataset, id, &pictures)?;
    }
    // The binary as the user ran it (cargo run, an installed vmt-hub, a path).
    let me = std::env::args()
        .next()
        .filter(|a| a.contains('/'))
        .unwrap_or_else(|| "vmt-hub".into());
    println!(
        "\nnext: {me} --registry {r} show demo:v1    |    open {p}/*.sheet.png",
        r = registry.display(),
        p = pictures.display()
    );
    Ok(())
}
