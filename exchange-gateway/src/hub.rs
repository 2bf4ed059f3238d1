//! The private push hub: `privateEventsConsumer`, the one Redis Pub/Sub
//! subscription per gateway process, and the registry of open private
//! connections it routes to (the WebSocket `/ws/private` in [`crate::ws`]
//! and the Binance user data stream register here alike).
//!
//! Clearing publishes `{"type":"order"|"trade"|"balance","data":{..}}`
//! events on `<prefix>:private:<user_id>` after each settlement commits,
//! several of one user's events in one message as a JSON array. The
//! consumer (`PSUBSCRIBE <prefix>:private:*`) routes each event, in order,
//! to the connections of that user only; each connection numbers what it
//! sends with a consecutive `seq` (1, 2, 3, …), so a client sees a gap as a
//! jump.
//! Pub/Sub loses what is published while the subscriber is disconnected:
//! after every (re)subscription each open connection gets
//! `{"type":"resync","seq":N}` (N taking the next number) and should
//! re-fetch its orders and balances over REST.
//!
//! Bounded: every connection has a send queue of [`WS_SEND_QUEUE_LEN_MAX`]
//! messages; a connection whose queue cannot take a whole message is
//! evicted, so a slow client never delays anyone else.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use futures_util::StreamExt as _;
use serde::Deserialize;
use tokio::sync::{Notify, mpsc};

use exchange_common::ErrorCode;
use exchange_common::ready::Heartbeat;
use exchange_common::redis::Redis;
use exchange_common::{ApiError, Shutdown};

/// Messages waiting to be written to one connection.
pub const WS_SEND_QUEUE_LEN_MAX: usize = 256;
/// Open private connections per user, and per gateway process.
pub const WS_CONNECTIONS_PER_USER_MAX: usize = 16;
pub const WS_CONNECTIONS_MAX: usize = 20_000;

/// How often the subscriber pings Redis (its heartbeat), and the deadlines.
pub const PUBSUB_PING_INTERVAL: Duration = Duration::from_secs(1);
pub const PUBSUB_PING_TIMEOUT: Duration = Duration::from_secs(2);
pub const PUBSUB_SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// `/ready` shows `privateEventsConsumer` down when no ping succeeded for this long.
pub const PUBSUB_STALE_AFTER: Duration = Duration::from_secs(5);
pub const PUBSUB_RECONNECT_DELAY_MIN: Duration = Duration::from_millis(100);
pub const PUBSUB_RECONNECT_DELAY_MAX: Duration = Duration::from_secs(5);

pub const CONSUMER_NAME: &str = "privateEventsConsumer";

/// Published on a user's private channel by the gateway that ended a
/// session or changed a credential, so every gateway has that user's
/// connections check theirs. It carries no authority: a connection only
/// closes when the database says its credential is no longer good, so a
/// forged message costs a query, never a session.
pub const CREDENTIALS_CHANGED: &str = r#"{"type":"credentials_changed"}"#;

/// One message for a connection; `seq` is added when it is written.
#[derive(Debug, Clone)]
pub enum Push {
    /// A private event: its `type` and `data`, both already JSON text.
    Event { kind: Arc<str>, data: Arc<str> },
    /// Messages may have been lost: re-fetch over REST.
    Resync,
}

impl Push {
    pub(crate) fn render(&self, seq: u64) -> String {
        match self {
            Push::Event { kind, data } => {
                format!(r#"{{"type":{kind},"seq":{seq},"data":{data}}}"#)
            }
            Push::Resync => format!(r#"{{"type":"resync","seq":{seq}}}"#),
        }
    }
}

struct Conn {
    id: u64,
    tx: mpsc::Sender<Push>,
    evict: Arc<Notify>,
    recheck: Arc<Notify>,
}

#[derive(Default)]
struct HubInner {
    by_user: BTreeMap<i64, Vec<Conn>>,
    total: usize,
}

/// The open private connections of this process, by user.
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<Mutex<HubInner>>,
    next_id: Arc<AtomicU64>,
}

/// A registered connection; unregisters itself when dropped.
pub struct Registration {
    hub: Hub,
    user_id: i64,
    id: u64,
    pub rx: mpsc::Receiver<Push>,
    pub evict: Arc<Notify>,
    /// Notified when the user's credentials changed (logout, freeze, key
    /// deleted, ...): the session checks its own against the database.
    pub recheck: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(self.user_id, self.id);
    }
}

