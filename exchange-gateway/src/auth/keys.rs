//! API keys: generation, encryption of the secret at rest, and request
//! signatures exactly as Binance computes them.
//!
//! The HMAC secret must be recoverable to check signatures, so it is stored
//! encrypted with ChaCha20-Poly1305 (random 96-bit nonce per key, the key id
//! as associated data). The encryption key is `SHA-256("exchange api-key
//! secret v1" || K)` where K is `API_KEY_ENCRYPTION_KEY` when set (recommended
//! in production: it survives `AUTH_TOKEN_SECRET` rotations), otherwise
//! `AUTH_TOKEN_SECRET` (and `AUTH_TOKEN_SECRET_PREVIOUS` is tried when
//! decrypting, so a rotation keeps existing keys working during its grace
//! period). Users' TOTP secrets are encrypted the same way, with
//! `totp:<user id>` as associated data.

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

#[derive(Clone)]
pub struct KeyCipher {
    current: ChaCha20Poly1305,
    /// Keys secrets may still be encrypted with, tried in order.
    previous: Vec<ChaCha20Poly1305>,
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
        let auth = &config.gateway.auth_token_secret;
        let auth_previous = config.gateway.auth_token_secret_previous.as_ref();
        match &config.gateway.api_key_encryption_key {
            // Secrets stored before the key was set were encrypted with
            // AUTH_TOKEN_SECRET: still readable, so setting the key later
            // loses nothing (new secrets use the key).
            Some(k) => Self {
                current: derive(k.expose()),
                previous: std::iter::once(auth)
                    .chain(auth_previous)
                    .map(|s| derive(s.expose()))
                    .collect(),
            },
            None => Self {
                current: derive(auth.expose()),
                previous: auth_previous
                    .map(|p| derive(p.expose()))
                    .into_iter()
                    .collect(),
            },
        }
    }

    /// `(nonce, ciphertext)` of `secret`, bound to `api_key`.
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
        if nonce.len() != 12 {
            return None;
        }
        let payload = || Payload {
            msg: ciphertext,
            aad: api_key.as_bytes(),
        };
        let plain = std::iter::once(&self.current)
            .chain(&self.previous)
            .find_map(|c| c.decrypt(Nonce::from_slice(nonce), payload()).ok())?;
        String::from_utf8(plain).ok()
    }
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

    #[test]
    fn setting_an_encryption_key_later_keeps_older_secrets_readable() {
        let before = Config::for_tests("postgres://x/y", "redis://x", "t");
        let (n, ct) = KeyCipher::new(&before).encrypt("key1", "s3cret").unwrap();
        let mut after = before.clone();
        after.gateway.api_key_encryption_key = Some(exchange_common::config::Secret::new(
            "a-separate-encryption-key-of-32-chars".to_owned(),
        ));
        let c = KeyCipher::new(&after);
        assert_eq!(c.decrypt("key1", &n, &ct).as_deref(), Some("s3cret"));
        let (n2, ct2) = c.encrypt("key2", "other").unwrap();
        assert_eq!(
            KeyCipher::new(&before).decrypt("key2", &n2, &ct2),
            None,
            "new secrets use the key"
        );
        assert_eq!(c.decrypt("key2", &n2, &ct2).as_deref(), Some("other"));
    }
}
