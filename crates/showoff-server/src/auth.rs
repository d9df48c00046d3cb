//! Who a client is and what it may do: the [`Authenticator`] interface and its built-ins.
//!
//! An authenticator turns the token a client presents into a [`Principal`]: an identity plus
//! permissions (allowed name patterns, tunnel kinds, a tunnel limit), or a refusal. The session
//! code enforces the permissions. Built-ins, composed with [`Chain`]:
//! - [`Open`]: any token, identified by its hash (only allowed with loopback listeners);
//! - [`SharedTokens`]: a list of shared secrets, compared in constant time;
//! - [`TokenTable`]: per-client tokens stored as SHA-256 hashes, each with an id and
//!   permissions; the binary fills it from a token file and replaces it on reload, and the
//!   server closes the sessions of revoked ids;
//! - [`signed::SignedTokens`]: HMAC-SHA256 signed tokens carrying their own grant and expiry,
//!   verified without a lookup (`showoff token sign`);
//! - [`jwt::Jwt`]: JSON Web Tokens (HS256, RS256, ES256) with issuer, audience and expiry checks;
//! - [`policy::RegoPolicy`] and [`policy::Webhook`]: OPA-style decisions, from a Rego policy
//!   evaluated in-process or from an external service speaking OPA's data API.

pub mod jwt;
pub mod policy;
pub mod signed;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use showoff_proto::TunnelKind;

pub use crate::config::NamePattern;
use crate::config::Secret;

/// An authenticated identity and its permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stable identity: names are owned by it, sessions are grouped by it.
    pub id: String,
    /// Name patterns this principal may register (`alice-*`); empty means any name.
    pub names: Vec<NamePattern>,
    /// Tunnel kinds allowed; empty means all.
    pub kinds: Vec<TunnelKind>,
    /// Most tunnels open at once across the principal's sessions; `None` means no limit.
    pub max_tunnels: Option<usize>,
}

impl Principal {
    /// A principal with no restrictions.
    pub fn unrestricted(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            names: Vec::new(),
            kinds: Vec::new(),
            max_tunnels: None,
        }
    }

    /// Whether `name` is one this principal may register.
    pub fn may_use_name(&self, name: &str) -> bool {
        self.names.is_empty() || self.names.iter().any(|p| p.matches(name))
    }

    /// Whether tunnels of `kind` are allowed.
    pub fn may_open(&self, kind: TunnelKind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }
}

/// The permissions a self-contained credential (signed token, JWT, policy decision) carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Grant {
    /// Name patterns (`alice-*`); empty or absent means any name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Tunnel kinds; empty or absent means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<TunnelKind>,
    /// Most tunnels open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tunnels: Option<usize>,
}

impl Grant {
    /// The principal `id` holding this grant.
    pub fn principal(self, id: impl Into<String>) -> Principal {
        Principal {
            id: id.into(),
            names: self.names.into_iter().map(NamePattern::new).collect(),
            kinds: self.kinds,
            max_tunnels: self.max_tunnels,
        }
    }
}

/// What a client presents to be authenticated.
#[derive(Debug, Clone, Copy)]
pub struct AuthRequest<'a> {
    /// The token from `Auth`.
    pub token: &'a str,
    /// The client's TCP address.
    pub peer: SocketAddr,
    /// The identity of the client's verified TLS certificate (mTLS), when it presented one.
    pub certificate: Option<&'a str>,
}

/// Why authentication failed. The display text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No built-in accepted the token.
    #[error("the token was not accepted")]
    Rejected,
    /// The token was genuine but its expiry has passed.
    #[error("the token has expired")]
    Expired,
    /// The token was genuine but its issuer or audience is not one this server accepts.
    #[error("the token was not issued for this server ({0})")]
    WrongAudience(String),
    /// A policy decided against this client; the text is the policy's reason.
    #[error("denied by policy: {0}")]
    Denied(String),
    /// The decision service could not answer (network, status, malformed answer).
    #[error("authentication is unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// How specific the error is: a chain reports the most specific error any member gave.
    fn rank(&self) -> u8 {
        match self {
            Self::Rejected => 0,
            Self::Unavailable(_) => 1,
            Self::WrongAudience(_) | Self::Expired | Self::Denied(_) => 2,
        }
    }

    /// The refusal code a client gets for this error.
    pub fn code(&self) -> showoff_proto::RefusedCode {
        match self {
            Self::Unavailable(_) => showoff_proto::RefusedCode::AuthUnavailable,
            _ => showoff_proto::RefusedCode::AuthFailed,
        }
    }
}

