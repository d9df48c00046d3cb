//! ACME settings: directory, contact, storage, challenge type, names, on-demand guard.

use std::path::PathBuf;
use std::time::Duration;

/// How ACME challenges are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// `http://<name>/.well-known/acme-challenge/<token>` on the public HTTP listener.
    Http01,
    /// A self-signed validation certificate for `acme-tls/1` handshakes on the HTTPS listener.
    TlsAlpn01,
}

impl std::str::FromStr for AcmeChallenge {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http-01" => Ok(Self::Http01),
            "tls-alpn-01" => Ok(Self::TlsAlpn01),
            _ => Err("expected http-01 or tls-alpn-01".into()),
        }
    }
}

/// ACME settings.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The ACME server's directory URL.
    pub directory: String,
    /// Contact URIs for the account (`mailto:ops@example.com`).
    pub contact: Vec<String>,
    /// Where the account and certificates are kept.
    pub storage: PathBuf,
    /// PEM CA certificates that verify the ACME server itself (test or private ACME servers).
    pub directory_ca: Option<PathBuf>,
    /// How challenges are answered.
    pub challenge: AcmeChallenge,
    /// Names certified at start and kept renewed (e.g. the server's own name).
    pub names: Vec<String>,
    /// Also certify `<tunnel>.<domain>` for HTTP tunnels as they register.
    pub on_demand: bool,
    /// Most on-demand orders per hour (a guard against name churn exhausting the CA's limits).
    pub orders_per_hour: u32,
    /// Renew certificates this long before they expire.
    pub renew_before: Duration,
    /// First wait after a failure; doubles per failure up to an hour.
    pub retry_after: Duration,
}

/// Default renewal margin: 30 days.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
