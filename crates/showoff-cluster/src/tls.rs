//! How the registry opens its Redis client: plain `redis://`, or `rediss://` (TLS) verified by
//! the system's roots or by a CA of the operator's, with a client certificate for a Redis that
//! asks for one (`tls-auth-clients yes`). A password or ACL user rides in the URL
//! (`redis://user:password@host`); Redis checks it with `AUTH` on every connection.

use redis::{Client, ClientTlsConfig, TlsCertificates};
use showoff_core::Secret;

/// Why the Redis client could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL does not parse as a Redis URL.
    #[error("invalid Redis URL: {0}")]
    Url(String),
    /// A CA or client certificate was given for a URL that is not `rediss://`.
    #[error("a Redis CA or client certificate needs a rediss:// (TLS) URL")]
    TlsNeedsRediss,
    /// The CA or client certificate does not parse.
    #[error("invalid Redis TLS material: {0}")]
    Tls(String),
}

/// TLS material for a `rediss://` Redis beyond the system's trust store.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// CA certificates (PEM) that verify Redis's certificate instead of the system's roots.
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain (PEM) and its key (PEM), for a Redis that asks for one.
    pub client: Option<(Vec<u8>, Secret)>,
}

impl RedisTls {
    /// Whether anything beyond the system's roots is set.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }
}

/// The Redis client for `url` with `tls`; TLS material needs a `rediss://` URL.
pub fn open(url: &Secret, tls: &RedisTls) -> Result<Client, OpenError> {
    let url = url.expose();
    let secure = url.starts_with("rediss://");
    if tls.is_set() && !secure {
        return Err(OpenError::TlsNeedsRediss);
    }
    if secure {
        // The process's TLS provider (aws-lc-rs, as everywhere in Showoff); another part may
        // have installed it already, which is as good.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    if !tls.is_set() {
        return Client::open(url).map_err(|e| OpenError::Url(e.to_string()));
    }
    if let Some(ca) = &tls.ca {
        certificates(ca, "the Redis CA")?;
    }
    if let Some((cert, _)) = &tls.client {
        certificates(cert, "the Redis client certificate")?;
    }
    let certificates = TlsCertificates {
        client_tls: tls.client.as_ref().map(|(cert, key)| ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.expose().as_bytes().to_vec(),
        }),
        root_cert: tls.ca.clone(),
    };
    Client::build_with_tls(url, certificates).map_err(|e| OpenError::Tls(e.to_string()))
}

/// Fails unless `pem` holds at least one certificate that parses.
fn certificates(pem: &[u8], what: &str) -> Result<(), OpenError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let parsed = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| OpenError::Tls(format!("{what} is not PEM: {e}")))?;
    if parsed.is_empty() {
        return Err(OpenError::Tls(format!("{what} holds no certificate")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_material_with_a_plain_url_is_refused() {
        let tls = RedisTls {
            ca: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
            client: None,
        };
        let refused = open(&Secret::new("redis://127.0.0.1:6379"), &tls).expect_err("refused");
        assert!(matches!(refused, OpenError::TlsNeedsRediss), "{refused}");
        assert!(refused.to_string().contains("rediss://"), "{refused}");
    }

    #[test]
    fn a_ca_that_is_not_pem_is_refused_with_the_reason() {
        let tls = RedisTls {
            ca: Some(b"not a certificate".to_vec()),
            client: None,
        };
        let refused = open(&Secret::new("rediss://127.0.0.1:6380"), &tls).expect_err("refused");
        assert!(matches!(refused, OpenError::Tls(_)), "{refused}");
    }

    #[test]
    fn plain_and_secure_urls_open_without_material() {
        assert!(
            open(
                &Secret::new("redis://user:pw@127.0.0.1:6379/2"),
                &RedisTls::default()
            )
            .is_ok()
        );
        assert!(
            open(
                &Secret::new("rediss://127.0.0.1:6380"),
                &RedisTls::default()
            )
            .is_ok()
        );
        let refused =
            open(&Secret::new("http://127.0.0.1"), &RedisTls::default()).expect_err("refused");
        assert!(matches!(refused, OpenError::Url(_)), "{refused}");
    }
}
