//! The edges' spans, made only when tracing is on (otherwise [`Span::none`], which costs
//! nothing to enter or record on). Names, kinds and attributes are listed in
//! `docs/operations.md` ("Tracing"); the trace context between hops is
//! [`showoff_core::trace`]'s.
//!
//! Fields declared `Empty` are recorded later by whoever learns them (the route, the status,
//! the transport's pool), through `Span::current()` or the span itself.

use std::net::SocketAddr;

use showoff_core::trace::{self, Decision, TARGET};
use showoff_core::{OpenError, StreamMeta, TunnelStream};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::EdgeSettings;
use super::error::EdgeError;
use crate::state::Tunnel;

/// One visitor HTTP request (`SERVER`), and how the request is traced. The decision is taken
/// here: a trusted visitor's `traceparent` decides (and becomes the parent), anyone else's
/// request is sampled at the configured ratio (and links to theirs). An unsampled request
/// makes no span. A sampled one records its trace id for the logs.
pub(crate) fn request(
    settings: &EdgeSettings,
    head: &super::http::head::RequestHead,
    peer: SocketAddr,
    scheme: &'static str,
    peer_hop: bool,
) -> (Span, Decision) {
    if !settings.trace.enabled {
        return (Span::none(), Decision::Off);
    }
    let remote = trace::remote(&head.headers);
    // A request another instance forwarded carries that instance's span: always continued.
    let trusted = peer_hop || settings.trace.trusts(peer.ip(), &settings.proxy);
    let decision = Decision::root(settings.trace.sample, remote.as_ref().filter(|_| trusted));
    if !decision.sampled() {
        return (Span::none(), decision);
    }
    let span = tracing::info_span!(
        target: TARGET,
        "http.request",
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = head.method.as_str(),
        url.path = head.target.as_str(),
        url.scheme = scheme,
        server.address = head.host.name.as_str(),
        client.address = %peer.ip(),
        showoff.tunnel = Empty,
        http.response.status_code = Empty,
        showoff.error = Empty,
        trace_id = Empty,
    );
    trace::adopt(&span, remote, trusted);
    if let Some(id) = trace::trace_id(&span) {
        span.record("trace_id", id.as_str());
    }
    (span, decision)
}

/// The exchange with the target through the tunnel (`CLIENT`): its context is what the
/// target receives in `traceparent`.
pub(crate) fn upstream(decision: &Decision, tunnel: &str) -> Span {
    if !decision.sampled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "showoff.upstream",
        otel.kind = "client",
        otel.status_code = Empty,
        showoff.tunnel = tunnel,
        showoff.upstream.reused = Empty,
        http.response.status_code = Empty,
        showoff.error = Empty,
    )
}

/// Pairing: asks the tunnel's client for a stream, in a `showoff.stream.open` span when the
/// work is sampled (the transport records which it is and whether its warm pool had a
/// connection). The open message carries the decision's trace context: the pairing span's, or
/// the unsampled headers.
pub(crate) async fn open_stream(
    decision: &Decision,
    tunnel: &Tunnel,
    mut meta: StreamMeta,
) -> Result<TunnelStream, OpenError> {
    let span = if decision.sampled() {
        tracing::info_span!(
            target: TARGET,
            "showoff.stream.open",
            otel.status_code = Empty,
            showoff.tunnel = tunnel.info.name.as_str(),
            showoff.transport = Empty,
            showoff.warm_pool = Empty,
            error.type = Empty,
        )
    } else {
        Span::none()
    };
    meta.trace = decision.headers(&span);
    let opened = tunnel.opener.open(&meta).instrument(span.clone()).await;
    if let Err(error) = &opened {
        span.record("otel.status_code", "error");
        span.record("error.type", EdgeError::Open(error.clone()).code());
    }
    opened
}

/// One hop to the cluster instance holding the tunnel (`CLIENT`).
pub(crate) fn forward(decision: &Decision, tunnel: &str) -> Span {
    if !decision.sampled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "showoff.forward",
        otel.kind = "client",
        otel.status_code = Empty,
        showoff.tunnel = tunnel,
        server.address = Empty,
        http.response.status_code = Empty,
        showoff.error = Empty,
    )
}

/// One visitor connection of a TCP or TLS-passthrough tunnel (`SERVER`), from accept to close.
pub(crate) fn connection(
    settings: &EdgeSettings,
    protocol: &'static str,
    tunnel: &str,
    peer: SocketAddr,
) -> (Span, Decision) {
    if !settings.trace.enabled {
        return (Span::none(), Decision::Off);
    }
    let decision = Decision::root(settings.trace.sample, None);
    if !decision.sampled() {
        return (Span::none(), decision);
    }
    let span = tracing::info_span!(
        target: TARGET,
        "showoff.connection",
        otel.kind = "server",
        otel.status_code = Empty,
        network.transport = "tcp",
        showoff.protocol = protocol,
        showoff.tunnel = tunnel,
        client.address = %peer.ip(),
        client.port = i64::from(peer.port()),
        showoff.bytes_in = Empty,
        showoff.bytes_out = Empty,
        showoff.error = Empty,
    );
    (span, decision)
}

/// One UDP flow (`SERVER`): a visitor address on a UDP tunnel, from its first datagram to
/// its end (idle, the client's close, the tunnel's). The caller makes it only when tracing is
/// on and the flow is sampled ([`Decision::root`]), and keeps it beside the flow.
pub(crate) fn flow(tunnel: &str, visitor: SocketAddr, id: u64) -> Span {
    tracing::info_span!(
        target: TARGET,
        "showoff.flow",
        otel.kind = "server",
        network.transport = "udp",
        showoff.tunnel = tunnel,
        showoff.flow = trace::int(id),
        client.address = %visitor.ip(),
        client.port = i64::from(visitor.port()),
        showoff.bytes_in = Empty,
        showoff.bytes_out = Empty,
        showoff.end_reason = Empty,
    )
}

/// Records the status a response had on `span`; a 5xx marks it failed.
pub(crate) fn responded(span: &Span, status: u16) {
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
}

/// Marks `span` failed with Showoff's error code.
pub(crate) fn failed(span: &Span, code: &str) {
    span.record("otel.status_code", "error");
    span.record("showoff.error", code);
}
