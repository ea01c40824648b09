use clap::Parser;

fn main() -> std::process::ExitCode {
    // Like every Unix tool: output cut short by a closed pipe (`vmt-hub show x | head`)
    // ends the process quietly instead of a panic on the next write.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("VMT_LOG"))
        .with_writer(std::io::stderr)
        .init();
    match vmt_hub::cli::run(vmt_hub::cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
