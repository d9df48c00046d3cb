//! One request to a tunnel whose target speaks HTTP/2, relayed as an HTTP/2 stream of the
//! tunnel's connection ([`super::upstream`]): the per-request rules first (the same as on
//! HTTP/1.1, [`crate::edge::http::gate`]), then the request with its headers restated for the
//! target, and the response as it comes.
//!
//! Bodies are streamed frame by frame both ways, trailers included (gRPC's `grpc-status` and
//! metadata), and hyper honours each side's flow-control window: a slow reader on one side
//! slows the sender on the other, and nothing is buffered beyond the windows. A stream reset
//! on either side ends the other: a visitor that cancels drops the upstream response, which
//! resets the target's stream; a target's reset fails the visitor's body, which resets the
//! visitor's stream.
//!
//! The exchange is reported once, when its response body ends or is dropped, with the bytes
//! that crossed and the status.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use showoff_core::trace::Decision;
use showoff_core::{Exchange, HttpExchange, Protocol, StreamMeta, TraceHeaders};
use showoff_proto::{HostHeader, TunnelSpec, Upstream};
use tokio::time::Instant;
use tracing::Instrument;

use super::upstream::{self, Route};
use crate::edge::EdgeContext;
use crate::edge::body::{Body, BoxError};
use crate::edge::error::EdgeError;
use crate::edge::forwarded::Forwarded;
use crate::edge::http::encode::NOT_FORWARDED;
use crate::edge::http::head::{RequestHead, connection_tokens};
use crate::edge::http::{Scheme, gate};
use crate::edge::pages;
use crate::edge::spans;
use crate::state::Tunnel;
use crate::state::tunnel::HeldSlot;

/// What became of a request.
pub(crate) enum Relayed<B> {
    /// The target's answer, or an error page.
    Answered(Response<Body>),
    /// The tunnel's target turned out to speak HTTP/1.1 (`auto`): the request, untouched, for
    /// the HTTP/1.1 way.
    Http1(Request<B>),
}

/// The per-request facts a failure is reported with.
struct Visit<'a> {
    ctx: &'a EdgeContext,
    peer: SocketAddr,
    host: String,
    tunnel: &'a Arc<Tunnel>,
    decision: Decision,
    grpc: bool,
}

impl Visit<'_> {
    fn fail<B>(&self, error: EdgeError) -> Relayed<B> {
        let tunnel = Some(self.tunnel.info.name.as_str());
        let (ctx, peer, host) = (self.ctx, self.peer, &self.host);
        let decision = &self.decision;
        Relayed::Answered(pages::refusal(
            ctx, peer, host, tunnel, decision, self.grpc, error,
        ))
    }
}

/// Relays one request to `tunnel`, whose target speaks (or may speak) HTTP/2.
pub(crate) async fn exchange<B>(
    request: Request<B>,
    peer: SocketAddr,
    scheme: Scheme,
    tunnel: Arc<Tunnel>,
    ctx: &EdgeContext,
    grpc: bool,
) -> Relayed<B>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    let head = RequestHead::of_request(&mut parts);
    let host = head
        .as_ref()
        .map_or_else(|_| String::new(), |head| head.host.name.clone());
    let mut visit = Visit {
        ctx,
        peer,
        host,
        tunnel: &tunnel,
        decision: Decision::Off,
        grpc,
    };
    let head = match head {
        Ok(head) => head,
        Err(error) => return visit.fail(EdgeError::Head(error)),
    };
    let (span, decision) = spans::request(
        &ctx.settings,
        &head,
        peer,
        scheme.as_str(),
        scheme == Scheme::Peer,
    );
    visit.decision = decision;
    // A failure is reported inside the request's span, which records its status and code.
    let visit = &visit;
    async move {
        match admitted(visit, scheme, head, parts, body).await {
            Ok(relayed) => relayed,
            Err(error) => visit.fail(error),
        }
    }
    .instrument(span)
    .await
}

