//! The gateway's shared state.

use std::sync::Arc;

use exchange_common::net::IpNet;
use exchange_common::service::ServiceBase;

use crate::keys::KeyCipher;
use crate::password::Passwords;
use crate::tokens::Tokens;

#[derive(Clone)]
pub struct AppState {
    pub base: ServiceBase,
    pub passwords: Passwords,
    pub tokens: Arc<Tokens>,
    pub keys: KeyCipher,
    pub trusted_proxies: Arc<[IpNet]>,
}

impl AppState {
    pub fn db(&self) -> &sqlx::PgPool {
        &self.base.db
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}
