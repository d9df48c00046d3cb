//! TLS with rustls (one crypto provider, aws-lc-rs): the certificate store every TLS listener
//! chooses from by SNI, the acceptors of the control, data and public HTTPS listeners, and the
//! identity of a client certificate (mTLS); and the ACME challenge answers the listeners give
//! ([`Http01Answers`] on plain HTTP, validation certificates in the store for TLS-ALPN-01).
//!
//! Certificates arrive as PEM text ([`PemPair`]); the binary reads the files and hands new
//! text to [`crate::ServerHandle::reload_certificates`] when they change, which swaps the store
//! atomically: handshakes in progress and established connections keep what they have, the next
//! handshake sees the new certificates.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

pub use crate::config::{PemPair, TlsConfig};
use showoff_core::Prefixed;

/// A connection on a listener that may speak TLS. Boxed: a TLS session is a few KiB, and plain
/// connections should not pay for it.
/// Bytes read before the handshake (a PROXY header's tail) come first ([`Prefixed`]).
pub(crate) type ServerIo = Either<Prefixed<TcpStream>, Box<TlsStream<Prefixed<TcpStream>>>>;

/// Key authorizations for pending HTTP-01 challenges, by token.
/// Shared by the ACME task (which sets them) and the HTTP edge (which answers with them).
#[derive(Clone, Default)]
pub(crate) struct Http01Answers(Arc<Mutex<HashMap<String, String>>>);

impl Http01Answers {
    /// The key authorization for `token`, while its challenge is pending.
    pub(crate) fn get(&self, token: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    /// Sets (or, with `None`, withdraws) the answer for `token`.
    pub(crate) fn set(&self, token: &str, answer: Option<String>) {
        let mut answers = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            Some(answer) => answers.insert(token.to_string(), answer),
            None => answers.remove(token),
        };
    }
}

/// The HTTP-01 path prefix.
pub(crate) const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The crypto provider of every TLS context Showoff builds.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// One loaded certificate and the names it covers.
struct Entry {
    key: Arc<CertifiedKey>,
    /// Lowercase DNS names from the leaf's subjectAltName (`*.example.com` included).
    names: Vec<String>,
}

/// The certificates of a server, chosen by SNI: configured ones (replaced as a whole on reload),
/// ACME ones by exact name, and TLS-ALPN-01 challenge answers.
#[derive(Default)]
pub(crate) struct CertStore {
    entries: RwLock<Arc<Vec<Entry>>>,
    /// Certificates obtained by ACME, by exact name.
    acme: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// TLS-ALPN-01 challenge certificates, by name, served only to `acme-tls/1` handshakes.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertStore")
    }
}

impl CertStore {
    /// Replaces every certificate; on error nothing changes.
    pub(crate) fn replace(&self, pairs: &[PemPair]) -> Result<usize, String> {
        let provider = provider();
        let mut entries = Vec::with_capacity(pairs.len());
        for (index, pair) in pairs.iter().enumerate() {
            let entry =
                load(pair, &provider).map_err(|e| format!("certificate {}: {e}", index + 1))?;
            entries.push(entry);
        }
        let count = entries.len();
        *self.entries.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(entries);
        Ok(count)
    }

    fn snapshot(&self) -> Arc<Vec<Entry>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs (or replaces) an ACME certificate for `name`.
    pub(crate) fn install_acme(&self, name: &str, pair: &PemPair) -> Result<(), String> {
        let entry = load(pair, &provider())?;
        self.acme
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_ascii_lowercase(), entry.key);
        Ok(())
    }

    /// Whether an ACME certificate for `name` is installed.
    pub(crate) fn has_acme(&self, name: &str) -> bool {
        self.acme
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    /// Serves `key` to TLS-ALPN-01 validation handshakes for `name` (`None` removes it).
    pub(crate) fn set_challenge(&self, name: &str, key: Option<Arc<CertifiedKey>>) {
        let mut challenges = self.challenges.write().unwrap_or_else(|p| p.into_inner());
        match key {
            Some(key) => challenges.insert(name.to_ascii_lowercase(), key),
            None => challenges.remove(name),
        };
    }

    /// The certificate for `name`: a configured exact name, an ACME one, a configured wildcard,
    /// else the default.
    fn for_name(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let entries = self.snapshot();
        if let Some(name) = name.map(str::to_ascii_lowercase) {
            let exact = entries.iter().find(|e| e.names.contains(&name));
            if let Some(entry) = exact {
                return Some(entry.key.clone());
            }
            let acme = self.acme.read().unwrap_or_else(|p| p.into_inner());
            if let Some(key) = acme.get(&name) {
                return Some(key.clone());
            }
            let exact = entries.iter().find(|e| e.names.contains(&name));
            let wildcard = || {
                entries
                    .iter()
                    .find(|e| e.names.iter().any(|n| wildcard_matches(n, &name)))
            };
            if let Some(entry) = exact.or_else(wildcard) {
                return Some(entry.key.clone());
            }
        }
        entries.first().map(|e| e.key.clone())
    }

    /// The names the certificates cover, for logs.
    pub(crate) fn names(&self) -> Vec<String> {
        self.snapshot()
            .iter()
            .flat_map(|e| e.names.iter().cloned())
            .collect()
    }
}

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validating = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if validating {
            let name = hello.server_name()?.to_ascii_lowercase();
            let challenges = self.challenges.read().unwrap_or_else(|p| p.into_inner());
            return challenges.get(&name).cloned();
        }
        self.for_name(hello.server_name())
    }
}

