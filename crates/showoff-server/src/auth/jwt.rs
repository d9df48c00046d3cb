//! JSON Web Tokens as client credentials: HS256 with a shared secret, RS256 or ES256 with the
//! issuer's public key (PEM).
//!
//! The signature is checked first (only the configured algorithm is accepted, so `alg: none`
//! and algorithm swaps fail), then `exp` (required), `nbf`, and `iss`/`aud` when configured.
//! The principal is `jwt:<sub>`; the names claim (configurable, `names` by default) holds name
//! patterns as an array or a comma- or space-separated string; `kinds` and `max_tunnels` work
//! as in token files.

use async_trait::async_trait;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use showoff_proto::TunnelKind;

use super::{AuthError, AuthRequest, Authenticator, Grant, Principal};
pub use crate::config::{JwtConfig, JwtKey};

/// Prefix of the principal ids JWTs produce (`jwt:alice`).
pub const PRINCIPAL_PREFIX: &str = "jwt:";

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// Verifies JWTs.
pub struct Jwt {
    key: DecodingKey,
    validation: Validation,
    names_claim: String,
}

impl Jwt {
    /// A verifier; fails when the key is not a usable secret or public key.
    pub fn new(config: &JwtConfig) -> Result<Self, String> {
        let (key, algorithm) = match &config.key {
            JwtKey::Secret(secret) if secret.expose().len() < 16 => {
                return Err("the JWT secret must be at least 16 bytes".into());
            }
            JwtKey::Secret(secret) => (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
            ),
            JwtKey::PublicPem(pem) => {
                if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                    (key, Algorithm::ES256)
                } else {
                    return Err(
                        "the JWT public key is neither an RSA nor an EC P-256 public key (PEM)"
                            .into(),
                    );
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            key,
            validation,
            names_claim: config.names_claim.clone(),
        })
    }

    /// The principal a genuine, current token stands for.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        // Not shaped like a JWT: leave it to the other authenticators without parsing.
        if token.split('.').count() != 3 || token.starts_with(super::signed::PREFIX) {
            return Err(AuthError::Rejected);
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|error| match error.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::WrongAudience("not valid yet".into()),
            ErrorKind::InvalidIssuer => AuthError::WrongAudience("issuer".into()),
            ErrorKind::InvalidAudience => AuthError::WrongAudience("audience".into()),
            _ => AuthError::Rejected,
        })?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::Rejected)?;
        let grant = Grant {
            names: names_of(claims.get(&self.names_claim))?,
            kinds: match claims.get("kinds") {
                None => Vec::new(),
                // An unknown kind makes the token unusable rather than silently narrower.
                Some(kinds) => serde_json::from_value::<Vec<TunnelKind>>(kinds.clone())
                    .map_err(|_| AuthError::Rejected)?,
            },
            max_tunnels: match claims.get("max_tunnels") {
                None => None,
                Some(n) => Some(n.as_u64().ok_or(AuthError::Rejected)? as usize),
            },
        };
        Ok(grant.principal(format!("{PRINCIPAL_PREFIX}{sub}")))
    }
}

/// Name patterns from a claim: an array of strings or one string separated by commas/spaces.
fn names_of(claim: Option<&Value>) -> Result<Vec<String>, AuthError> {
    match claim {
        None => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(text
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or(AuthError::Rejected))
            .collect(),
        Some(_) => Err(AuthError::Rejected),
    }
}

