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

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    logging::init(&cli.log_format, &cli.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
