//! The `vmt-hub` command line: argument parsing and printing over the library.
//!
//! Doc comments of the argument structs are the `--help` text, written for a terminal
//! (`oci://HOST[:PORT]/REPO`, `[B,3,H,W]`), not rustdoc links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

pub(crate) mod backbone;
mod bench;
pub(crate) mod compose;
pub(crate) mod data;
mod demo;
mod forward;
pub(crate) mod registry;
pub(crate) mod remote;
mod sign;
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
    Show(registry::ShowArgs),
    /// The tags of a remote repository (oci://HOST[:PORT]/REPO), page by page as the
    /// registry serves them; nothing is stored.
    Ls(remote::LsArgs),
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
    /// Store a login for a registry where skopeo, podman and oras find it too (checked
    /// against the registry first).
    Login(remote::LoginArgs),
    /// Remove the stored login of a registry.
    Logout(remote::LogoutArgs),
    /// Signing keys in cosign's format.
    #[command(subcommand)]
    Key(sign::KeyCommand),
    /// Sign a stored bundle (cosign's key-based format; the bundle's digest does not
    /// change): the signature travels with push and pull.
    Sign(sign::SignArgs),
    /// Benchmarks (results belong in docs/benchmarks.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    vmt_hub::model::fused::Kernels::from_env().install();
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
        Command::Login(args) => remote::run_login(args),
        Command::Logout(args) => remote::run_logout(args),
        Command::Import(args) => registry::import(root, args),
        Command::Export(args) => registry::export(root, args),
        Command::List { tree } => registry::list(root, tree),
        Command::Merge(args) => compose::merge(root, args),
        Command::DropTask(args) => compose::drop_task(root, args),
        Command::RenameTask(args) => compose::rename_task(root, args),
        Command::Diff { a, b } => compose::diff(root, &a, &b),
        Command::Show(args) => registry::show(root, args),
        Command::Ls(args) => remote::run_ls(args),
        Command::Tag(args) => registry::tag(root, args),
        Command::Rm { reference } => registry::rm(root, &reference),
        Command::Log { tag } => registry::log(root, tag.as_deref()),
        Command::Gc(args) => registry::gc(root, args),
        Command::Verify(args) => registry::verify(root, args),
        Command::Forward(args) => forward::forward(root, args),
        Command::Demo(args) => demo::run_demo(root, args),
        Command::Predict(args) => demo::run_predict(root, args),
        Command::Key(cmd) => sign::run_key(cmd),
        Command::Sign(args) => sign::run_sign(root, args),
        Command::Bench(cmd) => bench::run(cmd),
    }
}