/// The rules, then the relay.
async fn admitted<B>(
    visit: &Visit<'_>,
    scheme: Scheme,
    head: RequestHead,
    parts: http::request::Parts,
    body: B,
) -> Result<Relayed<B>, EdgeError>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let (ctx, tunnel) = (visit.ctx, visit.tunnel);
    let started = Instant::now();
    let forwarded = gate::forwarded_for(ctx, scheme, visit.peer.ip(), &head.headers)?;
    gate::admit(ctx, tunnel, &head.headers, &forwarded)?;
    if head.upgrade {
        return Err(EdgeError::UpgradeOverHttp2);
    }
    let slot = tunnel
        .held_visitor_slot(ctx.settings.visitor_caps, forwarded.visitor)
        .map_err(EdgeError::from)?;
    tunnel.touch();
    if visit.decision.sampled() {
        tracing::Span::current().record("showoff.tunnel", tunnel.info.name.as_str());
    }
    let meta = StreamMeta {
        tunnel: tunnel.info.name.clone(),
        visitor_addr: SocketAddr::new(forwarded.visitor, visit.peer.port()),
        trace: None,
    };
    let span = spans::upstream(&visit.decision, &tunnel.info.name);
    let routed = upstream::route(&visit.decision, tunnel, &meta)
        .instrument(span.clone())
        .await
        .inspect_err(|error| spans::failed(&span, error.code()))?;
    let connection = match routed {
        Route::Http2(connection) => connection,
        Route::Http1 => {
            // The fields go back where the HTTP/1.1 way reads them.
            let mut parts = parts;
            parts.headers = head.headers;
            return Ok(Relayed::Http1(Request::from_parts(parts, body)));
        }
    };
    let admitted = Admitted {
        head,
        forwarded,
        meta,
        slot,
        started,
    };
    relay(visit, admitted, span, connection, parts, body).await
}

/// What the rules let through, for the relay.
struct Admitted {
    head: RequestHead,
    forwarded: Forwarded,
    meta: StreamMeta,
    slot: HeldSlot,
    started: Instant,
}

/// The request to the target and its response back, under the upstream `span`.
async fn relay<B>(
    visit: &Visit<'_>,
    admitted: Admitted,
    span: tracing::Span,
    connection: upstream::Connection,
    parts: http::request::Parts,
    body: B,
) -> Result<Relayed<B>, EdgeError>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let (ctx, tunnel) = (visit.ctx, visit.tunnel);
    let Admitted {
        mut head,
        forwarded,
        meta,
        slot,
        started,
    } = admitted;
    let mut parts = parts;
    parts.headers = std::mem::take(&mut head.headers);
    let received = Arc::new(AtomicU64::new(0));
    let request = visit.decision.with_headers(&span, |trace| {
        upstream_request(&head, &tunnel.spec, &forwarded, trace, parts)
    });
    let body = body.map_err(Into::into).boxed();
    let request = request.map(|_| Metered::new(body, received.clone(), None).boxed());
    let wait = upstream::send(&visit.decision, tunnel, &meta, connection, request);
    let answered = if visit.grpc {
        // A call's deadline is its own (`grpc-timeout`, enforced by the target).
        wait.instrument(span.clone()).await
    } else {
        tokio::time::timeout(ctx.settings.io_idle_timeout, wait.instrument(span.clone()))
            .await
            .unwrap_or(Err(EdgeError::Open(showoff_core::OpenError::Timeout)))
    };
    let response = answered.inspect_err(|error| spans::failed(&span, error.code()))?;
    let status = response.status().as_u16();
    if visit.decision.sampled() {
        spans::responded(&span, status);
        spans::responded(&tracing::Span::current(), status);
    }
    let sent = Arc::new(AtomicU64::new(0));
    let report = Report {
        exchanges: ctx.exchanges.clone(),
        tunnel: tunnel.info.name.clone(),
        visitor: forwarded.visitor,
        host: head.host.name,
        method: head.method.to_string(),
        path: head.target,
        status,
        received,
        sent: sent.clone(),
        started,
        _slot: slot,
    };
    let (mut parts, body) = response.into_parts();
    strip_connection_fields(&mut parts.headers);
    let body = Metered::new(body, sent, Some(report));
    Ok(Relayed::Answered(Response::from_parts(parts, body.boxed())))
}

