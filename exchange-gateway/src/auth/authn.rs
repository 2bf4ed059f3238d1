//! Authentication middleware of users: a Bearer access token, or an API
//! key with a Binance-style signature. (Admin callers: [`super::operators`].)

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, Uri};
use axum::middleware::Next;
use axum::response::Response;

use exchange_common::ApiError;
use exchange_common::ErrorCode;
use exchange_common::auth::bearer_token;
use exchange_common::http::REQUEST_BODY_BYTES_MAX;
use exchange_common::net::{IpNet, client_ip};

use crate::auth::{keys, sessions};
use crate::state::{AppState, now_ms};

/// How the caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An access token of this open login session.
    AccessToken { session_id: i64 },
    ApiKey {
        id: i64,
        can_read: bool,
        can_trade: bool,
        /// May request withdrawals (to the address book only).
        can_withdraw: bool,
        /// The owner's `session_epoch` when the key was checked: a private
        /// WebSocket opened with the key ends when it changes.
        session_epoch: i64,
    },
}

/// The authenticated user, in the request extensions.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: i64,
    pub credential: Credential,
    /// An operator froze the account: reads still work, trading does not.
    pub frozen: bool,
}

impl AuthUser {
    /// Reading account data: tokens always, API keys with `read`.
    pub fn require_read(&self) -> Result<(), ApiError> {
        match self.credential {
            Credential::AccessToken { .. } | Credential::ApiKey { can_read: true, .. } => Ok(()),
            Credential::ApiKey { .. } => {
                Err(permission_denied("this API key lacks the read permission"))
            }
        }
    }
    /// Placing or amending orders: tokens always, API keys with `trade`;
    /// never a frozen account (the order service refuses it too).
    pub fn require_trade(&self) -> Result<(), ApiError> {
        if self.frozen {
            return Err(account_frozen());
        }
        self.require_cancel()
    }
    /// Canceling: as trading, but a frozen account may still cancel (it
    /// only reduces what is at risk).
    pub fn require_cancel(&self) -> Result<(), ApiError> {
        match self.credential {
            Credential::AccessToken { .. }
            | Credential::ApiKey {
                can_trade: true, ..
            } => Ok(()),
            Credential::ApiKey { .. } => {
                Err(permission_denied("this API key lacks the trade permission"))
            }
        }
    }
    /// Requesting a withdrawal: as [`Self::require_withdraw_permission`],
    /// never a frozen account.
    pub fn require_withdraw(&self) -> Result<(), ApiError> {
        if self.frozen {
            return Err(account_frozen());
        }
        self.require_withdraw_permission()
    }
    /// Canceling a withdrawal (a frozen account may: it only returns
    /// funds): tokens, and API keys with `withdraw` (created with an IP
    /// allowlist).
    pub fn require_withdraw_permission(&self) -> Result<(), ApiError> {
        match self.credential {
            Credential::AccessToken { .. }
            | Credential::ApiKey {
                can_withdraw: true, ..
            } => Ok(()),
            Credential::ApiKey { .. } => Err(permission_denied(
                "this API key lacks the withdraw permission",
            )),
        }
    }
    /// Managing API keys, the password, the second factor and sessions
    /// needs a login session, never an API key. Returns the session.
    pub fn require_session(&self) -> Result<i64, ApiError> {
        match self.credential {
            Credential::AccessToken { session_id } => Ok(session_id),
            Credential::ApiKey { .. } => Err(permission_denied(
                "this needs an access token (log in), not an API key",
            )),
        }
    }
}

pub fn account_frozen() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::AccountFrozen,
        "this account is frozen; contact support",
    )
}

fn permission_denied(msg: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, ErrorCode::PermissionDenied, msg)
}

pub fn unauthorized(code: ErrorCode, msg: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, msg)
}

fn peer_ip(req: &Request, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>()?.0.ip();
    Some(client_ip(peer, req.headers(), trusted))
}

/// Requires a user; puts [`AuthUser`] in the request extensions.
pub async fn require_user(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = bearer_token(req.headers()) {
        let (user, _) = token_user(&state, token).await?;
        let mut req = req;
        req.extensions_mut().insert(user);
        return Ok(next.run(req).await);
    }
    let Some(api_key) = req
        .headers()
        .get("x-mbx-apikey")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return Err(unauthorized(
            ErrorCode::Unauthorized,
            "send Authorization: Bearer <access_token>, or X-MBX-APIKEY with a signed request",
        ));
    };
    let req = verify_signed(&state, &api_key, req).await?;
    Ok(next.run(req).await)
}

/// The user of an access token whose session is still open, and the Unix
/// second after which the token is refused.
pub async fn token_user(state: &AppState, token: &str) -> Result<(AuthUser, u64), ApiError> {
    let verified = state.tokens.verify(token).ok_or_else(|| {
        unauthorized(
            ErrorCode::InvalidToken,
            "the access token is invalid or expired",
        )
    })?;
    let open = sessions::check(state.db(), verified.user_id, verified.session_id)
        .await?
        .ok_or_else(session_ended)?;
    let user = AuthUser {
        user_id: verified.user_id,
        credential: Credential::AccessToken {
            session_id: verified.session_id,
        },
        frozen: open.frozen,
    };
    Ok((user, verified.valid_until))
}

