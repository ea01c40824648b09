//! The `vmt-hub` command line: argument parsing and printing over the library.

mod forward;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use forward::{parse_tasks, DemoArgs, ForwardArgs};

/// Train, store and share VMT-Adapters: multi-task adapters for a frozen Swin.
#[derive(Debug, Parser)]
#[command(name = "vmt-hub", version, about, long_about = None)]
pub struct Cli {
    /// Registry root (default: $VMT_HOME, else ~/.vmt-hub).
    #[arg(long, global = true, env = "VMT_HOME")]
    pub registry: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a bundle on `pixel_values` and write every task's output and the stage features.
    Forward(ForwardArgs),
    /// Make an untrained bundle on a built-in random backbone and run it on a generated
    /// input: the whole model end to end, with nothing downloaded.
    Demo(DemoArgs),
    /// Benchmarks (results belong in docs/benchmarks.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time the multi-task forward pass (backbone + adapters + every decoder).
    Forward {
        #[arg(long, default_value = "random:swin-t")]
        backbone: String,
        #[arg(long, default_value = "semseg,human_parts,sal,normals")]
        tasks: String,
        /// Batch sizes, comma-separated.
        #[arg(long, default_value = "1,2", value_delimiter = ',')]
        batch: Vec<usize>,
        #[arg(long, default_value_t = 224)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        iters: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Forward(args) => forward::forward(args),
        Command::Demo(args) => forward::demo(args),
        Command::Bench(BenchCommand::Forward { backbone, tasks, batch, size, iters, device, json }) => {
            let device = crate::device::parse_device(&device)?;
            let rows = crate::bench::bench_forward(&backbone, &tasks, &batch, size, iters, &device)?;
            for r in rows {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "{} {} tasks, batch {}, {}x{}: median {:.1} ms, min {:.1} ms, {:.2} images/s ({} runs)",
                        r.backbone, r.tasks, r.batch, r.size, r.size, r.median_s * 1e3, r.min_s * 1e3, r.images_per_s, r.iters
                    );
                }
            }
            Ok(())
        }
    }
}
