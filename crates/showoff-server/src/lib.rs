//! The Showoff server: control, data and public listeners; sessions; the HTTP and TCP edges.
//!
//! The crate is layered, and imports point one way only
//! (`crates/showoff-testkit/tests/architecture.rs` fails on an import that points up, and on
//! any import cycle):
//!
//! ```text
//! config → {stats, audit, limits, tls, auth, listen, drain} → state → transport → control
//!        → edge → ops → server (composition root)
//! ```
//!
//! A visitor's path reads in the same direction: a listener ([`listen`]) accepts it and runs
//! the arrival prelude, the edge ([`edge`]) routes it by `Host` or port to a tunnel of the
//! routing table ([`state`]), the tunnel's opener ([`transport`]) gives a stream to the client,
//! and bytes flow to the client's local target; the finished exchange is reported once as an
//! event to the metrics ([`stats`]) and the access log. Only [`server`] sees every layer: it
//! builds each one a narrow context of what it uses.
//!
//! The library never reads the environment or signals and never exits the process: the binary
//! builds a [`ServerConfig`] (plain data, reading every file it names) and [`Services`], calls
//! [`Server::bind_with`], then [`Server::run`] with a cancellation token it cancels on
//! SIGTERM. The one exception to "no files" is [`ops::acme`], whose job is to keep its account
//! and certificates on disk.
//!
//! # Layout
//! - [`config`]: [`ServerConfig`] and its parts, defaults, the rules checked before binding.
//! - [`stats`], [`audit`], [`limits`], [`tls`], [`auth`], `listen`, `drain`: services every
//!   layer above may use (metrics, audit sink, rate limits, certificates and acceptors,
//!   authenticators, sockets and the arrival prelude, the lifecycle).
//! - `state`: sessions, tunnels, routes, naming rules, ports, public URLs.
//! - [`transport`]: the server side of each transport (dial-back today).
//! - `control`: handshake, admission, registration, the control loop.
//! - `edge`: HTTP, HTTPS, HTTP/2 and TCP edges, forwarded headers, error pages.
//! - [`ops`]: admin listener, ACME, access log.
//! - [`server`]: the composition root.

pub mod audit;
pub mod auth;
pub mod config;
mod control;
mod drain;
mod edge;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod limits;
mod listen;
pub mod ops;
pub mod server;
mod state;
pub mod stats;
pub mod tls;
pub mod transport;

pub use config::{
    AcmeChallenge, AcmeConfig, AdminConfig, AuthConfig, BuildInfo, ConfigError, ConnectionLimits,
    NamePolicy, PemPair, PolicyConfig, PortRange, ProxyConfig, ProxyProtocol, RateConfig, Secret,
    ServerConfig, TlsConfig, TraceConfig, UdpConfig, WebhookConfig,
};
pub use control::MAX_TUNNELS_PER_SESSION;
pub use drain::DrainReport;
pub use edge::error::ERROR_HEADER;
pub use ops::admin::LogControl;
pub use server::{Server, ServerAddrs, ServerError, ServerHandle, Services, validate};
pub use showoff_core::{MemoryRegistry, Registry};
pub use stats::StatsSnapshot;

/// The ACME settings and task (kept at `showoff_server::acme` for embedders).
pub use ops::acme;
