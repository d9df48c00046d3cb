//! The request-level edge: requests another parser already read — HTTP/2 visitors, and
//! HTTP/1.1 connections the HTTP/1.1 edge handed over because they reached a tunnel whose
//! target speaks HTTP/2 — are dispatched by tunnel:
//!
//! - a tunnel whose target speaks HTTP/2 (`--upstream h2c|h2|auto`) gets each request as an
//!   HTTP/2 stream of its own, end to end ([`crate::edge::h2::relay`]);
//! - any other tunnel (and a request no tunnel here serves) gets it as HTTP/1.1, over an
//!   in-memory pipe, through the HTTP/1.1 edge ([`via_http1`]), which applies the same rules.
//!
//! A gRPC call can only take the first way: over HTTP/1.1 on either side it is refused with a
//! gRPC status that says why (`grpc_needs_http2`).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, Uri, Version, header};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::EdgeContext;
use super::body::{Body, BoxError};
use super::error::EdgeError;
use super::h2::forward;
use super::h2::relay;
use super::h2::upstream::speaks_h2;
use super::http::{Conn, Scheme, gate};
use super::pages;

/// Bytes buffered in each direction of a request's pipe to the HTTP/1.1 edge.
const PIPE: usize = 64 * 1024;

/// Serves one request of a visitor at `peer` that came in on `scheme`'s listener; an HTTPS
/// answer advertises HTTP/3 (`Alt-Svc`) when its listener is on.
pub(crate) async fn serve<B>(
    request: Request<B>,
    peer: SocketAddr,
    scheme: Scheme,
    ctx: Arc<EdgeContext>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let alt_svc = ctx
        .settings
        .alt_svc
        .clone()
        .filter(|_| scheme == Scheme::Https);
    let mut response = dispatch(request, peer, scheme, ctx).await;
    if let Some(value) = alt_svc {
        response.headers_mut().insert(header::ALT_SVC, value);
    }
    response
}

/// Routes one request: the HTTP/2 relay, a refusal, or the HTTP/1.1 edge.
async fn dispatch<B>(
    request: Request<B>,
    peer: SocketAddr,
    scheme: Scheme,
    ctx: Arc<EdgeContext>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let grpc = pages::is_grpc(request.headers());
    let host = authority(&request);
    let tunnel = host.as_deref().and_then(|h| gate::route(&ctx, h).ok());
    let request = match tunnel {
        Some(tunnel) if speaks_h2(&tunnel) => {
            match relay::exchange(request, peer, scheme, tunnel, &ctx, grpc).await {
                relay::Relayed::Answered(response) => return response,
                // An `auto` tunnel whose target turned out to speak HTTP/1.1.
                relay::Relayed::Http1(request) => request,
            }
        }
        Some(_) if grpc && request.version() != Version::HTTP_11 => {
            let host = host.unwrap_or_default();
            return refuse(&ctx, peer, &host, EdgeError::GrpcToHttp1Target, true);
        }
        // Not here: another instance may hold it, over an HTTP/2 hop; a hop never hops again.
        None if grpc && request.version() != Version::HTTP_11 => {
            let host = host.unwrap_or_default();
            return match &ctx.cluster {
                Some(cluster) if scheme != Scheme::Peer => {
                    forward::forward(request, peer, scheme, &ctx, cluster).await
                }
                Some(_) => refuse(&ctx, peer, &host, EdgeError::NotHere, true),
                None => refuse(&ctx, peer, &host, EdgeError::NotFound, true),
            };
        }
        _ => request,
    };
    if grpc && request.version() == Version::HTTP_11 {
        let host = host.unwrap_or_default();
        return refuse(&ctx, peer, &host, EdgeError::GrpcOverHttp1, false);
    }
    via_http1(request, peer, scheme, ctx).await
}

/// The host a request names, as routing reads it.
fn authority<B>(request: &Request<B>) -> Option<String> {
    let text = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request.headers().get(header::HOST)?.to_str().ok()?,
    };
    let host = showoff_proto::host::parse_host(text.as_bytes()).ok()?;
    Some(host.name)
}