pub fn session_ended() -> ApiError {
    unauthorized(
        ErrorCode::SessionEnded,
        "this session has ended (logout, password or 2FA change); log in again",
    )
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: i64,
    user_id: i64,
    can_read: bool,
    can_trade: bool,
    can_withdraw: bool,
    ip_allowlist: Vec<String>,
    secret_nonce: Vec<u8>,
    secret_ciphertext: Vec<u8>,
    expired: bool,
    frozen: bool,
    session_epoch: i64,
}

async fn verify_signed(state: &AppState, api_key: &str, req: Request) -> Result<Request, ApiError> {
    let ip = peer_ip(&req, &state.trusted_proxies);
    let (mut parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, REQUEST_BODY_BYTES_MAX)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                "request body too large",
            )
        })?;
    let raw_query = parts.uri.query().unwrap_or("").to_owned();
    let params: Vec<(String, String)> = form_pairs(&raw_query);
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let timestamp: u64 = param("timestamp")
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::MissingTimestamp,
                "signed requests need a timestamp parameter",
            )
        })?
        .parse()
        .map_err(|_| {
            ApiError::bad_request(
                ErrorCode::InvalidTimestamp,
                "timestamp must be Unix milliseconds",
            )
        })?;
    let recv_window = match param("recvWindow") {
        None => keys::RECV_WINDOW_DEFAULT_MS,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|w| *w > 0 && *w <= keys::RECV_WINDOW_MAX_MS)
            .ok_or_else(|| {
                ApiError::bad_request(
                    ErrorCode::InvalidRecvWindow,
                    "recvWindow must be 1 to 60000 milliseconds",
                )
            })?,
    };
    let (payload, signature) = keys::signed_payload(&raw_query, &body);
    let signature = signature.ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::MissingSignature,
            "signed requests need a signature parameter",
        )
    })?;
    keys::check_timestamp(timestamp, recv_window, now_ms())
        .map_err(|m| unauthorized(ErrorCode::TimestampOutOfWindow, m))?;

    let user = api_key_user(state, api_key, &payload, &signature, ip).await?;
    // Handlers never see the signing parameters.
    let rest: Vec<&str> = raw_query
        .split('&')
        .filter(|p| {
            let name = p.split('=').next().unwrap_or("");
            !p.is_empty() && !matches!(name, "timestamp" | "recvWindow" | "signature")
        })
        .collect();
    let path = parts.uri.path().to_owned();
    let new_uri = if rest.is_empty() {
        path
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    parts.uri = new_uri
        .parse::<Uri>()
        .map_err(|_| ApiError::bad_request(ErrorCode::InvalidQuery, "malformed query string"))?;
    parts.extensions.insert(user);
    Ok(Request::from_parts(parts, Body::from(body)))
}

/// Authenticates an API key by its HMAC-SHA256 `signature_hex` of
/// `payload`, and checks its IP allow-list against `ip`. Every failure of
/// key or signature answers the same.
pub async fn api_key_user(
    state: &AppState,
    api_key: &str,
    payload: &[u8],
    signature_hex: &str,
    ip: Option<IpAddr>,
) -> Result<AuthUser, ApiError> {
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT k.id, k.user_id, k.can_read, k.can_trade, k.can_withdraw, k.ip_allowlist, k.secret_nonce, k.secret_ciphertext,
                k.expires_at IS NOT NULL AND k.expires_at <= now() AS expired,
                u.frozen_at IS NOT NULL AS frozen, u.session_epoch
         FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.api_key = $1",
    )
    .bind(api_key)
    .fetch_optional(state.db())
    .await?;
    let invalid = || {
        unauthorized(
            ErrorCode::InvalidSignature,
            "API key or signature is invalid",
        )
    };
    let row = row.ok_or_else(invalid)?;
    let secret = state
        .keys
        .decrypt(api_key, &row.secret_nonce, &row.secret_ciphertext)
        .ok_or_else(|| {
            tracing::error!(
                key_id = row.id,
                "api key secret cannot be decrypted (encryption key changed?)"
            );
            invalid()
        })?;
    if !keys::verify_signature(&secret, payload, signature_hex) {
        return Err(invalid());
    }
    // Only a correctly signed request learns that the key expired.
    if row.expired {
        return Err(unauthorized(
            ErrorCode::ApiKeyExpired,
            "this API key has expired",
        ));
    }
    if !row.ip_allowlist.is_empty() {
        let allowed = ip.is_some_and(|ip| {
            row.ip_allowlist
                .iter()
                .filter_map(|n| IpNet::parse(n))
                .any(|n| n.contains(ip))
        });
        if !allowed {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::IpNotAllowed,
                "this API key is not allowed from this address",
            ));
        }
    }
    let _ = sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')")
        .bind(row.id)
        .execute(state.db())
        .await;
    Ok(AuthUser {
        user_id: row.user_id,
        credential: Credential::ApiKey {
            id: row.id,
            can_read: row.can_read,
            can_trade: row.can_trade,
            can_withdraw: row.can_withdraw,
            session_epoch: row.session_epoch,
        },
        frozen: row.frozen,
    })
}

/// `a=1&b=2` into pairs (no percent-decoding needed for the numeric
/// signing parameters we read).
fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect()
}
