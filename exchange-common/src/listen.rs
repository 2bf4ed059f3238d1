//! The public listeners' accept loop (the gateway's REST, private
//! WebSocket and admin ports, marketdata's :8094): `axum::serve` plus the
//! limits that keep one host from starving the others.
//!
//! - **Header-read timeout** (`HTTP_HEADER_READ_TIMEOUT_SECONDS`): a
//!   request's whole head must arrive within it, counted from the moment
//!   the connection is ready for one (opened, or its previous response
//!   sent); so it also ends a keep-alive connection that sends no next
//!   request. A client sending its headers a byte at a time (slowloris) is
//!   closed when it runs out.
//! - **Idle timeout** (`HTTP_IDLE_TIMEOUT_SECONDS`): a connection on which
//!   no byte moves either way for this long is closed (a request body that
//!   stalls, a response its client does not read).
//! - **Per-peer cap** (`HTTP_CONNECTIONS_PER_IP_MAX`): connections open at
//!   once from one TCP peer address (IPv6 by /64, which one subscriber
//!   owns). The count is held by the socket itself, so a connection
//!   upgraded to a WebSocket — authenticated or not, for as long as it is
//!   open — still counts. Beyond the cap a new connection is closed as soon
//!   as it is accepted, before anything is read from it. The peer is the
//!   TCP peer, never `X-Forwarded-For` (no header has been read yet): a
//!   peer in `TRUSTED_PROXIES` (the load balancer, whose connections carry
//!   every client) is not capped, and per-client caps are then the load
//!   balancer's job (docs/RUNBOOK.md, "Abuse limits").
//!
//! HTTP/1.1 only: what a load balancer speaks to its backends, and the
//! protocol whose header read the timeout covers (axum's default also
//! offered cleartext HTTP/2, whose header read has no such bound).
//!
//! Refusals and cuts are counted in
//! `exchange_http_connections_refused_total{service,reason}` (`per_ip_cap`,
//! `header_timeout`, `idle_timeout`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

use crate::config::Config;
use crate::net::IpNet;
use crate::shutdown::Shutdown;

/// The metric counting connections refused or cut by these limits.
pub const REFUSED_METRIC: &str = "exchange_http_connections_refused_total";

/// Counts one refusal or cut of `service` for `reason`.
pub fn count_refused(service: &'static str, reason: &'static str) {
    metrics::counter!(REFUSED_METRIC, "service" => service, "reason" => reason).increment(1);
}

/// What a public listener allows (see the module docs).
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub connections_per_ip_max: u32,
    /// Peers never capped: `TRUSTED_PROXIES`.
    pub uncapped: Arc<[IpNet]>,
}

impl Limits {
    pub fn public(config: &Config) -> Self {
        Self {
            header_read_timeout: config.http.header_read_timeout,
            idle_timeout: config.http.idle_timeout,
            connections_per_ip_max: config.http.connections_per_ip_max,
            uncapped: config.trusted_proxy_nets().into(),
        }
    }
}

/// The key one address is counted under: an IPv4 address (an IPv4-mapped
/// IPv6 one too) itself, an IPv6 address by its /64.
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !(u128::MAX >> 64);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

/// Open things (connections, WebSockets) per address. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PerIp(Arc<Mutex<HashMap<IpAddr, u32>>>);

impl PerIp {
    /// One more for `ip` unless it already holds `max`: the slot gives it
    /// back when dropped.
    pub fn try_take(&self, ip: IpAddr, max: u32) -> Option<Slot> {
        let key = peer_key(ip);
        let mut map = self.0.lock().ok()?;
        let n = map.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: self.clone(),
            key,
        })
    }

    /// How many `ip` holds now.
    pub fn held(&self, ip: IpAddr) -> u32 {
        self.0
            .lock()
            .map_or(0, |m| m.get(&peer_key(ip)).copied().unwrap_or(0))
    }
}

