//! Access tokens: JWT signed with `AUTH_TOKEN_SECRET`, HS256 only, `exp`,
//! `sub` and `sid` required. During a rotation tokens signed with
//! `AUTH_TOKEN_SECRET_PREVIOUS` are still accepted.
//!
//! A valid signature is not enough: `sid` names the login session
//! ([`crate::auth::sessions`]) and the token works only while that session
//! has not ended. There is no refresh token: a client logs in again when
//! its token expires (`ACCESS_TOKEN_TTL_SECONDS`).

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use exchange_common::Config;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// The session this token belongs to.
    pub sid: i64,
    pub exp: u64,
    pub iat: u64,
    pub typ: String,
}

const TOKEN_TYPE_ACCESS: &str = "access";

/// What a valid access token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub user_id: i64,
    pub session_id: i64,
    /// The Unix second after which the token is refused (`exp` plus leeway).
    pub valid_until: u64,
}

#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: Vec<DecodingKey>,
    validation: Validation,
    pub ttl: Duration,
}

impl Tokens {
    pub fn new(config: &Config) -> Self {
        let mut decoding = vec![DecodingKey::from_secret(
            config.gateway.auth_token_secret.expose().as_bytes(),
        )];
        if let Some(prev) = &config.gateway.auth_token_secret_previous {
            decoding.push(DecodingKey::from_secret(prev.expose().as_bytes()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        validation.validate_exp = true;
        Self {
            encoding: EncodingKey::from_secret(
                config.gateway.auth_token_secret.expose().as_bytes(),
            ),
            decoding,
            validation,
            ttl: config.gateway.access_token_ttl,
        }
    }

    pub fn issue(
        &self,
        user_id: i64,
        session_id: i64,
        now_unix: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            sub: user_id.to_string(),
            sid: session_id,
            iat: now_unix,
            exp: now_unix + self.ttl.as_secs(),
            typ: TOKEN_TYPE_ACCESS.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Who a correctly signed, unexpired access token names. Whether its
    /// session is still open is for the caller to check.
    pub fn verify(&self, token: &str) -> Option<Verified> {
        self.decoding.iter().find_map(|key| {
            let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).ok()?;
            (data.claims.typ == TOKEN_TYPE_ACCESS).then_some(())?;
            Some(Verified {
                user_id: data.claims.sub.parse().ok()?,
                session_id: data.claims.sid,
                valid_until: data.claims.exp.saturating_add(self.validation.leeway),
            })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn tokens() -> Tokens {
        Tokens::new(&Config::for_tests("postgres://x/y", "redis://x", "t"))
    }

    fn now() -> u64 {
        u64::try_from(chrono::Utc::now().timestamp()).unwrap()
    }

    #[test]
    fn roundtrip_and_refusals() {
        let t = tokens();
        let token = t.issue(42, 7, now()).unwrap();
        let v = t.verify(&token).unwrap();
        assert_eq!((v.user_id, v.session_id), (42, 7));
        // Expired.
        assert_eq!(t.verify(&t.issue(42, 7, now() - 10 * 3600).unwrap()), None);
        // Correctly signed, but from before sessions existed (no `sid`).
        let sessionless = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "42", "exp": now() + 3600, "iat": now(), "typ": "access"}),
            &EncodingKey::from_secret(b"dev-auth-token-secret-change-me-please-0"),
        )
        .unwrap();
        assert_eq!(t.verify(&sessionless), None);
        // Tampered payload.
        let parts: Vec<&str> = token.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged = b64.encode(format!(
            r#"{{"sub":"1","exp":{},"iat":0,"typ":"access"}}"#,
            now() + 3600
        ));
        assert_eq!(
            t.verify(&format!("{}.{}.{}", parts[0], forged, parts[2])),
            None
        );
        // alg: none.
        let none = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(t.verify(&format!("{none}.{forged}.")), None);
    }
}
