//! In-process rate limits (GCRA, the token bucket without a refill timer),
//! keyed by `(kind, key)`: per client IP for every API call, per IP for
//! login and registration (brute force), per user and per API key for order
//! placement.
//!
//! Memory is bounded: a key whose bucket is full again holds no
//! information and is evicted by a sweep; at most [`RATE_LIMIT_KEYS_MAX`]
//! keys are tracked per kind, and a new key beyond that (after a sweep) is
//! refused, so a flood of addresses cannot grow memory or reset anyone's
//! budget. Each kind has its own table so that a flood of addresses, which
//! fills the per-IP tables, cannot lock signed-in users out of placing
//! orders (their keys are user ids and API keys, bounded by real accounts).
//!
//! Limits are per gateway process: with N replicas behind a balancer the
//! effective budget is up to N times the configured one (documented in the
//! runbook; a shared Redis limiter is the upgrade path).
//!
//! The client IP is `exchange_common::net::client_ip`: `X-Forwarded-For` is
//! believed only from `TRUSTED_PROXIES`. IPv6 clients are keyed by their
//! /64, which one subscriber usually owns whole.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use exchange_common::ErrorCode;
use exchange_common::net::{IpNet, client_ip};
use exchange_common::{ApiError, Config};

/// Keys tracked at once, per kind.
pub const RATE_LIMIT_KEYS_MAX: usize = 200_000;
/// A sweep of idle keys runs at most this often (and when the table is full).
pub const RATE_LIMIT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// A full table is swept at most this often.
pub const RATE_LIMIT_FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What a budget limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Every API call, per client IP.
    Ip,
    /// Login attempts, per client IP.
    Login,
    /// Registrations, per client IP.
    Register,
    /// Order placement, per user.
    OrdersUser,
    /// Order placement, per API key.
    OrdersApiKey,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Ip,
        Kind::Login,
        Kind::Register,
        Kind::OrdersUser,
        Kind::OrdersApiKey,
    ];

    fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ip => "ip",
            Kind::Login => "login",
            Kind::Register => "register",
            Kind::OrdersUser => "orders_user",
            Kind::OrdersApiKey => "orders_api_key",
        }
    }
}

/// A budget: `burst` requests at once, refilled at one per `interval`.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub burst: u32,
    pub interval: Duration,
}

impl Quota {
    /// `n` per `period`, all of them usable at once.
    pub fn per(n: u32, period: Duration) -> Self {
        let n = n.max(1);
        Self {
            burst: n,
            interval: period / n,
        }
    }
}

#[derive(Debug)]
struct Table {
    /// Theoretical arrival time of the next request, per key, one map per
    /// kind (indexed by [`Kind::index`]).
    tat: [HashMap<String, Instant>; Kind::ALL.len()],
    last_sweep: Instant,
    /// When each full table was last swept: a flood that keeps a table
    /// full must not buy a scan of every key with every request.
    last_full_sweep: [Option<Instant>; Kind::ALL.len()],
}

/// The limiter of one gateway process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<Mutex<Table>>,
    ip: Quota,
    login: Quota,
    orders: Quota,
    keys_max: usize,
}

impl RateLimiter {
    pub fn new(config: &Config) -> Self {
        Self::with_quotas(
            Quota::per(
                config.gateway.rate_limit_ip_per_second,
                Duration::from_secs(1),
            ),
            Quota::per(
                config.gateway.rate_limit_login_per_minute,
                Duration::from_secs(60),
            ),
            Quota::per(
                config.gateway.rate_limit_orders_per_second,
                Duration::from_secs(1),
            ),
            RATE_LIMIT_KEYS_MAX,
        )
    }

