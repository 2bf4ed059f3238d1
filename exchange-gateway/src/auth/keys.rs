//! API keys: generation, encryption of the secret at rest, and request
//! signatures exactly as Binance computes them.
//!
//! The HMAC secret must be recoverable to check signatures, so it is stored
//! encrypted with ChaCha20-Poly1305 (random 96-bit nonce per key, the key id
//! as associated data). The encryption key is `SHA-256("exchange api-key
//! secret v1" || K)` where K is `API_KEY_ENCRYPTION_KEY` (required with
//! `APP_ENV=prod`, refused when equal to or derived from
//! `AUTH_TOKEN_SECRET`; outside prod, when unset, the fixed
//! [`DEV_API_KEY_ENCRYPTION_KEY`]). Users' TOTP secrets are encrypted the
//! same way, with `totp:<user id>` as associated data.
//!
//! Decrypting tries, in order: the current key, `API_KEY_ENCRYPTION_KEY_PREVIOUS`
//! (during a rotation), then — read only, for secrets stored by versions
//! that derived the key from the token secret — `AUTH_TOKEN_SECRET` and
//! `AUTH_TOKEN_SECRET_PREVIOUS`. New secrets always use the current key.
//! `exchange admin rotate-api-key-encryption` ([`rotate_stored_secrets`])
//! re-encrypts every stored secret that is not under the current key; once
//! it reports none left, neither the previous key nor the token secret is
//! needed to read any secret (rotating `AUTH_TOKEN_SECRET` then touches no
//! API key).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use exchange_common::Config;

/// Default and maximum `recvWindow`, milliseconds (as Binance).
pub const RECV_WINDOW_DEFAULT_MS: u64 = 5_000;
pub const RECV_WINDOW_MAX_MS: u64 = 60_000;
/// How far a request's `timestamp` may be ahead of our clock.
pub const TIMESTAMP_AHEAD_MAX_MS: u64 = 1_000;

/// The key used outside prod when `API_KEY_ENCRYPTION_KEY` is unset (prod
/// requires its own): fixed, so that local API keys survive restarts and
/// `AUTH_TOKEN_SECRET` changes. Public, hence never for real money.
pub const DEV_API_KEY_ENCRYPTION_KEY: &str = "dev-api-key-encryption-key-change-me-000";

/// Which key a stored secret turned out to be encrypted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// `API_KEY_ENCRYPTION_KEY` (or the development key).
    Current,
    /// `API_KEY_ENCRYPTION_KEY_PREVIOUS`.
    Previous,
    /// Derived from `AUTH_TOKEN_SECRET` or its `_PREVIOUS` (older versions).
    LegacyTokenSecret,
}

#[derive(Clone)]
pub struct KeyCipher {
    current: ChaCha20Poly1305,
    /// Keys secrets may still be encrypted with, tried in order.
    previous: Vec<(KeySource, ChaCha20Poly1305)>,
}

fn derive(material: &str) -> ChaCha20Poly1305 {
    let mut h = Sha256::new();
    h.update(b"exchange api-key secret v1");
    h.update(material.as_bytes());
    let key: [u8; 32] = h.finalize().into();
    ChaCha20Poly1305::new(Key::from_slice(&key))
}

impl KeyCipher {
    pub fn new(config: &Config) -> Self {
        let g = &config.gateway;
        let current = g
            .api_key_encryption_key
            .as_ref()
            .map_or(DEV_API_KEY_ENCRYPTION_KEY, |k| k.expose());
        let previous = g
            .api_key_encryption_key_previous
            .iter()
            .map(|p| (KeySource::Previous, derive(p.expose())));
        let legacy = std::iter::once(&g.auth_token_secret)
            .chain(&g.auth_token_secret_previous)
            .map(|s| (KeySource::LegacyTokenSecret, derive(s.expose())));
        Self {
            current: derive(current),
            previous: previous.chain(legacy).collect(),
        }
    }