/// The request as the target gets it: the URI with the authority the tunnel's `Host` policy
/// names, hop-by-hop and connection-specific fields out (`te: trailers` kept, gRPC needs it),
/// `X-Forwarded-*` restated, the trace context replaced when tracing.
fn upstream_request(
    head: &RequestHead,
    spec: &TunnelSpec,
    forwarded: &Forwarded,
    trace: Option<&TraceHeaders>,
    mut parts: http::request::Parts,
) -> Request<()> {
    let authority = match &spec.host_header {
        HostHeader::Rewrite if !spec.target.is_empty() => spec.target.as_str(),
        HostHeader::Value(value) if !value.is_empty() => value.as_str(),
        _ => head.raw_host.to_str().unwrap_or(head.host.name.as_str()),
    };
    let scheme = if spec.upstream == Upstream::H2 {
        "https"
    } else {
        "http"
    };
    let uri = format!("{scheme}://{authority}{}", head.target);
    parts.uri = uri.parse::<Uri>().unwrap_or_else(|_| {
        let fallback = format!("{scheme}://{}{}", head.host.name, head.target);
        fallback.parse().unwrap_or_default()
    });
    parts.version = http::Version::HTTP_2;
    let headers = &mut parts.headers;
    next_hop_fields(headers);
    // Framing is HTTP/2's own, and `te` was settled by `next_hop_fields`.
    for name in &NOT_FORWARDED {
        if *name != header::CONTENT_LENGTH && *name != header::TE {
            headers.remove(name);
        }
    }
    if spec.visitors.basic_auth.is_some() {
        headers.remove(header::AUTHORIZATION);
    }
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    put("x-forwarded-for", &forwarded.chain);
    put("x-forwarded-proto", forwarded.proto);
    let forwarded_host = forwarded
        .host
        .clone()
        .unwrap_or_else(|| head.raw_host.to_str().unwrap_or_default().to_string());
    put("x-forwarded-host", &forwarded_host);
    if let Some(trace) = trace {
        put("traceparent", &trace.traceparent);
        match &trace.tracestate {
            Some(state) => put("tracestate", state),
            None => {
                headers.remove("tracestate");
            }
        }
    }
    Request::from_parts(parts, ())
}

