//! The transport seams: how a server gets a byte stream ([`StreamOpener`]) or a datagram flow
//! ([`DatagramOpener`]) to one client. Edges only ever call these; which transport stands
//! behind them (dial-back today, multiplexed or QUIC streams next) is the session's business,
//! and each transport is one file per side implementing them.

use std::net::SocketAddr;

use async_trait::async_trait;
use bytes::Bytes;

use crate::datagram::DatagramDrop;
use crate::stream::TunnelStream;

/// What the edge knows about the visitor a stream is for.
#[derive(Debug, Clone)]
pub struct StreamMeta {
    /// The tunnel's name.
    pub tunnel: String,
    /// The visitor's address.
    pub visitor_addr: SocketAddr,
}

/// Why no stream (or flow) could be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The client's session ended (or ends while we wait).
    #[error("the client is not connected")]
    ClientGone,
    /// The client did not produce a stream in time.
    #[error("the client did not open a stream in time")]
    Timeout,
    /// Too many streams are being set up for this session or the server.
    #[error("too many streams are being set up")]
    OverCapacity,
    /// The client reached the tunnel but not its local target.
    #[error("the client could not reach its target: {0}")]
    TargetUnreachable(String),
}

/// "Open a stream to this session": the one interface every stream transport implements.
#[async_trait]
pub trait StreamOpener: Send + Sync + 'static {
    /// Opens a fresh stream to the client's target for one visitor connection.
    async fn open(&self, meta: &StreamMeta) -> Result<TunnelStream, OpenError>;
}

/// What the UDP edge knows about a flow: one (visitor address, tunnel) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowMeta {
    /// The tunnel's name.
    pub tunnel: String,
    /// The visitor's address; answers go back to it.
    pub visitor_addr: SocketAddr,
    /// The flow's id, carried by its first datagram so the client needs no round trip.
    pub flow: u64,
}

/// One flow's datagram path to the client. Sending never waits: a datagram the path cannot
/// take now is dropped and the reason returned, so one slow flow never blocks another.
#[async_trait]
pub trait DatagramFlow: Send + Sync {
    /// Hands one datagram towards the client's target, or says why it was dropped.
    fn send(&self, datagram: Bytes) -> Result<(), DatagramDrop>;
    /// The next answer from the target; `None` once the flow is closed.
    async fn recv(&self) -> Option<Bytes>;
    /// Largest datagram this path carries whole; larger ones are dropped, never truncated.
    fn max_datagram(&self) -> usize;
}

/// "Open a datagram flow to this session": the UDP counterpart of [`StreamOpener`].
#[async_trait]
pub trait DatagramOpener: Send + Sync + 'static {
    /// Opens the flow `meta` names on this session's transport.
    async fn open_flow(&self, meta: &FlowMeta) -> Result<Box<dyn DatagramFlow>, OpenError>;
}
