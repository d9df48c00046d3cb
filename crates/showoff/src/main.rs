//! The `showoff` binary: parses the command line, sets up logging and signals, and runs the
//! server or the client library. The only place that reads the environment or exits.
//!
//! Layout: [`cli`] (flags and their `SHOWOFF_*` variables), [`logging`], [`signals`],
//! [`commands`] (what each subcommand does).

mod cli;
mod commands;
mod logging;
mod signals;

use clap::Parser;

/// The server uses every core by default; a client mostly splices bytes, and one thread serves
/// it best (measured in docs/benchmarks.md: fewer cross-thread wake-ups per request).
fn runtime(cli: &cli::Cli) -> tokio::runtime::Builder {
    let threads = cli.threads.unwrap_or(match cli.command {
        cli::Command::Server(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        _ => 1,
    });
    if threads <= 1 {
        return tokio::runtime::Builder::new_current_thread();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(threads);
    builder
}

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    logging::init(&cli.log_format, &cli.log_level);
    let runtime = match runtime(&cli).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
