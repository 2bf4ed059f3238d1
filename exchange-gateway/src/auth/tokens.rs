//! Access tokens: JWT signed with `AUTH_TOKEN_SECRET`, HS256 only, `exp`
//! and `sub` required. During a rotation tokens signed with
//! `AUTH_TOKEN_SECRET_PREVIOUS` are still accepted.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use exchange_common::Config;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    pub typ: String,
}

const TOKEN_TYPE_ACCESS: &str = "access";

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
        now_unix: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            sub: user_id.to_string(),
            iat: now_unix,
            exp: now_unix + self.ttl.as_secs(),
            typ: TOKEN_TYPE_ACCESS.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// The user id of a valid access token.
    pub fn verify(&self, token: &str) -> Option<i64> {
        self.verify_until(token).map(|(user, _)| user)
    }

    /// The user id of a valid access token and the Unix second after which
    /// it is refused (its `exp` plus the leeway).
    pub fn verify_until(&self, token: &str) -> Option<(i64, u64)> {
        self.decoding.iter().find_map(|key| {
            let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).ok()?;
            (data.claims.typ == TOKEN_TYPE_ACCESS).then_some(())?;
            let user = data.claims.sub.parse().ok()?;
            Some((user, data.claims.exp.saturating_add(self.validation.leeway)))
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
        let token = t.issue(42, now()).unwrap();
        assert_eq!(t.verify(&token), Some(42));
        // Expired.
        assert_eq!(t.verify(&t.issue(42, now() - 10 * 3600).unwrap()), None);
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
