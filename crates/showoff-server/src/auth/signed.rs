//! HMAC-signed tokens: credentials that carry their principal, grant and expiry, verified
//! with the server's secret and no lookup.
//!
//! Format: `so1.<payload>.<signature>`, both parts base64url without padding. The payload is
//! JSON `{"sub", "exp", "names"?, "kinds"?, "max_tunnels"?}` (`exp` in Unix seconds, required);
//! the signature is HMAC-SHA256 over `so1.<payload>`, checked in constant time before the
//! payload is parsed. Such a token cannot be revoked before it expires except by rotating the
//! secret, so they are meant to be short-lived (docs/security.md).

use async_trait::async_trait;
use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{AuthError, AuthRequest, Authenticator, Grant, Principal, unix_now};
use crate::config::Secret;

/// The prefix every signed token starts with (format version 1).
pub const PREFIX: &str = "so1.";

/// Prefix of the principal ids signed tokens produce (`signed:alice`), so they never collide
/// with token-file ids.
pub const PRINCIPAL_PREFIX: &str = "signed:";

/// What a signed token says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedClaims {
    /// The principal.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Names, kinds and limits.
    #[serde(flatten)]
    pub grant: Grant,
}

/// Signs `claims` with `secret`.
pub fn sign(secret: &Secret, claims: &SignedClaims) -> String {
    sign_payload(secret, &serde_json::to_vec(claims).unwrap_or_default())
}

/// A token over any payload bytes, signed with `secret` (the fuzz targets reach the payload
/// parser with it; [`sign`] is the one way tokens are minted).
pub(crate) fn sign_payload(secret: &Secret, payload: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
    let signing_input = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(payload));
    let tag = hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Verifies signed tokens.
pub struct SignedTokens {
    key: hmac::Key,
}

impl SignedTokens {
    /// A verifier for tokens signed with `secret`.
    pub fn new(secret: &Secret) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
        }
    }

    /// The claims of a genuine, unexpired token.
    pub fn verify(&self, token: &str, now: u64) -> Result<SignedClaims, AuthError> {
        if !token.starts_with(PREFIX) {
            return Err(AuthError::Rejected);
        }
        let (signing_input, signature) = token.rsplit_once('.').ok_or(AuthError::Rejected)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AuthError::Rejected)?;
        hmac::verify(&self.key, signing_input.as_bytes(), &signature)
            .map_err(|_| AuthError::Rejected)?;
        // Only a payload the secret's holder wrote gets parsed.
        let payload = URL_SAFE_NO_PAD
            .decode(&signing_input[PREFIX.len()..])
            .map_err(|_| AuthError::Rejected)?;
        let claims: SignedClaims =
            serde_json::from_slice(&payload).map_err(|_| AuthError::Rejected)?;
        if claims.exp <= now {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }
}

#[async_trait]
impl Authenticator for SignedTokens {
    async fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthError> {
        let claims = self.verify(request.token, unix_now())?;
        Ok(claims
            .grant
            .principal(format!("{PRINCIPAL_PREFIX}{}", claims.sub)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use showoff_proto::TunnelKind;

    fn claims(exp: u64) -> SignedClaims {
        SignedClaims {
            sub: "alice".into(),
            exp,
            grant: Grant {
                names: vec!["alice-*".into()],
                kinds: vec![TunnelKind::Http],
                max_tunnels: Some(3),
            },
        }
    }

    #[test]
    fn genuine_tokens_verify_and_carry_their_grant() {
        let secret = Secret::new("s3cret-s3cret-s3cret");
        let token = sign(&secret, &claims(2_000));
        assert!(token.starts_with(PREFIX));
        let verifier = SignedTokens::new(&secret);
        assert_eq!(verifier.verify(&token, 1_000), Ok(claims(2_000)));
        assert_eq!(verifier.verify(&token, 2_000), Err(AuthError::Expired));
    }

    #[test]
    fn tampered_or_foreign_tokens_are_rejected() {
        let secret = Secret::new("s3cret-s3cret-s3cret");
        let verifier = SignedTokens::new(&secret);
        let token = sign(&secret, &claims(2_000));
        // Another secret's signature.
        let foreign = sign(&Secret::new("other"), &claims(2_000));
        assert_eq!(verifier.verify(&foreign, 1), Err(AuthError::Rejected));
        // A payload widened to every name, with the old signature.
        let (_, signature) = token.rsplit_once('.').expect("dot");
        let mut widened = claims(2_000);
        widened.grant.names.clear();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&widened).expect("json"));
        let forged = format!("{PREFIX}{payload}.{signature}");
        assert_eq!(verifier.verify(&forged, 1), Err(AuthError::Rejected));
        // Truncated, garbled, empty.
        for bad in [&token[..token.len() - 3], "so1.", "so1..", "", "so1.!!.!!"] {
            assert_eq!(verifier.verify(bad, 1), Err(AuthError::Rejected), "{bad}");
        }
    }
}
