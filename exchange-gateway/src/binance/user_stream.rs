//! Binance's user data stream: `POST/PUT/DELETE /api/v3/userDataStream`
//! (the `X-MBX-APIKEY` header only, as Binance's USER_STREAM security) and
//! the WebSocket `/ws/<listenKey>` on the gateway's WebSocket port, which
//! delivers `executionReport` and `outboundAccountPosition` events
//! translated from our private events.
//!
//! A listenKey belongs to the API key that created it: it lives in Redis
//! under the gateway's key prefix (`<prefix>:bn:listenKey:<key>` →
//! `<user id>:<API key id>`, and `<prefix>:bn:listenKeyOfApiKey:<API key id>`
//! → key) with a [`LISTEN_KEY_TTL`] expiry that `PUT` renews, never past the
//! API key's own `expires_at`; one per API key, so `POST` again with the
//! same API key returns (and renews) the same listenKey, as Binance. Only
//! that API key may keep it alive or close it (another key, even of the
//! same user, gets `-1125`), and only from an address its IP allow-list
//! admits — the WebSocket too. Deleting the API key ends its listenKey and
//! closes its streams at once; its expiry does the same at that moment.
//! The WebSocket registers with the private push hub ([`crate::hub::Hub`]),
//! so it gets exactly what `/ws/private` gets for that user, with the same
//! bounded queue (a client that lets it fill is disconnected) and the same
//! burst writes.
//! While connected the listenKey and its API key are checked every
//! [`LISTEN_KEY_CHECK_INTERVAL`] (and when the API key expires); once
//! either is gone the client gets `listenKeyExpired` and is closed.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use exchange_common::net::{IpNet, client_ip};
use redis::AsyncCommands as _;
use serde_json::{Value, json};

use super::error::BnError;
use super::format::{
    mul8, order_status, order_type, pad8, stp_mode, to_binance_symbol, waits_for_trigger,
};
use super::{BnState, Params};
use crate::hub::Push;
use crate::ratelimit::request_ip;
use crate::state::{AppState, now_ms};
use crate::ws::write_burst;

/// How long a listenKey lives without a keep-alive (Binance: 60 minutes).
pub const LISTEN_KEY_TTL: Duration = Duration::from_secs(60 * 60);
/// How often an open stream checks that its listenKey still exists (so a
/// stream ends within this of its key's expiry).
pub const LISTEN_KEY_CHECK_INTERVAL: Duration = Duration::from_secs(20);
/// Length of a listenKey (Binance's are 60 characters).
pub const LISTEN_KEY_LEN: usize = 60;
/// Orders remembered per connection (to describe their fills).
pub const ORDER_CACHE_LEN_MAX: usize = 1_024;
/// Every Redis call's deadline.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
pub const WS_PING_INTERVAL: Duration = Duration::from_secs(20);
pub const WS_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const WS_SEND_TIMEOUT: Duration = Duration::from_secs(5);

fn no_such_key() -> BnError {
    BnError::new(
        StatusCode::BAD_REQUEST,
        -1125,
        "This listenKey does not exist.",
    )
}

fn key_of(s: &AppState, listen_key: &str) -> String {
    s.base.redis.key(&format!("bn:listenKey:{listen_key}"))
}

/// The listenKey of an API key.
fn api_key_index(s: &AppState, api_key_id: i64) -> String {
    s.base
        .redis
        .key(&format!("bn:listenKeyOfApiKey:{api_key_id}"))
}

/// Where older versions kept the one listenKey of a user (revoked with
/// the user's sessions; their listenKeys no longer open streams).
fn legacy_user_key(s: &AppState, user: i64) -> String {
    s.base.redis.key(&format!("bn:listenKeyOf:{user}"))
}

/// The value a listenKey maps to: its user and API key.
fn owner_value(user: i64, api_key_id: i64) -> String {
    format!("{user}:{api_key_id}")
}

fn parse_owner(value: &str) -> Option<(i64, i64)> {
    let (user, key) = value.split_once(':')?;
    Some((user.parse().ok()?, key.parse().ok()?))
}

fn ip_allowed(allowlist: &[String], ip: Option<IpAddr>) -> bool {
    allowlist.is_empty()
        || ip.is_some_and(|ip| {
            allowlist
                .iter()
                .filter_map(|n| IpNet::parse(n))
                .any(|n| n.contains(ip))
        })
}

