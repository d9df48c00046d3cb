//! Settings of the authenticators beyond shared tokens: signed tokens, JWT, Rego policy,
//! decision webhook; and [`NamePattern`], the `alice-*` patterns that token grants and the
//! server's name policy are written in.

use std::time::Duration;

use showoff_core::Secret;

/// Default deadline for one decision-webhook answer.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// Authenticators beyond shared tokens and the token table; each is off when `None`. Chained
/// after those two, in this order: signed tokens, JWT, Rego policy, decision webhook.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Secret that HMAC-signed tokens (`so1.…`) are verified with.
    pub signed_secret: Option<Secret>,
    /// JWT verification.
    pub jwt: Option<JwtConfig>,
    /// A Rego policy evaluated in-process.
    pub policy: Option<PolicyConfig>,
    /// An external decision service (OPA data API).
    pub webhook: Option<WebhookConfig>,
}

impl AuthConfig {
    /// True when any of these authenticators is configured.
    pub fn any(&self) -> bool {
        self.signed_secret.is_some()
            || self.jwt.is_some()
            || self.policy.is_some()
            || self.webhook.is_some()
    }
}

/// A Rego policy and the rule whose value is the decision.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Where the policy came from (shown in errors).
    pub path: String,
    /// The policy text.
    pub rego: String,
    /// The rule evaluated per client, e.g. `data.showoff.authz`.
    pub rule: String,
}

/// An OPA-shaped decision webhook.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `http://host:port/path` the input is POSTed to.
    pub url: String,
    /// Deadline for one decision (connect, request, answer).
    pub timeout: Duration,
}

/// The key JWTs are verified with.
#[derive(Clone)]
pub enum JwtKey {
    /// HS256 shared secret.
    Secret(Secret),
    /// RS256 (RSA) or ES256 (EC P-256) public key, PEM text.
    PublicPem(String),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret(***)"),
            Self::PublicPem(_) => f.write_str("PublicPem(..)"),
        }
    }
}

/// JWT settings.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Verification key.
    pub key: JwtKey,
    /// Accepted `iss`; `None` skips the check.
    pub issuer: Option<String>,
    /// Required `aud`; `None` skips the check.
    pub audience: Option<String>,
    /// Claim holding the name patterns.
    pub names_claim: String,
}

/// A name pattern: literal text with `*` matching any run of characters (`alice-*`, `*-dev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(String);

impl NamePattern {
    /// A pattern from its text; `*` is the only wildcard.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self(pattern.into().to_ascii_lowercase())
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }

    /// A name this pattern allows, when it has exactly one `*`: the wildcard becomes `filler`.
    pub fn fill(&self, filler: &str) -> Option<String> {
        (self.0.matches('*').count() == 1).then(|| self.0.replace('*', filler))
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Matches `text` against `pattern` where `*` matches any run (iterative, linear backtracking).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}