    /// `(nonce, ciphertext)` of `secret`, bound to `api_key`, under the
    /// current key.
    pub fn encrypt(&self, api_key: &str, secret: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let nonce: [u8; 12] = rand::random();
        let ct = self
            .current
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: api_key.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("api key encryption failed"))?;
        Ok((nonce.to_vec(), ct))
    }

    pub fn decrypt(&self, api_key: &str, nonce: &[u8], ciphertext: &[u8]) -> Option<String> {
        self.decrypt_with_source(api_key, nonce, ciphertext)
            .map(|(plain, _)| plain)
    }

    /// The secret and which key opened it.
    pub fn decrypt_with_source(
        &self,
        api_key: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Option<(String, KeySource)> {
        if nonce.len() != 12 {
            return None;
        }
        let payload = || Payload {
            msg: ciphertext,
            aad: api_key.as_bytes(),
        };
        let (plain, source) = std::iter::once((KeySource::Current, &self.current))
            .chain(self.previous.iter().map(|(s, c)| (*s, c)))
            .find_map(|(source, c)| {
                c.decrypt(Nonce::from_slice(nonce), payload())
                    .ok()
                    .map(|p| (p, source))
            })?;
        String::from_utf8(plain).ok().map(|p| (p, source))
    }
}

/// Rows [`rotate_stored_secrets`] reads per query by default.
pub const ROTATE_BATCH_DEFAULT: i64 = 500;

/// What a rotation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// Secrets found under `API_KEY_ENCRYPTION_KEY_PREVIOUS` or the token
    /// secret and stored again under the current key.
    pub re_encrypted: u64,
    /// Of those, how many were under the token secret (older versions).
    pub re_encrypted_from_token_secret: u64,
    /// Secrets already under the current key (left as they are).
    pub already_current: u64,
    /// Secrets no configured key opens, named (`api key id 7`, `totp of
    /// user 3`) — never their content.
    pub unreadable: Vec<String>,
    /// Rows changed by someone else between the read and the write (a key
    /// deleted, a TOTP re-enrolled): skipped; a new row is under the
    /// current key anyway.
    pub skipped_concurrent: u64,
}

/// Stored secrets of one kind: API keys, or users' TOTP secrets.
#[derive(Clone, Copy)]
enum Stored {
    ApiKeys,
    Totp,
}

impl Stored {
    fn select(self) -> &'static str {
        match self {
            Stored::ApiKeys => {
                "SELECT id, api_key AS aad, secret_nonce AS nonce, secret_ciphertext AS ciphertext
                 FROM api_keys WHERE id > $1 ORDER BY id LIMIT $2"
            }
            Stored::Totp => {
                "SELECT id, 'totp:' || id AS aad, totp_secret_nonce AS nonce, totp_secret_ciphertext AS ciphertext
                 FROM users WHERE id > $1 AND totp_secret_ciphertext IS NOT NULL AND totp_secret_nonce IS NOT NULL
                 ORDER BY id LIMIT $2"
            }
        }
    }

    /// Writes only over the ciphertext that was read (a concurrent change wins).
    fn update(self) -> &'static str {
        match self {
            Stored::ApiKeys => {
                "UPDATE api_keys SET secret_nonce = $2, secret_ciphertext = $3
                 WHERE id = $1 AND secret_ciphertext = $4"
            }
            Stored::Totp => {
                "UPDATE users SET totp_secret_nonce = $2, totp_secret_ciphertext = $3
                 WHERE id = $1 AND totp_secret_ciphertext = $4"
            }
        }
    }

    fn name(self, id: i64) -> String {
        match self {
            Stored::ApiKeys => format!("api key id {id}"),
            Stored::Totp => format!("totp of user {id}"),
        }
    }
}