fn valid_listen_key(k: &str) -> bool {
    k.len() == LISTEN_KEY_LEN && k.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn new_listen_key() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..LISTEN_KEY_LEN)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

async fn redis_call<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BnError> {
    match tokio::time::timeout(REDIS_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "listenKey redis call failed");
            Err(BnError::unavailable())
        }
        Err(_) => Err(BnError::unavailable()),
    }
}

/// The request's `X-MBX-APIKEY` and client IP, read before any await (a
/// request, with its body, is not `Sync`).
fn credentials(s: &BnState, req: &Request) -> (Option<String>, Option<IpAddr>) {
    let api_key = req
        .headers()
        .get("x-mbx-apikey")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(str::to_owned);
    (api_key, request_ip(req, &s.app.trusted_proxies))
}

/// user id, key id, `read`, allow-list, seconds until it expires.
type KeyRow = (i64, i64, bool, Vec<String>, Option<i64>);

/// The user and id of an `X-MBX-APIKEY` (no signature: USER_STREAM, as
/// Binance; the key needs `read` and must allow the caller's IP), and how
/// long the listenKey it opens or renews may live: [`LISTEN_KEY_TTL`], or
/// less when the key expires sooner (its streams then end when it does).
/// An expired key, or one whose owner is frozen, gets none.
async fn key_user_of(
    s: &BnState,
    api_key: Option<String>,
    ip: Option<IpAddr>,
) -> Result<(i64, i64, u64), BnError> {
    let api_key = api_key.ok_or_else(BnError::bad_api_key_format)?;
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT k.user_id, k.id, k.can_read, k.ip_allowlist,
                ceil(extract(epoch FROM k.expires_at - now()))::bigint
         FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE k.api_key = $1 AND (k.expires_at IS NULL OR k.expires_at > now()) AND u.frozen_at IS NULL",
    )
    .bind(api_key)
    .fetch_optional(s.app.db())
    .await?;
    let Some((user, key_id, can_read, allowlist, expires_in)) = row else {
        return Err(BnError::rejected_key());
    };
    let ttl = expires_in
        .and_then(|secs| u64::try_from(secs).ok())
        .map_or(LISTEN_KEY_TTL.as_secs(), |secs| {
            secs.clamp(1, LISTEN_KEY_TTL.as_secs())
        });
    if !can_read || !ip_allowed(&allowlist, ip) {
        return Err(BnError::rejected_key());
    }
    Ok((user, key_id, ttl))
}

/// `POST /api/v3/userDataStream` → `{"listenKey"}` (this API key's
/// current listenKey, renewed, or a new one).
pub async fn create(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let (api_key, ip) = credentials(&s, &req);
    let (user, key_id, ttl) = key_user_of(&s, api_key, ip).await?;
    let mut conn = s.app.base.redis.conn();
    let index = api_key_index(&s.app, key_id);
    let existing: Option<String> = redis_call(conn.get(&index)).await?;
    if let Some(k) = existing.filter(|k| valid_listen_key(k)) {
        let renewed: bool = redis_call(conn.expire(key_of(&s.app, &k), ttl.cast_signed())).await?;
        if renewed {
            let _: bool = redis_call(conn.expire(&index, ttl.cast_signed())).await?;
            return Ok(Json(json!({"listenKey": k})));
        }
    }
    let k = new_listen_key();
    let _: () = redis_call(conn.set_ex(key_of(&s.app, &k), owner_value(user, key_id), ttl)).await?;
    let _: () = redis_call(conn.set_ex(&index, &k, ttl)).await?;
    Ok(Json(json!({"listenKey": k})))
}

/// The caller's listenKey parameter, which must be this API key's and alive.
async fn own_key(s: &BnState, req: Request) -> Result<(i64, String, u64), BnError> {
    let (api_key, ip) = credentials(s, &req);
    let (user, key_id, ttl) = key_user_of(s, api_key, ip).await?;
    let p = Params::from_request(req).await?;
    let k = p.require("listenKey")?.to_owned();
    if !valid_listen_key(&k) {
        return Err(no_such_key());
    }
    let owner: Option<String> = redis_call(s.app.base.redis.conn().get(key_of(&s.app, &k))).await?;
    if owner.as_deref().and_then(parse_owner) != Some((user, key_id)) {
        return Err(no_such_key());
    }
    Ok((key_id, k, ttl))
}