    pub fn with_quotas(ip: Quota, login: Quota, orders: Quota, keys_max: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Table {
                tat: Default::default(),
                last_sweep: Instant::now(),
                last_full_sweep: Default::default(),
            })),
            ip,
            login,
            orders,
            keys_max,
        }
    }

    fn quota(&self, kind: Kind) -> Quota {
        match kind {
            Kind::Ip => self.ip,
            Kind::Login | Kind::Register => self.login,
            Kind::OrdersUser | Kind::OrdersApiKey => self.orders,
        }
    }

    /// Takes one request from `(kind, key)`'s budget at `now`; `Err` carries
    /// how long until one is available.
    pub fn check_at(&self, kind: Kind, key: &str, now: Instant) -> Result<(), Duration> {
        let q = self.quota(kind);
        let window = q.interval * q.burst;
        let Ok(mut t) = self.inner.lock() else {
            return Ok(());
        };
        if now.duration_since(t.last_sweep) >= RATE_LIMIT_SWEEP_INTERVAL {
            for table in &mut t.tat {
                table.retain(|_, tat| *tat > now);
            }
            t.last_sweep = now;
        }
        let full_sweep_due = t.last_full_sweep[kind.index()]
            .is_none_or(|at| now.duration_since(at) >= RATE_LIMIT_FULL_SWEEP_INTERVAL);
        if t.tat[kind.index()].len() >= self.keys_max && full_sweep_due {
            t.tat[kind.index()].retain(|_, tat| *tat > now);
            t.last_full_sweep[kind.index()] = Some(now);
        }
        let table = &mut t.tat[kind.index()];
        let tat = match table.get(key) {
            Some(tat) => (*tat).max(now),
            None if table.len() >= self.keys_max => {
                tracing::warn!(
                    kind = kind.as_str(),
                    "rate limit table full, refusing new key"
                );
                return Err(Duration::from_secs(1));
            }
            None => now,
        };
        let next = tat + q.interval;
        let ahead = next.duration_since(now);
        if ahead > window {
            return Err(ahead - window);
        }
        table.insert(key.to_owned(), next);
        Ok(())
    }

    pub fn check(&self, kind: Kind, key: &str) -> Result<(), Limited> {
        self.check_at(kind, key, Instant::now()).map_err(|wait| {
            metrics::counter!("exchange_rate_limited_total", "service" => "gateway", "kind" => kind.as_str())
                .increment(1);
            Limited(wait)
        })
    }

    pub fn tracked_keys(&self) -> usize {
        self.inner
            .lock()
            .map(|t| t.tat.iter().map(HashMap::len).sum())
            .unwrap_or(0)
    }
}

/// Accounts whose wrong logins are tracked at once ([`LoginFailures`]).
pub const LOGIN_FAILURE_ACCOUNTS_MAX: usize = 200_000;

/// The per-account login failure budget (`LOGIN_FAILURES_PER_ACCOUNT` per
/// `LOGIN_FAILURE_WINDOW_SECONDS`), beside the per-IP login budget: many
/// addresses guessing one account's password together are stopped too.
///
/// Keyed by the SHA-256 of the lowercased email as typed, whether or not
/// an account has it, so the answers never tell whether one exists. Every
/// attempt is counted *before* the password is checked (so parallel
/// guesses cannot slip in under the limit); a right password forgets the
/// count. Once `max` attempts are counted in the window, every login of
/// that email — the right password too — is refused with 429
/// `TOO_MANY_ATTEMPTS` until the window (which starts at the first
/// counted attempt) has passed.
///
/// Memory is bounded by [`LOGIN_FAILURE_ACCOUNTS_MAX`]. When that many
/// emails are tracked, expired entries go first, then every entry that is
/// not locked: flooding the table with made-up emails costs that many
/// requests (each within the per-IP budget) for a handful of extra guesses
/// at one account. When every tracked email is locked, a new email is
/// refused too (fail closed): an account takeover is worse than a login
/// outage. Per gateway process, like every limit here.
type EmailHash = [u8; 32];

#[derive(Debug, Clone)]
pub struct LoginFailures {
    /// Per email hash: when its window started, and the attempts in it.
    inner: Arc<Mutex<HashMap<EmailHash, (Instant, u32)>>>,
    max: u32,
    window: Duration,
    keys_max: usize,
}

impl LoginFailures {
    pub fn new(config: &Config) -> Self {
        Self::with_limits(
            config.gateway.login_failures_per_account,
            config.gateway.login_failure_window,
            LOGIN_FAILURE_ACCOUNTS_MAX,
        )
    }

