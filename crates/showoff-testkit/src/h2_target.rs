//! HTTP/2 targets for tunnels opened with `--upstream h2c|h2|auto`: hyper's HTTP/2 server with
//! prior knowledge ([`spawn_h2c_target`]) or behind TLS with ALPN `h2` only
//! ([`spawn_h2_tls_target`]).
//!
//! Routes: `/echo-body` sends the request body back frame by frame as it arrives (both ways
//! at once, like a bidirectional stream) and ends with trailers `x-bytes` (the bytes echoed) and
//! `x-got-trailer` (the request's `x-client-trailer` trailer, or `none`); anything else answers
//! a JSON echo (`target`, `version`, `method`, `path`, `authority`, `headers`, `body_bytes`)
//! with trailer `x-echo: done`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::target::{Target, TargetStats, serve_on_loopback};

type Body = BoxBody<Bytes, Infallible>;

/// An HTTP/2 target with prior knowledge on `127.0.0.1:0`.
pub async fn spawn_h2c_target(label: &'static str) -> Target {
    spawn(label, None).await
}

/// An HTTP/2 target behind TLS (ALPN `h2`) with `identity`'s certificate on `127.0.0.1:0`.
pub async fn spawn_h2_tls_target(label: &'static str, identity: showoff_server::PemPair) -> Target {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(identity.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(identity.key.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("cert");
    config.alpn_protocols = vec![b"h2".to_vec()];
    spawn(
        label,
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
    )
    .await
}

async fn spawn(label: &'static str, tls: Option<tokio_rustls::TlsAcceptor>) -> Target {
    serve_on_loopback(label, move |stream, stats| {
        let tls = tls.clone();
        async move {
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve(stream, label, stats).await;
                    }
                }
                None => serve(stream, label, stats).await,
            }
        }
    })
    .await
}

async fn serve<S>(io: S, label: &'static str, stats: Arc<TargetStats>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        stats.requests.fetch_add(1, Ordering::Relaxed);
        handle(request, label)
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn handle(
    request: Request<Incoming>,
    label: &'static str,
) -> Result<Response<Body>, Infallible> {
    if request.uri().path() == "/echo-body" {
        return Ok(echo_body(request));
    }
    let (parts, mut body) = request.into_parts();
    let mut body_bytes = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            body_bytes += data.len() as u64;
        }
    }
    let headers = crate::target::headers_json(&parts.headers);
    let echo = serde_json::json!({
        "target": label,
        "version": format!("{:?}", parts.version),
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        "authority": parts.uri.authority().map(|a| a.as_str()),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut trailers = HeaderMap::new();
    trailers.insert("x-echo", HeaderValue::from_static("done"));
    let frames = vec![
        Frame::data(Bytes::from(echo.to_string())),
        Frame::trailers(trailers),
    ];
    let body = StreamBody::new(futures_util::stream::iter(
        frames.into_iter().map(Ok::<_, Infallible>),
    ));
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(BodyExt::boxed(body))
        .expect("valid response"))
}

/// The request body back, frame by frame, then trailers.
fn echo_body(request: Request<Incoming>) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(2);
    let mut body = request.into_body();
    tokio::spawn(async move {
        let (mut bytes, mut got) = (0u64, "none".to_string());
        while let Some(Ok(frame)) = body.frame().await {
            match frame.into_data() {
                Ok(data) => {
                    bytes += data.len() as u64;
                    if tx.send(Frame::data(data)).await.is_err() {
                        return;
                    }
                }
                Err(frame) => {
                    if let Some(value) =
                        frame.trailers_ref().and_then(|t| t.get("x-client-trailer"))
                    {
                        got = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    }
                }
            }
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("x-bytes", HeaderValue::from(bytes));
        if let Ok(value) = HeaderValue::from_str(&got) {
            trailers.insert("x-got-trailer", value);
        }
        let _ = tx.send(Frame::trailers(trailers)).await;
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|frame| (Ok::<_, Infallible>(frame), rx))
    });
    Response::new(BodyExt::boxed(StreamBody::new(frames)))
}
