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
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Forward(args) => forward::forward(args),
        Command::Demo(args) => forward::demo(args),
    }
}
