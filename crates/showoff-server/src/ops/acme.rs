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
use std::path::Path;
use std::sync::Arc;
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

use tokio_util::sync::CancellationToken;

pub use crate::config::{AcmeChallenge, AcmeConfig, DEFAULT_RENEW_BEFORE, PemPair};
use crate::state::Routes;
use crate::stats::Stats;
use crate::tls::{Http01Answers, Tls};

/// Longest wait between attempts for a failing name.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

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

/// What the ACME task uses.
pub(crate) struct AcmeContext {
    pub(crate) config: AcmeConfig,
    /// Base domain: on-demand names are `<tunnel>.<domain>`.
    pub(crate) domain: String,
    pub(crate) routes: Arc<Routes>,
    pub(crate) tls: Arc<Tls>,
    pub(crate) http01: Http01Answers,
    pub(crate) stats: Arc<Stats>,
    pub(crate) stop: CancellationToken,
}

/// Orders, renews and installs certificates until the server stops. `requests` carries
/// hostnames of tunnels that just registered.
pub(crate) async fn run(ctx: AcmeContext, mut requests: mpsc::Receiver<String>) {
    let mut orderer = Orderer::new(&ctx);
    orderer.load_stored();
    let tick = ctx.config.retry_after.min(Duration::from_secs(60));
    // Without on-demand certificates nobody sends requests; the closed queue is then ignored.
    let mut queue_open = true;
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => return,
            request = requests.recv(), if queue_open => match request {
                // A new name is ordered at once, not at the next tick.
                Some(name) => if orderer.requested(name) {
                    orderer.order_due().await;
                },
                None => queue_open = false,
            },
            _ = tokio::time::sleep(tick) => orderer.order_due().await,
        }
    }
}

/// The ordering task's state: every name it looks after, the hourly guard, the account.
struct Orderer<'a> {
    ctx: &'a AcmeContext,
    names: HashMap<String, NameState>,
    guard: Option<governor::DefaultDirectRateLimiter>,
    account: Option<Account>,
    account_failures: u32,
}

impl<'a> Orderer<'a> {
    fn new(ctx: &'a AcmeContext) -> Self {
        let mut names: HashMap<String, NameState> = HashMap::new();
        for name in &ctx.config.names {
            names
                .entry(name.to_ascii_lowercase())
                .or_default()
                .configured = true;
        }
        let guard = std::num::NonZeroU32::new(ctx.config.orders_per_hour)
            .map(|n| governor::RateLimiter::direct(governor::Quota::per_hour(n)));
        Self {
            ctx,
            names,
            guard,
            account: None,
            account_failures: 0,
        }
    }

    /// Certificates on disk serve at once, before the ACME server is even reachable.
    fn load_stored(&mut self) {
        for (name, pair) in stored_certificates(&self.ctx.config.storage) {
            match install(self.ctx, &name, &pair) {
                Ok(not_after) => {
                    info!(name, ?not_after, "certificate loaded from storage");
                    self.names.entry(name).or_default().not_after = Some(not_after);
                }
                Err(error) => {
                    warn!(name, %error, "stored certificate not usable; ordering a new one")
                }
            }
        }
    }

    /// An on-demand request for a tunnel hostname, under the hourly guard; true when the
    /// name is new and admitted.
    fn requested(&mut self, name: String) -> bool {
        if self.names.contains_key(&name) {
            return false;
        }
        if self.guard.as_ref().is_some_and(|g| g.check().is_err()) {
            warn!(
                name,
                "on-demand certificate refused by the hourly order guard"
            );
            self.ctx.stats.acme_order("rate_guarded");
            return false;
        }
        self.names.insert(name, NameState::default());
        true
    }

