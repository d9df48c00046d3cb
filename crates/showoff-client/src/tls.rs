//! TLS towards the server (rustls, aws-lc-rs): the server's certificate is verified against the
//! webpki roots or a CA file, the name checked is the server's host (or an override), and a
//! client certificate is presented when the server requires one (mTLS).
//!
//! Skipping verification exists for test set-ups only, behind a loudly named option, and logs a
//! warning on every connection.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How the client speaks TLS to the server.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA certificates (PEM) that replace the webpki roots, for private CAs.
    pub ca: Option<String>,
    /// Name to verify instead of the server address's host.
    pub server_name: Option<String>,
    /// Client certificate chain and key (PEM), for servers that require mTLS.
    pub identity: Option<(String, String)>,
    /// Accept any server certificate. For tests only: a warning is logged on every connect.
    pub dangerously_skip_verify: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca.is_some())
            .field("server_name", &self.server_name)
            .field("identity", &self.identity.is_some())
            .field("dangerously_skip_verify", &self.dangerously_skip_verify)
            .finish()
    }
}

/// A ready connector and the settings it came from.
#[derive(Clone)]
pub(crate) struct Connector {
    connector: TlsConnector,
    config: Arc<rustls::ClientConfig>,
    settings: ClientTls,
}

impl Connector {
    /// Builds the rustls context once per client run.
    pub(crate) fn new(settings: &ClientTls) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if settings.dangerously_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        } else {
            let roots = match &settings.ca {
                Some(pem) => roots_of(pem, "the CA file")?,
                None => {
                    let mut roots = rustls::RootCertStore::empty();
                    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                    roots
                }
            };
            builder.with_root_certificates(roots)
        };
        let config = match &settings.identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("the client certificate does not parse: {e}"))?;
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .map_err(|e| format!("the client key does not parse: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("the client certificate is not usable: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        let config = Arc::new(config);
        Ok(Self {
            connector: TlsConnector::from(config.clone()),
            config,
            settings: settings.clone(),
        })
    }

    /// The same TLS settings for QUIC: TLS 1.3 with Showoff's ALPN.
    pub(crate) fn quic_config(&self) -> Result<quinn::ClientConfig, String> {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![showoff_core::quic::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config)
            .map_err(|e| format!("the TLS settings cannot serve QUIC: {e}"))?;
        Ok(quinn::ClientConfig::new(Arc::new(crypto)))
    }

    /// The name the server's certificate must carry when it is reached at `addr`.
    pub(crate) fn server_name(&self, addr: &str) -> String {
        match &self.settings.server_name {
            Some(name) => name.clone(),
            None => host_of(addr).to_string(),
        }
    }

    /// Runs the handshake over `stream` to the server at `addr` (`host:port`).
    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
        addr: &str,
    ) -> Result<TlsStream<TcpStream>, String> {
        let host = self.server_name(addr);
        let name = ServerName::try_from(host.clone())
            .map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
        if self.settings.dangerously_skip_verify {
            tracing::warn!(
                server = addr,
                "TLS certificate verification is OFF (--dangerously-skip-tls-verify): anyone on \
                 the path can read and change this connection"
            );
        }
        let tls = self
            .connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))?;
        Ok(tls)
    }
}

/// The host part of `host:port` (`[::1]:7000` → `::1`).
/// The certificates of a PEM CA file (`what` names it in errors); at least one.
pub(crate) fn roots_of(pem: &str, what: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("{what} does not parse: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{what} is not usable: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{what} holds no certificate"));
    }
    Ok(roots)
}

pub(crate) fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Accepts every certificate (signatures are still checked, so the handshake stays sound).
#[derive(Debug)]
pub(crate) struct AcceptAnything(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_taken_from_addresses() {
        assert_eq!(host_of("tunnel.example.com:7000"), "tunnel.example.com");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("127.0.0.1:7000"), "127.0.0.1");
    }

    #[test]
    fn unusable_settings_are_refused_with_the_reason() {
        let bad_ca = ClientTls {
            ca: Some("nothing here".into()),
            ..ClientTls::default()
        };
        let error = Connector::new(&bad_ca).err().expect("refused");
        assert!(error.contains("CA file"), "{error}");
        let bad_identity = ClientTls {
            identity: Some(("x".into(), "y".into())),
            ..ClientTls::default()
        };
        assert!(Connector::new(&bad_identity).is_err());
        assert!(Connector::new(&ClientTls::default()).is_ok());
    }
}
