//! A gRPC call for a tunnel another instance of the cluster holds: one hop to that instance's
//! peer listener, which proves the cluster secret as for HTTP/1.1 hops and then speaks HTTP/2
//! with prior knowledge, so the call stays a call (streams both ways, trailers). What this
//! instance decided about the visitor travels in the peer headers, as on HTTP/1.1 hops; the
//! holder applies the tunnel's rules and relays to its target. The answer streams back as it
//! comes. A holder that answers `421` (the tunnel moved as the call was made) makes the call
//! `tunnel_not_found`: its body was streamed, so it is not sent twice.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use showoff_core::LeaseKey;
use showoff_core::trace::Decision;
use tracing::{Instrument, debug};

use super::relay::{next_hop_fields, strip_connection_fields};
use crate::edge::EdgeContext;
use crate::edge::body::{Body, BoxError};
use crate::edge::error::{ERROR_HEADER, EdgeError};
use crate::edge::forwarded::{
    Forwarded, PEER_CHAIN, PEER_HOST, PEER_PROTO, PEER_VISITOR, forwarded,
};
use crate::edge::http::Scheme;
use crate::edge::http::head::RequestHead;
use crate::edge::pages;
use crate::edge::peer::ClusterEdge;
use crate::edge::spans;

/// Forwards one call to the instance holding its tunnel; `grpc` shapes a refusal.
pub(crate) async fn forward<B>(
    request: Request<B>,
    peer: SocketAddr,
    scheme: Scheme,
    ctx: &EdgeContext,
    cluster: &ClusterEdge,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    let head = match RequestHead::of_request(&mut parts) {
        Ok(head) => head,
        Err(error) => {
            let error = EdgeError::Head(error);
            return pages::refusal(ctx, peer, "", None, &Decision::Off, true, error);
        }
    };
    let (span, decision) = spans::request(&ctx.settings, &head, peer, scheme.as_str(), false);
    let visitor = forwarded(
        &head.headers,
        peer.ip(),
        scheme.as_str(),
        &ctx.settings.proxy,
    );
    let host = head.host.name.clone();
    parts.headers = head.headers;
    let request = Request::from_parts(parts, body);
    let hop = async {
        let name =
            showoff_proto::host::route_name(&host, &ctx.urls.domain).ok_or(EdgeError::NotFound)?;
        let forward_span = spans::forward(&decision, name);
        let sent = hop(cluster, &decision, &forward_span, name, visitor, request)
            .instrument(forward_span.clone())
            .await;
        let result = if sent.is_ok() {
            "ok"
        } else {
            "peer_unreachable"
        };
        ctx.stats.cluster.forwarded(result);
        sent.inspect_err(|error| spans::failed(&forward_span, error.code()))
    }
    .instrument(span.clone())
    .await;
    match hop {
        Ok(response) => response,
        Err(error) => {
            span.in_scope(|| pages::refusal(ctx, peer, &host, None, &decision, true, error))
        }
    }
}

/// The hop itself: locate the holder, prove the secret, send the call with what was decided
/// about the `visitor`, take the answer's head.
async fn hop<B>(
    cluster: &ClusterEdge,
    decision: &Decision,
    span: &tracing::Span,
    name: &str,
    visitor: Forwarded,
    request: Request<B>,
) -> Result<Response<Body>, EdgeError>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let key = LeaseKey::Name(name.to_string());
    let addr = cluster.locate(&key).await?.ok_or(EdgeError::NotFound)?;
    let stream = cluster.dial(&addr).await?;
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Body>(TokioIo::new(stream))
        .await
        .map_err(|_| EdgeError::PeerUnreachable)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%error, "HTTP/2 hop to a peer ended");
        }
    });
    let (mut parts, body) = request.into_parts();
    next_hop_fields(&mut parts.headers);
    for name in [PEER_VISITOR, PEER_CHAIN, PEER_PROTO, PEER_HOST] {
        parts.headers.remove(name);
    }
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            parts.headers.insert(HeaderName::from_static(name), value);
        }
    };
    put(PEER_VISITOR, &visitor.visitor.to_string());
    put(PEER_CHAIN, &visitor.chain);
    put(PEER_PROTO, visitor.proto);
    if let Some(host) = &visitor.host {
        put(PEER_HOST, host);
    }
    decision.with_headers(span, |trace| {
        if let Some(trace) = trace {
            put("traceparent", &trace.traceparent);
        }
    });
    parts.version = http::Version::HTTP_2;
    let request = Request::from_parts(parts, body.map_err(Into::into).boxed());
    let response = sender
        .send_request(request)
        .await
        .map_err(|_| EdgeError::PeerUnreachable)?;
    let moved = response.status() == 421
        && response
            .headers()
            .get(ERROR_HEADER)
            .is_some_and(|code| code == "tunnel_not_found");
    if moved {
        cluster.registry.forget(&key);
        return Err(EdgeError::NotFound);
    }
    if decision.sampled() {
        span.record("server.address", addr.as_str());
        spans::responded(span, response.status().as_u16());
    }
    let (mut parts, body) = response.into_parts();
    strip_connection_fields(&mut parts.headers);
    Ok(Response::from_parts(
        parts,
        body.map_err(Into::into).boxed(),
    ))
}
