//! Private push: the WebSocket `/ws/private` on `GATEWAY_WS_ADDR`, and
//! `privateEventsConsumer`, the one Redis Pub/Sub subscription per gateway
//! process that feeds it.
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
//! Authentication (one of):
//! - `?token=<access_token>` on the handshake: a bad or expired token is
//!   refused with 401 before the upgrade;
//! - first message `{"op":"auth","token":"<access_token>"}`;
//! - first message `{"op":"auth","api_key":"..","timestamp":<unix ms>,"signature":".."}`
//!   where `signature` is the hex HMAC-SHA256, keyed by the API secret, of
//!   `ws-private-auth\napi_key=<api_key>&timestamp=<timestamp>` (the first
//!   line keeps this signature from ever verifying as a signed REST request,
//!   whose payload is a query string and cannot hold a raw newline); the
//!   timestamp must be within 5 s of the server clock and the key needs the
//!   `read` permission.
//!
//! A session opened with an access token is closed (after a `TOKEN_EXPIRED`
//! error message) when the token expires.
//!
//! A refused auth message gets `{"type":"error","error":{code,message}}`
//! and the connection is closed (code 1008). Success answers
//! `{"type":"authenticated","user_id":N}`.
//!
//! Bounded: every connection has a send queue of [`WS_SEND_QUEUE_LEN_MAX`]
//! messages; a client that lets it fill (or whose socket does not accept a
//! write within [`WS_SEND_TIMEOUT`]) is disconnected, so it never delays
//! anyone else. A connection writes what its queue holds in bursts (up to
//! [`WS_WRITE_BATCH_LEN_MAX`] messages fed to the socket, then one flush),
//! so a burst of events costs one socket write rather than one per message.
//! Ping every [`WS_PING_INTERVAL`]; a client silent for [`WS_IDLE_TIMEOUT`]
//! is closed. Clients may also send `{"op":"ping"}` and get
//! `{"type":"pong"}`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Notify, mpsc};

use exchange_common::error::Query;
use exchange_common::net::client_ip;
use exchange_common::ready::Heartbeat;
use exchange_common::redis::Redis;
use exchange_common::{ApiError, Shutdown};

use crate::authn::{self, AuthUser};
use crate::keys;
use crate::state::{AppState, now_ms};

/// Messages waiting to be written to one connection.
pub const WS_SEND_QUEUE_LEN_MAX: usize = 256;
/// Open private connections per user, and per gateway process.
pub const WS_CONNECTIONS_PER_USER_MAX: usize = 16;
pub const WS_CONNECTIONS_MAX: usize = 20_000;
/// The largest message (and frame) a client may send.
pub const WS_INBOUND_MESSAGE_BYTES_MAX: usize = 4 * 1024;
/// The socket's read buffer. tungstenite zero-fills this much of it before
/// every read attempt, and a session's loop attempts a read after every
/// push it writes; its 128 KiB default made that fill a large share of a
/// busy gateway's CPU. What clients send here is tiny (auth, ping), and a
/// larger frame still grows the buffer as it arrives.
pub const WS_READ_BUFFER_BYTES: usize = 4 * 1024;
/// Time for the first (auth) message when the handshake carried no token.
pub const WS_AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the server pings, and how long a silent client lives.
pub const WS_PING_INTERVAL: Duration = Duration::from_secs(20);
pub const WS_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for the socket to accept one write (a frame, or a burst of at most
/// [`WS_WRITE_BATCH_LEN_MAX`] pushes) before the client counts as stuck.
pub const WS_SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Pushes written before one flush: the one that woke the connection and
/// what was already queued behind it.
pub const WS_WRITE_BATCH_LEN_MAX: usize = 64;

/// How often the subscriber pings Redis (its heartbeat), and the deadlines.
pub const PUBSUB_PING_INTERVAL: Duration = Duration::from_secs(1);
pub const PUBSUB_PING_TIMEOUT: Duration = Duration::from_secs(2);
pub const PUBSUB_SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// `/ready` shows `privateEventsConsumer` down when no ping succeeded for this long.
pub const PUBSUB_STALE_AFTER: Duration = Duration::from_secs(5);
pub const PUBSUB_RECONNECT_DELAY_MIN: Duration = Duration::from_millis(100);
pub const PUBSUB_RECONNECT_DELAY_MAX: Duration = Duration::from_secs(5);

pub const CONSUMER_NAME: &str = "privateEventsConsumer";

/// One message for a connection; `seq` is added when it is written.
#[derive(Debug, Clone)]
pub enum Push {
    /// A private event: its `type` and `data`, both already JSON text.
    Event { kind: Arc<str>, data: Arc<str> },
    /// Messages may have been lost: re-fetch over REST.
    Resync,
}

impl Push {
    fn render(&self, seq: u64) -> String {
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
                "TOO_MANY_CONNECTIONS",
                format!("at most {WS_CONNECTIONS_PER_USER_MAX} private connections per user"),
            ));
        }
        conns.push(Conn {
            id,
            tx,
            evict: evict.clone(),
        });
        inner.total += 1;
        connections_gauge(inner.total);
        Ok(Registration {
            hub: self.clone(),
            user_id,
            id,
            rx,
            evict,
        })
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

