//! What every side of Showoff shares, so that the server, the client and backend crates (a
//! clustered registry, later transports) meet on one set of types instead of importing each
//! other.
//!
//! # Layout
//! - [`stream`]: [`TunnelStream`] (a boxed byte stream with replayed prefix bytes), [`Prefixed`],
//!   [`splice`], socket tuning.
//! - [`opener`]: the transport seams: [`StreamOpener`] ("open a stream to this session") and
//!   [`DatagramLink`] (a UDP tunnel's datagrams), with [`StreamMeta`] and [`OpenError`].
//! - [`datagram`]: the bounded, lossy datagram queue every non-QUIC transport carries UDP in.
//! - [`flows`]: the UDP flow table of both sides: caps per tunnel and per process, idle expiry.
//! - [`mux`]: multiplexed streams over one connection ([`Mux`], yamux), both ends of the `mux`
//!   transport.
//! - [`quic`]: the QUIC transport's shared parts: UDP socket set-up, windows, streams.
//! - [`registry`]: fenced leases on names and public ports ([`Registry`], [`MemoryRegistry`]) and
//!   the conformance suite every backend runs (feature `conformance`).
//! - [`exchange`]: one [`Exchange`] event per HTTP request and TCP connection, and the
//!   [`ExchangeSink`]s that consume it (metrics, access log; inspector and tracing later).
//! - [`secret`]: [`Secret`], a string that never prints.
//! - [`trace`]: W3C trace context between hops (visitor, server, client, target) on top of
//!   `tracing` spans of target [`trace::TARGET`].
//! - [`time`]: civil dates and RFC 3339 timestamps without a date crate.
//!
//! Nothing here reads files, the environment or signals.

pub mod datagram;
pub mod exchange;
pub mod flows;
pub mod mux;
pub mod opener;
pub mod quic;
pub mod registry;
pub mod secret;
pub mod stream;
pub mod time;
pub mod trace;

pub use datagram::{ChannelEnd, DatagramDrop, DatagramQueue, carry_channel, send_now};
pub use exchange::{Exchange, ExchangeSink, Exchanges, HttpExchange, Protocol};
pub use flows::{FlowBudget, FlowRefused, FlowTable, sweep_period};
pub use mux::{Mux, MuxError};
pub use opener::{DatagramLink, OpenError, StreamMeta, StreamOpener};
pub use registry::{
    Claim, Claimed, Lease, LeaseKey, MemoryRegistry, Owner, Registry, RegistryError,
};
pub use secret::Secret;
pub use stream::{
    Prefixed, SPLICE_BUF, StreamIo, TunnelStream, set_user_timeout, splice, tune_socket,
};
pub use trace::TraceHeaders;