/// One connection's place in its address's count.
#[derive(Debug)]
pub struct Slot {
    owner: PerIp,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.owner.0.lock()
            && let Some(n) = map.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// When a byte last moved on a connection, as milliseconds since `base`.
#[derive(Debug)]
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The accepted socket, noting when bytes move and holding the peer's
/// slot for as long as it lives (through an upgrade to a WebSocket too:
/// the upgraded stream owns this).
struct Tracked {
    io: TcpStream,
    activity: Arc<Activity>,
    _slot: Option<Slot>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves `router` on `listener` with `limits` until `shutdown`, then lets
/// in-flight requests finish for at most `drain` (as `http::serve`).
pub async fn serve_limited(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    drain: Duration,
    limits: Limits,
    service: &'static str,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        header_read_timeout_ms = limits.header_read_timeout.as_millis(),
        idle_timeout_ms = limits.idle_timeout.as_millis(),
        connections_per_ip_max = limits.connections_per_ip_max,
        "listening"
    );
    let per_ip = PerIp::default();
    let limits = Arc::new(limits);
    // Every connection task holds a sender: when all are gone, all are done.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<Infallible>(1);
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_error_pause(&e).await;
                    continue;
                }
            },
        };
        let capped = !limits.uncapped.iter().any(|n| n.contains(peer.ip()));
        let slot = if capped {
            match per_ip.try_take(peer.ip(), limits.connections_per_ip_max) {
                Some(slot) => Some(slot),
                None => {
                    count_refused(service, "per_ip_cap");
                    tracing::debug!(%peer, "connection refused: per-address cap reached");
                    drop(tcp);
                    continue;
                }
            }
        } else {
            None
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
        tokio::spawn(connection(
            Tracked {
                io: tcp,
                activity: Arc::new(Activity::new()),
                _slot: slot,
            },
            peer,
            router.clone(),
            limits.clone(),
            shutdown.clone(),
            service,
            alive.clone(),
        ));
    }
    // Refuse new connections from now on; let those open finish.
    drop(listener);
    drop(alive);
    tokio::select! {
        _ = all_done.recv() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(%addr, drain_seconds = drain.as_secs(), "drain timeout reached, closing remaining connections");
        }
    }
    Ok(())
}

/// Connection errors (a peer gone before we took it) are the peer's; any
/// other (out of file descriptors) would spin the loop: wait a little.
async fn accept_error_pause(e: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn connection(
    io: Tracked,
    peer: SocketAddr,
    router: Router,
    limits: Arc<Limits>,
    shutdown: Shutdown,
    service: &'static str,
    _alive: tokio::sync::mpsc::Sender<Infallible>,
) {
    let activity = io.activity.clone();
    let svc = router.map_request(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.map(Body::new)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(svc))
        .with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let idle_deadline = activity.last() + limits.idle_timeout;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    if e.is_timeout() {
                        count_refused(service, "header_timeout");
                        tracing::debug!(%peer, "connection closed: request head not received in time");
                    } else {
                        tracing::trace!(%peer, error = %e, "connection ended with an error");
                    }
                }
                break;
            }
            () = shutdown.wait(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = tokio::time::sleep_until(idle_deadline.into()) => {
                if activity.last() + limits.idle_timeout <= Instant::now() {
                    count_refused(service, "idle_timeout");
                    tracing::debug!(%peer, "connection closed: idle");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_per_address_and_ipv6_per_64() {
        let per_ip = PerIp::default();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let first = per_ip.try_take(a, 2).unwrap();
        let _second = per_ip.try_take(b, 2).unwrap();
        assert!(per_ip.try_take(a, 2).is_none(), "same /64");
        assert!(per_ip.try_take(other, 2).is_some(), "another /64");
        drop(first);
        assert_eq!(per_ip.held(a), 1);
        assert!(per_ip.try_take(a, 2).is_some());
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        let _s = per_ip.try_take(v4, 1).unwrap();
        assert!(per_ip.try_take(mapped, 1).is_none());
    }
}
