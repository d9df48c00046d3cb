//! HTTP/3 visitors (`--http3-addr`): QUIC with TLS 1.3 from the visitors' certificate store and
//! ALPN `h3`, advertised on the HTTPS listener with `Alt-Svc`. Each request goes to the
//! request-level edge ([`crate::edge::request`]) exactly as an HTTP/2 one does, so routing,
//! visitor rules, rate limits, forwarded headers, error pages (gRPC statuses included), the
//! exchange event and the relays to HTTP/1.1 and HTTP/2 targets are the same.
//!
//! Limits: at most [`MAX_STREAMS`] requests at once per connection (the QUIC stream credit), a
//! field section no larger than `--max-header-bytes`, the QUIC handshake within the head
//! timeout, and the connection closed after `--io-idle-timeout` without a packet. Bodies move
//! as QUIC's flow control lets them: a frame is taken from the response only once the previous
//! one was handed to the connection. A drain sends GOAWAY; requests in flight finish.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::EdgeContext;
use super::body::BoxError;
use super::h2::MAX_STREAMS;
use super::http::Scheme;
use super::request;

/// A request stream's receiving half, as the server's QUIC streams give it.
type RecvHalf = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// The HTTP/3 listener's QUIC settings: the visitors' TLS (ALPN `h3`), [`MAX_STREAMS`]
/// requests at once, the control and QPACK streams each side opens, `idle` without packets.
pub(crate) fn server_config(
    tls: Arc<rustls::ServerConfig>,
    idle: Duration,
) -> Result<quinn::ServerConfig, String> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("the TLS settings cannot serve HTTP/3: {e}"))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS))
        // Control, QPACK encoder and decoder, and room for a peer's reserved (grease) stream.
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(8))
        .max_idle_timeout(idle.try_into().ok());
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The `Alt-Svc` value that advertises HTTP/3 on `port`.
pub(crate) fn alt_svc(port: u16) -> http::HeaderValue {
    http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400"))
        .expect("a port makes a valid header value")
}

/// Accepts HTTP/3 connections on `endpoint` until `draining`, each served in `tasks`; the
/// endpoint closes at the hard stop.
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    draining: CancellationToken,
    stopping: CancellationToken,
    tasks: TaskTracker,
    ctx: Arc<EdgeContext>,
) {
    loop {
        let incoming = tokio::select! {
            _ = draining.cancelled() => break,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        let span = tracing::info_span!("visitor", peer = %incoming.remote_address(), http = 3);
        tasks.spawn(tracing::Instrument::instrument(
            connection(incoming, ctx.clone()),
            span,
        ));
    }
    endpoint.set_server_config(None);
    stopping.cancelled().await;
    endpoint.close(0u32.into(), b"server stopped");
}

/// One visitor connection: its requests, each in a task of the connection's, until the
/// visitor closes it, it idles out, or a drain's GOAWAY was answered by its requests ending.
async fn connection(incoming: quinn::Incoming, ctx: Arc<EdgeContext>) {
    let _gauge = ctx.visitor_gauge();
    let peer = incoming.remote_address();
    let quic = match tokio::time::timeout(ctx.settings.head_timeout, incoming).await {
        Ok(Ok(quic)) => quic,
        Ok(Err(error)) => return debug!(%peer, %error, "HTTP/3 handshake failed"),
        Err(_) => return debug!(%peer, "HTTP/3 handshake timed out"),
    };
    let max_fields = u64::try_from(ctx.settings.max_header_bytes).unwrap_or(u64::MAX);
    let built = h3::server::builder()
        .max_field_section_size(max_fields)
        .build::<_, Bytes>(h3_quinn::Connection::new(quic))
        .await;
    let mut h3 = match built {
        Ok(h3) => h3,
        Err(error) => return debug!(%peer, %error, "HTTP/3 connection set-up failed"),
    };
    let draining = ctx.drain.draining().clone();
    let mut drained = false;
    let mut requests = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = h3.accept() => accepted,
            _ = draining.cancelled(), if !drained => {
                drained = true;
                // GOAWAY: requests in flight finish, no new one starts.
                let _ = h3.shutdown(0).await;
                continue;
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => continue,
        };
        let resolver = match accepted {
            Ok(Some(resolver)) => resolver,
            Ok(None) => break,
            Err(error) => {
                debug!(%peer, %error, "HTTP/3 connection ended");
                break;
            }
        };
        let ctx = ctx.clone();
        requests.spawn(async move {
            match resolver.resolve_request().await {
                Ok((request, stream)) => answer(request, stream, peer, ctx).await,
                Err(error) => debug!(%peer, %error, "HTTP/3 request refused by its framing"),
            }
        });
    }
    while requests.join_next().await.is_some() {}
}

/// One request through the request-level edge, and its response back: head, data frames as
/// the stream takes them, trailers, end. A visitor that resets its stream drops the response,
/// which ends the exchange with the target as on HTTP/2.
async fn answer(
    request: Request<()>,
    stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    peer: SocketAddr,
    ctx: Arc<EdgeContext>,
) {
    let (mut send, recv) = stream.split();
    let request = request.map(|()| RequestBody {
        recv,
        data_done: false,
        done: false,
    });
    let response = request::serve(request, peer, Scheme::Https, ctx).await;
    let (parts, mut body) = response.into_parts();
    if send
        .send_response(Response::from_parts(parts, ()))
        .await
        .is_err()
    {
        return;
    }
    while let Some(frame) = body.frame().await {
        let sent = match frame.map(Frame::into_data) {
            Ok(Ok(data)) => send.send_data(data).await,
            Ok(Err(frame)) => match frame.into_trailers() {
                Ok(trailers) => send.send_trailers(trailers).await,
                Err(_) => Ok(()),
            },
            Err(error) => {
                debug!(%peer, %error, "the response broke; resetting the HTTP/3 stream");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
    let _ = send.finish().await;
}

/// A request's body as it arrives on its QUIC stream: data frames, then trailers if any.
struct RequestBody {
    recv: RecvHalf,
    data_done: bool,
    done: bool,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match self.recv.poll_recv_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(mut data))) => {
                    let bytes = data.copy_to_bytes(data.remaining());
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Poll::Ready(Ok(None)) => self.data_done = true,
                Poll::Ready(Err(error)) => return Poll::Ready(Some(Err(Box::new(error)))),
            }
        }
        if self.done {
            return Poll::Ready(None);
        }
        let trailers = match self.recv.poll_recv_trailers(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(trailers) => trailers,
        };
        self.done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(Box::new(error)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_svc_names_the_port_for_a_day() {
        assert_eq!(alt_svc(8443), "h3=\":8443\"; ma=86400");
    }
}
