//! Operating the server: what operators and background jobs see and do.
//!
//! - [`admin`]: the admin listener (probes, version, metrics, sessions and tunnels API, log
//!   level, pprof) over its own narrow [`AdminContext`](admin::AdminContext).
//! - [`acme`]: certificates obtained and renewed by ACME (HTTP-01, TLS-ALPN-01), persisted.
//! - [`access_log`]: one log line per relayed HTTP request, an exchange-event sink.

pub(crate) mod access_log;
pub mod acme;
pub(crate) mod admin;
