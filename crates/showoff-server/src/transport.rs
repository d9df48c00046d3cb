//! How the server gets a byte stream to a client. The interface ([`StreamOpener`]) and the
//! stream it yields ([`TunnelStream`]) live in `showoff-core`, shared with the client; this
//! layer holds the server side of each transport, one module each:
//!
//! - [`dialback`]: the client dials one data connection per stream, taken from a warm pool of
//!   pre-dialled connections when one is idle, else requested with `Dial` on the control link;
//! - [`mux`]: yamux streams over the control connection itself;
//! - [`quic`]: one QUIC stream per tunnel stream, on the UDP listener;
//! - [`datagrams`]: UDP tunnels' datagrams, as QUIC DATAGRAM frames or on a datagram channel.
//!
//! Mux and QUIC open a stream the same way ([`announce`]): `Dial` written on the new stream,
//! `StreamReady` or `StreamError` read back on it.

pub(crate) mod datagrams;
pub(crate) mod dialback;
pub(crate) mod mux;
pub(crate) mod quic;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use showoff_proto::{ClientMessage, FrameCodec, ServerMessage};
use tokio_util::codec::Framed;

pub use showoff_core::{
    OpenError, Prefixed, SPLICE_BUF, StreamIo, StreamMeta, StreamOpener, TunnelStream, splice,
};

/// Writes `Dial` on a stream just opened to the client and waits, within `deadline`, for its
/// answer: the stream (bytes the client sent after `StreamReady` kept) or why not.
pub(crate) async fn announce(
    stream: TunnelStream,
    meta: &StreamMeta,
    deadline: Duration,
) -> Result<TunnelStream, OpenError> {
    let codec = FrameCodec::<ClientMessage, ServerMessage>::new();
    let mut framed = Framed::with_capacity(stream, codec, 256);
    let id = showoff_proto::id::random_id();
    let dial = ServerMessage::Dial {
        id: id.clone(),
        tunnel: meta.tunnel.clone(),
        visitor_addr: meta.visitor_addr.to_string(),
        traceparent: meta.trace.as_ref().map(|t| t.traceparent.as_str().into()),
        tracestate: meta
            .trace
            .as_ref()
            .and_then(|t| t.tracestate.as_deref().map(Into::into)),
    };
    let exchange = async {
        framed.send(dial).await.map_err(|_| OpenError::ClientGone)?;
        framed.next().await.ok_or(OpenError::ClientGone)
    };
    let reply = match tokio::time::timeout(deadline, exchange).await {
        Err(_) => return Err(OpenError::Timeout),
        Ok(Err(error)) => return Err(error),
        Ok(Ok(reply)) => reply,
    };
    match reply {
        Ok(ClientMessage::StreamReady { id: got }) if got == id => {
            let parts = framed.into_parts();
            Ok(parts.io.unread(parts.read_buf))
        }
        Ok(ClientMessage::StreamError { reason, .. }) => Err(OpenError::TargetUnreachable(reason)),
        // Garbled or out of turn: the client cannot be serving this stream.
        _ => Err(OpenError::ClientGone),
    }
}

/// Which transport carries one session's streams, with what each needs at the session's end.
#[derive(Clone)]
pub(crate) enum Link {
    /// Dial-back data connections (the session's `DialBackGuard` holds the opener).
    DialBack,
    /// Yamux streams over the control connection.
    Mux(std::sync::Arc<mux::MuxLink>),
    /// QUIC streams on the session's QUIC connection.
    Quic(std::sync::Arc<quic::QuicLink>),
}

impl Link {
    /// The transport's name, for `Welcome`, metrics and the admin API.
    pub(crate) fn kind(&self) -> showoff_proto::TransportKind {
        match self {
            Self::DialBack => showoff_proto::TransportKind::Tcp,
            Self::Mux(_) => showoff_proto::TransportKind::Mux,
            Self::Quic(_) => showoff_proto::TransportKind::Quic,
        }
    }

    /// The opener of a session on this link; dial-back's comes from its guard.
    pub(crate) fn opener(
        &self,
        dialback: std::sync::Arc<dialback::DialBack>,
    ) -> std::sync::Arc<dyn StreamOpener> {
        match self {
            Self::DialBack => dialback,
            Self::Mux(link) => link.clone(),
            Self::Quic(link) => link.clone(),
        }
    }

    /// Bytes received on the session's connection, where the transport counts them: a session
    /// that receives anything is alive even when a heartbeat is late behind bulk data.
    pub(crate) fn received(&self) -> Option<u64> {
        match self {
            Self::DialBack => None,
            Self::Mux(link) => Some(link.received()),
            Self::Quic(link) => Some(link.received()),
        }
    }

    /// The datagram path of a UDP tunnel of this session, in `slot`: QUIC DATAGRAM frames on
    /// a QUIC session, else a datagram channel through `opener` until `closed`.
    pub(crate) fn datagram_path(
        &self,
        opener: std::sync::Arc<dyn StreamOpener>,
        tunnel: &str,
        slot: u8,
        closed: tokio_util::sync::CancellationToken,
        stats: std::sync::Arc<crate::stats::Stats>,
    ) -> datagrams::DatagramPath {
        match self {
            Self::Quic(link) => link.datagram_path(slot, stats),
            Self::DialBack | Self::Mux(_) => {
                datagrams::channel(opener, tunnel.to_string(), slot, closed, stats)
            }
        }
    }

    /// The session ended: no more streams; the connection goes with its last stream.
    pub(crate) fn finish(&self) {
        match self {
            // A QUIC connection closes when its last handle and stream are gone.
            Self::DialBack | Self::Quic(_) => {}
            Self::Mux(link) => link.finish(),
        }
    }
}