/// A request's fields as the next HTTP/2 hop may get them: connection-specific ones out,
/// `te: trailers` kept (gRPC needs it).
pub(super) fn next_hop_fields(headers: &mut HeaderMap) {
    let trailers_wanted = headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_connection_fields(headers);
    if trailers_wanted {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes the fields HTTP/2 forbids (RFC 9113 §8.2.2) and those `Connection` names.
pub(super) fn strip_connection_fields(headers: &mut HeaderMap) {
    for token in connection_tokens(headers) {
        headers.remove(token.as_str());
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
    ] {
        headers.remove(name);
    }
}

/// What the exchange event says, once the response is done.
struct Report {
    exchanges: showoff_core::Exchanges,
    tunnel: String,
    visitor: std::net::IpAddr,
    host: String,
    method: String,
    path: String,
    status: u16,
    received: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    started: Instant,
    /// The visitor's place in the tunnel's caps, held until the response is done.
    _slot: HeldSlot,
}

impl Drop for Report {
    fn drop(&mut self) {
        self.exchanges.emit(&Exchange {
            protocol: Protocol::Http,
            tunnel: Some(&self.tunnel),
            visitor: self.visitor,
            http: Some(HttpExchange {
                host: &self.host,
                method: &self.method,
                path: &self.path,
            }),
            status: Some(self.status),
            error: None,
            bytes_in: self.received.load(Ordering::Relaxed),
            bytes_out: self.sent.load(Ordering::Relaxed),
            duration: self.started.elapsed(),
        });
    }
}

/// A body whose data bytes are counted as they pass; the response's also carries the report,
/// made when the body ends or is dropped (a reset, a visitor gone).
struct Metered<B> {
    inner: B,
    count: Arc<AtomicU64>,
    report: Option<Report>,
}

impl<B> Metered<B> {
    fn new(inner: B, count: Arc<AtomicU64>, report: Option<Report>) -> Self {
        Self {
            inner,
            count,
            report,
        }
    }
}

impl<B> http_body::Body for Metered<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => drop(self.report.take()),
            _ => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(request: &Request<()>) -> (RequestHead, http::request::Parts) {
        let (mut parts, ()) = request.clone().into_parts();
        let head = RequestHead::of_request(&mut parts).expect("head");
        parts.headers = head.headers.clone();
        (head, parts)
    }

    fn spec(host_header: HostHeader, upstream: Upstream) -> TunnelSpec {
        TunnelSpec {
            kind: showoff_proto::TunnelKind::Http,
            name: Some("demo".into()),
            port: None,
            host_header,
            target: "127.0.0.1:50051".into(),
            visitors: Default::default(),
            upstream,
        }
    }

    fn forwarded() -> Forwarded {
        Forwarded {
            visitor: "192.0.2.7".parse().expect("ip"),
            chain: "192.0.2.7".into(),
            proto: "https",
            host: None,
        }
    }

    #[test]
    fn the_target_gets_its_authority_trailers_and_forwarded_fields() {
        let request = Request::post("https://demo.localhost:8443/pkg.Svc/Call")
            .version(http::Version::HTTP_2)
            .header("te", "trailers")
            .header("content-type", "application/grpc")
            .header("x-forwarded-for", "203.0.113.1")
            .header("keep-alive", "5")
            .body(())
            .expect("request");
        let (head, parts) = head_of(&request);
        let spec = spec(HostHeader::Preserve, Upstream::H2c);
        let sent = upstream_request(&head, &spec, &forwarded(), None, parts);
        assert_eq!(
            sent.uri().to_string(),
            "http://demo.localhost:8443/pkg.Svc/Call"
        );
        let headers = sent.headers();
        assert_eq!(headers["te"], "trailers");
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(
            headers["x-forwarded-for"], "192.0.2.7",
            "the visitor's own is not believed"
        );
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "demo.localhost:8443");
        assert!(!headers.contains_key("keep-alive"));
    }

    #[test]
    fn the_host_policy_names_the_authority_and_tls_targets_get_https() {
        let request = Request::get("https://demo.localhost/x?y=1")
            .body(())
            .expect("request");
        let (head, parts) = head_of(&request);
        let spec = spec(HostHeader::Rewrite, Upstream::H2);
        let sent = upstream_request(&head, &spec, &forwarded(), None, parts);
        assert_eq!(sent.uri().to_string(), "https://127.0.0.1:50051/x?y=1");
        assert!(
            !sent.headers().contains_key("te"),
            "te other than trailers goes"
        );
    }

    #[test]
    fn tracing_replaces_the_visitors_trace_context() {
        let request = Request::get("https://demo.localhost/")
            .header(
                "traceparent",
                "00-11111111111111111111111111111111-2222222222222222-01",
            )
            .header("tracestate", "theirs=1")
            .body(())
            .expect("request");
        let (head, parts) = head_of(&request);
        let ours = TraceHeaders {
            traceparent: "00-33333333333333333333333333333333-4444444444444444-01".into(),
            tracestate: None,
        };
        let spec = spec(HostHeader::Preserve, Upstream::H2c);
        let sent = upstream_request(&head, &spec, &forwarded(), Some(&ours), parts);
        assert_eq!(sent.headers()["traceparent"], ours.traceparent.as_str());
        assert!(!sent.headers().contains_key("tracestate"));
    }
}