/// `*.example.com` covers exactly one label in front of `example.com`.
fn wildcard_matches(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    match name.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest == suffix,
        None => false,
    }
}

fn load(pair: &PemPair, provider: &CryptoProvider) -> Result<Entry, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pair.cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate PEM does not parse: {e}"))?;
    let leaf = chain
        .first()
        .ok_or("the certificate PEM holds no certificate")?;
    let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes())
        .map_err(|e| format!("the key PEM does not parse: {e}"))?;
    let names = dns_names(leaf)?;
    let key = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("the key does not fit the certificate: {e}"))?;
    Ok(Entry {
        key: Arc::new(key),
        names,
    })
}

/// The DNS names of a certificate's subjectAltName, lowercase.
fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// The identity a client certificate carries: its first DNS subjectAltName, else its subject
/// common name.
pub(crate) fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                return Some(dns.to_string());
            }
        }
    }
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The TLS side of a server: its store and acceptors.
pub(crate) struct Tls {
    pub(crate) store: Arc<CertStore>,
    /// Control and data listeners (mTLS when a client CA is set); `None` without certificates.
    control: Option<TlsAcceptor>,
    /// Public HTTPS listener.
    pub(crate) https: Option<TlsAcceptor>,
    /// The control listener's settings for QUIC (same certificates and client CA, Showoff's
    /// ALPN); `None` without certificates.
    quic: Option<Arc<rustls::ServerConfig>>,
    /// The HTTP/3 listener's settings (the visitors' certificates, ALPN `h3`); `None` without
    /// certificates.
    http3: Option<Arc<rustls::ServerConfig>>,
}

/// ALPN protocols offered to visitors, preferred first (`acme-tls/1` only ever matches an ACME
/// validator, which offers nothing else).
pub(crate) const VISITOR_ALPN: &[&[u8]] = &[b"h2", b"http/1.1", ACME_TLS_ALPN];

