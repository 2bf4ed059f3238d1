//! What one client may ask of the public port (when marketdata is exposed
//! on :8094): WebSockets open per client IP, messages per second on one
//! WebSocket, depth snapshots per 10 s on one WebSocket, and REST requests
//! and WebSocket handshakes per client IP (one budget). Connection-level limits (header read, idle, connections
//! per peer) are `exchange_common::listen`'s.
//!
//! The client IP is `exchange_common::net::client_ip` (`X-Forwarded-For`
//! only from `TRUSTED_PROXIES`), IPv6 by its /64. A REST call presenting
//! `INTERNAL_TOKEN` (the gateway relaying its own, already rate-limited,
//! clients) is not counted. Per process, like the gateway's limits.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use exchange_common::auth::{bearer_token, constant_time_eq};
use exchange_common::listen::{PerIp, peer_key};
use exchange_common::net::{IpNet, client_ip};
use exchange_common::{ApiError, Config, ErrorCode, Secret};

/// REST clients tracked at once; a new one beyond it (after a sweep) is
/// served untracked (fail open, counted in
/// `exchange_rate_limit_table_full_total`; the per-peer connection cap
/// still holds it), so a flood of addresses cannot grow memory nor lock
/// every new client out.
pub const REST_KEYS_MAX: usize = 100_000;

/// A WebSocket may send this many seconds' worth of messages at once.
pub const WS_MESSAGE_BURST_FACTOR: u32 = 4;

/// A token bucket for one connection (no lock: its reader owns it), kept
/// as GCRA: the time at which the bucket would be full again.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// One token's worth of time.
    interval: Duration,
    /// The whole bucket's worth.
    window: Duration,
    full_at: Instant,
    /// When the bucket was last used (a REST table drops idle ones).
    at: Instant,
}

impl Bucket {
    /// `n` per `period`, `burst` of them at once.
    pub fn new(n: u32, period: Duration, burst: u32) -> Self {
        Self::new_at(n, period, burst, Instant::now())
    }

    /// [`Bucket::new`], full as of `now`.
    pub fn new_at(n: u32, period: Duration, burst: u32, now: Instant) -> Self {
        let interval = period / n.max(1);
        Self {
            interval,
            window: interval.saturating_mul(burst.max(1)),
            full_at: now,
            at: now,
        }
    }

    /// Takes `n` tokens now, or tells how long until there are that many.
    pub fn take(&mut self, n: u32, now: Instant) -> Result<(), Duration> {
        self.at = now;
        let next = self.full_at.max(now) + self.interval.saturating_mul(n);
        let ahead = next.duration_since(now);
        if ahead > self.window {
            return Err(ahead - self.window);
        }
        self.full_at = next;
        Ok(())
    }
}

/// The limits and the shared counts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Limits {
    pub ws_connections_per_ip_max: u32,
    pub ws_messages_per_second: u32,
    pub ws_snapshots_per_10s: u32,
    pub rest_per_ip_per_second: u32,
    pub trusted_proxies: Arc<[IpNet]>,
    internal_tokens: Arc<[Secret]>,
    pub ws_open: PerIp,
    rest: Arc<Mutex<RestTable>>,
}

#[derive(Debug, Default)]
struct RestTable {
    buckets: HashMap<IpAddr, Bucket>,
    last_sweep: Option<Instant>,
    last_full_log: Option<Instant>,
}

impl Limits {
    /// No limit at all (tools and benchmarks that build an `App` by hand).
    pub fn unlimited() -> Self {
        Self {
            ws_connections_per_ip_max: u32::MAX,
            ws_messages_per_second: u32::MAX / 4,
            ws_snapshots_per_10s: u32::MAX / 4,
            rest_per_ip_per_second: u32::MAX / 4,
            trusted_proxies: Arc::new([]),
            internal_tokens: Arc::new([]),
            ws_open: PerIp::default(),
            rest: Arc::default(),
        }
    }

    pub fn from_config(config: &Config) -> Self {
        let m = &config.marketdata;
        let tokens: Vec<Secret> = std::iter::once(config.internal_token.clone())
            .chain(config.internal_token_previous.clone())
            .collect();
        Self {
            ws_connections_per_ip_max: m.ws_connections_per_ip_max,
            ws_messages_per_second: m.ws_messages_per_second,
            ws_snapshots_per_10s: m.ws_snapshots_per_10s,
            rest_per_ip_per_second: m.rate_limit_ip_per_second,
            trusted_proxies: config.trusted_proxy_nets().into(),
            internal_tokens: tokens.into(),
            ws_open: PerIp::default(),
            rest: Arc::default(),
        }
    }

    /// One WebSocket's message budget: the rate per second, four times
    /// that at once (a bot subscribing to its markets at start sends a
    /// burst of `SUBSCRIBE`s, one per stream).
    pub fn message_bucket(&self) -> Bucket {
        let n = self.ws_messages_per_second;
        Bucket::new(
            n,
            Duration::from_secs(1),
            n.saturating_mul(WS_MESSAGE_BURST_FACTOR),
        )
    }

