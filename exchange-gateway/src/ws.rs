//! Private push: the WebSocket `/ws/private` on `GATEWAY_WS_ADDR`. What it
//! pushes comes from the hub ([`crate::hub`]), which routes clearing's
//! events to each user's open connections and numbers them there.
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
//! error message) when the token expires. A session also ends, after an
//! error message saying why, when its credential stops being good: the
//! token's login session ended (`SESSION_ENDED`: logout, logout-all, a
//! password or 2FA change), the API key was deleted or expired, the account
//! was frozen (`ACCOUNT_FROZEN`), or all the user's sessions were ended.
//! The gateway that makes such a change tells every gateway at once
//! ([`crate::auth::sessions::announce`]); each session also re-checks its
//! credential every [`WS_CREDENTIAL_RECHECK_INTERVAL`] in case that word
//! was lost.
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

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt as _;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use exchange_common::ApiError;
use exchange_common::ErrorCode;
use exchange_common::error::Query;
use exchange_common::net::client_ip;

use crate::auth::authn::{self, AuthUser, Credential};
use crate::auth::{keys, sessions};
use crate::hub::Push;
use crate::state::{AppState, now_ms};

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
/// How often a session checks its credential in the database without being
/// told to (the fallback for a lost announcement; API-key sessions end
/// within this of the key's deletion, expiry or the owner's freeze).
pub const WS_CREDENTIAL_RECHECK_INTERVAL: Duration = Duration::from_secs(20);

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

/// Who a session serves, with what credential, and for a token the Unix
/// second it stops being valid.
struct Who {
    user: AuthUser,
    valid_until: Option<u64>,
}

async fn token_who(s: &AppState, token: &str) -> Result<Who, ApiError> {
    let (user, valid_until) = authn::token_user(s, token).await?;
    Ok(Who {
        user,
        valid_until: Some(valid_until),
    })
}

/// `Ok` while the session's credential is still good; otherwise the error
/// to close with. A database that cannot answer keeps the session (it is
/// checked again at the next interval).
async fn still_good(s: &AppState, user: &AuthUser) -> Result<(), ApiError> {
    match user.credential {
        Credential::AccessToken { session_id } => {
            match sessions::check(s.db(), user.user_id, session_id).await {
                Ok(None) => Err(authn::session_ended()),
                Ok(Some(open)) if open.frozen => Err(authn::account_frozen()),
                Ok(Some(_)) => Ok(()),
                Err(e) => keep_on_db_error(&e),
            }
        }
        Credential::ApiKey {
            id, session_epoch, ..
        } => {
            let row: Result<Option<(bool, bool, i64)>, sqlx::Error> = sqlx::query_as(
                "SELECT k.expires_at IS NOT NULL AND k.expires_at <= now(), u.frozen_at IS NOT NULL, u.session_epoch
                 FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = $1",
            )
            .bind(id)
            .fetch_optional(s.db())
            .await;
            match row {
                Err(e) => keep_on_db_error(&e),
                Ok(None) => Err(authn::unauthorized(
                    ErrorCode::SessionEnded,
                    "the API key of this session was deleted",
                )),
                Ok(Some((true, _, _))) => Err(authn::unauthorized(
                    ErrorCode::ApiKeyExpired,
                    "the API key of this session has expired",
                )),
                Ok(Some((_, true, _))) => Err(authn::account_frozen()),
                Ok(Some((_, _, epoch))) if epoch != session_epoch => Err(authn::session_ended()),
                Ok(Some(_)) => Ok(()),
            }
        }
    }
}

