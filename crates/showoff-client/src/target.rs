//! Where a tunnel's streams end: the [`Target`] seam. The CLI's targets are local TCP
//! addresses ([`TcpTarget`], with an optional PROXY protocol header naming the visitor, and
//! TLS for targets that speak it, [`tls`]); an embedding program can end streams in-process
//! instead by implementing [`Target`].

pub mod tls;

use std::net::SocketAddr;

use async_trait::async_trait;
use showoff_core::StreamIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::proxy_header::{self, ProxyVersion};
pub use tls::TargetTls;

/// Deadline for connecting to the server or to a local target.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The far end of one stream, as a target hands it back.
pub type TargetStream = Box<dyn StreamIo>;

/// Where one tunnel's streams go.
#[async_trait]
pub trait Target: Send + Sync + 'static {
    /// Opens the target's end of a stream for the visitor at `visitor` (as the server saw
    /// it); the error is what the server's visitor is told (`upstream_unreachable`).
    async fn open(&self, visitor: Option<SocketAddr>) -> Result<TargetStream, String>;

    /// How the target is named in the client's `<public URL> -> <target>` line.
    fn address(&self) -> &str;
}

/// `3000` → `127.0.0.1:3000`; anything with a colon is used as given.
pub fn local_address(target: &str) -> String {
    if target.contains(':') {
        target.to_string()
    } else {
        format!("127.0.0.1:{target}")
    }
}

/// A local TCP service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpTarget {
    addr: String,
    proxy_protocol: Option<ProxyVersion>,
    tls: Option<TargetTls>,
}

impl TcpTarget {
    /// The service at `addr` (`host:port`), with a PROXY header first when asked.
    pub fn new(addr: impl Into<String>, proxy_protocol: Option<ProxyVersion>) -> Self {
        Self {
            addr: addr.into(),
            proxy_protocol,
            tls: None,
        }
    }

    /// The same target spoken to over TLS (after the PROXY header, if any).
    pub fn with_tls(mut self, tls: Option<TargetTls>) -> Self {
        self.tls = tls;
        self
    }
}

/// Connects with the client's deadline and `TCP_NODELAY`.
pub(crate) async fn connect(addr: &str) -> Result<TcpStream, String> {
    let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map_err(|e| format!("connecting to {addr} failed: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

#[async_trait]
impl Target for TcpTarget {
    async fn open(&self, visitor: Option<SocketAddr>) -> Result<TargetStream, String> {
        let mut stream = connect(&self.addr).await?;
        if let Some(version) = self.proxy_protocol {
            let destination = stream.peer_addr().map_err(|e| e.to_string())?;
            let header = proxy_header::encode(version, visitor, destination);
            stream
                .write_all(&header)
                .await
                .map_err(|e| format!("sending the PROXY header to {} failed: {e}", self.addr))?;
        }
        match &self.tls {
            Some(tls) => Ok(Box::new(tls.connect(stream, &self.addr).await?)),
            None => Ok(Box::new(stream)),
        }
    }

    fn address(&self) -> &str {
        &self.addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn bare_ports_mean_loopback() {
        assert_eq!(local_address("3000"), "127.0.0.1:3000");
        assert_eq!(local_address("10.0.0.2:80"), "10.0.0.2:80");
    }

    #[tokio::test]
    async fn a_tcp_target_sends_the_proxy_header_first() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let target = TcpTarget::new(addr.clone(), Some(ProxyVersion::V1));
        assert_eq!(target.address(), addr);
        let visitor = "192.0.2.9:4000".parse().ok();
        let (opened, accepted) = tokio::join!(target.open(visitor), listener.accept());
        let mut stream = opened.expect("opened");
        stream.write_all(b"hi").await.expect("write");
        drop(stream);
        let mut got = String::new();
        let (mut peer, _) = accepted.expect("accepted");
        peer.read_to_string(&mut got).await.expect("read");
        assert!(
            got.starts_with("PROXY TCP4 192.0.2.9 127.0.0.1 4000 "),
            "{got}"
        );
        assert!(got.ends_with("\r\nhi"), "{got}");
    }

    #[tokio::test]
    async fn an_unreachable_target_says_where() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let error = TcpTarget::new(addr.clone(), None)
            .open(None)
            .await
            .err()
            .expect("refused");
        assert!(error.contains(&addr), "{error}");
    }
}