#[derive(sqlx::FromRow)]
struct StoredRow {
    id: i64,
    aad: String,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

/// Re-encrypts under the current key every stored secret (API keys, then
/// TOTP secrets) that another configured key opens, `batch` rows per read,
/// each row in its own statement. Idempotent: a second run finds them all
/// current. Never logs or returns a secret.
pub async fn rotate_stored_secrets(
    db: &sqlx::PgPool,
    cipher: &KeyCipher,
    batch: i64,
) -> anyhow::Result<RotationReport> {
    let batch = batch.max(1);
    let mut report = RotationReport::default();
    for kind in [Stored::ApiKeys, Stored::Totp] {
        let mut after = 0_i64;
        loop {
            let rows: Vec<StoredRow> = sqlx::query_as(kind.select())
                .bind(after)
                .bind(batch)
                .fetch_all(db)
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            for row in &rows {
                match cipher.decrypt_with_source(&row.aad, &row.nonce, &row.ciphertext) {
                    None => report.unreadable.push(kind.name(row.id)),
                    Some((_, KeySource::Current)) => report.already_current += 1,
                    Some((plain, source)) => {
                        let (nonce, ct) = cipher.encrypt(&row.aad, &plain)?;
                        let written = sqlx::query(kind.update())
                            .bind(row.id)
                            .bind(&nonce)
                            .bind(&ct)
                            .bind(&row.ciphertext)
                            .execute(db)
                            .await?;
                        if written.rows_affected() == 1 {
                            report.re_encrypted += 1;
                            if source == KeySource::LegacyTokenSecret {
                                report.re_encrypted_from_token_secret += 1;
                            }
                        } else {
                            report.skipped_concurrent += 1;
                        }
                    }
                }
            }
            if rows.len() < usize::try_from(batch).unwrap_or(usize::MAX) {
                break;
            }
        }
    }
    Ok(report)
}

/// A new public key id and secret, 64 alphanumeric characters each (as Binance).
pub fn generate() -> (String, String) {
    fn token() -> String {
        use rand::Rng as _;
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        (0..64)
            .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
            .collect()
    }
    (token(), token())
}

/// Binance's signed payload: the query string without its `signature`
/// parameter, followed directly by the request body. Returns the payload
/// and the presented signature.
pub fn signed_payload(raw_query: &str, body: &[u8]) -> (Vec<u8>, Option<String>) {
    let mut signature = None;
    let kept: Vec<&str> = raw_query
        .split('&')
        .filter(|p| {
            if let Some(sig) = p.strip_prefix("signature=") {
                signature = Some(sig.to_owned());
                false
            } else {
                !p.is_empty()
            }
        })
        .collect();
    let mut payload = kept.join("&").into_bytes();
    payload.extend_from_slice(body);
    (payload, signature)
}

/// Checks a hex HMAC-SHA256 signature in constant time.
pub fn verify_signature(secret: &str, payload: &[u8], signature_hex: &str) -> bool {
    let Ok(sig) = hex::decode(signature_hex) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(payload);
    mac.verify_slice(&sig).is_ok()
}

/// The hex HMAC-SHA256 a client sends (used by tests and tools).
pub fn sign(secret: &str, payload: &[u8]) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(payload);
    hex::encode(mac.finalize().into_bytes())
}