/// Turns a presented token into a principal.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates the request's token.
    async fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthError>;
}

/// The authenticators the configuration asks for, in order: client certificates (mTLS),
/// shared tokens, the token table, signed tokens, JWT, Rego policy, decision webhook; with
/// none, the server runs open. Keys and policies are loaded here, once.
pub(crate) fn from_config(
    config: &crate::config::ServerConfig,
    table: Option<&TokenTable>,
) -> Result<Arc<dyn Authenticator>, crate::config::ConfigError> {
    use crate::config::ConfigError;
    let mut chain: Vec<Arc<dyn Authenticator>> = Vec::new();
    if config.tls.client_ca.is_some() {
        chain.push(Arc::new(Certificate));
    }
    if !config.tokens.is_empty() {
        chain.push(Arc::new(SharedTokens(config.tokens.clone())));
    }
    if let Some(table) = table {
        chain.push(Arc::new(table.clone()));
    }
    let auth = &config.auth;
    if let Some(secret) = &auth.signed_secret {
        chain.push(Arc::new(signed::SignedTokens::new(secret)));
    }
    if let Some(jwt) = &auth.jwt {
        chain.push(Arc::new(jwt::Jwt::new(jwt).map_err(ConfigError::Auth)?));
    }
    if let Some(policy) = &auth.policy {
        let rego = policy::RegoPolicy::new(&policy.path, &policy.rego, &policy.rule)
            .map_err(ConfigError::Auth)?;
        chain.push(Arc::new(rego));
    }
    if let Some(webhook) = &auth.webhook {
        let webhook =
            policy::Webhook::new(&webhook.url, webhook.timeout).map_err(ConfigError::Auth)?;
        chain.push(Arc::new(webhook));
    }
    if chain.is_empty() {
        return Ok(Arc::new(Open));
    }
    Ok(Arc::new(Chain(chain)))
}

/// SHA-256 of a token, lowercase hex: what token files store.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Accepts any token; the principal is derived from the token's hash, so different tokens are
/// different principals. Only for servers whose listeners are all on loopback.
#[derive(Debug, Default)]
pub struct Open;

#[async_trait]
impl Authenticator for Open {
    async fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthError> {
        Ok(Principal::unrestricted(format!(
            "open:{}",
            &token_hash(request.token)[..16]
        )))
    }
}

/// Clients identified by a verified TLS client certificate (mTLS); the principal is
/// `cert:<identity>`. Tokens are not looked at: the certificate is the credential.
#[derive(Debug, Default)]
pub struct Certificate;

#[async_trait]
impl Authenticator for Certificate {
    async fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthError> {
        match request.certificate {
            Some(identity) => Ok(Principal::unrestricted(format!("cert:{identity}"))),
            None => Err(AuthError::Rejected),
        }
    }
}

/// Shared secrets; the principal is `token:<index>`.
#[derive(Debug)]
pub struct SharedTokens(pub Vec<Secret>);

#[async_trait]
impl Authenticator for SharedTokens {
    async fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthError> {
        let token = request.token;
        let mut found = None;
        for (index, accepted) in self.0.iter().enumerate() {
            // Compare against every token so timing does not reveal which one matched.
            if showoff_proto::id::constant_time_eq(accepted.expose().as_bytes(), token.as_bytes()) {
                found = Some(index);
            }
        }
        found
            .map(|index| Principal::unrestricted(format!("token:{index}")))
            .ok_or(AuthError::Rejected)
    }
}

/// One entry of a token table: a hashed token and the principal it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// SHA-256 of the token, lowercase hex ([`token_hash`]).
    pub sha256: String,
    /// The principal the token stands for.
    pub principal: Principal,
}

/// Per-client tokens, replaceable at run time (token-file reloads).
#[derive(Debug, Default, Clone)]
pub struct TokenTable {
    entries: Arc<RwLock<HashMap<String, Principal>>>,
}

impl TokenTable {
    /// A table holding `entries`.
    pub fn new(entries: Vec<TokenEntry>) -> Self {
        let table = Self::default();
        table.replace(entries);
        table
    }

