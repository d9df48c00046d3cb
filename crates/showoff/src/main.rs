//! The `showoff` binary: parses the command line, resolves settings, sets up logging and
//! signals, and runs the server or the client library. The only place that reads the
//! environment or exits.
//!
//! Everything else lives in the crate's library (`showoff_cli`), so the fuzz targets drive the
//! same settings and file parsers the binary runs.

use showoff_cli::{cli, client_file, commands, logging, settings};

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Parser;

/// The server uses every core by default; a client mostly splices bytes, and one thread serves
/// it best (measured in docs/benchmarks.md: fewer cross-thread wake-ups per request).
fn runtime(command: &cli::Command, threads: Option<usize>) -> tokio::runtime::Builder {
    let threads = threads.unwrap_or(match command {
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

/// The config file the subcommand reads: the server's settings, or a client file (whose
/// top-level keys are the global settings).
fn read_files(
    cli: &cli::Cli,
    env: &HashMap<String, String>,
) -> Result<(settings::FileValues, Option<client_file::ClientFile>), String> {
    match &cli.command {
        cli::Command::Server(args) => match settings::config_path(args.config.as_deref(), env) {
            Some(path) => Ok((settings::load_file(&path).map_err(|e| e.to_string())?, None)),
            None => Ok((settings::FileValues::default(), None)),
        },
        cli::Command::Client(args) => {
            let Some(path) = settings::config_path(args.config.as_deref(), env) else {
                return Err(
                    "showoff client needs a config file: -c showoff.toml (or SHOWOFF_CONFIG)"
                        .into(),
                );
            };
            let file = client_file::load(&path).map_err(|e| e.to_string())?;
            Ok((file.globals(), Some(file)))
        }
        _ => Ok((settings::FileValues::default(), None)),
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("SHOWOFF_"))
        .collect();
    let (file, client) = match read_files(&cli, &env) {
        Ok(read) => read,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let globals = match settings::globals(&cli, &env, &file) {
        Ok(globals) => globals,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match runtime(&cli.command, globals.threads).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The trace exporter is built inside the runtime its exports run on.
    let entered = runtime.enter();
    let service = match &cli.command {
        cli::Command::Server(_) => Some("showoff-server"),
        cli::Command::Token(_) => None,
        _ => Some("showoff-client"),
    };
    let otlp = globals.otlp.as_ref().zip(service);
    let (log_control, telemetry) =
        match logging::init(&globals.log_format, &globals.log_level, otlp) {
            Ok(installed) => installed,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        };
    drop(entered);
    let trace = telemetry
        .is_some()
        .then(|| globals.otlp.as_ref().map_or(1.0, |o| o.sample));
    let ran = runtime.block_on(async {
        let ran = commands::run(cli, env, file, client, log_control, trace).await;
        if let Some(telemetry) = telemetry {
            telemetry.shutdown().await;
        }
        ran
    });
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
