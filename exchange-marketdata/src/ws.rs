//! The public WebSocket `/ws`: subscribe/unsubscribe to `depth:`, `trades:`,
//! `kline:<interval>:` and `ticker:` channels.
//!
//! Fan-out: a message is serialized once ([`Utf8Bytes`], reference-counted)
//! and offered to every subscriber's bounded queue without waiting
//! ([`crate::outbox::Outbox`]). When a connection's queue is full its queued
//! depth deltas are conflated (merged per channel, carrying the `seq` range
//! they cover); a connection whose queue is still full after that (trades,
//! klines, tickers are never merged or dropped) is disconnected on the
//! spot, so a slow reader never delays anyone else. Each connection's
//! writer takes its queue in bursts (up to [`WS_WRITE_BATCH_LEN_MAX`]
//! messages per lock, fed to the socket, then one `flush`), so a busy market
//! costs one socket write per burst rather than per message.
//!
//! Depth: on subscribe the snapshot is queued and the connection registered
//! under the market's lock, the same lock under which batches are applied
//! and published; so the first delta after a snapshot with `seq` N is N+1.
//! Subscribing again to a depth channel sends a fresh snapshot (how a client
//! resyncs after a gap).
//!
//! Abuse limits ([`crate::limits`]): at most
//! `MARKETDATA_WS_CONNECTIONS_PER_IP_MAX` sockets per client IP (beyond it
//! the handshake is 429 `TOO_MANY_CONNECTIONS`); at most
//! `MARKETDATA_WS_MESSAGES_PER_SECOND` client messages per second (four
//! times that at once; pings and pongs count), beyond which the connection is
//! closed with code 1008 and reason `RATE_LIMITED`, as Binance disconnects
//! a client over its 5 per second; and at most
//! `MARKETDATA_WS_SNAPSHOTS_PER_10S` depth snapshots per connection per
//! 10 s, beyond which a depth subscribe is refused with `RATE_LIMITED` (and
//! changes nothing), so a client cannot make the server render snapshots
//! in a loop; and every handshake takes one request from the client IP's
//! REST budget (`MARKETDATA_RATE_LIMIT_IP_PER_SECOND`; beyond it 429
//! `RATE_LIMITED`), so reconnecting for fresh snapshots is throttled too.
//!
//! Binance-style streams share all of this: `/ws/<stream>[/<stream>..]`
//! (raw events), `/stream?streams=a/b` (events wrapped as
//! `{"stream","data"}`), and on either, live `{"method":"SUBSCRIBE"|
//! "UNSUBSCRIBE"|"LIST_SUBSCRIPTIONS","params":[..],"id":N}` messages. A
//! message with `method` is Binance's protocol, one with `op` ours; both
//! work on every path. See [`crate::render::binance`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use exchange_common::{ApiError, ErrorCode, Shutdown};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::channel::{Channel, ChannelKind};
use crate::fanout::Subscriber;
use crate::limits::{Bucket, Limits};
pub use crate::outbox::WS_SEND_QUEUE_LEN_MAX;
use crate::outbox::{DepthKey, Out, Outbox};
use crate::registry::MarketRegistry;
use crate::render::binance::split_stream;
use crate::render::native;
use exchange_common::listen::{Slot, count_refused};

/// Messages fed to the socket before one flush.
pub const WS_WRITE_BATCH_LEN_MAX: usize = 256;
/// Channels one connection may hold.
pub const WS_SUBSCRIPTIONS_MAX: usize = 64;
/// Channels one subscribe/unsubscribe message may name.
pub const WS_CHANNELS_PER_MESSAGE_MAX: usize =
    exchange_common::config::MARKETDATA_WS_CHANNELS_PER_MESSAGE_MAX;
/// The largest message (and frame) a client may send.
pub const WS_CLIENT_MESSAGE_BYTES_MAX: usize = 4 * 1024;
/// The socket's read buffer. tungstenite zero-fills this much of it before
/// every read attempt, so its 128 KiB default cost a memset of that size per
/// poll of the reader; what clients send is small (subscribe, ping), and a
/// larger frame still grows the buffer as it arrives.
pub const WS_READ_BUFFER_BYTES: usize = 4 * 1024;
/// Depth levels per side in a snapshot (a client keeping more than this
/// many levels should resubscribe when its book thins out).
pub const WS_DEPTH_SNAPSHOT_LEVELS_MAX: usize = 5_000;
/// How often the server pings.
pub const WS_PING_INTERVAL: Duration = Duration::from_secs(20);
/// A connection that sends nothing (not even a pong) for this long is closed.
pub const WS_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Socket writes that take longer than this close the connection.
pub const WS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// `MARKETDATA_WS_ALLOW_ORIGINS`: the browser origins allowed at the
/// handshake. `*` allows any (refused by config with `APP_ENV=prod`); an
/// empty list allows none. A request without `Origin` (not a browser) is
/// always allowed: the check protects browsers' users, not the data.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    any: bool,
    allowed: Vec<String>,
}

