//! TLS settings: certificates as PEM text, the client CA for mTLS, the HTTPS listener.

use std::net::SocketAddr;

/// A certificate chain and its private key, PEM text.
#[derive(Clone, PartialEq, Eq)]
pub struct PemPair {
    /// The chain, leaf first.
    pub cert: String,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PemPair(***)")
    }
}

/// TLS settings; everything is off while `certificates` is empty.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// Certificates served by SNI (wildcards for `*.<domain>`, explicit ones for custom names);
    /// the first is the default for names none covers. With any certificate, the control and
    /// data listeners speak TLS only.
    pub certificates: Vec<PemPair>,
    /// CA certificates (PEM) client certificates must chain to; when set, control and data
    /// connections must present one, and its identity is the principal (`cert:<name>`).
    pub client_ca: Option<String>,
    /// Public HTTPS listener (visitors); `None` turns it off.
    pub https_addr: Option<SocketAddr>,
    /// Public HTTP/3 listener (UDP, TLS 1.3 from the same certificates), advertised with
    /// `Alt-Svc` on the HTTPS listener; `None` turns it off.
    pub http3_addr: Option<SocketAddr>,
    /// Answer plain-HTTP visitors with a redirect to HTTPS.
    pub redirect_http: bool,
    /// Certificates obtained and renewed automatically.
    pub acme: Option<super::AcmeConfig>,
}

impl TlsConfig {
    /// Whether the control and data listeners speak TLS.
    pub fn enabled(&self) -> bool {
        !self.certificates.is_empty() || self.acme.is_some()
    }
}
