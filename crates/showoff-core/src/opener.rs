//! The transport seams: how a server gets a byte stream ([`StreamOpener`]) or a UDP tunnel's
//! datagrams ([`DatagramLink`]) to one client. Edges only ever call these; which transport
//! stands behind them (dial-back, mux or QUIC) is the session's business, and each transport
//! is one file per side implementing them.

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
    /// The trace context of the span that asks for the stream, when tracing is on; sent in
    /// the stream-open message so the client's span joins the trace.
    pub trace: Option<crate::TraceHeaders>,
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

/// One UDP tunnel's datagram path to its client: the UDP counterpart of [`StreamOpener`]. A
/// QUIC session sends DATAGRAM frames; mux and dial-back sessions queue datagrams for the
/// tunnel's datagram channel stream ([`crate::DatagramQueue`]). Sending never waits: a datagram
/// the path cannot take now is dropped and the reason returned, so one flow never holds up
/// another. Answers come back through the tunnel's own dispatch, not through this trait.
pub trait DatagramLink: Send + Sync + 'static {
    /// Hands one encoded datagram towards the client, or says why it was dropped.
    fn send(&self, datagram: Bytes) -> Result<(), DatagramDrop>;
    /// Largest encoded datagram the path carries whole now; larger ones are dropped, never
    /// truncated.
    fn max_datagram(&self) -> usize;
}