fn normalize_origin(o: &str) -> String {
    o.trim().trim_end_matches('/').to_ascii_lowercase()
}

impl Origins {
    pub fn new(list: &[String]) -> Self {
        Self {
            any: list.iter().any(|o| o == "*"),
            allowed: list.iter().map(|o| normalize_origin(o)).collect(),
        }
    }

    pub fn allows(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(o) => self.any || self.allowed.contains(&normalize_origin(o)),
        }
    }
}

/// State shared by the WebSocket and REST handlers.
#[derive(Debug, Clone)]
pub struct App {
    pub markets: Arc<MarketRegistry>,
    pub origins: Arc<Origins>,
    pub shutdown: Shutdown,
    /// The abuse limits ([`crate::limits`]); none unless set with
    /// [`App::with_limits`].
    pub limits: Limits,
    /// Where klines are read: the read replica when in use
    /// (`exchange_common::replica`); the registry's pool when `None`.
    pub reads: Option<exchange_common::replica::Reads>,
    next_conn: Arc<AtomicU64>,
}

impl App {
    pub fn new(markets: Arc<MarketRegistry>, origins: Origins, shutdown: Shutdown) -> Self {
        Self {
            markets,
            origins: Arc::new(origins),
            shutdown,
            limits: Limits::unlimited(),
            reads: None,
            next_conn: Arc::new(AtomicU64::new(1)),
        }
    }

    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    #[must_use]
    pub fn with_reads(mut self, reads: exchange_common::replica::Reads) -> Self {
        self.reads = Some(reads);
        self
    }
}

pub async fn ws_handler(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    open(app, peer, headers, upgrade, Vec::new(), false)
}

/// `/ws/<stream>[/<stream>..]`: Binance raw streams. Purely numeric
/// segments are ignored (ccxt opens `/ws/0`, `/ws/1`, .. and subscribes
/// with `SUBSCRIBE`).
pub async fn bn_raw_handler(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(streams): Path<String>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let names: Vec<&str> = streams
        .split('/')
        .filter(|s| !s.is_empty() && !s.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    match resolve_streams(&app, &names).await {
        Ok(channels) => open(app, peer, headers, upgrade, channels, false),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub struct CombinedParams {
    streams: Option<String>,
}

/// `/stream?streams=a/b`: Binance combined streams (`{"stream","data"}`).
pub async fn bn_combined_handler(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(p): Query<CombinedParams>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let text = p.streams.unwrap_or_default();
    let names: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
    match resolve_streams(&app, &names).await {
        Ok(channels) => open(app, peer, headers, upgrade, channels, true),
        Err(e) => e.into_response(),
    }
}

/// Why a Binance stream name was not accepted.
enum StreamError {
    Invalid(String),
    Unavailable,
}

/// Binance stream name → channel (the market looked up by its dashless name).
async fn resolve_stream(app: &App, name: &str) -> Result<Channel, StreamError> {
    let invalid = || StreamError::Invalid(format!("Invalid request: unknown stream {name:?}"));
    let Some((sym, kind)) = split_stream(name) else {
        return Err(invalid());
    };
    match app.markets.find_binance(&sym).await {
        Ok(Some(market)) => Ok(Channel {
            kind: ChannelKind::Bn(kind),
            market,
        }),
        Ok(None) => Err(invalid()),
        Err(e) => {
            tracing::warn!(error = %e, stream = name, "market lookup failed");
            Err(StreamError::Unavailable)
        }
    }
}

async fn resolve_streams(app: &App, names: &[&str]) -> Result<Vec<Channel>, ApiError> {
    if names.len() > WS_SUBSCRIPTIONS_MAX {
        return Err(ApiError::bad_request(
            ErrorCode::TooManySubscriptions,
            format!("at most {WS_SUBSCRIPTIONS_MAX} streams per connection"),
        ));
    }
    let mut out: Vec<Channel> = Vec::with_capacity(names.len());
    for name in names {
        match resolve_stream(app, name).await {
            Ok(ch) => {
                if !out.contains(&ch) {
                    out.push(ch);
                }
            }
            Err(StreamError::Invalid(msg)) => {
                return Err(ApiError::bad_request(ErrorCode::InvalidChannel, msg));
            }
            Err(StreamError::Unavailable) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "market data is not available, retry",
                ));
            }
        }
    }
    Ok(out)
}

