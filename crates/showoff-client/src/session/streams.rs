//! The client's end of one stream: the server's `Dial` names the tunnel and the visitor, the
//! client dials the local target and answers `StreamReady` (raw bytes follow) or
//! `StreamError`, then splices the two. Mux and QUIC streams and warm-pool connections all
//! arrive this way; a `Dial` on the control connection is answered by dialling back instead
//! (see [`super::dialback`]). A `Dial` for a UDP tunnel makes the stream that tunnel's
//! datagram channel ([`super::udp`]).

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use showoff_proto::{ClientMessage, HANDSHAKE_TIMEOUT, ServerMessage};
use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::{Conn, Ctx};
use crate::transport::ServerStream;

/// Buffer per direction when splicing a data connection with the target. 64 KiB was measured
/// slower for short connections and no faster for 1 MiB bodies (docs/benchmarks.md).
pub(crate) const SPLICE_BUF: usize = 8 * 1024;

/// A stream the server asked for.
pub(crate) struct Dial {
    pub(crate) id: String,
    pub(crate) tunnel: String,
    pub(crate) visitor_addr: String,
}

impl Dial {
    /// The dial a frame asks for, if it is one.
    pub(crate) fn from_frame(frame: ServerMessage) -> Option<Self> {
        match frame {
            ServerMessage::Dial {
                id,
                tunnel,
                visitor_addr,
            } => Some(Self {
                id,
                tunnel,
                visitor_addr,
            }),
            _ => None,
        }
    }
}

/// Opens the target end of the dial's tunnel.
pub(crate) async fn dial_target(
    ctx: &Ctx,
    dial: &Dial,
) -> Result<crate::target::TargetStream, String> {
    let target = ctx
        .targets
        .get(&dial.tunnel)
        .ok_or_else(|| format!("unknown tunnel {:?}", dial.tunnel))?;
    target.open(dial.visitor_addr.parse().ok()).await
}

/// Serves a stream the server opened (mux, QUIC): reads its `Dial` within the handshake
/// deadline, then answers it.
pub(crate) async fn serve_opened(ctx: Arc<Ctx>, stream: ServerStream) {
    let mut conn = super::framed(stream);
    let frame = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.next()).await;
    let Ok(Some(Ok(frame))) = frame else {
        return debug!("a stream from the server carried no dial");
    };
    let Some(dial) = Dial::from_frame(frame) else {
        return debug!("a stream from the server did not start with a dial");
    };
    answer(ctx, conn, dial, None).await;
}

/// Answers a `Dial` that arrived on `conn` itself: target, `StreamReady` or `StreamError`,
/// splice. `set_up` hears when the stream is set up (a warm-pool slot then re-dials).
pub(crate) async fn answer(
    ctx: Arc<Ctx>,
    mut conn: Conn,
    dial: Dial,
    set_up: Option<tokio::sync::oneshot::Sender<()>>,
) {
    if let Some(target) = ctx.udp.targets.get(&dial.tunnel).cloned() {
        return answer_channel(ctx, conn, dial, set_up, target).await;
    }
    let mut target = match dial_target(&ctx, &dial).await {
        Ok(target) => target,
        Err(reason) => {
            debug!(tunnel = dial.tunnel, reason, "local target unreachable");
            let id = dial.id;
            let _ = conn.send(ClientMessage::StreamError { id, reason }).await;
            return;
        }
    };
    if !ready(&mut conn, dial.id, set_up).await {
        return;
    }
    let parts = conn.into_parts();
    let mut data = parts.io;
    if !parts.read_buf.is_empty() && target.write_all(&parts.read_buf).await.is_err() {
        return;
    }
    splice(&mut data, &mut target).await;
}

/// Answers a UDP tunnel's `Dial`: the stream is its datagram channel. There is no target to
/// dial first (each flow opens its own socket), so it is ready at once.
async fn answer_channel(
    ctx: Arc<Ctx>,
    mut conn: Conn,
    dial: Dial,
    set_up: Option<tokio::sync::oneshot::Sender<()>>,
    target: Arc<super::udp::UdpTarget>,
) {
    if !ready(&mut conn, dial.id, set_up).await {
        return;
    }
    let parts = conn.into_parts();
    super::udp::serve_channel(&ctx.udp, target, parts.io, parts.read_buf, &ctx.stop).await;
}

/// Answers `StreamReady` for stream `id` and tells `set_up` (a warm-pool slot then re-dials);
/// whether the answer was sent.
async fn ready(
    conn: &mut Conn,
    id: String,
    set_up: Option<tokio::sync::oneshot::Sender<()>>,
) -> bool {
    let sent = conn.send(ClientMessage::StreamReady { id }).await;
    if let Some(set_up) = set_up {
        let _ = set_up.send(());
    }
    sent.is_ok()
}

/// Copies both ways until both directions are done.
pub(crate) async fn splice(data: &mut ServerStream, target: &mut crate::target::TargetStream) {
    if let Err(error) =
        tokio::io::copy_bidirectional_with_sizes(data, target, SPLICE_BUF, SPLICE_BUF).await
    {
        debug!(%error, "stream ended");
    }
}
