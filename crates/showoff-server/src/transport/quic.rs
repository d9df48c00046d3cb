//! The QUIC transport, server side: one QUIC stream per tunnel stream.
//!
//! A client connects to the QUIC listener (UDP, TLS 1.3 from the same certificate store as the
//! control listener, ALPN `showoff/1`, client certificates as there) and opens the first
//! bidirectional stream: the control stream, where `Hello { transport: quic }`, `Auth`, `Open`
//! → `Welcome` and the rest of the control frames run as on TCP. Each visitor stream is a
//! stream the server opens, announced with `Dial` and answered with `StreamReady` or
//! `StreamError` on it ([`super::announce`]). Streams never block each other (no head-of-line
//! blocking across streams), and the connection survives a change of the client's address
//! (migration is on).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use showoff_core::{OpenError, StreamMeta, StreamOpener, TunnelStream};

use super::announce;

/// The server's QUIC settings: TLS from the control listener's store, windows for the
/// bandwidth-delay product, idle timeout = the heartbeat timeout, migration allowed.
pub(crate) fn server_config(
    tls: Arc<rustls::ServerConfig>,
    idle: Duration,
) -> Result<quinn::ServerConfig, String> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("the TLS settings cannot serve QUIC: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(showoff_core::quic::transport_config(idle)));
    config.migration(true);
    Ok(config)
}

/// One session's QUIC connection.
pub(crate) struct QuicLink {
    connection: quinn::Connection,
    pending_timeout: Duration,
}

impl QuicLink {
    pub(crate) fn new(connection: quinn::Connection, pending_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            connection,
            pending_timeout,
        })
    }

    /// Bytes received on the connection so far (any packet is a sign of life).
    pub(crate) fn received(&self) -> u64 {
        showoff_core::quic::received(&self.connection)
    }
}

#[async_trait]
impl StreamOpener for QuicLink {
    async fn open(&self, meta: &StreamMeta) -> Result<TunnelStream, OpenError> {
        // Waits while the client's stream limit is reached, within the deadline.
        let opened = tokio::time::timeout(self.pending_timeout, self.connection.open_bi()).await;
        let (send, recv) = match opened {
            Err(_) => return Err(OpenError::Timeout),
            Ok(Err(_)) => return Err(OpenError::ClientGone),
            Ok(Ok(pair)) => pair,
        };
        let stream = showoff_core::quic::stream(send, recv);
        announce(stream, meta, self.pending_timeout).await
    }
}
