//! Automatic certificates (ACME, RFC 8555, with instant-acme): obtained at start for the
//! configured names and on demand for tunnel hostnames as they register, renewed ahead of
//! expiry, persisted on disk, answered through HTTP-01 (on the public HTTP listener) or
//! TLS-ALPN-01 (on the HTTPS listener).
//!
//! One task ([`run`]) owns all ordering, one name at a time. It only orders names that are
//! configured or registered right now, at most `orders_per_hour` on-demand orders, and a name
//! that failed waits with exponential backoff before it is tried again. Failures are logged and
//! counted (`showoff_acme_orders_total{code}`).
//!
//! This module is the one place the server library touches files itself: persisting the
//! account and certificates is the job it exists for. Storage layout under `storage`:
//! `account.json` (the ACME account credentials) and `certs/<name>.pem` / `certs/<name>.key`,
//! all written atomically (temporary file, then rename) with mode 0600 for secrets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::server::Shared;
use crate::tls::PemPair;

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

/// Longest wait between attempts for a failing name.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Key authorizations for pending HTTP-01 challenges, by token.
#[derive(Default)]
pub(crate) struct Http01Answers(Mutex<HashMap<String, String>>);

impl Http01Answers {
    /// The key authorization for `token`, while its challenge is pending.
    pub(crate) fn get(&self, token: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    fn set(&self, token: &str, answer: Option<String>) {
        let mut answers = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            Some(answer) => answers.insert(token.to_string(), answer),
            None => answers.remove(token),
        };
    }
}

/// The HTTP-01 path prefix.
pub(crate) const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Per-name bookkeeping of the ordering task.
#[derive(Default)]
struct NameState {
    /// Earliest time the next order may start.
    next_attempt: Option<tokio::time::Instant>,
    failures: u32,
    /// The installed certificate's expiry.
    not_after: Option<SystemTime>,
    /// Named in the configuration (kept even without a tunnel).
    configured: bool,
}

/// Orders, renews and installs certificates until the server stops. `requests` carries
/// hostnames of tunnels that just registered.
pub(crate) async fn run(shared: Arc<Shared>, mut requests: mpsc::Receiver<String>) {
    let Some(config) = shared.config.tls.acme.clone() else {
        return;
    };
    let mut names: HashMap<String, NameState> = HashMap::new();
    for name in &config.names {
        names
            .entry(name.to_ascii_lowercase())
            .or_default()
            .configured = true;
    }
    // Certificates on disk serve at once, before the ACME server is even reachable.
    for (name, pair) in stored_certificates(&config.storage) {
        match install(&shared, &name, &pair) {
            Ok(not_after) => {
                info!(name, ?not_after, "certificate loaded from storage");
                names.entry(name).or_default().not_after = Some(not_after);
            }
            Err(error) => warn!(name, %error, "stored certificate not usable; ordering a new one"),
        }
    }
    let guard = std::num::NonZeroU32::new(config.orders_per_hour)
        .map(|n| governor::RateLimiter::direct(governor::Quota::per_hour(n)));
    let mut account: Option<Account> = None;
    let mut account_failures = 0;
    let tick = config.retry_after.min(Duration::from_secs(60));
    // Without on-demand certificates nobody sends requests; the closed queue is then ignored.
    let mut queue_open = true;
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            request = requests.recv(), if queue_open => match request {
                Some(name) if !names.contains_key(&name) => {
                    if guard.as_ref().is_none_or(|g| g.check().is_ok()) {
                        names.insert(name, NameState::default());
                    } else {
                        warn!(name, "on-demand certificate refused by the hourly order guard");
                        shared.stats.acme_order("rate_guarded");
                        continue;
                    }
                }
                Some(_) => continue,
                None => {
                    queue_open = false;
                    continue;
                }
            },
            _ = tokio::time::sleep(tick) => {}
        }
        let now = tokio::time::Instant::now();
        let due: Vec<String> = names
            .iter()
            .filter(|(name, state)| {
                state.next_attempt.is_none_or(|t| t <= now)
                    && needs_certificate(state.not_after, SystemTime::now(), config.renew_before)
                    && (state.configured || registered(&shared, name))
            })
            .map(|(name, _)| name.clone())
            .collect();
        if due.is_empty() {
            continue;
        }
        if account.is_none() {
            match load_or_create_account(&config).await {
                Ok(created) => account = Some(created),
                Err(error) => {
                    account_failures += 1;
                    let wait = backoff(config.retry_after, account_failures);
                    warn!(%error, retry_in = ?wait, "ACME account unavailable");
                    shared.stats.acme_order("account_failed");
                    for name in &due {
                        if let Some(state) = names.get_mut(name) {
                            state.next_attempt = Some(now + wait);
                        }
                    }
                    continue;
                }
            }
        }
        let Some(acct) = &account else { continue };
        for name in due {
            let result = obtain(acct, &name, &config, &shared).await;
            let Some(state) = names.get_mut(&name) else {
                continue;
            };
            match result.and_then(|pair| {
                store_certificate(&config.storage, &name, &pair)?;
                install(&shared, &name, &pair)
            }) {
                Ok(not_after) => {
                    info!(name, ?not_after, "certificate obtained");
                    shared.stats.acme_order("ok");
                    state.not_after = Some(not_after);
                    state.failures = 0;
                    state.next_attempt = None;
                }
                Err(error) => {
                    state.failures += 1;
                    let wait = backoff(config.retry_after, state.failures);
                    warn!(name, %error, failures = state.failures, retry_in = ?wait, "certificate order failed");
                    shared.stats.acme_order("failed");
                    state.next_attempt = Some(tokio::time::Instant::now() + wait);
                }
            }
        }
    }
}