    /// Names whose certificate is missing or due for renewal and whose wait is over.
    fn due(&self, now: tokio::time::Instant) -> Vec<String> {
        let renew_before = self.ctx.config.renew_before;
        self.names
            .iter()
            .filter(|(name, state)| {
                state.next_attempt.is_none_or(|t| t <= now)
                    && needs_certificate(state.not_after, SystemTime::now(), renew_before)
                    && (state.configured || registered(self.ctx, name))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Orders every due name, one at a time.
    async fn order_due(&mut self) {
        let now = tokio::time::Instant::now();
        let due = self.due(now);
        if due.is_empty() || !self.ensure_account(&due, now).await {
            return;
        }
        for name in due {
            self.order(&name).await;
        }
    }

    /// Loads or creates the account; on failure, every due name waits with backoff.
    async fn ensure_account(&mut self, due: &[String], now: tokio::time::Instant) -> bool {
        if self.account.is_some() {
            return true;
        }
        match load_or_create_account(&self.ctx.config).await {
            Ok(created) => {
                self.account = Some(created);
                true
            }
            Err(error) => {
                self.account_failures += 1;
                let wait = backoff(self.ctx.config.retry_after, self.account_failures);
                warn!(%error, retry_in = ?wait, "ACME account unavailable");
                self.ctx.stats.acme_order("account_failed");
                for name in due {
                    if let Some(state) = self.names.get_mut(name) {
                        state.next_attempt = Some(now + wait);
                    }
                }
                false
            }
        }
    }

    /// One order for `name`, stored and installed; failures back off.
    async fn order(&mut self, name: &str) {
        let (ctx, config) = (self.ctx, &self.ctx.config);
        let Some(account) = &self.account else { return };
        // Served first, stored second: a full or read-only store loses the copy on disk (the
        // name is ordered again after a restart), never the certificate in use.
        let result = obtain(account, name, ctx).await.and_then(|pair| {
            let not_after = install(ctx, name, &pair)?;
            if let Err(error) = store_certificate(&config.storage, name, &pair) {
                tracing::error!(name, %error, "certificate obtained and served, but the ACME store cannot keep it (full or read-only); it is ordered again after a restart");
                ctx.stats.acme_order("not_stored");
            }
            Ok(not_after)
        });
        let Some(state) = self.names.get_mut(name) else {
            return;
        };
        match result {
            Ok(not_after) => {
                info!(name, ?not_after, "certificate obtained");
                ctx.stats.acme_order("ok");
                state.not_after = Some(not_after);
                state.failures = 0;
                state.next_attempt = None;
            }
            Err(error) => {
                state.failures += 1;
                let wait = backoff(config.retry_after, state.failures);
                warn!(name, %error, failures = state.failures, retry_in = ?wait, "certificate order failed");
                ctx.stats.acme_order("failed");
                state.next_attempt = Some(tokio::time::Instant::now() + wait);
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
fn registered(ctx: &AcmeContext, host: &str) -> bool {
    showoff_proto::host::route_name(host, &ctx.domain)
        .and_then(|name| ctx.routes.get(name))
        .is_some_and(|t| t.info.kind == showoff_proto::TunnelKind::Http)
}

fn install(ctx: &AcmeContext, name: &str, pair: &PemPair) -> Result<SystemTime, String> {
    let not_after = not_after(&pair.cert)?;
    ctx.tls.store.install_acme(name, pair)?;
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
    info!(directory = %config.directory, "ACME account created");
    // An account that cannot be stored still works for this run; a restart creates another.
    if let Err(error) = write_secret(&path, text.as_bytes()) {
        tracing::error!(%error, "the ACME account cannot be stored (the store is full or read-only); it is used until a restart");
    }
    Ok(account)
}

/// Runs one order for `name` through its challenge to a certificate chain and key.
async fn obtain(account: &Account, name: &str, ctx: &AcmeContext) -> Result<PemPair, String> {
    let identifiers = [Identifier::Dns(name.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut tokens = Vec::new();
    let validated = answer_challenges(&mut order, name, ctx, &mut tokens).await;
    // Answers are withdrawn whatever happened, so no stale token or certificate lingers.
    for token in &tokens {
        ctx.http01.set(token, None);
    }
    ctx.tls.store.set_challenge(name, None);
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
    ctx: &AcmeContext,
    tokens: &mut Vec<String>,
) -> Result<OrderStatus, String> {
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
        if authz.status != AuthorizationStatus::Pending {
            continue;
        }
        let kind = match ctx.config.challenge {
            AcmeChallenge::Http01 => ChallengeType::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let wanted = format!("{kind:?}");
        let mut challenge = authz
            .challenge(kind)
            .ok_or_else(|| format!("the ACME server offers no {wanted} challenge"))?;
        let key_authorization = challenge.key_authorization();
        match ctx.config.challenge {
            AcmeChallenge::Http01 => {
                let answer = key_authorization.as_str().to_string();
                ctx.http01.set(&challenge.token, Some(answer));
                tokens.push(challenge.token.clone());
            }
            AcmeChallenge::TlsAlpn01 => {
                let key = validation_certificate(name, key_authorization.digest().as_ref())?;
                ctx.tls.store.set_challenge(name, Some(key));
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