#[derive(Deserialize)]
pub struct HandshakeQuery {
    #[serde(default)]
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthMessage {
    op: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    timestamp: Option<u64>,
    #[serde(default)]
    signature: Option<String>,
}

fn invalid_token() -> ApiError {
    authn::unauthorized("INVALID_TOKEN", "the access token is invalid or expired")
}

/// `GET /ws/private`.
pub async fn private(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HandshakeQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(r) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "WEBSOCKET_REQUIRED", r.body_text())
                .into_response();
        }
    };
    let user = match q.token.as_deref() {
        None => None,
        Some(t) => match s.tokens.verify_until(t) {
            Some(who) => Some(who),
            None => return invalid_token().into_response(),
        },
    };
    let ip = client_ip(peer.ip(), &headers, &s.trusted_proxies);
    ws.max_message_size(WS_INBOUND_MESSAGE_BYTES_MAX)
        .max_frame_size(WS_INBOUND_MESSAGE_BYTES_MAX)
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .on_upgrade(move |socket| session(s, socket, user, ip))
}

async fn send_error(socket: &mut WebSocket, e: &ApiError) {
    let text = json!({"type":"error","error":{"code": e.code, "message": e.message}}).to_string();
    let _ = tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await;
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
}

/// Writes `first` and then whatever is already queued in `rx` (at most
/// [`WS_WRITE_BATCH_LEN_MAX`] pushes in all, in queue order), each as the
/// frames `render` makes of it, then flushes once. The frames wait in the
/// socket's write buffer until the flush (or until it holds its
/// `write_buffer_size`), so a burst is one socket write instead of one per
/// frame. False when the socket failed or did not take the burst within
/// [`WS_SEND_TIMEOUT`]: the caller closes the connection.
pub(crate) async fn write_burst<I>(
    socket: &mut WebSocket,
    rx: &mut mpsc::Receiver<Push>,
    first: Push,
    mut render: impl FnMut(&Push) -> I,
) -> bool
where
    I: IntoIterator<Item = String>,
{
    let write = async {
        let mut next = Some(first);
        let mut taken = 0;
        let mut fed = false;
        while let Some(push) = next {
            for text in render(&push) {
                socket.feed(Message::Text(text.into())).await?;
                fed = true;
            }
            taken += 1;
            next = if taken < WS_WRITE_BATCH_LEN_MAX {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if fed {
            socket.flush().await?;
        }
        Ok::<(), axum::Error>(())
    };
    matches!(
        tokio::time::timeout(WS_SEND_TIMEOUT, write).await,
        Ok(Ok(()))
    )
}

/// Waits for the auth message and checks it.
/// The user, and for a token the Unix second it stops being valid.
type Who = (i64, Option<u64>);

async fn authenticate(s: &AppState, socket: &mut WebSocket, ip: IpAddr) -> Result<Who, ApiError> {
    let deadline = tokio::time::Instant::now() + WS_AUTH_TIMEOUT;
    let text = loop {
        match tokio::time::timeout_at(deadline, socket.recv()).await {
            Err(_) => {
                return Err(authn::unauthorized(
                    "AUTH_TIMEOUT",
                    "send {\"op\":\"auth\",...} first",
                ));
            }
            Ok(None | Some(Err(_))) => return Err(ApiError::bad_request("CLOSED", "closed")),
            Ok(Some(Ok(Message::Text(t)))) => break t,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(_))) => {
                return Err(ApiError::bad_request(
                    "INVALID_MESSAGE",
                    "messages are JSON text",
                ));
            }
        }
    };
    let msg: AuthMessage = serde_json::from_str(text.as_str()).map_err(|_| {
        authn::unauthorized(
            "UNAUTHORIZED",
            "the first message must be {\"op\":\"auth\",\"token\":...} or an API key signature",
        )
    })?;
    if msg.op != "auth" {
        return Err(authn::unauthorized(
            "UNAUTHORIZED",
            "the first message must be {\"op\":\"auth\",...}",
        ));
    }
    if let Some(token) = msg.token {
        return s
            .tokens
            .verify_until(&token)
            .map(|(user, until)| (user, Some(until)))
            .ok_or_else(invalid_token);
    }
    let (Some(api_key), Some(timestamp), Some(signature)) =
        (msg.api_key, msg.timestamp, msg.signature)
    else {
        return Err(authn::unauthorized(
            "UNAUTHORIZED",
            "auth needs a token, or api_key, timestamp and signature",
        ));
    };
    keys::check_timestamp(timestamp, keys::RECV_WINDOW_DEFAULT_MS, now_ms())
        .map_err(|m| authn::unauthorized("TIMESTAMP_OUT_OF_WINDOW", m))?;
    let payload = ws_auth_payload(&api_key, timestamp);
    let user: AuthUser =
        authn::api_key_user(s, &api_key, payload.as_bytes(), &signature, Some(ip)).await?;
    user.require_read()?;
    Ok((user.user_id, None))
}

