//! `vmt-hub data synth`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Write a procedural multi-task dataset with exact ground truth for every task.
    Synth(SynthArgs),
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Synth(a) => {
            crate::data::synth::synthesize(&a.out, a.count, a.size, a.seed)?;
            println!(
                "wrote {} scenes of {}x{} to {}",
                a.count,
                a.size,
                a.size,
                a.out.display()
            );
            Ok(())
        }
    }
}