#[async_trait]
impl Authenticator for Jwt {
    async fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Principal, AuthError> {
        self.verify(request.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "a-jwt-secret-of-32-bytes-length!";

    fn verifier(issuer: Option<&str>, audience: Option<&str>) -> Jwt {
        Jwt::new(&JwtConfig {
            key: JwtKey::Secret(Secret::new(SECRET)),
            issuer: issuer.map(str::to_string),
            audience: audience.map(str::to_string),
            names_claim: "names".into(),
        })
        .expect("key")
    }

    fn hs256(claims: &Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    fn later() -> u64 {
        jsonwebtoken::get_current_timestamp() + 600
    }

    #[test]
    fn genuine_tokens_give_their_grant() {
        let token = hs256(
            &json!({"sub": "alice", "exp": later(), "names": "alice-*,shared", "kinds": ["http"], "max_tunnels": 2}),
            SECRET,
        );
        let principal = verifier(None, None).verify(&token).expect("valid");
        assert_eq!(principal.id, "jwt:alice");
        assert!(principal.may_use_name("alice-web") && principal.may_use_name("shared"));
        assert!(!principal.may_use_name("bob"));
        assert!(!principal.may_open(TunnelKind::Tcp));
        assert_eq!(principal.max_tunnels, Some(2));
    }

    #[test]
    fn expired_tampered_and_foreign_tokens_fail_with_their_reason() {
        let jwt = verifier(Some("https://idp.example"), Some("showoff"));
        let good =
            json!({"sub": "a", "exp": later(), "iss": "https://idp.example", "aud": "showoff"});
        assert!(jwt.verify(&hs256(&good, SECRET)).is_ok());
        let mut expired = good.clone();
        expired["exp"] = json!(jsonwebtoken::get_current_timestamp() - 120);
        assert_eq!(
            jwt.verify(&hs256(&expired, SECRET)),
            Err(AuthError::Expired)
        );
        let mut issuer = good.clone();
        issuer["iss"] = json!("https://evil.example");
        assert_eq!(
            jwt.verify(&hs256(&issuer, SECRET)),
            Err(AuthError::WrongAudience("issuer".into()))
        );
        let mut audience = good.clone();
        audience["aud"] = json!("other");
        assert_eq!(
            jwt.verify(&hs256(&audience, SECRET)),
            Err(AuthError::WrongAudience("audience".into()))
        );
        // Signed with another key; payload edited after signing; alg none; no expiry.
        let foreign = hs256(&good, "another-secret-of-enough-length!");
        assert_eq!(jwt.verify(&foreign), Err(AuthError::Rejected));
        let token = hs256(&good, SECRET);
        let parts: Vec<&str> = token.split('.').collect();
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut widened = good.clone();
        widened["sub"] = json!("admin");
        let payload = engine.encode(serde_json::to_vec(&widened).expect("json"));
        let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
        assert_eq!(jwt.verify(&tampered), Err(AuthError::Rejected));
        let none_header = engine.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{none_header}.{}.", parts[1]);
        assert_eq!(jwt.verify(&unsigned), Err(AuthError::Rejected));
        let mut forever = good;
        forever.as_object_mut().expect("object").remove("exp");
        assert_eq!(
            jwt.verify(&hs256(&forever, SECRET)),
            Err(AuthError::Rejected)
        );
        assert_eq!(jwt.verify("not-a-jwt"), Err(AuthError::Rejected));
    }

    fn pem(label: &str, der: &[u8]) -> String {
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("ascii"))
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    fn public_key_verifier(public_pem: String) -> Jwt {
        Jwt::new(&JwtConfig {
            key: JwtKey::PublicPem(public_pem),
            issuer: None,
            audience: None,
            names_claim: "names".into(),
        })
        .expect("public key")
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_the_issuers_public_key() {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let claims = json!({"sub": "svc", "exp": later()});

        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
        let rsa_private = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&rsa).expect("der");
        let rsa_public: PublicKeyX509Der<'_> = rsa.public_key().as_der().expect("der");
        let token = encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(pem("PRIVATE KEY", rsa_private.as_ref()).as_bytes())
                .expect("pem"),
        )
        .expect("rs256");
        let rs = public_key_verifier(pem("PUBLIC KEY", rsa_public.as_ref()));
        assert_eq!(rs.verify(&token).map(|p| p.id), Ok("jwt:svc".into()));

        let rng = aws_lc_rs::rand::SystemRandom::new();
        let ec_private =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("ec");
        let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec_private.as_ref())
            .expect("ec");
        let ec_public: PublicKeyX509Der<'_> = ec.public_key().as_der().expect("der");
        let es_token = encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_der(ec_private.as_ref()),
        )
        .expect("es256");
        let es = public_key_verifier(pem("PUBLIC KEY", ec_public.as_ref()));
        assert_eq!(es.verify(&es_token).map(|p| p.id), Ok("jwt:svc".into()));
        // Each key accepts only its own algorithm's tokens.
        assert_eq!(es.verify(&token), Err(AuthError::Rejected));
        assert_eq!(rs.verify(&es_token), Err(AuthError::Rejected));
        // An HS256 token "signed" with the public key text (algorithm confusion) fails.
        let confused = hs256(&claims, &pem("PUBLIC KEY", rsa_public.as_ref()));
        assert_eq!(rs.verify(&confused), Err(AuthError::Rejected));
    }

    #[test]
    fn short_secrets_and_bad_keys_are_refused_at_start() {
        let short = Jwt::new(&JwtConfig {
            key: JwtKey::Secret(Secret::new("short")),
            issuer: None,
            audience: None,
            names_claim: "names".into(),
        });
        assert!(short.is_err());
        let garbage = Jwt::new(&JwtConfig {
            key: JwtKey::PublicPem(
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
            ),
            issuer: None,
            audience: None,
            names_claim: "names".into(),
        });
        assert!(garbage.is_err());
    }
}
