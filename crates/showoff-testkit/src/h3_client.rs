//! An HTTP/3 client for the tests (Debian's curl is built without HTTP/3): quinn and h3, the
//! server verified against a test CA under the name `sni`, one connection per call.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request};

/// What an HTTP/3 request got back.
#[derive(Debug)]
pub struct H3Reply {
    /// The status.
    pub status: u16,
    /// The response's fields.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The trailers, if any.
    pub trailers: Option<HeaderMap>,
}

impl H3Reply {
    /// `x-showoff-error`, when Showoff answered with an error page.
    pub fn error_code(&self) -> Option<&str> {
        self.headers.get("x-showoff-error")?.to_str().ok()
    }
}

/// Sends `request` with `body` over HTTP/3 to `addr` and reads the whole answer.
pub async fn h3_request(
    addr: SocketAddr,
    sni: &str,
    ca_pem: &str,
    request: Request<()>,
    body: Bytes,
) -> Result<H3Reply, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let local: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut endpoint = quinn::Endpoint::client(local).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let quic = crate::within("HTTP/3 handshake", async {
        endpoint
            .connect(addr, sni)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    })
    .await?;
    let (mut driver, mut sender) = h3::client::new(h3_quinn::Connection::new(quic))
        .await
        .map_err(|e| e.to_string())?;
    let driving =
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let exchange = async {
        let mut stream = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        if !body.is_empty() {
            stream.send_data(body).await.map_err(|e| e.to_string())?;
        }
        stream.finish().await.map_err(|e| e.to_string())?;
        let response = stream.recv_response().await.map_err(|e| e.to_string())?;
        let mut data = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
            data.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        let trailers = stream.recv_trailers().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(H3Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: data.freeze(),
            trailers,
        })
    };
    let reply = crate::within("HTTP/3 exchange", exchange).await;
    driving.abort();
    endpoint.close(0u32.into(), b"done");
    reply
}