    pub fn with_limits(max: u32, window: Duration, keys_max: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(HashMap::new())),
            max: max.max(1),
            window,
            keys_max,
        }
    }

    /// Lowercased one character at a time (no context rules such as a
    /// final sigma), so no spelling the database folds to the same email
    /// gets a budget of its own.
    fn key(email: &str) -> EmailHash {
        use sha2::Digest as _;
        let folded: String = email.trim().chars().flat_map(char::to_lowercase).collect();
        sha2::Sha256::digest(folded.as_bytes()).into()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<EmailHash, (Instant, u32)>> {
        // A panic while counting leaves the counts as they were: keep them.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one attempt for `email` at `now`; `Err` (how long until the
    /// window passes) when its attempts are used up.
    pub fn reserve_at(&self, email: &str, now: Instant) -> Result<(), Duration> {
        let mut t = self.table();
        let key = Self::key(email);
        if !t.contains_key(&key) && t.len() >= self.keys_max {
            let (window, max) = (self.window, self.max);
            t.retain(|_, (since, _)| now.duration_since(*since) < window);
            if t.len() >= self.keys_max {
                tracing::warn!("login failure table full: forgetting every account not locked");
                t.retain(|_, (_, attempts)| *attempts >= max);
            }
            if t.len() >= self.keys_max {
                tracing::warn!("login failure table full of locked accounts: refusing a new one");
                return Err(window);
            }
        }
        let entry = t.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.max {
            return Err(self.window.saturating_sub(now.duration_since(entry.0)));
        }
        entry.1 += 1;
        Ok(())
    }

    pub fn reserve(&self, email: &str) -> Result<(), Limited> {
        self.reserve_at(email, Instant::now()).map_err(|wait| {
            metrics::counter!("exchange_rate_limited_total", "service" => "gateway", "kind" => "login_account")
                .increment(1);
            Limited(wait)
        })
    }

    /// The right password: the count is forgotten.
    pub fn succeeded(&self, email: &str) {
        self.table().remove(&Self::key(email));
    }

    /// An attempt that checked nothing (the server was overloaded): not
    /// counted, and an email left with no attempt is not kept.
    pub fn release(&self, email: &str) {
        let key = Self::key(email);
        let mut t = self.table();
        if let Some(entry) = t.get_mut(&key) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                t.remove(&key);
            }
        }
    }
}

/// A login refused by [`LoginFailures`]: 429 `TOO_MANY_ATTEMPTS` with
/// `Retry-After`.
pub fn login_locked(wait: Limited) -> Response {
    let secs = wait.retry_after_secs();
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooManyAttempts,
        format!("too many failed logins for this account; retry in {secs} s"),
    )
    .into_response();
    resp.headers_mut()
        .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// A refused request: 429 `RATE_LIMITED` with `Retry-After` (whole
/// seconds, at least 1) and the error body.
#[derive(Debug, Clone, Copy)]
pub struct Limited(pub Duration);

impl Limited {
    pub fn retry_after_secs(self) -> u64 {
        (self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0)).max(1)
    }
}

impl IntoResponse for Limited {
    fn into_response(self) -> Response {
        let secs = self.retry_after_secs();
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!("too many requests, retry in {secs} s"),
        )
        .into_response();
        resp.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        resp
    }
}

/// The rate-limit key of a client address (IPv6 by /64).
pub fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let masked = u128::from(v6) & (u128::MAX << 64);
                format!("{}/64", Ipv6Addr::from(masked))
            }
        },
    }
}

/// The client IP of a request (the peer unless it is a trusted proxy).
pub fn request_ip(req: &Request, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>()?.0.ip();
    Some(client_ip(peer, req.headers(), trusted))
}

/// State of the limiting middlewares.
#[derive(Clone)]
pub struct Limits {
    pub limiter: RateLimiter,
    pub trusted_proxies: Arc<[IpNet]>,
}

fn ip_or_unknown(req: &Request, trusted: &[IpNet]) -> String {
    request_ip(req, trusted).map_or_else(|| "unknown".to_owned(), ip_key)
}