fn open(
    app: App,
    peer: SocketAddr,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    initial: Vec<Channel>,
    combined: bool,
) -> Response {
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    if !app.origins.allows(origin) {
        metrics::counter!("marketdata_ws_origin_refused_total").increment(1);
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::OriginNotAllowed,
            "this Origin is not allowed to open the market data WebSocket",
        )
        .into_response();
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(r) => {
            return ApiError::bad_request(ErrorCode::WebsocketRequired, r.body_text())
                .into_response();
        }
    };
    let ip = app.limits.client(peer, &headers);
    if let Err(wait) = app.limits.take_handshake(ip, &headers, Instant::now()) {
        metrics::counter!("exchange_rate_limited_total", "service" => "marketdata", "kind" => "ws_handshake")
            .increment(1);
        return crate::limits::too_many(
            ErrorCode::RateLimited,
            format!(
                "at most {} market data requests (WebSocket handshakes included) per second per client",
                app.limits.rest_per_ip_per_second
            ),
            wait,
        );
    }
    let max = app.limits.ws_connections_per_ip_max;
    let Some(slot) = app.limits.ws_open.try_take(ip, max) else {
        count_refused(crate::SERVICE, "ws_per_ip_cap");
        return crate::limits::too_many(
            ErrorCode::TooManyConnections,
            format!("at most {max} market data WebSockets per client"),
            Duration::from_secs(1),
        );
    };
    upgrade
        .max_message_size(WS_CLIENT_MESSAGE_BYTES_MAX)
        .max_frame_size(WS_CLIENT_MESSAGE_BYTES_MAX)
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .on_upgrade(move |socket| connection(app, socket, initial, combined, slot))
}

/// What the reader needs to act for its connection.
struct Conn {
    id: u64,
    outbox: Arc<Outbox>,
    subs: BTreeSet<Channel>,
    /// `MARKETDATA_WS_MESSAGES_PER_SECOND`.
    messages: Bucket,
    /// `MARKETDATA_WS_SNAPSHOTS_PER_10S`.
    snapshots: Bucket,
}

impl Conn {
    fn subscriber(&self) -> Subscriber {
        Subscriber {
            conn_id: self.id,
            outbox: self.outbox.clone(),
        }
    }

    /// Queues a reply; a queue still full after conflation disconnects
    /// like any slow client.
    fn reply(&self, msg: Utf8Bytes) {
        self.outbox.offer(&msg);
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>) {
        let msg =
            json!({"type": "error", "error": {"code": code.as_str(), "message": message.into()}});
        self.reply(Utf8Bytes::from(msg.to_string()));
    }

    /// Binance's error answer to a `method` message.
    fn bn_error(&self, code: i64, msg: impl Into<String>, id: &Value) {
        let msg = json!({"error": {"code": code, "msg": msg.into()}, "id": id});
        self.reply(Utf8Bytes::from(msg.to_string()));
    }
}

/// Why a reader stopped when the client sent too much.
const CLOSED_FOR_RATE: &str = "message rate";

async fn connection(
    app: App,
    socket: WebSocket,
    initial: Vec<Channel>,
    combined: bool,
    _slot: Slot,
) {
    let id = app.next_conn.fetch_add(1, Ordering::Relaxed);
    let outbox = Arc::new(Outbox::new(combined));
    let mut conn = Conn {
        id,
        outbox: outbox.clone(),
        subs: BTreeSet::new(),
        messages: app.limits.message_bucket(),
        snapshots: app.limits.snapshot_bucket(),
    };
    metrics::gauge!("exchange_ws_connections", "service" => "marketdata", "kind" => "public")
        .increment(1.0);
    if !initial.is_empty() && add_channels(&app, &mut conn, &initial).await.is_err() {
        conn.error(
            ErrorCode::Unavailable,
            "market data is not available, retry",
        );
    }
    let (mut sink, mut stream) = socket.split();
    let why = {
        let writer = write_loop(&mut sink, &outbox);
        let reader = read_loop(&app, &mut stream, &mut conn);
        tokio::select! {
            r = writer => if r.is_err() { "write failed" } else { "closed" },
            r = reader => r,
            () = outbox.killed() => "too slow",
            () = app.shutdown.wait() => "shutdown",
        }
    };
    if why == CLOSED_FOR_RATE {
        count_refused(crate::SERVICE, "ws_message_rate");
        let reason = format!(
            "RATE_LIMITED: more than {} messages per second",
            app.limits.ws_messages_per_second
        );
        let close = Message::Close(Some(CloseFrame {
            code: 1008,
            reason: Utf8Bytes::from(reason),
        }));
        let _ = tokio::time::timeout(WS_WRITE_TIMEOUT, sink.send(close)).await;
    }
    tracing::debug!(conn = id, why, "websocket closed");
    outbox.close();
    for ch in &conn.subs {
        if let Some(m) = app.markets.get(&ch.market) {
            m.lock().unsubscribe(ch.kind, id);
        }
    }
    metrics::gauge!("exchange_ws_connections", "service" => "marketdata", "kind" => "public")
        .decrement(1.0);
}