    /// Replaces every entry; returns the ids that were present before and are gone now
    /// (revoked), so their sessions can be closed.
    pub fn replace(&self, entries: Vec<TokenEntry>) -> Vec<String> {
        let fresh: HashMap<String, Principal> = entries
            .into_iter()
            .map(|e| (e.sha256.to_ascii_lowercase(), e.principal))
            .collect();
        let mut current = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let mut revoked: Vec<String> = current
            .values()
            .filter(|old| !fresh.values().any(|new| new.id == old.id))
            .map(|old| old.id.clone())
            .collect();
        revoked.sort();
        revoked.dedup();
        *current = fresh;
        revoked
    }

    /// Number of tokens held.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl Authenticator for TokenTable {
    async fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthError> {
        let hash = token_hash(request.token);
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        // The map lookup is keyed by a hash of the secret, so its timing reveals nothing useful
        // about the token itself.
        entries.get(&hash).cloned().ok_or(AuthError::Rejected)
    }
}

/// Tries each authenticator in order; the first that accepts wins. When none does, the most
/// specific error is reported (expired or denied over unavailable over not accepted).
pub struct Chain(pub Vec<Arc<dyn Authenticator>>);

#[async_trait]
impl Authenticator for Chain {
    async fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthError> {
        let mut worst = AuthError::Rejected;
        for auth in &self.0 {
            match auth.authenticate(request).await {
                Ok(principal) => return Ok(principal),
                Err(error) if error.rank() > worst.rank() => worst = error,
                Err(_) => {}
            }
        }
        Err(worst)
    }
}

/// Seconds since the Unix epoch, for expiry checks.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn request(token: &str) -> AuthRequest<'_> {
        AuthRequest {
            token,
            peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
            certificate: None,
        }
    }

    #[test]
    fn patterns_match_whole_names() {
        let cases = [
            ("alice-*", "alice-web", true),
            ("alice-*", "alice-", true),
            ("alice-*", "bob-web", false),
            ("alice-*", "xalice-web", false),
            ("*-dev", "api-dev", true),
            ("*-dev", "api-devx", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*", "anything", true),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(
                NamePattern::new(pattern).matches(name),
                want,
                "{pattern} ~ {name}"
            );
        }
        assert_eq!(
            NamePattern::new("alice-*").fill("x1"),
            Some("alice-x1".into())
        );
        assert_eq!(NamePattern::new("a*b*").fill("x"), None);
    }

    #[test]
    fn principals_enforce_names_and_kinds() {
        let p = Principal {
            id: "alice".into(),
            names: vec![NamePattern::new("alice-*")],
            kinds: vec![TunnelKind::Http],
            max_tunnels: Some(2),
        };
        assert!(p.may_use_name("alice-web") && !p.may_use_name("bob"));
        assert!(p.may_open(TunnelKind::Http) && !p.may_open(TunnelKind::Tcp));
        assert!(Principal::unrestricted("x").may_use_name("anything"));
    }

    #[tokio::test]
    async fn token_tables_store_hashes_and_report_revocations() {
        let alice = TokenEntry {
            sha256: token_hash("alice-secret"),
            principal: Principal::unrestricted("alice"),
        };
        let bob = TokenEntry {
            sha256: token_hash("bob-secret"),
            principal: Principal::unrestricted("bob"),
        };
        let table = TokenTable::new(vec![alice.clone(), bob]);
        assert_eq!(
            table
                .authenticate(&request("alice-secret"))
                .await
                .map(|p| p.id),
            Ok("alice".into())
        );
        assert_eq!(
            table.authenticate(&request("nope")).await,
            Err(AuthError::Rejected)
        );
        assert_eq!(table.replace(vec![alice]), vec!["bob".to_string()]);
        assert_eq!(
            table.authenticate(&request("bob-secret")).await,
            Err(AuthError::Rejected)
        );
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn chains_try_each_in_order() {
        let chain = Chain(vec![
            Arc::new(SharedTokens(vec![Secret::new("shared")])),
            Arc::new(TokenTable::new(vec![TokenEntry {
                sha256: token_hash("own"),
                principal: Principal::unrestricted("carol"),
            }])),
        ]);
        assert_eq!(
            chain.authenticate(&request("shared")).await.map(|p| p.id),
            Ok("token:0".into())
        );
        assert_eq!(
            chain.authenticate(&request("own")).await.map(|p| p.id),
            Ok("carol".into())
        );
        assert!(chain.authenticate(&request("neither")).await.is_err());
        let open = Open.authenticate(&request("a")).await.expect("open");
        assert_ne!(
            open.id,
            Open.authenticate(&request("b")).await.expect("open").id
        );
    }
}
