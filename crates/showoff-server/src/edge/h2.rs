//! HTTP/2 visitors (ALPN `h2` on the HTTPS listener). hyper speaks HTTP/2 to the visitor; each
//! request is handed, as HTTP/1.1 over an in-memory pipe, to the same edge that serves HTTP/1.1
//! visitors, so routing, visitor rules, rate limits, forwarded headers, error pages, metrics and
//! the access log are one code path. Tunnels and targets keep speaking HTTP/1.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::edge::EdgeContext;
use crate::edge::http::{Conn, Scheme};

/// Bytes buffered in each direction of a request's pipe.
const PIPE: usize = 64 * 1024;

type Body = BoxBody<bytes::Bytes, hyper::Error>;

/// Serves one HTTP/2 connection until the visitor or the server closes it.
pub(crate) async fn serve<S>(io: S, peer: SocketAddr, ctx: Arc<EdgeContext>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let drain = ctx.drain.draining().clone();
    let service = hyper::service::service_fn(move |request| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(exchange(request, peer, ctx).await) }
    });
    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(%peer, %error, "h2 connection ended");
            }
        }
        _ = drain.cancelled() => {
            // GOAWAY: streams in flight finish, no new ones start.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// One HTTP/2 request through the HTTP/1.1 edge.
async fn exchange(
    request: Request<Incoming>,
    peer: SocketAddr,
    ctx: Arc<EdgeContext>,
) -> Response<Body> {
    let (client_side, edge_side) = tokio::io::duplex(PIPE);
    let edge = tokio::spawn(async move {
        Conn::new(edge_side, peer, BytesMut::new(), Scheme::Https, ctx)
            .run()
            .await;
    });
    let result = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(client_side)).await?;
        tokio::spawn(connection);
        sender.send_request(as_http1(request)).await
    }
    .await;
    match result {
        Ok(response) => response.map(|body| body.boxed()),
        Err(error) => {
            debug!(%peer, %error, "h2 request failed inside the edge");
            edge.abort();
            bad_gateway()
        }
    }
}

/// The request in HTTP/1.1 form: origin-form target and `Host` from `:authority`.
fn as_http1(request: Request<Incoming>) -> Request<Incoming> {
    let (mut parts, body) = request.into_parts();
    if let Some(authority) = parts.uri.authority().cloned()
        && !parts.headers.contains_key(header::HOST)
        && let Ok(host) = header::HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = path
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = http::Version::HTTP_11;
    Request::from_parts(parts, body)
}

fn bad_gateway() -> Response<Body> {
    let mut response = Response::new(
        Full::new(bytes::Bytes::from_static(
            b"the request could not be proxied\n",
        ))
        .map_err(|never| match never {})
        .boxed(),
    );
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