async fn write_loop(sink: &mut SplitSink<WebSocket, Message>, outbox: &Outbox) -> Result<(), ()> {
    // One timer for the connection's life, re-armed after each ping: an
    // idle wait only re-registers the waker (a new timer per wait would
    // cost a timer-wheel insert and remove per message on a busy market).
    let ping_due = tokio::time::sleep(WS_PING_INTERVAL);
    tokio::pin!(ping_due);
    let mut burst: Vec<Out> = Vec::with_capacity(WS_WRITE_BATCH_LEN_MAX);
    loop {
        outbox.drain(WS_WRITE_BATCH_LEN_MAX, &mut burst);
        // A busy connection never waits on the queue, so the ping is due
        // by the clock here as well as in the idle wait below.
        let ping = ping_due.is_elapsed();
        if burst.is_empty() && !ping {
            tokio::select! {
                () = outbox.ready() => {}
                () = &mut ping_due => {}
            }
            continue;
        }
        if ping {
            ping_due
                .as_mut()
                .reset(tokio::time::Instant::now() + WS_PING_INTERVAL);
        }
        timed(async {
            if ping {
                sink.feed(Message::Ping(Default::default())).await?;
            }
            for out in burst.drain(..) {
                let text = match out {
                    Out::Bytes(b) => b,
                    // Rendered here, outside every lock.
                    Out::Merged(m) => m.render(outbox.combined),
                };
                sink.feed(Message::Text(text)).await?;
            }
            sink.flush().await
        })
        .await?;
    }
}