    /// One WebSocket's depth-snapshot budget: the number per 10 s, all at once.
    pub fn snapshot_bucket(&self) -> Bucket {
        let n = self.ws_snapshots_per_10s;
        Bucket::new(n, Duration::from_secs(10), n)
    }

    fn is_internal(&self, headers: &axum::http::HeaderMap) -> bool {
        bearer_token(headers).is_some_and(|t| {
            self.internal_tokens
                .iter()
                .any(|s| constant_time_eq(t.as_bytes(), s.expose().as_bytes()))
        })
    }

    /// Takes one REST request from `ip`'s budget.
    fn take_rest(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let Ok(mut t) = self.rest.lock() else {
            return Ok(());
        };
        let n = self.rest_per_ip_per_second;
        // Full buckets carry no information: dropped every 10 s, or when
        // the table is full.
        let sweep_due = t
            .last_sweep
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10));
        if sweep_due || t.buckets.len() >= REST_KEYS_MAX {
            let refill = Duration::from_secs(1);
            t.buckets
                .retain(|_, b| now.saturating_duration_since(b.at) < refill);
            t.last_sweep = Some(now);
        }
        let key = peer_key(ip);
        if !t.buckets.contains_key(&key) && t.buckets.len() >= REST_KEYS_MAX {
            // As the gateway's weight table: too many clients at once, the
            // new one is not tracked (its connections are still capped).
            metrics::counter!("exchange_rate_limit_table_full_total", "service" => "marketdata", "table" => "rest_per_ip")
                .increment(1);
            if t.last_full_log
                .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10))
            {
                tracing::warn!("marketdata per-IP budget table full, not tracking new clients");
                t.last_full_log = Some(now);
            }
            return Ok(());
        }
        t.buckets
            .entry(key)
            .or_insert_with(|| Bucket::new_at(n, Duration::from_secs(1), n, now))
            .take(1, now)
    }

    /// Takes one WebSocket handshake from `ip`'s REST budget (unless it
    /// presents `INTERNAL_TOKEN`): a client opening, subscribing (a fresh
    /// depth snapshot each time) and closing in a loop is throttled per
    /// IP, not only per connection.
    pub fn take_handshake(
        &self,
        ip: IpAddr,
        headers: &axum::http::HeaderMap,
        now: Instant,
    ) -> Result<(), Duration> {
        if self.is_internal(headers) {
            return Ok(());
        }
        self.take_rest(ip, now)
    }

    /// The client IP of a request.
    pub fn client(&self, peer: SocketAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        client_ip(peer.ip(), headers, &self.trusted_proxies)
    }
}

/// 429 `code` with `Retry-After` (whole seconds, at least 1).
pub fn too_many(code: ErrorCode, message: String, wait: Duration) -> Response {
    let mut resp = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message).into_response();
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// The REST routes' per-IP budget (`MARKETDATA_RATE_LIMIT_IP_PER_SECOND`).
pub async fn rest_per_ip(
    State(limits): State<Limits>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if !limits.is_internal(req.headers()) {
        let ip = limits.client(peer, req.headers());
        if let Err(wait) = limits.take_rest(ip, Instant::now()) {
            metrics::counter!("exchange_rate_limited_total", "service" => "marketdata", "kind" => "ip")
                .increment(1);
            return too_many(
                ErrorCode::RateLimited,
                format!(
                    "at most {} market data requests per second per client",
                    limits.rest_per_ip_per_second
                ),
                wait,
            );
        }
    }
    next.run(req).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut b = Bucket::new(5, Duration::from_secs(1), 10);
        let t0 = Instant::now();
        for _ in 0..10 {
            b.take(1, t0).unwrap();
        }
        let wait = b.take(1, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        b.take(1, t0 + Duration::from_millis(200)).unwrap();
        assert!(b.take(1, t0 + Duration::from_millis(200)).is_err());
        // Never more than the burst, however long it rested.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.take(11, later).is_err());
        b.take(10, later).unwrap();
    }

    #[test]
    fn a_full_rest_table_serves_new_clients_untracked() {
        let mut limits = Limits::unlimited();
        limits.rest_per_ip_per_second = 1;
        let now = Instant::now();
        for i in 0..u32::try_from(REST_KEYS_MAX).unwrap() {
            limits
                .take_rest(IpAddr::from((10_u32 << 24 | i).to_be_bytes()), now)
                .unwrap();
        }
        // A tracked client keeps its budget; a new one is served.
        assert!(limits.take_rest("10.0.0.0".parse().unwrap(), now).is_err());
        let new: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limits.take_rest(new, now).is_ok());
        assert!(limits.take_rest(new, now).is_ok());
    }
}
