//! `vmt-hub`: the command line over the `vmt_hub` library (`cli/` parses, calls one
//! library function per command and prints).

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Output cut short by a closed pipe (`vmt-hub show x | head`) ends the process
    // quietly, like a Unix tool killed by SIGPIPE, instead of printing a panic. SIGPIPE
    // itself stays ignored, so that a peer closing a socket is an error `serve`, `push`
    // and `pull` report, not a silent death.
    keep_freed_memory();
    // Any other failure to write standard output (`show x > /dev/full`) is an error
    // message and exit status 1, not a backtrace.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if stdout_failure(info.payload()).is_none() {
            default_hook(info)
        }
    }));
    tracing_subscriber::fmt()
        // Warnings (a retried request, a skipped history line) show unless VMT_LOG says
        // otherwise.
        .with_env_filter(
            tracing_subscriber::EnvFilter::builder()
                .with_default_directive(tracing::Level::WARN.into())
                .with_env_var("VMT_LOG")
                .from_env_lossy(),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = cli::Cli::parse();
    match std::panic::catch_unwind(move || cli::run(cli)) {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
        // 128 + SIGPIPE, what a shell reports for a tool the signal ended.
        Err(p) => match stdout_failure(&*p) {
            Some(msg) if msg.contains("Broken pipe") => std::process::ExitCode::from(141),
            Some(msg) => {
                let why = msg.trim_start_matches("failed printing to stdout: ");
                eprintln!("error: cannot write to standard output: {why}");
                std::process::ExitCode::FAILURE
            }
            None => std::panic::resume_unwind(p),
        },
    }
}

/// The message of a panic that is `println!` failing to write standard output.
fn stdout_failure(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())?;
    msg.starts_with("failed printing to stdout").then_some(msg)
}

/// candle allocates a fresh buffer for every op. With glibc's defaults, buffers above a
/// dynamic threshold come from mmap and go back to the kernel when freed, so every
/// training step pays page faults and zeroing again; serving them from the heap, and
/// not trimming it, keeps those pages for reuse (about 10% of a Swin-T training step,
/// no more memory at peak: docs/benchmarks.md, "Allocator").
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20); // glibc's maximum
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        // One arena: the model runs on rayon's threads (model::on_pool), and per-thread
        // arenas would each keep their own freed pages (+130 MiB at peak, 8 tasks).
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
