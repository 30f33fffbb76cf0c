//! JWT authentication at the handshake (HS256). Tokens are never logged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use chatty_actors::Identity;
use chatty_actors::{DisplayName, UserId};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::settings::AuthSettings;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Most entries of the `roles` claim, and the longest entry: more is a malformed token.
pub const MAX_ROLES: usize = 16;
pub const MAX_ROLE_BYTES: usize = 64;
/// The global roles Chatty knows; any other name in `roles` is ignored.
pub const ROLE_ADMIN: &str = "admin";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    /// Global roles. Anything but an array of strings fails the token's decoding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
}

/// Why a token was refused (a bounded label for metrics; never the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    TooLong,
    Invalid,
}

impl AuthError {
    pub fn label(self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::TooLong => "token_too_long",
            AuthError::Invalid => "token_invalid",
        }
    }
}

/// Verifies and mints tokens with the configured secret.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    audience: Option<String>,
    issuer: Option<String>,
}

impl Authenticator {
    pub fn new(s: &AuthSettings) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        let mut required = vec!["exp", "sub"];
        if !s.jwt_audience.is_empty() {
            required.push("aud");
        }
        if !s.jwt_issuer.is_empty() {
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation.leeway = 5;
        validation.validate_nbf = true;
        let audience = (!s.jwt_audience.is_empty()).then(|| s.jwt_audience.clone());
        let issuer = (!s.jwt_issuer.is_empty()).then(|| s.jwt_issuer.clone());
        match &audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        if let Some(i) = &issuer {
            validation.set_issuer(&[i]);
        }
        let secret = s.jwt_secret.expose().as_bytes();
        Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
            audience,
            issuer,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLong);
        }
        let data = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| AuthError::Invalid)?;
        let c = data.claims;
        let user = UserId::parse(&c.sub).map_err(|_| AuthError::Invalid)?;
        if c.roles.len() > MAX_ROLES || c.roles.iter().any(|r| r.len() > MAX_ROLE_BYTES) {
            return Err(AuthError::Invalid);
        }
        let name = DisplayName::sanitize(c.name.as_deref().unwrap_or(user.as_str()));
        Ok(Identity {
            user,
            name,
            admin: c.roles.iter().any(|r| r == ROLE_ADMIN),
            expires: c.exp,
        })
    }

    /// Mint a token for `user`, valid for `ttl`.
    pub fn mint(&self, user: &str, name: Option<&str>, ttl: Duration) -> Result<String, String> {
        self.mint_with_roles(user, name, &[], ttl)
    }

    /// Mint a token for `user` with global `roles`, valid for `ttl`.
    pub fn mint_with_roles(
        &self,
        user: &str,
        name: Option<&str>,
        roles: &[&str],
        ttl: Duration,
    ) -> Result<String, String> {
        UserId::parse(user).map_err(|e| e.to_string())?;
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .saturating_add(ttl)
            .as_secs();
        let claims = Claims {
            sub: user.to_owned(),
            exp,
            name: name.map(str::to_owned),
            aud: self.audience.clone(),
            iss: self.issuer.clone(),
            nbf: None,
            roles: roles.iter().map(|r| r.to_string()).collect(),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(|e| e.to_string())
    }
}

/// Parse `30s`, `15m`, `1h`, `7d` (or plain seconds).
/// The credentials of an `Authorization: Bearer <token>` header. The scheme name is
/// case-insensitive (RFC 9110, section 11.1), so `bearer` and `BEARER` work too; one parser for
/// the socket's token and the API key alike.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid ttl `{s}`"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("invalid ttl unit in `{s}` (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_takes_the_token_whatever_the_scheme_s_case() {
        let h = |v: &'static str| {
            let mut m = axum::http::HeaderMap::new();
            m.insert(
                axum::http::header::AUTHORIZATION,
                axum::http::HeaderValue::from_static(v),
            );
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("BEARER  abc")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer")), None);
        assert_eq!(bearer(&h("Bearer ")), None);
        assert_eq!(bearer(&axum::http::HeaderMap::new()), None);
    }
    use crate::settings::Secret;
    use serde_json::json;

    fn settings(aud: &str, iss: &str) -> AuthSettings {
        AuthSettings {
            jwt_secret: Secret::new("0123456789abcdef0123"),
            jwt_audience: aud.into(),
            jwt_issuer: iss.into(),
            api_key: Secret::new("k"),
            allowed_origins: vec![],
            dev_tokens: false,
        }
    }

    #[test]
    fn minted_tokens_verify() {
        let a = Authenticator::new(&settings("chat", "me"));
        let t = a
            .mint("alice", Some("Alice"), Duration::from_secs(60))
            .unwrap();
        let id = a.verify(&t).unwrap();
        assert_eq!(id.user.as_str(), "alice");
        assert_eq!(id.name.as_str(), "Alice");
    }

    #[test]
    fn wrong_key_audience_and_garbage_are_refused() {
        let a = Authenticator::new(&settings("chat", ""));
        let mut other = settings("chat", "");
        other.jwt_secret = Secret::new("another-secret-entirely");
        let t = Authenticator::new(&other)
            .mint("bob", None, Duration::from_secs(60))
            .unwrap();
        assert_eq!(a.verify(&t).unwrap_err(), AuthError::Invalid);
        let wrong_aud = Authenticator::new(&settings("other", ""))
            .mint("bob", None, Duration::from_secs(60))
            .unwrap();
        assert_eq!(a.verify(&wrong_aud).unwrap_err(), AuthError::Invalid);
        assert_eq!(a.verify("garbage").unwrap_err(), AuthError::Invalid);
        assert_eq!(a.verify(&"x".repeat(5000)).unwrap_err(), AuthError::TooLong);
    }

    #[test]
    fn roles_give_admin_ignore_unknown_names_and_refuse_malformed_claims() {
        let a = Authenticator::new(&settings("", ""));
        let ttl = Duration::from_secs(60);
        let t = a
            .mint_with_roles("ann", None, &["admin", "x"], ttl)
            .unwrap();
        assert!(a.verify(&t).unwrap().admin);
        let t = a
            .mint_with_roles("bob", None, &["Admin", "owner"], ttl)
            .unwrap();
        assert!(!a.verify(&t).unwrap().admin);
        let many: Vec<&str> = std::iter::repeat_n("r", MAX_ROLES + 1).collect();
        let t = a.mint_with_roles("bob", None, &many, ttl).unwrap();
        assert_eq!(a.verify(&t).unwrap_err(), AuthError::Invalid);
        let long = "r".repeat(MAX_ROLE_BYTES + 1);
        let t = a.mint_with_roles("bob", None, &[&long], ttl).unwrap();
        assert_eq!(a.verify(&t).unwrap_err(), AuthError::Invalid);
        // `roles` that is not an array of strings.
        for roles in [json!("admin"), json!(5), json!([1]), json!({"admin": true})] {
            let claims = json!({"sub": "bob", "exp": 4_000_000_000u64, "roles": roles});
            let t = encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"0123456789abcdef0123"),
            )
            .unwrap();
            assert_eq!(a.verify(&t).unwrap_err(), AuthError::Invalid, "{roles}");
        }
    }

    #[test]
    fn ttl_parses_units() {
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert!(parse_ttl("1y").is_err());
    }
}
