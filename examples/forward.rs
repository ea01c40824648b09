//! Open a bundle from a registry on its backbone, predict every task on an image and
//! write the pictures.
//!
//! ```text
//! cargo run --release --example forward -- [OUT_DIR]
//! ```
//! It stores the repository's tiny parity bundle in a temporary registry first, so it
//! runs on a fresh clone; with your own registry, use `BundleSource::parse(root, "name:tag")`.

use std::path::Path;

use candle_core::Device;
use vmt_hub::adapter::{Adapter, BundleSource};
use vmt_hub::model::BackboneSource;
use vmt_hub::registry::bundle::BundleDir;
use vmt_hub::registry::reference::TagName;
use vmt_hub::registry::Registry;

fn main() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = std::env::args()
        .nth(1)
        .map(Into::into)
        .unwrap_or_else(|| tmp.path().join("pictures"));
    // `cargo run` sets CARGO_MANIFEST_DIR at run time too; the compile-time value is the
    // fallback for a binary run by hand.
    let repo = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).into());
    let fixtures = repo.join("tests/fixtures/tiny");

    // A registry holding one bundle (here: the parity fixture, four tasks).
    let root = tmp.path().join("registry");
    Registry::open(&root)?.publish(
        &BundleDir::read(&fixtures.join("bundle"))?,
        &TagName::parse("fixture:tiny")?,
    )?;

    // One call: read and verify the bundle, load the backbone, build the model. This
    // bundle records no backbone, so we name its directory.
    let adapter = Adapter::open(
        &BundleSource::parse(&root, "fixture:tiny"),
        Some(&BackboneSource::Dir(fixtures.join("backbone"))),
        &Device::Cpu,
    )?;
    println!("tasks: {:?}", adapter.task_names());

    // Any image, any size: one PNG per task and a captioned sheet.
    let image = tmp.path().join("input.png");
    image::RgbImage::from_fn(96, 64, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 120])
    })
    .save(&image)?;
    for file in adapter.predict_image(&image, &out)? {
        println!("wrote {}", file.display());
    }
    Ok(())
}