/// Whether a certificate expiring at `not_after` must be (re)ordered at `now`.
fn needs_certificate(
    not_after: Option<SystemTime>,
    now: SystemTime,
    renew_before: Duration,
) -> bool {
    match not_after {
        None => true,
        Some(expiry) => expiry
            .duration_since(now)
            .map_or(true, |left| left <= renew_before),
    }
}

/// `retry_after` doubled per earlier failure, at most an hour.
fn backoff(retry_after: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    retry_after.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Whether `host` is `<name>.<domain>` of a registered HTTP tunnel.
fn registered(shared: &Shared, host: &str) -> bool {
    showoff_proto::host::route_name(host, &shared.config.domain)
        .and_then(|name| shared.routes.get(name))
        .is_some_and(|t| t.info.kind == showoff_proto::TunnelKind::Http)
}

fn install(shared: &Shared, name: &str, pair: &PemPair) -> Result<SystemTime, String> {
    let not_after = not_after(&pair.cert)?;
    shared.tls.store.install_acme(name, pair)?;
    Ok(not_after)
}

/// The leaf's expiry.
fn not_after(cert_pem: &str) -> Result<SystemTime, String> {
    let leaf = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .ok_or("no certificate in the chain")?
        .map_err(|e| e.to_string())?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    let secs = parsed.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

async fn load_or_create_account(config: &AcmeConfig) -> Result<Account, String> {
    let builder = match &config.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    }
    .map_err(|e| format!("ACME client: {e}"))?;
    let path = config.storage.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let credentials: AccountCredentials =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return builder
            .from_credentials(credentials)
            .await
            .map_err(|e| format!("restoring the ACME account: {e}"));
    }
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("creating the ACME account at {}: {e}", config.directory))?;
    let text = serde_json::to_string(&credentials).map_err(|e| e.to_string())?;
    write_secret(&path, text.as_bytes())?;
    info!(directory = %config.directory, "ACME account created");
    Ok(account)
}

/// Runs one order for `name` through its challenge to a certificate chain and key.
async fn obtain(
    account: &Account,
    name: &str,
    config: &AcmeConfig,
    shared: &Shared,
) -> Result<PemPair, String> {
    let identifiers = [Identifier::Dns(name.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut tokens = Vec::new();
    let validated = answer_challenges(&mut order, name, config, shared, &mut tokens).await;
    // Answers are withdrawn whatever happened, so no stale token or certificate lingers.
    for token in &tokens {
        shared.acme_http01.set(token, None);
    }
    shared.tls.store.set_challenge(name, None);
    let status = validated?;
    if status != OrderStatus::Ready {
        return Err(format!("the order ended {status:?} instead of ready"));
    }
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let csr = CertificateParams::new(vec![name.to_string()])
        .and_then(|params| params.serialize_request(&key))
        .map_err(|e| format!("certificate request: {e}"))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&retry_policy())
        .await
        .map_err(|e| format!("certificate download: {e}"))?;
    Ok(PemPair {
        cert: chain,
        key: key.serialize_pem(),
    })
}

/// Sets up and readies each pending challenge of `order`, then waits for validation; the HTTP-01
/// tokens it published are pushed to `tokens` for the caller to withdraw.
async fn answer_challenges(
    order: &mut instant_acme::Order,
    name: &str,
    config: &AcmeConfig,
    shared: &Shared,
    tokens: &mut Vec<String>,
) -> Result<OrderStatus, String> {
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
        if authz.status != AuthorizationStatus::Pending {
            continue;
        }
        let kind = match config.challenge {
            AcmeChallenge::Http01 => ChallengeType::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let wanted = format!("{kind:?}");
        let mut challenge = authz
            .challenge(kind)
            .ok_or_else(|| format!("the ACME server offers no {wanted} challenge"))?;
        let key_authorization = challenge.key_authorization();
        match config.challenge {
            AcmeChallenge::Http01 => {
                let answer = key_authorization.as_str().to_string();
                shared.acme_http01.set(&challenge.token, Some(answer));
                tokens.push(challenge.token.clone());
            }
            AcmeChallenge::TlsAlpn01 => {
                let key = validation_certificate(name, key_authorization.digest().as_ref())?;
                shared.tls.store.set_challenge(name, Some(key));
            }
        }
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("challenge ready: {e}"))?;
    }
    order
        .poll_ready(&retry_policy())
        .await
        .map_err(|e| format!("waiting for validation: {e}"))
}