fn connections_gauge(total: usize) {
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!("exchange_ws_connections", "service" => "gateway", "kind" => "private")
        .set(total as f64);
}

impl Hub {
    /// A hub with no connections, exported as such so the series exists
    /// before the first connection.
    pub fn new() -> Self {
        connections_gauge(0);
        Self::default()
    }

    pub fn register(&self, user_id: i64) -> Result<Registration, ApiError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(WS_SEND_QUEUE_LEN_MAX);
        let evict = Arc::new(Notify::new());
        let recheck = Arc::new(Notify::new());
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| ApiError::internal(anyhow::anyhow!("hub lock poisoned")))?;
        if inner.total >= WS_CONNECTIONS_MAX {
            return Err(ApiError::unavailable("too many connections, retry later"));
        }
        let conns = inner.by_user.entry(user_id).or_default();
        if conns.len() >= WS_CONNECTIONS_PER_USER_MAX {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyConnections,
                format!("at most {WS_CONNECTIONS_PER_USER_MAX} private connections per user"),
            ));
        }
        conns.push(Conn {
            id,
            tx,
            evict: evict.clone(),
            recheck: recheck.clone(),
        });
        inner.total += 1;
        connections_gauge(inner.total);
        Ok(Registration {
            hub: self.clone(),
            user_id,
            id,
            rx,
            evict,
            recheck,
        })
    }

    /// Tells each of the user's connections to check its credential again.
    pub fn recheck_user(&self, user_id: i64) {
        if let Ok(inner) = self.inner.lock()
            && let Some(conns) = inner.by_user.get(&user_id)
        {
            for c in conns {
                c.recheck.notify_one();
            }
        }
    }

    fn remove(&self, user_id: i64, id: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            let mut removed = false;
            if let Some(conns) = inner.by_user.get_mut(&user_id) {
                let before = conns.len();
                conns.retain(|c| c.id != id);
                removed = conns.len() < before;
                if conns.is_empty() {
                    inner.by_user.remove(&user_id);
                }
            }
            if removed {
                inner.total -= 1;
            }
            connections_gauge(inner.total);
        }
    }

    /// Queues `push` for every connection of `user_id`; a connection whose
    /// queue is full is evicted (it is told to close).
    pub fn dispatch(&self, user_id: i64, push: &Push) {
        self.dispatch_all(user_id, std::slice::from_ref(push));
    }

    /// Queues `pushes`, in order, for each of the user's connections; a
    /// connection whose queue cannot take them all is evicted.
    pub fn dispatch_all(&self, user_id: i64, pushes: &[Push]) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let mut evicted = 0;
        if let Some(conns) = inner.by_user.get_mut(&user_id) {
            conns.retain(|c| {
                // All or nothing: a connection is never left with part of
                // a message (the queue only drains while we hold the lock).
                if c.tx.capacity() < pushes.len() {
                    c.evict.notify_one();
                    evicted += 1;
                    return false;
                }
                // Only a closed queue can refuse now (the hub sends only
                // under its lock, and the room was checked): the session
                // is gone already.
                for push in pushes {
                    if c.tx.try_send(push.clone()).is_err() {
                        evicted += 1;
                        return false;
                    }
                }
                true
            });
            if conns.is_empty() {
                inner.by_user.remove(&user_id);
            }
        }
        if evicted > 0 {
            inner.total -= evicted;
            connections_gauge(inner.total);
            metrics::counter!("exchange_ws_slow_disconnects_total", "service" => "gateway", "kind" => "private")
                .increment(u64::try_from(evicted).unwrap_or(0));
        }
    }

    /// Tells every connection to resync.
    pub fn resync_all(&self) {
        let users: Vec<i64> = match self.inner.lock() {
            Ok(inner) => inner.by_user.keys().copied().collect(),
            Err(_) => return,
        };
        for user in users {
            self.dispatch(user, &Push::Resync);
        }
    }

    pub fn connections(&self) -> usize {
        self.inner.lock().map(|i| i.total).unwrap_or(0)
    }
}