/// `PUT /api/v3/userDataStream?listenKey=` → `{}`: another 60 minutes.
pub async fn keep_alive(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let (key_id, k, ttl) = own_key(&s, req).await?;
    let ttl = ttl.cast_signed();
    let mut conn = s.app.base.redis.conn();
    let _: bool = redis_call(conn.expire(key_of(&s.app, &k), ttl)).await?;
    let _: bool = redis_call(conn.expire(api_key_index(&s.app, key_id), ttl)).await?;
    Ok(Json(json!({})))
}

/// `DELETE /api/v3/userDataStream?listenKey=` → `{}`: open streams get
/// `listenKeyExpired` at their next check.
pub async fn close(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let (key_id, k, _) = own_key(&s, req).await?;
    let mut conn = s.app.base.redis.conn();
    let _: i64 = redis_call(conn.del(&[key_of(&s.app, &k), api_key_index(&s.app, key_id)])).await?;
    Ok(Json(json!({})))
}

/// Ends the listenKey of one API key, if any (the key was deleted): the
/// key can no longer be kept alive or opened, and open streams get
/// `listenKeyExpired` at their next check (at once after
/// [`crate::auth::sessions::announce`]).
pub async fn revoke_api_key_listen_key(s: &AppState, api_key_id: i64) -> Result<(), BnError> {
    let mut conn = s.base.redis.conn();
    // GETDEL: a listenKey created concurrently either is the one read here
    // (and deleted) or finds the index gone and is not affected.
    let current: Option<String> = redis_call(
        redis::cmd("GETDEL")
            .arg(api_key_index(s, api_key_id))
            .query_async(&mut conn),
    )
    .await?;
    if let Some(k) = current {
        let _: i64 = redis_call(conn.del(key_of(s, &k))).await?;
    }
    Ok(())
}

/// Ends the listenKeys of every API key of the user (every session of the
/// user ended: logout-all, a password or 2FA change, a freeze).
pub async fn revoke_user_listen_key(s: &AppState, user: i64) -> Result<(), BnError> {
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM api_keys WHERE user_id = $1")
        .bind(user)
        .fetch_all(s.db())
        .await?;
    for id in ids {
        revoke_api_key_listen_key(s, id).await?;
    }
    let mut conn = s.base.redis.conn();
    let legacy: Option<String> = redis_call(
        redis::cmd("GETDEL")
            .arg(legacy_user_key(s, user))
            .query_async(&mut conn),
    )
    .await?;
    if let Some(k) = legacy {
        let _: i64 = redis_call(conn.del(key_of(s, &k))).await?;
    }
    Ok(())
}

/// The API key of a stream, as it is now: its allow-list and how long
/// until it expires; `None` once deleted, expired or its owner frozen.
async fn stream_key_state(
    s: &AppState,
    api_key_id: i64,
) -> Result<Option<(Vec<String>, Option<i64>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT k.ip_allowlist, (extract(epoch FROM k.expires_at - now()) * 1000)::bigint
         FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE k.id = $1 AND (k.expires_at IS NULL OR k.expires_at > now()) AND u.frozen_at IS NULL",
    )
    .bind(api_key_id)
    .fetch_optional(s.db())
    .await
}

/// `GET /ws/<listenKey>` on the WebSocket port: the listenKey's API key
/// must still be valid and allow the client's address.
pub async fn connect(
    State(s): State<AppState>,
    Path(listen_key): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !valid_listen_key(&listen_key) {
        return no_such_key().into_response();
    }
    let owner: Result<Option<String>, BnError> =
        redis_call(s.base.redis.conn().get(key_of(&s, &listen_key))).await;
    let (user, key_id) = match owner {
        Ok(Some(v)) => match parse_owner(&v) {
            Some(o) => o,
            // Made by an older version (one per user): create a new one.
            None => return no_such_key().into_response(),
        },
        Ok(None) => return no_such_key().into_response(),
        Err(e) => return e.into_response(),
    };
    let expires_in = match stream_key_state(&s, key_id).await {
        Ok(Some((allowlist, expires_in_ms))) => {
            let ip = client_ip(peer.ip(), &headers, &s.trusted_proxies);
            if !ip_allowed(&allowlist, Some(ip)) {
                return BnError::rejected_key().into_response();
            }
            expires_in_ms
                .and_then(|ms| u64::try_from(ms).ok())
                .map(Duration::from_millis)
        }
        Ok(None) => return no_such_key().into_response(),
        Err(e) => return BnError::from(e).into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(r) => {
            return BnError::new(StatusCode::BAD_REQUEST, -1000, r.body_text()).into_response();
        }
    };
    ws.max_message_size(4 * 1024)
        .max_frame_size(4 * 1024)
        // Clients only ping here; see `crate::ws::WS_READ_BUFFER_BYTES`.
        .read_buffer_size(crate::ws::WS_READ_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            session(
                s,
                socket,
                Stream {
                    user,
                    api_key_id: key_id,
                    listen_key,
                    expires_in,
                },
            )
        })
}

