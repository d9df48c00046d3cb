//! How the client reaches the server: the [`Transport`] seam. Today's transport dials TCP,
//! with TLS when configured ([`TcpTransport`]), for the control connection and for each
//! dial-back data connection; multiplexed and QUIC transports implement the same trait.

use async_trait::async_trait;
use showoff_core::StreamIo;
use tokio::time::timeout;

use crate::target::{CONNECT_TIMEOUT, connect};
use crate::tls::Connector;

/// `TCP_USER_TIMEOUT` of connections to the server: three default heartbeat intervals, the
/// silence after which the client gives a session up anyway.
const USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);

/// A connection to one of the server's listeners.
pub type ServerStream = Box<dyn StreamIo>;

/// Opens connections to the server.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Connects to the listener at `addr` (`host:port`): the control listener, or the data
    /// listener the server announced.
    async fn dial(&self, addr: &str) -> Result<ServerStream, String>;
}

/// TCP, with TLS when the settings ask for it.
pub(crate) struct TcpTransport {
    tls: Option<Connector>,
}

impl TcpTransport {
    /// A transport speaking TLS through `tls`, or plain TCP.
    pub(crate) fn new(tls: Option<Connector>) -> Self {
        Self { tls }
    }
}

#[async_trait]
impl Transport for TcpTransport {
    async fn dial(&self, addr: &str) -> Result<ServerStream, String> {
        let stream = connect(addr).await?;
        showoff_core::set_user_timeout(&stream, USER_TIMEOUT);
        match &self.tls {
            Some(tls) => {
                let tls_stream = timeout(CONNECT_TIMEOUT, tls.connect(stream, addr))
                    .await
                    .map_err(|_| format!("TLS handshake with {addr} timed out"))??;
                Ok(Box::new(tls_stream))
            }
            None => Ok(Box::new(stream)),
        }
    }
}
