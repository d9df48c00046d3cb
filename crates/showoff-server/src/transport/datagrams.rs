//! How a UDP tunnel's datagrams reach its client and its answers come back: a
//! [`DatagramPath`]. On QUIC the session's connection carries them as DATAGRAM frames
//! ([`super::quic::QuicLink::datagram_path`]); on mux and dial-back a *datagram channel* does:
//! one stream per UDP tunnel, opened like a visitor's stream (`Dial` naming the tunnel), that
//! carries length-prefixed datagrams both ways ([`channel`]).
//!
//! The channel's outbound side is a bounded, lossy [`DatagramQueue`]: a datagram the stream
//! cannot take now is dropped and counted, never waited for, so one slow flow cannot hold up
//! the others. A channel that breaks while its tunnel lives is opened again; the client
//! answers datagrams of flows it no longer knows with `close`, and those flows open afresh.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use showoff_core::{
    ChannelEnd, DatagramLink, DatagramQueue, OpenError, StreamMeta, StreamOpener, carry_channel,
};
use showoff_proto::datagram::Datagram;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::stats::Stats;

/// Answers waiting for their tunnel's relay task; past it they are dropped (`queue_full`).
pub(crate) const ANSWER_QUEUE: usize = 4_096;
/// First pause before a broken channel is opened again; doubled up to [`REOPEN_MAX`].
const REOPEN_MIN: Duration = Duration::from_millis(100);
const REOPEN_MAX: Duration = Duration::from_secs(5);

/// One UDP tunnel's two directions: `link` towards the client, `answers` back from it.
pub(crate) struct DatagramPath {
    /// Takes encoded datagrams towards the client; never waits.
    pub(crate) link: Arc<dyn DatagramLink>,
    /// The client's datagrams for this tunnel (answers and closes), decoded.
    pub(crate) answers: mpsc::Receiver<Datagram>,
    /// The tunnel's slot in its session: the low byte of its flow ids, by which answers that
    /// share one connection (QUIC) find their tunnel.
    pub(crate) slot: u8,
}

/// A datagram channel for `tunnel` through `opener`, kept open until `closed`.
pub(crate) fn channel(
    opener: Arc<dyn StreamOpener>,
    tunnel: String,
    slot: u8,
    closed: CancellationToken,
    stats: Arc<Stats>,
) -> DatagramPath {
    let queue = Arc::new(DatagramQueue::for_channel());
    let (tx, answers) = mpsc::channel(ANSWER_QUEUE);
    let channel = Channel {
        opener,
        meta: StreamMeta {
            tunnel,
            visitor_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            trace: None,
        },
        queue: queue.clone(),
        answers: tx,
        stats,
    };
    tokio::spawn(channel.run(closed));
    DatagramPath {
        link: queue,
        answers,
        slot,
    }
}

struct Channel {
    opener: Arc<dyn StreamOpener>,
    meta: StreamMeta,
    queue: Arc<DatagramQueue>,
    answers: mpsc::Sender<Datagram>,
    stats: Arc<Stats>,
}

impl Channel {
    /// Opens the channel stream, carries it, opens it again when it breaks, until `closed`
    /// or the client is gone.
    async fn run(self, closed: CancellationToken) {
        let mut pause = REOPEN_MIN;
        loop {
            let opened = tokio::select! {
                _ = closed.cancelled() => break,
                opened = self.opener.open(&self.meta) => opened,
            };
            match opened {
                Ok(stream) => {
                    pause = REOPEN_MIN;
                    tokio::select! {
                        _ = closed.cancelled() => break,
                        end = self.carry(stream) => debug!(tunnel = %self.meta.tunnel, %end, "datagram channel ended"),
                    }
                }
                Err(OpenError::ClientGone) => break,
                Err(error) => {
                    debug!(tunnel = %self.meta.tunnel, %error, "datagram channel not opened")
                }
            }
            tokio::select! {
                _ = closed.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(REOPEN_MAX);
        }
        self.queue.close();
    }

    /// Moves datagrams both ways on one stream until it fails or the tunnel closes.
    async fn carry(&self, stream: showoff_core::TunnelStream) -> ChannelEnd {
        let stats = &self.stats;
        let deliver = |datagram| {
            if self.answers.try_send(datagram).is_err() {
                stats.udp.dropped("queue_full");
            }
        };
        let end = carry_channel(stream, BytesMut::new(), &self.queue, deliver).await;
        if let ChannelEnd::Bad(_) = end {
            stats.udp.dropped("malformed");
        }
        end
    }
}
