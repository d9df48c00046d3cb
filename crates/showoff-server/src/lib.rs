//! The Showoff server: control, data and public listeners; sessions; the HTTP and TCP edges.
//!
//! A visitor's path through this crate reads in one direction: a public listener accepts it,
//! the edge ([`edge`]) routes it by `Host` or port to a tunnel ([`tunnel`]) of a session
//! ([`session`]), the session's transport ([`transport`]) opens a stream to the client, and
//! bytes flow to the client's local target.
//!
//! The library never reads the environment or signals and never exits the process: the binary
//! builds a [`ServerConfig`] (reading every file it names), calls [`Server::bind`], then
//! [`Server::run`] with a cancellation token it cancels on SIGTERM. The one exception to "no
//! files" is [`acme`], whose job is to keep its account and certificates on disk.
//!
//! # Layout
//! - [`config`]: [`ServerConfig`], defaults, validation (open mode only on loopback).
//! - [`acme`]: certificates obtained and renewed by ACME (HTTP-01, TLS-ALPN-01), persisted.
//! - `admin`: the admin listener: probes, version, metrics, sessions and tunnels API, pprof.
//! - [`server`]: bind, accept loops, drain; the shared state of all tasks.
//! - [`session`]: control connections: handshake, heartbeats, `GoAway`, teardown.
//! - [`audit`]: audit events and the sink they go to.
//! - [`auth`]: the `Authenticator` interface, principals, name patterns, token tables.
//! - [`limits`]: rate limits per visitor address, tunnel and client address.
//! - [`registry`]: name ownership ([`Registry`], [`MemoryRegistry`]) and the routing table.
//! - [`pending`]: dial-back waiters (`id → oneshot`), guards and caps.
//! - [`transport`]: the stream-opening interface and the dial-back transport with warm pool.
//! - [`tunnel`]: one registered tunnel and its pooled upstream connections.
//! - [`edge`]: HTTP reverse proxy, TCP splicing, error pages.
//! - [`stats`]: Prometheus metrics, also read by tests through snapshots.
//! - [`tls`]: certificates by SNI (reloadable), TLS acceptors, client-certificate identities.

pub mod acme;
mod admin;
pub mod audit;
pub mod auth;
pub mod config;
mod edge;
pub mod limits;
mod pending;
pub mod registry;
pub mod server;
mod session;
pub mod stats;
pub mod tls;
pub mod transport;
mod tunnel;

pub use acme::{AcmeChallenge, AcmeConfig};
pub use config::{
    AdminConfig, AuthConfig, BuildInfo, ConfigError, LogControl, NamePolicy, PolicyConfig,
    PortRange, ProxyConfig, ProxyProtocol, Secret, ServerConfig, WebhookConfig,
};
pub use edge::error::ERROR_HEADER;
pub use limits::RateConfig;
pub use registry::{MemoryRegistry, Registry};
pub use server::{DrainReport, Server, ServerAddrs, ServerError, ServerHandle};
pub use session::MAX_TUNNELS_PER_SESSION;
pub use stats::StatsSnapshot;
pub use tls::{PemPair, TlsConfig};
