//! TLS towards a local target that speaks it: `https://` targets and `--upstream h2`. The ALPN
//! offered follows the tunnel's upstream protocol (`http/1.1`, `h2`, or both for `auto`), so the
//! target settles the protocol the server then speaks over the stream.
//!
//! The target is the user's own service, named by the user, and usually on loopback with a
//! self-signed certificate: its certificate is accepted as it is unless a CA file is given
//! (`--upstream-ca`), in which case it must chain to that CA and carry the target's name.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use showoff_proto::Upstream;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A ready TLS context for one tunnel's target.
#[derive(Clone)]
pub struct TargetTls {
    connector: TlsConnector,
    name: ServerName<'static>,
    /// What the context was built from, for `Debug` and equality.
    alpn: Vec<&'static str>,
    verified: bool,
}

impl TargetTls {
    /// The context for a target at `addr` (`host:port`) behind a tunnel speaking `upstream`;
    /// `ca` (PEM) makes the target's certificate checked against it, `server_name` replaces
    /// the host as SNI and as the name checked.
    pub fn new(
        upstream: Upstream,
        addr: &str,
        ca: Option<&str>,
        server_name: Option<&str>,
    ) -> Result<Self, String> {
        let alpn: Vec<&'static str> = match upstream {
            Upstream::Http1 => vec!["http/1.1"],
            Upstream::H2 => vec!["h2"],
            Upstream::Auto => vec!["h2", "http/1.1"],
            Upstream::H2c => {
                return Err("h2c is HTTP/2 without TLS: use --upstream h2 for a TLS target".into());
            }
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match ca {
            Some(pem) => {
                builder.with_root_certificates(crate::tls::roots_of(pem, "the upstream CA file")?)
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(crate::tls::AcceptAnything(provider))),
        };
        let mut config = builder.with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let host = server_name.unwrap_or_else(|| crate::tls::host_of(addr));
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            name,
            alpn,
            verified: ca.is_some(),
        })
    }

    /// Runs the handshake with the target over `stream`.
    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
        addr: &str,
    ) -> Result<TlsStream<TcpStream>, String> {
        self.connector
            .connect(self.name.clone(), stream)
            .await
            .map_err(|e| format!("TLS handshake with the target {addr} failed: {e}"))
    }
}

impl std::fmt::Debug for TargetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetTls")
            .field("name", &self.name)
            .field("alpn", &self.alpn)
            .field("verified", &self.verified)
            .finish()
    }
}

impl PartialEq for TargetTls {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, &self.alpn, self.verified) == (&other.name, &other.alpn, other.verified)
    }
}

impl Eq for TargetTls {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alpn_follows_the_upstream_protocol() {
        let tls = |upstream| TargetTls::new(upstream, "127.0.0.1:8443", None, None);
        assert_eq!(tls(Upstream::Http1).expect("http1").alpn, ["http/1.1"]);
        assert_eq!(tls(Upstream::H2).expect("h2").alpn, ["h2"]);
        assert_eq!(tls(Upstream::Auto).expect("auto").alpn, ["h2", "http/1.1"]);
        let refused = tls(Upstream::H2c).expect_err("h2c has no TLS");
        assert!(refused.contains("--upstream h2"), "{refused}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let refused = TargetTls::new(Upstream::H2, "localhost:1", Some("nothing"), None)
            .expect_err("no certificate");
        assert!(refused.contains("no certificate"), "{refused}");
    }
}