async fn send(socket: &mut WebSocket, text: String) -> bool {
    matches!(
        tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

async fn close_socket(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
}

/// What a stream is for.
struct Stream {
    user: i64,
    api_key_id: i64,
    listen_key: String,
    /// When the API key expires, from the connection's start.
    expires_in: Option<Duration>,
}

/// False when Redis says the listenKey is gone, or PostgreSQL that its API
/// key is (deleted, expired, its owner frozen); an unreachable Redis or
/// database keeps the stream until the next check.
async fn listen_key_alive(s: &AppState, stream: &Stream) -> bool {
    let alive: Result<bool, BnError> =
        redis_call(s.base.redis.conn().exists(key_of(s, &stream.listen_key))).await;
    if matches!(alive, Ok(false)) {
        return false;
    }
    !matches!(stream_key_state(s, stream.api_key_id).await, Ok(None))
}

async fn end_expired(socket: &mut WebSocket, listen_key: &str) {
    let text = json!({"e": "listenKeyExpired", "E": now_ms(), "listenKey": listen_key}).to_string();
    let _ = send(socket, text).await;
    close_socket(socket, 1000, "listenKey expired").await;
}

async fn session(s: AppState, mut socket: WebSocket, stream: Stream) {
    let listen_key = stream.listen_key.clone();
    let mut reg = match s.hub.register(stream.user) {
        Ok(r) => r,
        Err(e) => {
            let text = json!({"error": {"code": -1015, "msg": e.message}}).to_string();
            let _ = send(&mut socket, text).await;
            close_socket(&mut socket, 1013, "too many connections").await;
            return;
        }
    };
    let mut translator = Translator::default();
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + WS_PING_INTERVAL,
        WS_PING_INTERVAL,
    );
    let mut check = tokio::time::interval_at(
        tokio::time::Instant::now() + LISTEN_KEY_CHECK_INTERVAL,
        LISTEN_KEY_CHECK_INTERVAL,
    );
    // The API key's expiry ends the stream then, not at the next check.
    let key_expiry = tokio::time::sleep(
        stream
            .expires_in
            .map_or(Duration::MAX / 4, |d| d + Duration::from_millis(50)),
    );
    tokio::pin!(key_expiry);
    let mut expiry_armed = stream.expires_in.is_some();
    loop {
        tokio::select! {
            () = s.shutdown.wait() => {
                close_socket(&mut socket, 1001, "server shutting down").await;
                break;
            }
            () = reg.evict.notified() => {
                close_socket(&mut socket, 1008, "send queue full").await;
                break;
            }
            push = reg.rx.recv() => {
                let Some(push) = push else { break };
                // With what is queued behind it, in one socket write.
                let render = |p: &Push| translator.translate(p, now_ms());
                if !write_burst(&mut socket, &mut reg.rx, push, render).await {
                    break;
                }
                if translator.lost {
                    close_socket(&mut socket, 1012, "events may have been lost: reconnect and re-read over REST").await;
                    break;
                }
            }
            msg = socket.recv() => match msg {
                None | Some(Err(_) | Ok(Message::Close(_))) => break,
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            // The periodic check, or at once when the user's credentials
            // changed (a key deleted, the account frozen: both revoke the
            // listenKey first).
            _ = check.tick() => {
                if !listen_key_alive(&s, &stream).await {
                    end_expired(&mut socket, &listen_key).await;
                    break;
                }
            }
            () = &mut key_expiry, if expiry_armed => {
                expiry_armed = false;
                if !listen_key_alive(&s, &stream).await {
                    end_expired(&mut socket, &listen_key).await;
                    break;
                }
            }
            () = reg.recheck.notified() => {
                if !listen_key_alive(&s, &stream).await {
                    end_expired(&mut socket, &listen_key).await;
                    break;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > WS_IDLE_TIMEOUT {
                    close_socket(&mut socket, 1001, "idle").await;
                    break;
                }
                if !matches!(tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(Message::Ping(Default::default()))).await, Ok(Ok(()))) {
                    break;
                }
            }
        }
    }
}

/// Turns our private events into Binance's, per connection. Our clearing
/// publishes, per settlement, the orders (their state after it), then the
/// fills, then the balances; a fill is reported as the `TRADE`
/// `executionReport` of its order, described from the order's latest event.
#[derive(Default)]
pub struct Translator {
    orders: BTreeMap<u64, Value>,
    /// A resync went by: messages may have been lost. Binance has no such
    /// event, so the session closes the stream and the client, as after
    /// any drop, reconnects and re-reads orders and balances over REST.
    pub lost: bool,
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("0")
}

impl Translator {
    pub fn translate(&mut self, push: &Push, now: u64) -> Vec<String> {
        let Push::Event { kind, data } = push else {
            self.lost = true;
            return Vec::new();
        };
        let Ok(data) = serde_json::from_str::<Value>(data) else {
            return Vec::new();
        };
        match kind.as_ref() {
            "\"order\"" => self.order(data, now),
            "\"trade\"" => self.fill(&data, now),
            "\"balance\"" => vec![
                json!({
                    "e": "outboundAccountPosition",
                    "E": now,
                    "u": now,
                    "B": [{"a": data["asset"], "f": pad8(text(&data["available"])), "l": pad8(text(&data["locked"]))}],
                })
                .to_string(),
            ],
            _ => Vec::new(),
        }
    }

    fn remember(&mut self, id: u64, order: Value) {
        self.orders.insert(id, order);
        while self.orders.len() > ORDER_CACHE_LEN_MAX {
            self.orders.pop_first();
        }
    }

    fn order(&mut self, o: Value, now: u64) -> Vec<String> {
        let Some(id) = o["id"].as_u64() else {
            return Vec::new();
        };
        let status = o["status"].as_str().unwrap_or("new").to_owned();
        self.remember(id, o.clone());
        let exec = match status.as_str() {
            // Reported with their fills, which follow.
            "partially_filled" | "filled" => return Vec::new(),
            "canceled" => "CANCELED",
            "rejected" => "REJECTED",
            _ => "NEW",
        };
        vec![report(&o, exec, None, now).to_string()]
    }

    fn fill(&mut self, f: &Value, now: u64) -> Vec<String> {
        let Some(o) = f["order_id"].as_u64().and_then(|id| self.orders.get(&id)) else {
            return Vec::new();
        };
        vec![report(o, "TRADE", Some(f), now).to_string()]
    }
}

/// An `executionReport` of order `o` (our order event), for `fill` when
/// it is a trade.
fn report(o: &Value, exec: &str, fill: Option<&Value>, now: u64) -> Value {
    let filled = text(&o["filled_quantity"]);
    let cum_quote = o["average_price"]
        .as_str()
        .map_or_else(|| pad8("0"), |avg| mul8(avg, filled));
    let opt = |v: &Value| pad8(v.as_str().unwrap_or("0"));
    let id = o["id"].as_u64().unwrap_or(0);
    let client = o["client_order_id"]
        .as_str()
        .map_or_else(|| id.to_string(), str::to_owned);
    let created = o["created_at"].as_i64().unwrap_or(0);
    let updated = o["updated_at"].as_i64().unwrap_or(created);
    let status = order_status(o["status"].as_str().unwrap_or("new"));
    // Not working yet, as GET order says.
    let pending = waits_for_trigger(
        o["type"].as_str().unwrap_or(""),
        !o["triggered_at"].is_null(),
        filled,
    );
    let working = matches!(status, "NEW" | "PARTIALLY_FILLED") && !pending;
    // Binance's reject reason for the one rejection it names the same way.
    let reject = match o["reason"].as_str() {
        Some("STOP_WOULD_TRIGGER_IMMEDIATELY") if status == "REJECTED" => {
            "ORDER_WOULD_TRIGGER_IMMEDIATELY"
        }
        _ => "NONE",
    };
    let (l, price_l, n, n_asset, t, m, y, time) = match fill {
        Some(f) => (
            pad8(text(&f["quantity"])),
            pad8(text(&f["price"])),
            pad8(text(&f["fee"])),
            f["fee_asset"].clone(),
            f["trade_id"].as_i64().unwrap_or(-1),
            f["liquidity"] == "maker",
            pad8(text(&f["quote_amount"])),
            f["time"].as_i64().unwrap_or(updated),
        ),
        None => (
            pad8("0"),
            pad8("0"),
            pad8("0"),
            Value::Null,
            -1,
            false,
            pad8("0"),
            updated,
        ),
    };
    json!({
        "e": "executionReport",
        "E": now,
        "s": to_binance_symbol(o["market"].as_str().unwrap_or("")),
        "c": client,
        "S": o["side"].as_str().unwrap_or("").to_ascii_uppercase(),
        "o": order_type(o["type"].as_str().unwrap_or(""), o["post_only"].as_bool().unwrap_or(false)),
        "f": o["time_in_force"].as_str().unwrap_or("GTC"),
        "q": opt(&o["quantity"]),
        "p": opt(&o["price"]),
        "P": opt(&o["stop_price"]),
        "F": pad8("0"),
        "g": -1,
        "C": if exec == "CANCELED" { Value::from(client.clone()) } else { Value::from("") },
        "x": exec,
        "X": status,
        "r": reject,
        "i": id,
        "l": l,
        "z": pad8(filled),
        "L": price_l,
        "n": n,
        "N": n_asset,
        "T": time,
        "t": t,
        "I": 0,
        "w": working,
        "m": m,
        "M": false,
        "O": created,
        "Z": cum_quote,
        "Y": y,
        "Q": opt(&o["quote_quantity"]),
        "W": o["triggered_at"].as_i64().unwrap_or(created),
        "V": stp_mode(o["stp"].as_str().unwrap_or("none")),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event(kind: &str, data: &Value) -> Push {
        Push::Event {
            kind: format!("\"{kind}\"").into(),
            data: data.to_string().into(),
        }
    }

    fn order(status: &str, filled: &str) -> Value {
        json!({"id": 7, "client_order_id": "bot-1", "market": "BTC-USDT", "side": "buy", "type": "limit",
               "price": "30000", "quantity": "0.01", "filled_quantity": filled, "status": status,
               "created_at": 1000, "updated_at": 2000, "quote_quantity": null, "stop_price": null,
               "time_in_force": "GTC", "post_only": false, "stp": "none",
               "average_price": if filled == "0" { Value::Null } else { json!("30000") }, "reason": null})
    }

    #[test]
    fn a_resync_marks_the_stream_lost_so_the_session_closes_it() {
        let mut t = Translator::default();
        let before = t.translate(
            &event(
                "balance",
                &json!({"asset": "BTC", "available": "1", "locked": "0"}),
            ),
            5,
        );
        assert_eq!(before.len(), 1);
        assert!(!t.lost);
        assert!(t.translate(&Push::Resync, 6).is_empty());
        assert!(
            t.lost,
            "a resync must end the stream: Binance clients only re-read after a drop"
        );
    }

    #[test]
    fn orders_fills_and_balances_become_binance_events() {
        let mut t = Translator::default();
        let new: Value =
            serde_json::from_str(&t.translate(&event("order", &order("new", "0")), 5)[0]).unwrap();
        assert_eq!(
            (new["e"].as_str(), new["x"].as_str(), new["X"].as_str()),
            (Some("executionReport"), Some("NEW"), Some("NEW"))
        );
        assert_eq!(new["s"], "BTCUSDT");
        assert_eq!(new["c"], "bot-1");
        assert_eq!(new["S"], "BUY");
        assert_eq!(new["o"], "LIMIT");
        assert_eq!(new["q"], "0.01000000");
        assert_eq!(new["p"], "30000.00000000");
        assert_eq!(new["i"], 7);
        assert_eq!(new["w"], true);
        // A fill: the order event is held, the trade reports it.
        assert!(
            t.translate(&event("order", &order("partially_filled", "0.004")), 6)
                .is_empty()
        );
        let fill = json!({"id": 1, "order_id": 7, "trade_id": 3, "market": "BTC-USDT", "side": "buy",
                          "price": "30000", "quantity": "0.004", "quote_amount": "120", "fee": "0.000004",
                          "fee_asset": "BTC", "liquidity": "maker", "time": 3000});
        let tr: Value = serde_json::from_str(&t.translate(&event("trade", &fill), 7)[0]).unwrap();
        assert_eq!(
            (tr["x"].as_str(), tr["X"].as_str()),
            (Some("TRADE"), Some("PARTIALLY_FILLED"))
        );
        assert_eq!(tr["l"], "0.00400000");
        assert_eq!(tr["L"], "30000.00000000");
        assert_eq!(tr["z"], "0.00400000");
        assert_eq!(tr["Z"], "120.00000000");
        assert_eq!(tr["n"], "0.00000400");
        assert_eq!(tr["N"], "BTC");
        assert_eq!(
            (tr["t"].as_i64(), tr["m"].as_bool(), tr["T"].as_i64()),
            (Some(3), Some(true), Some(3000))
        );
        let cancel: Value =
            serde_json::from_str(&t.translate(&event("order", &order("canceled", "0.004")), 8)[0])
                .unwrap();
        assert_eq!(
            (cancel["x"].as_str(), cancel["X"].as_str()),
            (Some("CANCELED"), Some("CANCELED"))
        );
        assert_eq!(cancel["w"], false);

        // A take-profit: reported as TAKE_PROFIT_LIMIT with its stop price,
        // not working while it waits; its already-triggered rejection named.
        let mut tp = order("new", "0");
        tp["id"] = json!(8);
        tp["type"] = json!("take_profit_limit");
        tp["stop_price"] = json!("29000");
        let r: Value = serde_json::from_str(&t.translate(&event("order", &tp), 10)[0]).unwrap();
        assert_eq!(
            (r["o"].as_str(), r["P"].as_str(), r["w"].as_bool()),
            (
                Some("TAKE_PROFIT_LIMIT"),
                Some("29000.00000000"),
                Some(false)
            )
        );
        // Triggered, resting unfilled: working since the trigger.
        tp["triggered_at"] = json!(1_700_000_000_123_i64);
        let r: Value = serde_json::from_str(&t.translate(&event("order", &tp), 10)[0]).unwrap();
        assert_eq!(
            (r["X"].as_str(), r["w"].as_bool(), r["W"].as_i64()),
            (Some("NEW"), Some(true), Some(1_700_000_000_123))
        );
        tp.as_object_mut().unwrap().remove("triggered_at");
        tp["id"] = json!(9);
        tp["type"] = json!("take_profit_market");
        tp["status"] = json!("rejected");
        tp["reason"] = json!("STOP_WOULD_TRIGGER_IMMEDIATELY");
        let r: Value = serde_json::from_str(&t.translate(&event("order", &tp), 11)[0]).unwrap();
        assert_eq!(
            (r["o"].as_str(), r["X"].as_str(), r["r"].as_str()),
            (
                Some("TAKE_PROFIT"),
                Some("REJECTED"),
                Some("ORDER_WOULD_TRIGGER_IMMEDIATELY")
            )
        );
        let bal: Value = serde_json::from_str(
            &t.translate(
                &event(
                    "balance",
                    &json!({"asset": "USDT", "available": "1.5", "locked": "0"}),
                ),
                9,
            )[0],
        )
        .unwrap();
        assert_eq!(
            bal,
            json!({"e": "outboundAccountPosition", "E": 9, "u": 9,
                   "B": [{"a": "USDT", "f": "1.50000000", "l": "0.00000000"}]})
        );
        assert!(t.translate(&Push::Resync, 10).is_empty());
        // A fill of an order never seen is dropped rather than invented.
        let other = json!({"order_id": 99, "quantity": "1"});
        assert!(t.translate(&event("trade", &other), 11).is_empty());
    }

    #[test]
    fn listen_keys_are_60_alphanumerics() {
        let k = new_listen_key();
        assert!(valid_listen_key(&k));
        assert_ne!(k, new_listen_key());
        assert!(!valid_listen_key("short"));
    }
}
