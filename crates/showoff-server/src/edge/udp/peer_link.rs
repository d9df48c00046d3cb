//! The holder's end of a peer link for a UDP tunnel: another instance of the cluster listens
//! on this tunnel's public port too and sends what its visitors sent, framed
//! ([`crate::edge::peer::datagrams`]), over one stream per mirrored port. Each datagram goes
//! into the tunnel's relay task as a visitor's datagram (same rules, caps and flows), with
//! the way back: the relay answers such a flow over the link, not from its own socket.
//! Queues are bounded and lossy, as everywhere on the UDP path.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use crate::edge::EdgeContext;
use crate::edge::peer::datagrams;
use crate::state::Tunnel;

/// Datagrams from all peer links of one tunnel waiting for its relay task.
pub(super) const INBOX: usize = 4096;
/// Answers waiting to go back over one link.
const REPLIES: usize = 1024;

/// Where answers for one peer link's visitors go.
pub(crate) type Replies = mpsc::Sender<(SocketAddr, Bytes)>;

/// A datagram a visitor sent to another instance.
pub(crate) struct PeerDatagram {
    pub(crate) visitor: SocketAddr,
    pub(crate) payload: Bytes,
    /// The link it came over.
    pub(crate) reply: Replies,
}

/// The tunnel's relay task takes peer datagrams here (its edge state, set when it starts).
#[derive(Default)]
pub(crate) struct PeerInbox(pub(super) OnceLock<mpsc::Sender<PeerDatagram>>);

impl PeerInbox {
    fn sender(&self) -> Option<&mpsc::Sender<PeerDatagram>> {
        self.0.get().filter(|tx| !tx.is_closed())
    }
}

/// Whether `tunnel`'s relay takes datagrams from peer links now.
pub(crate) fn takes_peer_links(tunnel: &Tunnel) -> bool {
    tunnel
        .edge_state::<PeerInbox>()
        .and_then(PeerInbox::sender)
        .is_some()
}

/// Carries one peer link's datagrams both ways until either side ends it or the tunnel
/// closes.
pub(crate) async fn serve_peer_link<S: AsyncRead + AsyncWrite + Unpin>(
    link: S,
    rest: BytesMut,
    tunnel: Arc<Tunnel>,
    ctx: &EdgeContext,
) {
    let Some(inbox) = tunnel
        .edge_state::<PeerInbox>()
        .and_then(PeerInbox::sender)
        .cloned()
    else {
        return;
    };
    let (replies, mut answers) = mpsc::channel(REPLIES);
    let (mut from, mut to) = tokio::io::split(link);
    let inbound = async {
        let mut buf = rest;
        loop {
            loop {
                match datagrams::decode(&mut buf) {
                    Ok(Some((visitor, payload))) => {
                        let datagram = PeerDatagram {
                            visitor,
                            payload,
                            reply: replies.clone(),
                        };
                        if inbox.try_send(datagram).is_err() {
                            ctx.stats.udp.dropped("queue_full");
                        }
                    }
                    Ok(None) => break,
                    Err(error) => return debug!(%error, "peer link ended"),
                }
            }
            buf.reserve(64 * 1024);
            match from.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let outbound = async {
        let mut out = BytesMut::new();
        while let Some((visitor, payload)) = answers.recv().await {
            out.clear();
            if datagrams::encode(visitor, &payload, &mut out).is_err() {
                continue;
            }
            if to.write_all(&out).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = inbound => {}
        _ = outbound => {}
        _ = tunnel.closed.cancelled() => {}
        _ = ctx.drain.stopping().cancelled() => {}
    }
}
