//! The dial-back transport, client side. A `Dial` on the control connection is answered by
//! dialling the target, then a data connection carrying `DataHello { id }`; a `Dial` on one of
//! the warm-pool data connections is answered on that connection ([`super::streams::answer`]).
//! Every pool slot re-dials as soon as its connection is taken, so the pool stays full.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use showoff_proto::{ClientMessage, PROTOCOL_VERSION, Role};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug};

use super::streams::{Dial, answer, dial_target, splice};
use super::{Conn, Ctx, framed};

/// Pause before a pool slot re-dials after a failure.
const POOL_RETRY: Duration = Duration::from_secs(1);

/// Answers a `Dial` from the control connection: target first, then the data connection.
pub(crate) async fn serve_dial(ctx: Arc<Ctx>, mut dial: Dial) {
    let span = dial.span(&ctx);
    relay_dial(ctx, dial).instrument(span).await;
}

async fn relay_dial(ctx: Arc<Ctx>, dial: Dial) {
    if let Some(target) = ctx.udp.targets.get(&dial.tunnel).cloned() {
        // A UDP tunnel's datagram channel: no target to dial first.
        let parts = match open_data(&ctx, Some(dial.id)).await {
            Ok(conn) => conn.into_parts(),
            Err(error) => return debug!(%error, "data connection failed"),
        };
        let (udp, stop) = (&ctx.udp, &ctx.stop);
        return super::udp::serve_channel(udp, target, parts.io, parts.read_buf, stop).await;
    }
    let mut target = match dial_target(&ctx, &dial).await {
        Ok(target) => target,
        Err(reason) => {
            debug!(tunnel = dial.tunnel, reason, "local target unreachable");
            let id = dial.id;
            let _ = ctx
                .control
                .send(ClientMessage::StreamError { id, reason })
                .await;
            return;
        }
    };
    let mut data = match open_data(&ctx, Some(dial.id)).await {
        Ok(conn) => conn.into_parts().io,
        Err(error) => return debug!(%error, "data connection failed"),
    };
    splice(&mut data, &mut target).await;
}

/// Dials the data listener and introduces the connection.
async fn open_data(ctx: &Ctx, id: Option<String>) -> Result<Conn, String> {
    let stream = ctx.transport.dial(&ctx.data_addr).await?;
    let mut conn = framed(stream);
    let hello = ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Data,
        transport: Default::default(),
    };
    let data_hello = ClientMessage::DataHello {
        session: ctx.session.clone(),
        key: ctx.key.clone(),
        id,
    };
    conn.feed(hello).await.map_err(|e| e.to_string())?;
    conn.send(data_hello).await.map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Keeps one warm-pool connection dialled for as long as the session lives.
pub(crate) async fn pool_slot(ctx: Arc<Ctx>, stop: CancellationToken, streams: TaskTracker) {
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            conn = open_data(&ctx, None) => conn,
        };
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(error) => {
                debug!(error, "warm pool dial failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(POOL_RETRY) => continue,
                }
            }
        };
        let frame = tokio::select! {
            _ = stop.cancelled() => return,
            frame = conn.next() => frame,
        };
        match frame.and_then(Result::ok).and_then(Dial::from_frame) {
            Some(mut dial) => {
                // Re-dial only once this stream is set up: the replacement's connect and
                // handshake would otherwise compete with the visitor's first bytes.
                let (set_up, wait) = tokio::sync::oneshot::channel();
                let span = dial.span(&ctx);
                streams.spawn(answer(ctx.clone(), conn, dial, Some(set_up)).instrument(span));
                let _ = wait.await;
            }
            // Closed by the server (pool full, session gone) or nonsense: wait, then re-dial.
            None => tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POOL_RETRY) => {}
            },
        }
    }
}
