//! The `showoff` binary's parts, as a library so the fuzz targets in `fuzz/` drive the same
//! settings and file parsers the binary runs; `main.rs` only wires them together.
//!
//! Layout: [`cli`] (flags), [`settings`] (the settings table and the layering of defaults,
//! config file, `SHOWOFF_*` environment and flags), [`client_file`] and [`token_file`] (the
//! client's and the server's other files), [`audit_file`], [`logging`], [`telemetry`]
//! (OpenTelemetry export), [`signals`],
//! [`watch`] (file change polling), [`inspector`] (the client's traffic inspector and
//! request lines), [`commands`] (what each subcommand does).

pub mod audit_file;
pub mod cli;
pub mod client_file;
pub mod commands;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod inspector;
pub mod logging;
pub mod settings;
pub mod signals;
pub mod target;
pub mod telemetry;
pub mod token_file;
pub mod watch;