/// Why a timestamp is refused, or `Ok`.
pub fn check_timestamp(
    timestamp_ms: u64,
    recv_window_ms: u64,
    now_ms: u64,
) -> Result<(), &'static str> {
    if timestamp_ms > now_ms.saturating_add(TIMESTAMP_AHEAD_MAX_MS) {
        return Err("timestamp is ahead of the server time");
    }
    if now_ms.saturating_sub(timestamp_ms) > recv_window_ms {
        return Err("timestamp is outside the recvWindow");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECRET: &str = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";
    const EXPECTED: &str = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71";

    #[test]
    fn binance_documented_vector() {
        let payload = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559";
        assert_eq!(sign(SECRET, payload.as_bytes()), EXPECTED);
        assert!(verify_signature(SECRET, payload.as_bytes(), EXPECTED));
        // Query string only, signature appended last.
        let (p, s) = signed_payload(&format!("{payload}&signature={EXPECTED}"), b"");
        assert_eq!(p, payload.as_bytes());
        assert!(verify_signature(SECRET, &p, &s.unwrap()));
        // Binance's mixed example: part in the query, the rest in the body.
        let (p, s) = signed_payload(
            &format!(
                "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&signature={}",
                "0c".repeat(32)
            ),
            b"quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559",
        );
        assert_eq!(
            p,
            b"symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTCquantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
        );
        assert!(!verify_signature(SECRET, &p, &s.unwrap()));
        assert!(!verify_signature(SECRET, payload.as_bytes(), "zz"));
        assert!(!verify_signature(
            SECRET,
            payload.as_bytes(),
            &EXPECTED.replace('c', "d")
        ));
    }

    #[test]
    fn timestamp_window() {
        assert!(check_timestamp(10_000, 5_000, 10_000).is_ok());
        assert!(check_timestamp(11_000, 5_000, 10_000).is_ok());
        assert!(check_timestamp(11_001, 5_000, 10_000).is_err());
        assert!(check_timestamp(4_999, 5_000, 10_000).is_err());
    }

    #[test]
    fn secret_encryption_roundtrip_and_binding() {
        let config = Config::for_tests("postgres://x/y", "redis://x", "t");
        let c = KeyCipher::new(&config);
        let (n, ct) = c.encrypt("key1", "s3cret").unwrap();
        assert_ne!(ct, b"s3cret");
        assert_eq!(c.decrypt("key1", &n, &ct).as_deref(), Some("s3cret"));
        assert_eq!(c.decrypt("key2", &n, &ct), None, "bound to its key id");
    }

    fn with_keys(current: Option<&str>, previous: Option<&str>, auth: &str) -> KeyCipher {
        use exchange_common::config::Secret;
        let mut c = Config::for_tests("postgres://x/y", "redis://x", "t");
        c.gateway.api_key_encryption_key = current.map(Secret::new);
        c.gateway.api_key_encryption_key_previous = previous.map(Secret::new);
        c.gateway.auth_token_secret = Secret::new(auth);
        KeyCipher::new(&c)
    }

    #[test]
    fn rotating_the_token_secret_leaves_api_keys_readable() {
        let before = with_keys(None, None, "token-secret-one-0123456789abcdef0123");
        let (n, ct) = before.encrypt("key1", "s3cret").unwrap();
        let after = with_keys(None, None, "token-secret-two-0123456789abcdef0123");
        assert_eq!(
            after.decrypt_with_source("key1", &n, &ct),
            Some(("s3cret".to_owned(), KeySource::Current))
        );
    }

    #[test]
    fn previous_key_and_legacy_token_secret_are_read_but_never_written() {
        const A: &str = "key-a-0123456789abcdef0123456789abcdef";
        const B: &str = "key-b-0123456789abcdef0123456789abcdef";
        const T: &str = "token-secret-0123456789abcdef01234567";
        // Stored by an older version: under the token secret's derivation.
        let (ln, lct) = {
            let mut h = Sha256::new();
            h.update(b"exchange api-key secret v1");
            h.update(T.as_bytes());
            let key: [u8; 32] = h.finalize().into();
            let c = ChaCha20Poly1305::new(Key::from_slice(&key));
            let nonce = [7_u8; 12];
            let ct = c
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: b"legacy",
                        aad: b"key0",
                    },
                )
                .unwrap();
            (nonce.to_vec(), ct)
        };
        let a = with_keys(Some(A), None, T);
        let (n, ct) = a.encrypt("key1", "s3cret").unwrap();
        let b_after_a = with_keys(Some(B), Some(A), T);
        assert_eq!(
            b_after_a.decrypt_with_source("key1", &n, &ct),
            Some(("s3cret".to_owned(), KeySource::Previous))
        );
        assert_eq!(
            b_after_a.decrypt_with_source("key0", &ln, &lct),
            Some(("legacy".to_owned(), KeySource::LegacyTokenSecret))
        );
        let (n2, ct2) = b_after_a.encrypt("key2", "other").unwrap();
        assert_eq!(a.decrypt("key2", &n2, &ct2), None, "new secrets use B");
        let b_only = with_keys(Some(B), None, "another-token-secret-0123456789abcdef");
        assert_eq!(b_only.decrypt("key1", &n, &ct), None, "A dropped");
        assert_eq!(b_only.decrypt("key2", &n2, &ct2).as_deref(), Some("other"));
    }
}