/// Every API call: the per-IP budget. (`/health`, `/ready`, `/metrics` are
/// outside the routes this wraps.)
pub async fn per_ip(State(l): State<Limits>, req: Request, next: Next) -> Response {
    let key = ip_or_unknown(&req, &l.trusted_proxies);
    match l.limiter.check(Kind::Ip, &key) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Login: the per-IP brute-force budget, on top of [`per_ip`].
pub async fn login(State(l): State<Limits>, req: Request, next: Next) -> Response {
    let key = ip_or_unknown(&req, &l.trusted_proxies);
    match l.limiter.check(Kind::Login, &key) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Registration: its own per-IP budget of the same size as login's.
pub async fn register(State(l): State<Limits>, req: Request, next: Next) -> Response {
    let key = ip_or_unknown(&req, &l.trusted_proxies);
    match l.limiter.check(Kind::Register, &key) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn gcra_burst_refill_and_retry_after() {
        let rl = RateLimiter::with_quotas(
            Quota::per(10, Duration::from_secs(60)),
            Quota::per(10, Duration::from_secs(60)),
            Quota::per(5, Duration::from_secs(1)),
            1_000,
        );
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(rl.check_at(Kind::Login, "1.2.3.4", t0).is_ok(), "{i}");
        }
        let wait = rl.check_at(Kind::Login, "1.2.3.4", t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(6));
        // Another key and another kind have their own budgets.
        assert!(rl.check_at(Kind::Login, "1.2.3.5", t0).is_ok());
        assert!(rl.check_at(Kind::Register, "1.2.3.4", t0).is_ok());
        // One interval later exactly one more is allowed.
        let t1 = t0 + Duration::from_secs(6);
        assert!(rl.check_at(Kind::Login, "1.2.3.4", t1).is_ok());
        assert!(rl.check_at(Kind::Login, "1.2.3.4", t1).is_err());
    }

    #[test]
    fn memory_is_bounded_and_idle_keys_evicted() {
        let rl = RateLimiter::with_quotas(
            Quota::per(1, Duration::from_secs(1)),
            Quota::per(1, Duration::from_secs(1)),
            Quota::per(1, Duration::from_secs(1)),
            3,
        );
        let t0 = Instant::now();
        for k in ["a", "b", "c"] {
            assert!(rl.check_at(Kind::Ip, k, t0).is_ok());
        }
        assert!(
            rl.check_at(Kind::Ip, "d", t0).is_err(),
            "full: new key refused"
        );
        assert!(
            rl.check_at(Kind::Ip, "a", t0).is_err(),
            "existing keys keep their state"
        );
        // A flood that fills the per-IP table does not lock signed-in
        // users out: order budgets live in their own table.
        assert!(rl.check_at(Kind::OrdersUser, "user:1", t0).is_ok());
        assert!(rl.check_at(Kind::OrdersApiKey, "key:1", t0).is_ok());
        // After their buckets refill, the idle keys are swept and "d" fits.
        let t1 = t0 + Duration::from_secs(2);
        assert!(rl.check_at(Kind::Ip, "d", t1).is_ok());
        // The full per-IP table was swept on the spot; the order tables were
        // not full and wait for the periodic sweep.
        assert_eq!(rl.tracked_keys(), 3);
        let t2 = t0 + RATE_LIMIT_SWEEP_INTERVAL;
        assert!(rl.check_at(Kind::Ip, "e", t2).is_ok());
        assert_eq!(rl.tracked_keys(), 1);
    }

    #[test]
    fn login_failures_lock_an_email_for_the_window_whatever_the_case() {
        let f = LoginFailures::with_limits(3, Duration::from_secs(60), 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(f.reserve_at("Victim@Example.com", t0).is_ok());
        }
        assert_eq!(
            f.reserve_at("victim@example.com ", t0 + Duration::from_secs(10)),
            Err(Duration::from_secs(50))
        );
        // Others are not affected; the window passing frees it.
        assert!(f.reserve_at("other@example.com", t0).is_ok());
        assert!(
            f.reserve_at("victim@example.com", t0 + Duration::from_secs(60))
                .is_ok()
        );
        // Success forgets, an overloaded attempt is given back.
        f.succeeded("victim@example.com");
        for _ in 0..3 {
            assert!(f.reserve_at("victim@example.com", t0).is_ok());
            f.release("victim@example.com");
        }
        assert!(f.reserve_at("victim@example.com", t0).is_ok());
    }

    #[test]
    fn a_table_flooded_with_made_up_emails_keeps_the_locks_and_fails_closed() {
        let f = LoginFailures::with_limits(2, Duration::from_secs(60), 4);
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(f.reserve_at("victim@example.com", t0).is_ok());
        }
        // One attempt at the victim left; the attacker floods the table.
        for i in 0..10 {
            assert!(
                f.reserve_at(&format!("made-up-{i}@example.com"), t0)
                    .is_ok()
            );
        }
        // The victim's lock survived the eviction of the unlocked entries.
        assert!(f.reserve_at("victim@example.com", t0).is_err());
        // A table of locked entries only refuses a new email.
        for i in 0..3 {
            let e = format!("locked-{i}@example.com");
            for _ in 0..2 {
                assert!(f.reserve_at(&e, t0).is_ok());
            }
        }
        assert!(f.reserve_at("newcomer@example.com", t0).is_err());
        // An overloaded attempt given back leaves nothing behind.
        let g = LoginFailures::with_limits(2, Duration::from_secs(60), 4);
        assert!(g.reserve_at("a@example.com", t0).is_ok());
        g.release("a@example.com");
        assert!(g.table().is_empty());
        // A final capital sigma folds like any other.
        assert_eq!(
            LoginFailures::key("ABCΣ@example.com"),
            LoginFailures::key("abcσ@example.com")
        );
    }

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        let a: IpAddr = "2001:db8:1:2::1"
            .parse()
            .unwrap_or(IpAddr::V4([0, 0, 0, 0].into()));
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::V4([0, 0, 0, 0].into()));
        assert_eq!(ip_key(a), ip_key(b));
        assert_eq!(ip_key(a), "2001:db8:1:2::/64");
        assert_eq!(ip_key("::ffff:1.2.3.4".parse().unwrap_or(a)), "1.2.3.4");
    }
}
