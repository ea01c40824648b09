//! Compose adapters without retraining or copying: add a fourth task to a trained
//! bundle, merge it with a sibling, drop a task, and see what each step stored.
//!
//! ```text
//! cargo run --release --example compose -- [WORK_DIR]
//! ```

use candle_core::Device;
use vmt_hub::data::synth::synthesize;
use vmt_hub::registry::compose::{drop_task, lineage, merge};
use vmt_hub::registry::reference::TagName;
use vmt_hub::registry::Registry;
use vmt_hub::train::{train, Base, TrainOptions, TrainOutcome};

fn main() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let work = std::env::args()
        .nth(1)
        .map(Into::into)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let data = work.join("data");
    synthesize(&data, 40, 32, 1)?;
    let reg = Registry::open(&work.join("registry"))?;
    let opts = |tasks: &[&str], run: &str| TrainOptions {
        data: data.clone(),
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
        steps: 40,
        image_size: 32,
        run_dir: work.join(run),
        ..TrainOptions::default()
    };
    let finished = |o: TrainOutcome| match o {
        TrainOutcome::Finished(b) => Ok(*b),
        TrainOutcome::Stopped(s) => Err(anyhow::anyhow!("stopped at step {s}")),
    };
    let tag = |s: &str| TagName::parse(s);

    // A bundle trained on three tasks.
    let base = finished(train(
        &opts(&["semseg", "sal", "normals"], "run-base"),
        &Device::Cpu,
    )?)?;
    let v1 = reg.publish(&base, &tag("team/vmt:v1")?)?;
    println!(
        "v1: 3 tasks, {} blobs, {} bytes",
        v1.new_blobs, v1.new_bytes
    );

    // add-task: only the new task's KEMs and decoder train; v1's tensors stay frozen.
    for (task, name) in [
        ("human_parts", "team/vmt:parts"),
        ("depth", "team/vmt:depth"),
    ] {
        let added = finished(train(
            &TrainOptions {
                base: Some(Base {
                    bundle: base.clone(),
                    parent: Some(v1.digest),
                }),
                ..opts(&[task], &format!("run-{task}"))
            },
            &Device::Cpu,
        )?)?;
        let p = reg.publish(&added, &tag(name)?)?;
        println!(
            "{name}: +{task}, {} new blobs, {} bytes",
            p.new_blobs, p.new_bytes
        );
    }

    // merge the two siblings (they share v1's adapter): no tensor is copied.
    let all = merge(
        &reg,
        &["team/vmt:parts", "team/vmt:depth"],
        &tag("team/vmt:all")?,
    )?;
    println!(
        "merged: {} new blobs, {} bytes",
        all.new_blobs, all.new_bytes
    );
    let slim = drop_task(&reg, "team/vmt:all", "depth", &tag("team/vmt:slim")?)?;
    println!(
        "dropped depth: {} new blobs, {} bytes",
        slim.new_blobs, slim.new_bytes
    );

    // Lineage: each bundle records its parent; oldest first, with what each step changed.
    for step in lineage(&reg, &slim.digest)? {
        println!(
            "  {} {:?} {}: {} (added {:?}, removed {:?})",
            step.digest.short(),
            step.tags,
            step.operation,
            step.tasks.join(", "),
            step.added,
            step.removed
        );
    }
    for e in reg.list()? {
        println!("{:<18} {:>8} bytes  {}", e.tag, e.size, e.tasks.join(","));
    }
    Ok(())
}