/// Reports and answers a request refused before it reached any tunnel.
fn refuse(
    ctx: &EdgeContext,
    peer: SocketAddr,
    host: &str,
    error: EdgeError,
    grpc: bool,
) -> Response<Body> {
    let decision = showoff_core::trace::Decision::Off;
    pages::refusal(ctx, peer, host, None, &decision, grpc, error)
}

/// One request through the HTTP/1.1 edge, over an in-memory pipe.
async fn via_http1<B>(
    request: Request<B>,
    peer: SocketAddr,
    scheme: Scheme,
    ctx: Arc<EdgeContext>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let request = match as_http1(request) {
        Ok(request) => request.map(|body| body.map_err(Into::into).boxed()),
        Err(reason) => return plain(StatusCode::BAD_REQUEST, reason),
    };
    let (client_side, edge_side) = tokio::io::duplex(PIPE);
    let edge = tokio::spawn(async move {
        Conn::new(edge_side, peer, BytesMut::new(), scheme, ctx)
            .piped()
            .run()
            .await;
    });
    let result = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(client_side)).await?;
        tokio::spawn(connection);
        sender.send_request(request).await
    }
    .await;
    match result {
        Ok(response) => response.map(|body| body.map_err(Into::into).boxed()),
        Err(error) => {
            debug!(%peer, %error, "request failed inside the edge");
            edge.abort();
            plain(StatusCode::BAD_GATEWAY, "the request could not be proxied")
        }
    }
}

/// The request in HTTP/1.1 form: origin-form target, `Host` from `:authority`, one `cookie`
/// field. Refuses a `host` field that names another authority than `:authority`.
fn as_http1<B>(request: Request<B>) -> Result<Request<B>, &'static str> {
    let (mut parts, body) = request.into_parts();
    if let Some(authority) = parts.uri.authority().cloned() {
        match parts.headers.get(header::HOST) {
            Some(host)
                if !host
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
            {
                return Err("the host field disagrees with :authority");
            }
            Some(_) => {}
            None => {
                let host = header::HeaderValue::from_str(authority.as_str())
                    .map_err(|_| "the :authority is not a valid host")?;
                parts.headers.insert(header::HOST, host);
            }
        }
    }
    join_cookies(&mut parts.headers);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = path
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// Joins split `cookie` fields into one, separated by `"; "` (RFC 9113 §8.2.3), so the target
/// sees the single field HTTP/1.1 allows.
pub(crate) fn join_cookies(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for value in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = header::HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// A plain-text answer made here, not by the HTTP/1.1 edge.
fn plain(status: StatusCode, reason: &'static str) -> Response<Body> {
    let body = http_body_util::Full::new(Bytes::from(format!("{reason}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cookie_fields_become_one() {
        let mut headers = http::HeaderMap::new();
        headers.append(header::COOKIE, "a=1".parse().expect("value"));
        headers.append(header::COOKIE, "b=2; c=3".parse().expect("value"));
        headers.append(header::ACCEPT, "*/*".parse().expect("value"));
        join_cookies(&mut headers);
        let cookies: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
        let mut single = http::HeaderMap::new();
        single.append(header::COOKIE, "only=1".parse().expect("value"));
        join_cookies(&mut single);
        assert_eq!(single.get(header::COOKIE).expect("kept"), "only=1");
    }

    #[test]
    fn the_authority_is_read_from_the_uri_or_the_host_field() {
        let h2 = Request::get("https://Demo.localhost:8443/x")
            .body(())
            .expect("request");
        assert_eq!(authority(&h2).as_deref(), Some("demo.localhost"));
        let h1 = Request::get("/x")
            .header(header::HOST, "demo.localhost")
            .body(())
            .expect("request");
        assert_eq!(authority(&h1).as_deref(), Some("demo.localhost"));
        let none = Request::get("/x").body(()).expect("request");
        assert_eq!(authority(&none), None);
    }
}
