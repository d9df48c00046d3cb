//! The QUIC listener's accept loop: each connection's TLS 1.3 handshake (client certificates
//! checked as on the control listener), its first stream as the control stream, then the same
//! session handling as TCP ([`super::handshake::serve_stream`]) with the connection as the
//! session's [`Link::Quic`](crate::transport::Link). New connections stop when the server
//! drains; established ones run until their sessions end.

use std::sync::Arc;
use std::time::Duration;

use showoff_proto::HANDSHAKE_TIMEOUT;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info};

use super::ControlContext;
use super::handshake::serve_stream;
use crate::transport::Link;
use crate::transport::quic::QuicLink;

/// How long a refused connection is kept for its refusal to reach the client.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// How long a stopping server waits for its QUIC connections' close to be acknowledged.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Accepts QUIC connections on `endpoint` until `draining`, each served in `tasks`.
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    draining: CancellationToken,
    stopping: CancellationToken,
    tasks: TaskTracker,
    ctx: Arc<ControlContext>,
) {
    loop {
        let incoming = tokio::select! {
            _ = draining.cancelled() => break,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        let peer = incoming.remote_address();
        let span = tracing::info_span!("session", %peer, transport = "quic", session = tracing::field::Empty, principal = tracing::field::Empty);
        tasks.spawn(serve_connection(incoming, ctx.clone()).instrument(span));
    }
    // Draining: new connections are refused, sessions carry on until the server stops.
    endpoint.set_server_config(None);
    stopping.cancelled().await;
    endpoint.close(0u32.into(), b"server stopped");
    // Clients hear the close; the socket is given back once the endpoint is idle, so a
    // restarted server can bind the same port.
    let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
}

async fn serve_connection(incoming: quinn::Incoming, ctx: Arc<ControlContext>) {
    let peer = incoming.remote_address();
    let connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            info!(%peer, %error, "QUIC connection failed its handshake");
            return ctx.stats.session_refused("quic_handshake");
        }
        Err(_) => {
            info!(%peer, "QUIC handshake timed out");
            return ctx.stats.session_refused("quic_handshake");
        }
    };
    let certificate = connection
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| chain.first().and_then(crate::tls::identity));
    let control = tokio::time::timeout(HANDSHAKE_TIMEOUT, connection.accept_bi()).await;
    let Ok(Ok((send, recv))) = control else {
        return info!(%peer, "QUIC connection opened no control stream in time");
    };
    let stream = showoff_core::quic::stream(send, recv);
    let link = Link::Quic(QuicLink::new(
        connection.clone(),
        ctx.dialback.pending_timeout(),
    ));
    let welcomed = serve_stream(
        stream,
        peer,
        certificate.as_deref(),
        Some(link),
        ctx.clone(),
    )
    .await;
    // Closing now would drop what is still unsent: the refusal, or the streams that outlive a
    // replaced session. A refused client closes once it read why (or is closed after a
    // moment); a session's connection stays until the client closes it or the server stops.
    let linger = if welcomed {
        Duration::MAX
    } else {
        REFUSAL_LINGER
    };
    tokio::select! {
        _ = connection.closed() => {}
        _ = ctx.drain.stopping().cancelled() => {}
        _ = tokio::time::sleep(linger) => {}
    }
    connection.close(0u32.into(), b"session ended");
}
