//! `vmt-hub bench`: runs a measurement of `vmt_hub::bench` and prints its report.

use clap::Subcommand;

/// `vmt-hub bench <what>`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
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
    /// The GEMMs of Swin-T's linear layers, split between threads as the fused layers
    /// do and as gemm does.
    Gemm {
        /// Images per batch (the layers' rows are the tokens of the batch).
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Square image side in pixels.
        #[arg(long, default_value_t = 224)]
        size: usize,
        /// Timed runs per GEMM (the fastest counts).
        #[arg(long, default_value_t = 20)]
        iters: usize,
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

/// Runs one benchmark; prints one line per result (JSON with `--json`).
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let print = |line: String, json: String, as_json: bool| {
        println!("{}", if as_json { json } else { line });
    };
    match cmd {
        BenchCommand::Forward {
            backbone,
            tasks,
            batch,
            size,
            iters,
            device,
            json,
        } => {
            let device = vmt_hub::device::parse_device(&device)?;
            let rows =
                vmt_hub::bench::bench_forward(&backbone, &tasks, &batch, size, iters, &device)?;
            for r in rows {
                print(r.to_string(), serde_json::to_string(&r)?, json);
            }
        }
        BenchCommand::Train {
            backbone,
            tasks,
            batch,
            size,
            steps,
            device,
            add_task,
            json,
        } => {
            let device = vmt_hub::device::parse_device(&device)?;
            let r = vmt_hub::bench::bench_train(
                &backbone, &tasks, batch, size, steps, add_task, &device,
            )?;
            print(r.to_string(), serde_json::to_string(&r)?, json);
        }
        BenchCommand::Gemm {
            batch,
            size,
            iters,
            json,
        } => {
            for r in vmt_hub::bench::bench_gemm(batch, size, iters) {
                print(r.to_string(), serde_json::to_string(&r)?, json);
            }
        }
        BenchCommand::Transfer {
            remote,
            rounds,
            json,
        } => {
            let tmp = tempfile::tempdir()?;
            let credentials = vmt_registry::remote::client::Credentials {
                token: std::env::var("VMT_REGISTRY_TOKEN").ok(),
                ..Default::default()
            };
            let rows = vmt_hub::bench::bench_transfer(&remote, &credentials, rounds, tmp.path())?;
            for r in rows {
                print(r.to_string(), serde_json::to_string(&r)?, json);
            }
        }
        BenchCommand::Registry { iters, json } => {
            let tmp = tempfile::tempdir()?;
            for r in vmt_hub::bench::bench_registry(tmp.path(), iters)? {
                print(r.to_string(), serde_json::to_string(&r)?, json);
            }
        }
    }
    Ok(())
}
