//! `vmt-hub data synth` and `vmt-hub data import`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use vmt_hub::data::benchmarks::{self, Benchmark};

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Write a procedural multi-task dataset with exact ground truth for every task.
    Synth(SynthArgs),
    /// Convert a benchmark as distributed for MTI-Net / InvPT / MTLoRA (PASCAL_MT, NYUD_MT)
    /// into vmt-hub's dataset layout. Resumable: a second run skips what is done.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// The dataset folder to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Scenes to synthesise.
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    /// Square image side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Random seed (the same seed gives the same result).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// pascal-context (a PASCAL_MT folder) or nyud (a NYUD_MT folder).
    pub benchmark: Benchmark,
    /// The distributed folder (the one holding JPEGImages/ or images/).
    pub src: PathBuf,
    /// The dataset folder to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Threads converting images (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Synth(a) => {
            vmt_hub::data::synth::synthesize(&a.out, a.count, a.size, a.seed)?;
            println!(
                "wrote {} scenes of {}x{} to {}",
                a.count,
                a.size,
                a.size,
                a.out.display()
            );
            Ok(())
        }
        DataCommand::Import(a) => {
            let bar = if a.quiet {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(0).with_style(
                    ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} images {elapsed} (eta {eta})",
                    )
                    .expect("valid template"),
                )
            };
            let jobs = a
                .jobs
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let summary = benchmarks::import(a.benchmark, &a.src, &a.out, jobs, &|done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            });
            bar.finish_and_clear();
            print!("{}", summary?);
            Ok(())
        }
    }
}