async fn timed(f: impl std::future::Future<Output = Result<(), axum::Error>>) -> Result<(), ()> {
    let mut f = std::pin::pin!(f);
    // Most bursts go straight into a writable socket: those need no timer
    // (arming and disarming one per burst is a measurable share of fan-out).
    if let Some(r) = f.as_mut().now_or_never() {
        return r.map_err(|_| ());
    }
    match tokio::time::timeout(WS_WRITE_TIMEOUT, f).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

#[derive(Deserialize)]
struct Command {
    op: String,
    #[serde(default)]
    channels: Vec<String>,
}

async fn read_loop(
    app: &App,
    stream: &mut SplitStream<WebSocket>,
    conn: &mut Conn,
) -> &'static str {
    loop {
        let msg = match tokio::time::timeout(WS_IDLE_TIMEOUT, stream.next()).await {
            Err(_) => return "idle",
            Ok(None) => return "closed by client",
            Ok(Some(Err(_))) => return "read failed",
            Ok(Some(Ok(m))) => m,
        };
        if conn.messages.take(1, Instant::now()).is_err() {
            return CLOSED_FOR_RATE;
        }
        match msg {
            Message::Text(text) => handle_text(app, conn, text.as_str()).await,
            Message::Binary(_) => conn.error(ErrorCode::InvalidMessage, "send JSON text messages"),
            Message::Close(_) => return "closed by client",
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

async fn handle_text(app: &App, conn: &mut Conn, text: &str) {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            return conn.error(
                ErrorCode::InvalidMessage,
                r#"expected {"op":"subscribe"|"unsubscribe","channels":[...]}"#,
            );
        }
    };
    if value.get("method").is_some() {
        return bn_command(app, conn, value).await;
    }
    let cmd: Command = match serde_json::from_value(value) {
        Ok(c) => c,
        Err(_) => {
            return conn.error(
                ErrorCode::InvalidMessage,
                r#"expected {"op":"subscribe"|"unsubscribe","channels":[...]}"#,
            );
        }
    };
    match cmd.op.as_str() {
        "subscribe" => subscribe(app, conn, &cmd.channels).await,
        "unsubscribe" => unsubscribe(conn, app, &cmd.channels),
        "ping" => conn.reply(Utf8Bytes::from_static(r#"{"type":"pong"}"#)),
        _ => conn.error(
            ErrorCode::InvalidOp,
            "op must be subscribe, unsubscribe or ping",
        ),
    }
}

/// Parses and de-duplicates channel names (order kept), or answers an error.
fn parse_channels(conn: &Conn, names: &[String]) -> Option<Vec<Channel>> {
    if names.is_empty() {
        conn.error(ErrorCode::InvalidChannel, "channels must not be empty");
        return None;
    }
    if names.len() > WS_CHANNELS_PER_MESSAGE_MAX {
        conn.error(
            ErrorCode::TooManyChannels,
            format!("at most {WS_CHANNELS_PER_MESSAGE_MAX} channels per message"),
        );
        return None;
    }
    let mut out: Vec<Channel> = Vec::with_capacity(names.len());
    for name in names {
        match Channel::parse(name) {
            Some(ch) => {
                if !out.contains(&ch) {
                    out.push(ch);
                }
            }
            None => {
                conn.error(
                    ErrorCode::InvalidChannel,
                    format!(
                        "unknown channel {name:?}: use depth:<MARKET>, trades:<MARKET>, \
                         ticker:<MARKET> or kline:<1m|5m|15m|1h|4h|1d>:<MARKET>"
                    ),
                );
                return None;
            }
        }
    }
    Some(out)
}

fn names(channels: &[Channel]) -> Vec<String> {
    channels.iter().map(ToString::to_string).collect()
}

async fn subscribe(app: &App, conn: &mut Conn, requested: &[String]) {
    let Some(channels) = parse_channels(conn, requested) else {
        return;
    };
    let added = channels.iter().filter(|c| !conn.subs.contains(c)).count();
    if conn.subs.len() + added > WS_SUBSCRIPTIONS_MAX {
        return conn.error(
            ErrorCode::TooManySubscriptions,
            format!("at most {WS_SUBSCRIPTIONS_MAX} channels per connection"),
        );
    }
    let snapshots = channels
        .iter()
        .filter(|c| c.kind == ChannelKind::Depth)
        .count();
    let mut markets = Vec::with_capacity(channels.len());
    for ch in &channels {
        match app.markets.market(ch.market).await {
            Ok(Some(m)) => markets.push(m),
            Ok(None) => {
                return conn.error(
                    ErrorCode::MarketNotFound,
                    format!("no market {}", ch.market),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, market = %ch.market, "market load failed");
                return conn.error(
                    ErrorCode::Unavailable,
                    "market data is not available, retry",
                );
            }
        }
    }
    // Each depth channel renders a snapshot, a re-subscribe too: taken
    // only when the subscribe goes ahead.
    if snapshots > 0 {
        let n = u32::try_from(snapshots).unwrap_or(u32::MAX);
        if let Err(wait) = conn.snapshots.take(n, Instant::now()) {
            metrics::counter!("exchange_rate_limited_total", "service" => "marketdata", "kind" => "ws_snapshot")
                .increment(1);
            return conn.error(
                ErrorCode::RateLimited,
                format!(
                    "at most {} depth snapshots per 10 s per connection: retry in {} ms",
                    app.limits.ws_snapshots_per_10s,
                    wait.as_millis().max(1)
                ),
            );
        }
    }
    let reply = json!({"type": "subscribed", "channels": names(&channels)});
    conn.reply(Utf8Bytes::from(reply.to_string()));
    for (ch, market) in channels.iter().zip(markets) {
        let mut feed = market.lock();
        if ch.kind == ChannelKind::Depth {
            let key = DepthKey {
                market: ch.market,
                kind: ch.kind,
            };
            let snapshot = native::depth_snapshot(feed.state(), WS_DEPTH_SNAPSHOT_LEVELS_MAX);
            conn.outbox.offer_snapshot(key, Utf8Bytes::from(snapshot));
        }
        feed.subscribe(ch.kind, conn.subscriber());
        conn.subs.insert(*ch);
    }
}

fn unsubscribe(conn: &mut Conn, app: &App, requested: &[String]) {
    let Some(channels) = parse_channels(conn, requested) else {
        return;
    };
    for ch in &channels {
        if conn.subs.remove(ch)
            && let Some(m) = app.markets.get(&ch.market)
        {
            m.lock().unsubscribe(ch.kind, conn.id);
        }
    }
    let reply = json!({"type": "unsubscribed", "channels": names(&channels)});
    conn.reply(Utf8Bytes::from(reply.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let o = Origins::new(&["https://app.example.com/".to_owned()]);
        assert!(o.allows(None));
        assert!(o.allows(Some("https://app.example.com")));
        assert!(o.allows(Some("HTTPS://APP.EXAMPLE.COM")));
        assert!(!o.allows(Some("https://evil.example.com")));
        assert!(!Origins::new(&[]).allows(Some("https://app.example.com")));
        assert!(Origins::new(&["*".to_owned()]).allows(Some("https://x.example")));
    }
}

/// Registers `channels` (already validated) for `conn`. Binance depth
/// streams get no snapshot (clients fetch REST depth, as on Binance).
async fn add_channels(app: &App, conn: &mut Conn, channels: &[Channel]) -> Result<(), ()> {
    let mut markets = Vec::with_capacity(channels.len());
    for ch in channels {
        match app.markets.market(ch.market).await {
            Ok(Some(m)) => markets.push(m),
            Ok(None) | Err(_) => return Err(()),
        }
    }
    for (ch, market) in channels.iter().zip(markets) {
        market.lock().subscribe(ch.kind, conn.subscriber());
        conn.subs.insert(*ch);
    }
    Ok(())
}

/// Binance's live subscription messages.
#[derive(Deserialize)]
struct BnCommand {
    method: String,
    #[serde(default)]
    params: Vec<String>,
    #[serde(default)]
    id: Value,
}

async fn bn_command(app: &App, conn: &mut Conn, value: Value) {
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    if !(id.is_null() || id.is_u64() || id.is_string()) {
        return conn.bn_error(
            2,
            "Invalid request: request ID must be an unsigned integer",
            &Value::Null,
        );
    }
    let cmd: BnCommand = match serde_json::from_value(value) {
        Ok(c) => c,
        Err(e) => return conn.bn_error(2, format!("Invalid request: {e}"), &id),
    };
    match cmd.method.as_str() {
        "SUBSCRIBE" | "UNSUBSCRIBE" => {
            if cmd.params.len() > WS_CHANNELS_PER_MESSAGE_MAX {
                return conn.bn_error(
                    2,
                    format!(
                        "Invalid request: at most {WS_CHANNELS_PER_MESSAGE_MAX} streams per message"
                    ),
                    &cmd.id,
                );
            }
            let mut channels: Vec<Channel> = Vec::with_capacity(cmd.params.len());
            for name in &cmd.params {
                match resolve_stream(app, name).await {
                    Ok(ch) => {
                        if !channels.contains(&ch) {
                            channels.push(ch);
                        }
                    }
                    Err(StreamError::Invalid(msg)) => return conn.bn_error(2, msg, &cmd.id),
                    Err(StreamError::Unavailable) => {
                        return conn.bn_error(-1008, "Market data is unavailable, retry.", &cmd.id);
                    }
                }
            }
            if cmd.method == "SUBSCRIBE" {
                let added = channels.iter().filter(|c| !conn.subs.contains(c)).count();
                if conn.subs.len() + added > WS_SUBSCRIPTIONS_MAX {
                    return conn.bn_error(
                        2,
                        format!(
                            "Invalid request: at most {WS_SUBSCRIPTIONS_MAX} streams per connection"
                        ),
                        &cmd.id,
                    );
                }
                if add_channels(app, conn, &channels).await.is_err() {
                    return conn.bn_error(-1008, "Market data is unavailable, retry.", &cmd.id);
                }
            } else {
                for ch in &channels {
                    if conn.subs.remove(ch)
                        && let Some(m) = app.markets.get(&ch.market)
                    {
                        m.lock().unsubscribe(ch.kind, conn.id);
                    }
                }
            }
            conn.reply(Utf8Bytes::from(
                json!({"result": null, "id": cmd.id}).to_string(),
            ));
        }
        "LIST_SUBSCRIPTIONS" => {
            let list: Vec<String> = conn
                .subs
                .iter()
                .filter(|c| matches!(c.kind, ChannelKind::Bn(_)))
                .map(ToString::to_string)
                .collect();
            conn.reply(Utf8Bytes::from(
                json!({"result": list, "id": cmd.id}).to_string(),
            ));
        }
        _ => conn.bn_error(
            2,
            "Invalid request: method must be SUBSCRIBE, UNSUBSCRIBE or LIST_SUBSCRIPTIONS",
            &cmd.id,
        ),
    }
}