fn keep_on_db_error(e: &sqlx::Error) -> Result<(), ApiError> {
    tracing::warn!(error = %e, "private ws credential re-check failed; keeping the session until the next one");
    Ok(())
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
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::WebsocketRequired,
                r.body_text(),
            )
            .into_response();
        }
    };
    let user = match q.token.as_deref() {
        None => None,
        Some(t) => match token_who(&s, t).await {
            Ok(who) => Some(who),
            Err(e) => return e.into_response(),
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

/// Tells the client why its credential no longer holds, then closes
/// (1008, policy violation, with the error code as the reason).
async fn end_session(socket: &mut WebSocket, e: &ApiError) {
    send_error(socket, e).await;
    close(socket, 1008, e.code.as_str()).await;
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
async fn authenticate(s: &AppState, socket: &mut WebSocket, ip: IpAddr) -> Result<Who, ApiError> {
    let deadline = tokio::time::Instant::now() + WS_AUTH_TIMEOUT;
    let text = loop {
        match tokio::time::timeout_at(deadline, socket.recv()).await {
            Err(_) => {
                return Err(authn::unauthorized(
                    ErrorCode::AuthTimeout,
                    "send {\"op\":\"auth\",...} first",
                ));
            }
            Ok(None | Some(Err(_))) => {
                return Err(ApiError::bad_request(ErrorCode::Closed, "closed"));
            }
            Ok(Some(Ok(Message::Text(t)))) => break t,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(_))) => {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidMessage,
                    "messages are JSON text",
                ));
            }
        }
    };
    let msg: AuthMessage = serde_json::from_str(text.as_str()).map_err(|_| {
        authn::unauthorized(
            ErrorCode::Unauthorized,
            "the first message must be {\"op\":\"auth\",\"token\":...} or an API key signature",
        )
    })?;
    if msg.op != "auth" {
        return Err(authn::unauthorized(
            ErrorCode::Unauthorized,
            "the first message must be {\"op\":\"auth\",...}",
        ));
    }
    if let Some(token) = msg.token {
        return token_who(s, &token).await;
    }
    let (Some(api_key), Some(timestamp), Some(signature)) =
        (msg.api_key, msg.timestamp, msg.signature)
    else {
        return Err(authn::unauthorized(
            ErrorCode::Unauthorized,
            "auth needs a token, or api_key, timestamp and signature",
        ));
    };
    keys::check_timestamp(timestamp, keys::RECV_WINDOW_DEFAULT_MS, now_ms())
        .map_err(|m| authn::unauthorized(ErrorCode::TimestampOutOfWindow, m))?;
    let payload = ws_auth_payload(&api_key, timestamp);
    let user: AuthUser =
        authn::api_key_user(s, &api_key, payload.as_bytes(), &signature, Some(ip)).await?;
    user.require_read()?;
    if user.frozen {
        return Err(authn::account_frozen());
    }
    Ok(Who {
        user,
        valid_until: None,
    })
}

/// What an API key signs to open a private WebSocket session (see the
/// module comment for why it starts with its own line).
pub fn ws_auth_payload(api_key: &str, timestamp: u64) -> String {
    format!("ws-private-auth\napi_key={api_key}&timestamp={timestamp}")
}

async fn session(s: AppState, mut socket: WebSocket, who: Option<Who>, ip: IpAddr) {
    let who = match who {
        Some(who) => who,
        None => match authenticate(&s, &mut socket, ip).await {
            Ok(u) => u,
            Err(e) => {
                send_error(&mut socket, &e).await;
                close(&mut socket, 1008, "unauthorized").await;
                return;
            }
        },
    };
    let Who { user, valid_until } = who;
    let user_id = user.user_id;
    let mut reg = match s.hub.register(user_id) {
        Ok(r) => r,
        Err(e) => {
            send_error(&mut socket, &e).await;
            close(&mut socket, 1013, "too many connections").await;
            return;
        }
    };
    // A credential that ended between its check and the registration was
    // announced to no one here: check once more now that we listen.
    if let Err(e) = still_good(&s, &user).await {
        end_session(&mut socket, &e).await;
        return;
    }
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
    // Sessions opened together re-check at different moments.
    let first_recheck = WS_CREDENTIAL_RECHECK_INTERVAL.mul_f64(rand::random_range(0.5..1.0));
    let mut recheck = tokio::time::interval_at(
        tokio::time::Instant::now() + first_recheck,
        WS_CREDENTIAL_RECHECK_INTERVAL,
    );
    loop {
        tokio::select! {
            () = shutdown.wait() => {
                close(&mut socket, 1001, "server shutting down").await;
                break;
            }
            () = &mut expired => {
                let e = authn::unauthorized(ErrorCode::TokenExpired, "the access token expired; reconnect with a new one");
                send_error(&mut socket, &e).await;
                close(&mut socket, 1008, "token expired").await;
                break;
            }
            () = reg.recheck.notified() => {
                if let Err(e) = still_good(&s, &user).await {
                    end_session(&mut socket, &e).await;
                    break;
                }
            }
            _ = recheck.tick() => {
                if let Err(e) = still_good(&s, &user).await {
                    end_session(&mut socket, &e).await;
                    break;
                }
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
                            _ => json!({"type":"error","error":{"code":ErrorCode::InvalidMessage,"message":"only {\"op\":\"ping\"} is understood after auth"}}),
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
