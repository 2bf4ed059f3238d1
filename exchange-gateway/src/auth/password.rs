//! Password policy and Argon2id hashing (off the async threads, bounded).
//!
//! Constant-time paths: a login for an unknown email verifies against a
//! dummy hash made at start-up with the same parameters, so both failures
//! cost one Argon2 verification and look the same from outside.
//!
//! Bounded twice: at most [`PASSWORD_HASH_CONCURRENCY_MAX`] hashes run at
//! once, and at most `PASSWORD_HASH_QUEUE_MAX` wait for a slot; one more
//! is refused at once ([`HashError::Overloaded`], 503 `OVERLOADED`) instead
//! of queueing without end behind a flood of logins.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use exchange_common::{ApiError, ErrorCode};

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

/// Why a hash was not computed.
#[derive(Debug)]
pub enum HashError {
    /// The wait queue is full: 503 `OVERLOADED`, retry in a second.
    Overloaded,
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for HashError {
    fn from(e: anyhow::Error) -> Self {
        Self::Failed(e)
    }
}

impl From<tokio::task::JoinError> for HashError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Failed(e.into())
    }
}

impl From<tokio::sync::AcquireError> for HashError {
    fn from(e: tokio::sync::AcquireError) -> Self {
        Self::Failed(e.into())
    }
}

/// 503 `OVERLOADED` with `Retry-After: 1`.
pub fn overloaded() -> Response {
    let mut resp = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Overloaded,
        "too many password checks are waiting; retry in a second",
    )
    .into_response();
    resp.headers_mut()
        .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(1_u32));
    resp
}

impl IntoResponse for HashError {
    fn into_response(self) -> Response {
        match self {
            HashError::Overloaded => overloaded(),
            HashError::Failed(e) => ApiError::internal(e).into_response(),
        }
    }
}

#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// Hashes waiting for a permit now.
    waiting: Arc<AtomicUsize>,
    queue_max: usize,
    dummy_hash: Arc<str>,
}

/// One place in the wait queue, given back when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Passwords {
    /// `queue_max` hashes may wait for one of the
    /// [`PASSWORD_HASH_CONCURRENCY_MAX`] slots (`PASSWORD_HASH_QUEUE_MAX`).
    pub async fn new(queue_max: usize) -> anyhow::Result<Self> {
        Self::with_limits(PASSWORD_HASH_CONCURRENCY_MAX, queue_max).await
    }

    pub async fn with_limits(concurrency: usize, queue_max: usize) -> anyhow::Result<Self> {
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let seed: [u8; 16] = rand::random();
        let dummy = hash_blocking(hex::encode(seed)).await?;
        Ok(Self {
            permits,
            waiting: Arc::new(AtomicUsize::new(0)),
            queue_max,
            dummy_hash: dummy.into(),
        })
    }

    /// A hashing slot: at once when one is free, else after waiting in a
    /// queue of at most `queue_max`.
    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, HashError> {
        if let Ok(p) = self.permits.try_acquire() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue_max {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("exchange_overloaded_total", "service" => "gateway", "what" => "password_hash")
                .increment(1);
            return Err(HashError::Overloaded);
        }
        let _place = Waiting(&self.waiting);
        Ok(self.permits.acquire().await?)
    }

    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let _permit = self.permit().await?;
        Ok(hash_blocking(password.to_owned()).await?)
    }

    /// Verifies against `hash`, or against the dummy hash when `None`
    /// (unknown user) — then always `false`, after the same work.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool, HashError> {
        let _permit = self.permit().await?;
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wait_queue_is_bounded() {
        let p = Passwords::with_limits(1, 2).await.unwrap();
        // Hold the only slot: the next two wait, the one after is refused.
        let held = p.permits.clone().try_acquire_owned().unwrap();
        let w1 = tokio::spawn({
            let p = p.clone();
            async move { p.verify("x", None).await.map_err(|e| format!("{e:?}")) }
        });
        let w2 = tokio::spawn({
            let p = p.clone();
            async move { p.verify("x", None).await.map_err(|e| format!("{e:?}")) }
        });
        while p.waiting.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            p.verify("x", None).await,
            Err(HashError::Overloaded)
        ));
        drop(held);
        assert_eq!(w1.await.unwrap(), Ok(false));
        assert_eq!(w2.await.unwrap(), Ok(false));
        assert_eq!(p.waiting.load(Ordering::Acquire), 0, "places given back");
        assert!(matches!(p.verify("x", None).await, Ok(false)));
    }

    #[test]
    fn policy() {
        assert!(super::check_policy("short").is_err());
        assert!(super::check_policy("long enough").is_ok());
        assert!(super::check_policy(&"x".repeat(129)).is_err());
    }
}
