//! The gateway's shared state.

use std::sync::Arc;

use exchange_common::Shutdown;
use exchange_common::net::IpNet;
use exchange_common::service::ServiceBase;

use crate::auth::keys::KeyCipher;
use crate::auth::password::Passwords;
use crate::auth::tokens::Tokens;
use crate::hub::Hub;
use crate::ratelimit::{LoginFailures, RateLimiter};
use crate::upstream::Upstream;

/// The handlers' state, behind one `Arc`: axum's `State` extractor clones
/// it for every request, and cloning (then dropping) the fields themselves
/// cost an atomic increment and decrement per `Arc` inside each of them.
/// Fields are reached through `Deref`.
#[derive(Clone)]
pub struct AppState(Arc<StateInner>);

pub struct StateInner {
    pub base: ServiceBase,
    pub passwords: Passwords,
    pub tokens: Arc<Tokens>,
    pub keys: KeyCipher,
    pub trusted_proxies: Arc<[IpNet]>,
    /// The order service's internal API.
    pub orders: Upstream,
    /// The custody service (exchange-wallet).
    pub wallet: Upstream,
    /// The marketdata service.
    pub marketdata: Upstream,
    pub limiter: RateLimiter,
    /// The per-account login failure budget.
    pub login_failures: LoginFailures,
    /// Open private WebSocket connections, by user.
    pub hub: Hub,
    /// Closes the private WebSocket sessions on shutdown.
    pub shutdown: Shutdown,
}

impl AppState {
    pub fn new(inner: StateInner) -> Self {
        Self(Arc::new(inner))
    }

    pub fn db(&self) -> &sqlx::PgPool {
        &self.base.db
    }

    /// History reads: the read replica when in use (see
    /// `exchange_common::replica` for which reads may go there).
    pub fn reads(&self) -> &exchange_common::replica::Reads {
        &self.base.reads
    }
}

impl std::ops::Deref for AppState {
    type Target = StateInner;
    fn deref(&self) -> &StateInner {
        &self.0
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}