/// How long and how often order states are polled.
fn retry_policy() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(2.0)
        .timeout(Duration::from_secs(120))
}

/// The self-signed TLS-ALPN-01 certificate for `name` carrying the key authorization digest.
fn validation_certificate(
    name: &str,
    digest: &[u8],
) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| e.to_string())?;
    // Not `from_der`: its consistency check parses the certificate with webpki, which refuses
    // the critical acmeIdentifier extension that only ACME validators understand.
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// Certificates kept in `storage/certs`, by name.
fn stored_certificates(storage: &Path) -> Vec<(String, PemPair)> {
    let Ok(dir) = std::fs::read_dir(storage.join("certs")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pem") {
            continue;
        }
        let Some(name) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let cert = std::fs::read_to_string(&path);
        let key = std::fs::read_to_string(path.with_extension("key"));
        if let (Ok(cert), Ok(key)) = (cert, key) {
            found.push((name, PemPair { cert, key }));
        }
    }
    found
}

fn store_certificate(storage: &Path, name: &str, pair: &PemPair) -> Result<(), String> {
    let dir = storage.join("certs");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    write_secret(&dir.join(format!("{name}.key")), pair.key.as_bytes())?;
    write_secret(&dir.join(format!("{name}.pem")), pair.cert.as_bytes())
}

/// Writes `bytes` to `path` atomically, readable by the owner only.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|e| format!("{}: {e}", temporary.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_renewed_inside_the_margin_only() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let day = Duration::from_secs(86_400);
        assert!(needs_certificate(None, now, day));
        assert!(!needs_certificate(Some(now + 90 * day), now, 30 * day));
        assert!(needs_certificate(Some(now + 29 * day), now, 30 * day));
        assert!(needs_certificate(Some(now - day), now, 30 * day), "expired");
    }

    #[test]
    fn failures_back_off_exponentially_up_to_an_hour() {
        let base = Duration::from_secs(60);
        assert_eq!(backoff(base, 1), base);
        assert_eq!(backoff(base, 2), 2 * base);
        assert_eq!(backoff(base, 4), 8 * base);
        assert_eq!(backoff(base, 40), MAX_BACKOFF);
    }

    #[test]
    fn stored_certificates_round_trip_with_private_keys() {
        let dir = std::env::temp_dir().join(format!("showoff-acme-unit-{}", std::process::id()));
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).expect("cert");
        let pair = PemPair {
            cert: cert.cert.pem(),
            key: cert.signing_key.serialize_pem(),
        };
        store_certificate(&dir, "a.test", &pair).expect("stored");
        let found = stored_certificates(&dir);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "a.test");
        assert_eq!(found[0].1, pair);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("certs/a.test.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(not_after(&pair.cert).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn validation_certificates_carry_the_acme_identifier() {
        let key = validation_certificate("v.test", &[7u8; 32]).expect("certificate");
        let (_, parsed) =
            x509_parser::parse_x509_certificate(key.cert[0].as_ref()).expect("parses");
        let oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 5, 5, 7, 1, 31]).expect("oid");
        let extension = parsed
            .extensions()
            .iter()
            .find(|e| e.oid == oid)
            .expect("acmeIdentifier");
        assert!(extension.critical);
        assert!(extension.value.ends_with(&[7u8; 32]));
    }
}
