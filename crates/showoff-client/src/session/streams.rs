//! The client's end of one stream: the server's `Dial` names the tunnel and the visitor, the
//! client dials the local target and answers `StreamReady` (raw bytes follow) or
//! `StreamError`, then splices the two. Mux and QUIC streams and warm-pool connections all
//! arrive this way; a `Dial` on the control connection is answered by dialling back instead
//! (see [`super::dialback`]). A `Dial` for a UDP tunnel makes the stream that tunnel's
//! datagram channel ([`super::udp`]).

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use showoff_core::TraceHeaders;
use showoff_core::trace::{Decision, TARGET};
use showoff_proto::{ClientMessage, HANDSHAKE_TIMEOUT, ServerMessage};
use tokio::io::AsyncWriteExt;
use tracing::field::Empty;
use tracing::{Instrument, debug};

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
    /// The server's pairing span, when it traces.
    pub(crate) trace: Option<TraceHeaders>,
    /// Spans are made for this stream (set by [`Dial::span`]).
    traced: bool,
}

impl Dial {
    /// The dial a frame asks for, if it is one.
    pub(crate) fn from_frame(frame: ServerMessage) -> Option<Self> {
        match frame {
            ServerMessage::Dial {
                id,
                tunnel,
                visitor_addr,
                traceparent,
                tracestate,
            } => Some(Self {
                id,
                tunnel,
                visitor_addr,
                trace: traceparent.map(|traceparent| TraceHeaders {
                    traceparent: traceparent.into(),
                    tracestate: tracestate.map(Into::into),
                }),
                traced: false,
            }),
            _ => None,
        }
    }

    /// The stream's span (`SERVER`), a child of the server's pairing span when the server
    /// sent one; [`tracing::Span::none`] when tracing is off or the trace is not sampled (the
    /// server's decision, or the client's ratio for a stream the server did not trace).
    pub(crate) fn span(&mut self, ctx: &Ctx) -> tracing::Span {
        self.traced = ctx
            .trace
            .is_some_and(|ratio| Decision::follow(self.trace.as_ref(), ratio).sampled());
        if !self.traced {
            return tracing::Span::none();
        }
        let span = tracing::info_span!(
            target: TARGET,
            "showoff.client.stream",
            otel.kind = "server",
            otel.status_code = Empty,
            showoff.tunnel = self.tunnel.as_str(),
            client.address = self.visitor_addr.as_str(),
            showoff.bytes_in = Empty,
            showoff.bytes_out = Empty,
            error.type = Empty,
        );
        if let Some(trace) = &self.trace {
            showoff_core::trace::join(&span, trace);
        }
        span
    }
}

/// Opens the target end of the dial's tunnel, in a `showoff.client.dial` span (`CLIENT`) when
/// tracing is on.
pub(crate) async fn dial_target(
    ctx: &Ctx,
    dial: &Dial,
) -> Result<crate::target::TargetStream, String> {
    let target = ctx
        .targets
        .get(&dial.tunnel)
        .ok_or_else(|| format!("unknown tunnel {:?}", dial.tunnel))?;
    let visitor = dial.visitor_addr.parse().ok();
    if !dial.traced {
        return target.open(visitor).await;
    }
    let span = tracing::info_span!(
        target: TARGET,
        "showoff.client.dial",
        otel.kind = "client",
        otel.status_code = Empty,
        server.address = target.address(),
        error.type = Empty,
    );
    let opened = target.open(visitor).instrument(span.clone()).await;
    if let Err(reason) = &opened {
        span.record("otel.status_code", "error");
        span.record("error.type", reason.as_str());
        tracing::Span::current().record("otel.status_code", "error");
        tracing::Span::current().record("error.type", "target_unreachable");
    }
    opened
}

/// Serves a stream the server opened (mux, QUIC): reads its `Dial` within the handshake
/// deadline, then answers it.
pub(crate) async fn serve_opened(ctx: Arc<Ctx>, stream: ServerStream) {
    let mut conn = super::framed(stream);
    let frame = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.next()).await;
    let Ok(Some(Ok(frame))) = frame else {
        return debug!("a stream from the server carried no dial");
    };
    let Some(mut dial) = Dial::from_frame(frame) else {
        return debug!("a stream from the server did not start with a dial");
    };
    let span = dial.span(&ctx);
    answer(ctx, conn, dial, None).instrument(span).await;
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

/// Copies both ways until both directions are done; the byte counts go to the current span.
pub(crate) async fn splice(data: &mut ServerStream, target: &mut crate::target::TargetStream) {
    match tokio::io::copy_bidirectional_with_sizes(data, target, SPLICE_BUF, SPLICE_BUF).await {
        Ok((to_target, from_target)) => {
            let span = tracing::Span::current();
            span.record("showoff.bytes_in", showoff_core::trace::int(to_target));
            span.record("showoff.bytes_out", showoff_core::trace::int(from_target));
        }
        Err(error) => debug!(%error, "stream ended"),
    }
}