/// What an API key signs to open a private WebSocket session (see the
/// module comment for why it starts with its own line).
pub fn ws_auth_payload(api_key: &str, timestamp: u64) -> String {
    format!("ws-private-auth\napi_key={api_key}&timestamp={timestamp}")
}

async fn session(s: AppState, mut socket: WebSocket, user: Option<(i64, u64)>, ip: IpAddr) {
    let (user_id, valid_until) = match user {
        Some((u, until)) => (u, Some(until)),
        None => match authenticate(&s, &mut socket, ip).await {
            Ok(u) => u,
            Err(e) => {
                send_error(&mut socket, &e).await;
                close(&mut socket, 1008, "unauthorized").await;
                return;
            }
        },
    };
    let mut reg = match s.hub.register(user_id) {
        Ok(r) => r,
        Err(e) => {
            send_error(&mut socket, &e).await;
            close(&mut socket, 1013, "too many connections").await;
            return;
        }
    };
    let hello = json!({"type":"authenticated","user_id":user_id}).to_string();
    if socket.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    let shutdown = s.shutdown.clone();
    // A session opened with an access token ends when the token expires.
    let expiry = valid_until.map_or(Duration::MAX, |until| {
        Duration::from_millis(until.saturating_mul(1000).saturating_sub(now_ms()))
    });
    let expired = tokio::time::sleep(expiry.min(Duration::from_secs(365 * 24 * 3600)));
    tokio::pin!(expired);
    let mut seq: u64 = 0;
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + WS_PING_INTERVAL,
        WS_PING_INTERVAL,
    );
    loop {
        tokio::select! {
            () = shutdown.wait() => {
                close(&mut socket, 1001, "server shutting down").await;
                break;
            }
            () = &mut expired => {
                let e = authn::unauthorized("TOKEN_EXPIRED", "the access token expired; reconnect with a new one");
                send_error(&mut socket, &e).await;
                close(&mut socket, 1008, "token expired").await;
                break;
            }
            () = reg.evict.notified() => {
                tracing::info!(user_id, "private ws client too slow, disconnected");
                close(&mut socket, 1008, "send queue full").await;
                break;
            }
            push = reg.rx.recv() => {
                let Some(push) = push else { break };
                let render = |p: &Push| {
                    seq += 1;
                    [p.render(seq)]
                };
                if !write_burst(&mut socket, &mut reg.rx, push, render).await {
                    break;
                }
            }
            msg = socket.recv() => {
                match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) => {
                        last_heard = Instant::now();
                        let reply = match serde_json::from_str::<serde_json::Value>(t.as_str()) {
                            Ok(v) if v["op"] == "ping" => json!({"type":"pong"}),
                            _ => json!({"type":"error","error":{"code":"INVALID_MESSAGE","message":"only {\"op\":\"ping\"} is understood after auth"}}),
                        };
                        if tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(Message::Text(reply.to_string().into()))).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => last_heard = Instant::now(),
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > WS_IDLE_TIMEOUT {
                    close(&mut socket, 1001, "idle").await;
                    break;
                }
                if !matches!(tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(Message::Ping(Default::default()))).await, Ok(Ok(()))) {
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
