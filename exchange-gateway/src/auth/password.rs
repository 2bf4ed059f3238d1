//! Password policy and Argon2id hashing (off the async threads, bounded).
//!
//! Constant-time paths: a login for an unknown email verifies against a
//! dummy hash made at start-up with the same parameters, so both failures
//! cost one Argon2 verification and look the same from outside.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use tokio::sync::Semaphore;

pub const PASSWORD_LEN_MIN: usize = 10;
pub const PASSWORD_LEN_MAX: usize = 128;
/// Concurrent Argon2 computations (each takes ~19 MiB and a core).
pub const PASSWORD_HASH_CONCURRENCY_MAX: usize = 4;

/// Checks the password policy; `Err` is a message for the client.
pub fn check_policy(password: &str) -> Result<(), String> {
    let len = password.chars().count();
    if len < PASSWORD_LEN_MIN {
        return Err(format!(
            "password must have at least {PASSWORD_LEN_MIN} characters"
        ));
    }
    if len > PASSWORD_LEN_MAX {
        return Err(format!(
            "password must have at most {PASSWORD_LEN_MAX} characters"
        ));
    }
    Ok(())
}

#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    dummy_hash: Arc<str>,
}

impl Passwords {
    pub async fn new() -> anyhow::Result<Self> {
        let permits = Arc::new(Semaphore::new(PASSWORD_HASH_CONCURRENCY_MAX));
        let seed: [u8; 16] = rand::random();
        let dummy = hash_blocking(hex::encode(seed)).await?;
        Ok(Self {
            permits,
            dummy_hash: dummy.into(),
        })
    }

    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await?;
        hash_blocking(password.to_owned()).await
    }

    /// Verifies against `hash`, or against the dummy hash when `None`
    /// (unknown user) — then always `false`, after the same work.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await?;
        let known = hash.is_some();
        let hash = hash.map_or_else(|| self.dummy_hash.to_string(), str::to_owned);
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            Argon2::default()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok()
        })
        .await?;
        Ok(ok && known)
    }
}

async fn hash_blocking(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))
    })
    .await?
}

#[cfg(test)]
mod tests {
    #[test]
    fn policy() {
        assert!(super::check_policy("short").is_err());
        assert!(super::check_policy("long enough").is_ok());
        assert!(super::check_policy(&"x".repeat(129)).is_err());
    }
}