impl Tls {
    /// Builds the acceptors a configuration asks for.
    pub(crate) fn new(config: &TlsConfig) -> Result<Self, String> {
        let store = Arc::new(CertStore::default());
        if config.redirect_http && config.https_addr.is_none() {
            return Err("the HTTPS redirect needs the HTTPS listener (--https-addr)".into());
        }
        let alpn_challenge = config
            .acme
            .as_ref()
            .is_some_and(|a| a.challenge == crate::config::AcmeChallenge::TlsAlpn01);
        if alpn_challenge && config.https_addr.is_none() {
            return Err("the tls-alpn-01 challenge needs the HTTPS listener (--https-addr)".into());
        }
        if !config.enabled() {
            // Without certificates the HTTPS listener only passes TLS tunnels through.
            if config.client_ca.is_some() || config.redirect_http {
                return Err(
                    "client certificates and the HTTPS redirect need a certificate (--tls-cert)"
                        .into(),
                );
            }
            return Ok(Self {
                store,
                control: None,
                https: None,
                quic: None,
                http3: None,
            });
        }
        store.replace(&config.certificates)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let control = match &config.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    let cert =
                        cert.map_err(|e| format!("the client CA PEM does not parse: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("the client CA is not usable: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("the client CA PEM holds no certificate".into());
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| format!("the client CA is not usable: {e}"))?;
                builder.clone().with_client_cert_verifier(verifier)
            }
            None => builder.clone().with_no_client_auth(),
        }
        .with_cert_resolver(store.clone());
        let mut https = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        https.alpn_protocols = VISITOR_ALPN.iter().map(|p| p.to_vec()).collect();
        let mut quic = control.clone();
        quic.alpn_protocols = vec![showoff_core::quic::ALPN.to_vec()];
        let mut http3 = https.clone();
        http3.alpn_protocols = vec![b"h3".to_vec()];
        Ok(Self {
            store,
            control: Some(TlsAcceptor::from(Arc::new(control))),
            https: Some(TlsAcceptor::from(Arc::new(https))),
            quic: Some(Arc::new(quic)),
            http3: Some(Arc::new(http3)),
        })
    }

    /// The TLS side of the HTTP/3 listener; `None` without certificates.
    pub(crate) fn http3(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.http3.clone()
    }

    /// The TLS side of the QUIC listener; `None` without certificates.
    pub(crate) fn quic(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.quic.clone()
    }

    /// Completes the TLS handshake of a control or data connection (plain when TLS is off);
    /// returns the stream and the client certificate's identity.
    pub(crate) async fn accept_control(
        &self,
        stream: TcpStream,
        prefix: BytesMut,
        deadline: Duration,
    ) -> io::Result<(ServerIo, Option<String>)> {
        let stream = Prefixed::new(prefix, stream);
        let Some(acceptor) = &self.control else {
            return Ok((Either::Left(stream), None));
        };
        // Boxed: the handshake future holds a whole rustls connection, and inline it would
        // enlarge every control task for the session's lifetime, TLS or not.
        let handshake = Box::pin(tokio::time::timeout(deadline, acceptor.accept(stream)));
        let tls = handshake
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(identity);
        Ok((Either::Right(Box::new(tls)), identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> PemPair {
        let cert = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .expect("cert");
        PemPair {
            cert: cert.cert.pem(),
            key: cert.signing_key.serialize_pem(),
        }
    }

    #[test]
    fn certificates_are_chosen_by_exact_name_then_wildcard_then_default() {
        let store = CertStore::default();
        let wildcard = pair(&["*.tunnel.test", "tunnel.test"]);
        let custom = pair(&["app.customer.test"]);
        assert_eq!(store.replace(&[wildcard.clone(), custom]), Ok(2));
        let leaf = |name: Option<&str>| {
            dns_names(&store.for_name(name).expect("a certificate").cert[0]).expect("names")
        };
        assert_eq!(leaf(Some("demo.tunnel.test"))[0], "*.tunnel.test");
        assert_eq!(leaf(Some("APP.customer.test"))[0], "app.customer.test");
        assert_eq!(leaf(Some("a.b.tunnel.test"))[0], "*.tunnel.test", "default");
        assert_eq!(leaf(None)[0], "*.tunnel.test");
        assert!(wildcard_matches("*.tunnel.test", "x.tunnel.test"));
        assert!(!wildcard_matches("*.tunnel.test", "tunnel.test"));
        assert!(!wildcard_matches("*.tunnel.test", "a.b.tunnel.test"));
        assert!(!wildcard_matches("tunnel.test", "x.tunnel.test"));
    }

    #[test]
    fn bad_pem_is_refused_and_keeps_the_old_certificates() {
        let store = CertStore::default();
        let good = pair(&["a.test"]);
        store.replace(std::slice::from_ref(&good)).expect("good");
        let mismatched = PemPair {
            cert: good.cert.clone(),
            key: pair(&["b.test"]).key,
        };
        for bad in [
            PemPair {
                cert: "garbage".into(),
                key: good.key.clone(),
            },
            PemPair {
                cert: good.cert.clone(),
                key: "garbage".into(),
            },
            mismatched,
        ] {
            assert!(store.replace(&[bad]).is_err());
        }
        assert_eq!(store.names(), vec!["a.test".to_string()]);
    }

    #[test]
    fn settings_that_cannot_work_are_refused_with_the_reason() {
        let refused = |config: TlsConfig| Tls::new(&config).err().expect("refused");
        let with_cert = TlsConfig {
            certificates: vec![pair(&["a.test"])],
            ..TlsConfig::default()
        };
        let redirect = refused(TlsConfig {
            redirect_http: true,
            ..with_cert.clone()
        });
        assert!(redirect.contains("--https-addr"), "{redirect}");
        let mtls_without_cert = refused(TlsConfig {
            client_ca: Some(pair(&["ca.test"]).cert),
            ..TlsConfig::default()
        });
        assert!(
            mtls_without_cert.contains("--tls-cert"),
            "{mtls_without_cert}"
        );
        let bad_ca = refused(TlsConfig {
            client_ca: Some("nothing".into()),
            ..with_cert.clone()
        });
        assert!(bad_ca.contains("client CA"), "{bad_ca}");
        assert!(Tls::new(&with_cert).is_ok());
        let passthrough_only = TlsConfig {
            https_addr: Some("127.0.0.1:0".parse().expect("addr")),
            ..TlsConfig::default()
        };
        assert!(Tls::new(&passthrough_only).is_ok_and(|t| t.https.is_none()));
    }

    #[test]
    fn client_identities_come_from_the_certificate() {
        let cert = rcgen::generate_simple_self_signed(vec!["ci-runner".to_string()]).expect("cert");
        assert_eq!(identity(cert.cert.der()), Some("ci-runner".into()));
    }
}