/// One private event as clearing publishes it; `data` is forwarded to the
/// client as it was written, never parsed.
#[derive(Deserialize)]
struct Published<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

/// The user a private channel (`<prefix><user_id>`) belongs to.
fn channel_user(channel: &str, prefix: &str) -> Option<i64> {
    channel.strip_prefix(prefix)?.parse().ok()
}

/// Parses one Pub/Sub message into its user and pushes, in order. A
/// message is one user's events of one settlement as a JSON array, or (as
/// clearing published before) a single event.
fn parse_message(channel: &str, prefix: &str, payload: &str) -> Option<(i64, Vec<Push>)> {
    let user_id = channel_user(channel, prefix)?;
    // Not an untagged enum: serde buffers those, and a RawValue cannot be
    // read from the buffer.
    let events: Vec<Published> = if payload.trim_start().starts_with('[') {
        serde_json::from_str(payload).ok()?
    } else {
        vec![serde_json::from_str(payload).ok()?]
    };
    let mut pushes = Vec::with_capacity(events.len());
    for e in events {
        pushes.push(Push::Event {
            kind: serde_json::to_string(&e.kind).ok()?.into(),
            data: e.data.get().into(),
        });
    }
    Some((user_id, pushes))
}

/// `privateEventsConsumer`: subscribes, routes, pings Redis as its
/// heartbeat, and reconnects with backoff until shutdown.
pub async fn run_private_events(redis: Redis, hub: Hub, heartbeat: Heartbeat, shutdown: Shutdown) {
    let pattern = redis.key("private:*");
    let prefix = redis.key("private:");
    let mut delay = PUBSUB_RECONNECT_DELAY_MIN;
    loop {
        let subscribed = async {
            let mut ps = redis.pubsub().await?;
            tokio::time::timeout(PUBSUB_SUBSCRIBE_TIMEOUT, ps.psubscribe(&pattern))
                .await
                .map_err(|_| {
                    redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
                })??;
            Ok::<_, redis::RedisError>(ps)
        };
        let ps = tokio::select! {
            () = shutdown.wait() => return,
            r = subscribed => r,
        };
        let ps = match ps {
            Ok(ps) => ps,
            Err(e) => {
                heartbeat.down("redis pubsub unavailable");
                tracing::warn!(error = %e, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(0), "private events subscription failed, retrying");
                tokio::select! {
                    () = shutdown.wait() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(PUBSUB_RECONNECT_DELAY_MAX);
                continue;
            }
        };
        delay = PUBSUB_RECONNECT_DELAY_MIN;
        heartbeat.beat();
        tracing::info!(%pattern, "private events subscribed");
        // Whatever was published while we were not subscribed is lost.
        hub.resync_all();
        let (mut sink, mut stream) = ps.split();
        let mut ping = tokio::time::interval(PUBSUB_PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let channel = msg.get_channel_name().to_owned();
                    let Ok(payload) = msg.get_payload::<String>() else {
                        tracing::warn!(%channel, "private event payload is not text");
                        continue;
                    };
                    if payload == CREDENTIALS_CHANGED {
                        if let Some(user) = channel_user(&channel, &prefix) {
                            hub.recheck_user(user);
                        }
                        continue;
                    }
                    match parse_message(&channel, &prefix, &payload) {
                        Some((user, pushes)) => hub.dispatch_all(user, &pushes),
                        None => {
                            tracing::warn!(%channel, "malformed private event dropped");
                            // The user's clients cannot see this gap in `seq`:
                            // have them re-read over REST.
                            if let Some(user) = channel_user(&channel, &prefix) {
                                hub.dispatch(user, &Push::Resync);
                            }
                        }
                    }
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(PUBSUB_PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => heartbeat.beat(),
                        _ => break,
                    }
                }
            }
        }
        heartbeat.down("redis pubsub disconnected");
        tracing::warn!("private events subscription lost, reconnecting");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_routed_by_channel_and_numbered() {
        let (user, pushes) = parse_message(
            "p:private:42",
            "p:private:",
            r#"{"type":"balance","data":{"asset":"USDT","available":"1","locked":"0"}}"#,
        )
        .unwrap();
        assert_eq!(user, 42);
        assert_eq!(pushes.len(), 1);
        assert_eq!(
            pushes[0].render(7),
            r#"{"type":"balance","seq":7,"data":{"asset":"USDT","available":"1","locked":"0"}}"#
        );
        assert_eq!(Push::Resync.render(8), r#"{"type":"resync","seq":8}"#);
        assert!(parse_message("p:private:x", "p:private:", "{}").is_none());
        assert!(
            parse_message(
                "other:private:1",
                "p:private:",
                r#"{"type":"order","data":{}}"#
            )
            .is_none()
        );
    }

    #[test]
    fn a_settlements_array_becomes_pushes_in_order_with_data_verbatim() {
        let (user, pushes) = parse_message(
            "p:private:7",
            "p:private:",
            r#"[{"type":"order","data":{"id":3,"status":"filled"}},{"type":"trade","data":{"trade_id":9}},{"type":"balance","data":{"asset":"BTC","available":"0.5","locked":"0"}}]"#,
        )
        .unwrap();
        assert_eq!(user, 7);
        let rendered: Vec<String> = pushes
            .iter()
            .zip(1..)
            .map(|(p, seq)| p.render(seq))
            .collect();
        assert_eq!(
            rendered,
            [
                r#"{"type":"order","seq":1,"data":{"id":3,"status":"filled"}}"#,
                r#"{"type":"trade","seq":2,"data":{"trade_id":9}}"#,
                r#"{"type":"balance","seq":3,"data":{"asset":"BTC","available":"0.5","locked":"0"}}"#,
            ]
        );
        // One malformed element drops the message, not a part of it.
        assert!(
            parse_message(
                "p:private:7",
                "p:private:",
                r#"[{"type":"order","data":{}},{"data":{}}]"#
            )
            .is_none()
        );
    }

    #[tokio::test]
    async fn a_full_queue_evicts_only_that_connection() {
        let hub = Hub::default();
        let slow = hub.register(1).unwrap();
        let mut fast = hub.register(1).unwrap();
        let push = Push::Resync;
        for _ in 0..WS_SEND_QUEUE_LEN_MAX {
            hub.dispatch(1, &push);
            assert!(fast.rx.try_recv().is_ok());
        }
        assert_eq!(hub.connections(), 2);
        hub.dispatch(1, &push);
        assert_eq!(hub.connections(), 1, "the slow one is gone");
        assert!(fast.rx.try_recv().is_ok());
        drop(slow);
        drop(fast);
        assert_eq!(hub.connections(), 0);
    }

    #[tokio::test]
    async fn a_message_is_queued_whole_or_its_connection_is_evicted() {
        let hub = Hub::default();
        let mut half_full = hub.register(1).unwrap();
        let mut empty = hub.register(1).unwrap();
        let one = Push::Resync;
        for _ in 0..WS_SEND_QUEUE_LEN_MAX - 3 {
            hub.dispatch(1, &one);
            assert!(empty.rx.try_recv().is_ok());
        }
        let pushes: Vec<Push> = (0..5)
            .map(|i| Push::Event {
                kind: "\"order\"".into(),
                data: format!("{{\"id\":{i}}}").into(),
            })
            .collect();
        hub.dispatch_all(1, &pushes);
        assert_eq!(hub.connections(), 1, "3 free slots cannot take 5 pushes");
        let mut got = Vec::new();
        while let Ok(p) = empty.rx.try_recv() {
            got.push(p.render(0));
        }
        let want: Vec<String> = pushes.iter().map(|p| p.render(0)).collect();
        assert_eq!(got, want, "the other connection gets all five, in order");
        // The evicted one holds only what it had before: nothing of the message.
        let mut before = 0;
        while let Ok(p) = half_full.rx.try_recv() {
            assert!(matches!(p, Push::Resync));
            before += 1;
        }
        assert_eq!(before, WS_SEND_QUEUE_LEN_MAX - 3);
    }
}
