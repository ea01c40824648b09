//! The `vmt-hub` command line: argument parsing and printing over the library.
//!
//! Doc comments of the argument structs are the `--help` text, written for a terminal
//! (`oci://HOST[:PORT]/REPO`, `[B,3,H,W]`), not rustdoc links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

pub(crate) mod backbone;
pub(crate) mod compose;
pub(crate) mod data;
mod demo;
mod forward;
pub(crate) mod registry;
pub(crate) mod remote;
pub(crate) mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use forward::ForwardArgs;

/// Train, store and share VMT-Adapters: multi-task adapters for a frozen Swin.
#[derive(Debug, Parser)]
#[command(name = "vmt-hub", version, about, long_about = None)]
pub struct Cli {
    /// Registry root (default: $VMT_HOME, else ~/.vmt-hub).
    #[arg(long, global = true, env = "VMT_HOME")]
    pub(crate) registry: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// The whole story with nothing downloaded: synthesise scenes, train four tasks on
    /// the built-in random:tiny backbone, evaluate, draw predictions.
    Demo(demo::DemoArgs),
    /// Datasets: `data synth` writes a procedural one, `data import` converts
    /// PASCAL-Context or NYUD-v2 as distributed.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Backbones from the Hugging Face Hub.
    #[command(subcommand)]
    Backbone(backbone::BackboneCommand),
    /// Train a VMT-Adapter for several tasks on a frozen backbone; the bundle goes
    /// into the registry under --tag.
    Train(Box<train::TrainArgs>),
    /// Add tasks to a trained bundle: only their KEMs and decoders are trained; the
    /// backbone, the shared adapter and the existing tasks stay as they are.
    AddTask(Box<train::AddTaskArgs>),
    /// One bundle with the tasks of several that share their shared adapter (no tensor
    /// is copied: a new config and manifest over the same components).
    Merge(compose::MergeArgs),
    /// A bundle without one of its tasks (a new config and manifest).
    DropTask(compose::DropTaskArgs),
    /// A bundle with a task renamed (a new config and manifest; tensors keep their names).
    RenameTask(compose::RenameTaskArgs),
    /// Components added, removed and changed between two bundles, config and metric changes.
    Diff {
        /// The first bundle: NAME:TAG, digest or prefix.
        a: String,
        /// The second bundle.
        b: String,
    },
    /// Per-task metrics of a bundle on a dataset split, and Δm against baselines.
    Eval(train::EvalArgs),
    /// One PNG per task and image, plus an overlay sheet per image.
    Predict(demo::PredictArgs),
    /// Run a bundle on `pixel_values` and write every task's output and the stage features.
    Forward(ForwardArgs),
    /// Store an exported bundle directory in the registry under a tag.
    Import(registry::ImportArgs),
    /// Write a stored bundle as a directory (bundle.json + adapter.safetensors).
    Export(registry::ExportArgs),
    /// Tagged bundles: name, tag, digest, size, tasks.
    List {
        /// Group bundles into families that share a `shared` component.
        #[arg(long)]
        tree: bool,
    },
    /// A bundle's config, components (sizes, digests, parameters) and lineage.
    Show {
        /// NAME:TAG, digest or prefix.
        reference: String,
    },
    /// Give a stored bundle another NAME:TAG, or `--restore NAME:TAG` from the history.
    Tag(registry::TagArgs),
    /// Remove a tag (or every tag of a digest); blobs go at a `gc` after the grace period.
    Rm {
        /// NAME:TAG, digest or prefix.
        reference: String,
    },
    /// The history of every tag (or of one): when it pointed where, and what changed it.
    Log {
        /// NAME:TAG (default: every tag).
        tag: Option<String>,
    },
    /// Delete blobs that no tagged bundle needs and no tag pointed to within the grace
    /// period.
    Gc(registry::GcArgs),
    /// Re-hash blobs and check bundles; `--rebuild-index` recovers a lost index.
    Verify(registry::VerifyArgs),
    /// Send a bundle to an OCI registry (or `vmt-hub serve`): only missing blobs travel.
    Push(remote::PushArgs),
    /// Fetch a bundle from an OCI registry; every blob is verified before it is stored.
    Pull(remote::PullArgs),
    /// Answer the OCI Distribution API from this registry.
    Serve(remote::ServeArgs),
    /// Benchmarks (results belong in docs/benchmarks.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Time the multi-task forward pass (backbone + adapters + every decoder).
    Forward {
        /// Backbone: a Hugging Face repo id[@revision], a directory, or random:tiny / random:swin-t.
        #[arg(long, default_value = "random:swin-t")]
        backbone: String,
        /// Tasks: a comma-separated list, or a count N (as `bench train --tasks`).
        #[arg(long, default_value = "semseg,human_parts,sal,normals")]
        tasks: String,
        /// Batch sizes, comma-separated.
        #[arg(long, default_value = "1,2", value_delimiter = ',')]
        batch: Vec<usize>,
        /// Square image side in pixels.
        #[arg(long, default_value_t = 224)]
        size: usize,
        /// Timed iterations (after a warm-up).
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// Where to run: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Training throughput and peak memory (one configuration per process, so that the
    /// peak is this configuration's).
    Train {
        /// Backbone: a Hugging Face repo id[@revision], a directory, or random:tiny / random:swin-t.
        #[arg(long, default_value = "random:swin-t")]
        backbone: String,
        /// Tasks: a comma-separated list, or a count N for the first N of semseg,
        /// human_parts, sal, normals, depth, then more 21-class segmentations.
        #[arg(long, default_value = "4")]
        tasks: String,
        /// Images per step.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Square image side in pixels.
        #[arg(long, default_value_t = 224)]
        size: usize,
        /// Timed steps after one warm-up step.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Where to run: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Time an add-task step instead: the shared adapter frozen, only the tasks'
        /// KEMs and decoders trained.
        #[arg(long)]
        add_task: bool,
        /// Print one line of JSON per result.
        #[arg(long)]
        json: bool,
    },
    /// Push and pull throughput against a remote (e.g. a local docker-registry or
    /// `vmt-hub serve` on loopback).
    Transfer {
        /// oci://HOST:PORT/REPO (each round uses tag r<i>).
        #[arg(long)]
        remote: String,
        /// Push/pull rounds to time.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Print one line of JSON per result.
        #[arg(long)]
        json: bool,
    },
    /// Import, export and verify throughput of a Swin-T-sized four-task bundle.
    Registry {
        /// Timed iterations (after a warm-up).
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Print one line of JSON per result.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let root = cli.registry.as_deref();
    match cli.command {
        Command::Backbone(cmd) => backbone::run(cmd),
        Command::Data(cmd) => data::run(cmd),
        Command::Train(args) => train::run_train(root, *args),
        Command::AddTask(args) => train::run_add_task(root, *args),
        Command::Eval(args) => train::run_eval(root, args),
        Command::Push(args) => remote::run_push(root, args),
        Command::Pull(args) => remote::run_pull(root, args),
        Command::Serve(args) => remote::run_serve(root, args),
        Command::Import(args) => registry::import(root, args),
        Command::Export(args) => registry::export(root, args),
        Command::List { tree } => registry::list(root, tree),
        Command::Merge(args) => compose::merge(root, args),
        Command::DropTask(args) => compose::drop_task(root, args),
        Command::RenameTask(args) => compose::rename_task(root, args),
        Command::Diff { a, b } => compose::diff(root, &a, &b),
        Command::Show { reference } => registry::show(root, &reference),
        Command::Tag(args) => registry::tag(root, args),
        Command::Rm { reference } => registry::rm(root, &reference),
        Command::Log { tag } => registry::log(root, tag.as_deref()),
        Command::Gc(args) => registry::gc(root, args),
        Command::Verify(args) => registry::verify(root, args),
        Command::Forward(args) => forward::forward(root, args),
        Command::Demo(args) => demo::run_demo(root, args),
        Command::Predict(args) => demo::run_predict(root, args),
        Command::Bench(BenchCommand::Forward {
            backbone,
            tasks,
            batch,
            size,
            iters,
            device,
            json,
        }) => {
            let device = crate::device::parse_device(&device)?;
            let rows =
                crate::bench::bench_forward(&backbone, &tasks, &batch, size, iters, &device)?;
            for r in rows {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "{} {} tasks, batch {}, {}x{}: median {:.1} ms (encoder {:.1} ms, decoders {:.1} ms), min {:.1} ms, {:.2} images/s ({} runs)",
                        r.backbone, r.tasks, r.batch, r.size, r.size, r.median_s * 1e3,
                        r.encoder_median_s * 1e3, r.decoder_median_s * 1e3, r.min_s * 1e3, r.images_per_s, r.iters
                    );
                }
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Train {
            backbone,
            tasks,
            batch,
            size,
            steps,
            device,
            add_task,
            json,
        }) => {
            let device = crate::device::parse_device(&device)?;
            let r = crate::bench::bench_train(
                &backbone, &tasks, batch, size, steps, add_task, &device,
            )?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} {} tasks{}, batch {}, {}x{}: {:.2} s/step, {:.2} images/s, peak RSS {}",
                    r.backbone,
                    r.tasks,
                    if r.add_task { " (add-task)" } else { "" },
                    r.batch,
                    r.size,
                    r.size,
                    r.step_s,
                    r.images_per_s,
                    r.peak_rss_mib
                        .map_or("n/a".into(), |m| format!("{m:.0} MiB"))
                );
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Transfer {
            remote,
            rounds,
            json,
        }) => {
            let tmp = tempfile::tempdir()?;
            for r in crate::bench::bench_transfer(&remote, rounds, tmp.path())? {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "{:<44} {:>8.1} MB/s  ({:.1} ms for {:.2} MB)",
                        r.operation,
                        r.mb_per_s,
                        r.median_s * 1e3,
                        r.bytes as f64 / 1e6
                    );
                }
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Registry { iters, json }) => {
            let tmp = tempfile::tempdir()?;
            for r in crate::bench::bench_registry(tmp.path(), iters)? {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "{:<52} {:>8.1} MB/s  ({:.1} ms for {:.2} MB)",
                        r.operation,
                        r.mb_per_s,
                        r.median_s * 1e3,
                        r.bytes as f64 / 1e6
                    );
                }
            }
            Ok(())
        }
    }
}
