//! Register, login, balances and API keys (the second factor, logout and
//! password change are in [`super::security`]).

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use exchange_common::ApiError;
use exchange_common::ErrorCode;
use exchange_common::error::{Json, Path};
use exchange_common::net::{IpNet, client_ip};
use exchange_store::balances::{BALANCE_COLUMNS, BalanceJson};

use super::schema::{
    API_KEY_IP_ALLOWLIST_LEN_MAX, API_KEY_LABEL_LEN_MAX, EMAIL_LEN_MAX, ErrorBody, field,
};
use super::security::{SecondFactor, require_second_factor};
use crate::auth::authn::{AuthUser, account_frozen};
use crate::auth::{password, sessions};
use crate::state::{AppState, now_ms};

/// API keys per user.
pub const API_KEYS_PER_USER_MAX: i64 = 30;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[schema(schema_with = field::email)]
    pub email: String,
    #[schema(schema_with = field::password)]
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct Registered {
    pub user_id: i64,
}

fn check_email(email: &str) -> Result<(), ApiError> {
    let ok = email.chars().count() <= EMAIL_LEN_MAX
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            ErrorCode::InvalidEmail,
            "email must look like name@example.com",
        ))
    }
}

#[utoipa::path(post, path = "/api/v1/auth/register", request_body = Credentials,
    responses((status = 201, body = Registered),
              (status = 400, description = "INVALID_EMAIL, WEAK_PASSWORD, or malformed input", body = ErrorBody),
              (status = 409, description = "EMAIL_TAKEN", body = ErrorBody),
              (status = 429, description = "RATE_LIMITED (per-IP registration budget)", body = ErrorBody),
              (status = 503, description = "OVERLOADED: too many password hashes waiting; retry after Retry-After", body = ErrorBody)))]
pub async fn register(
    State(s): State<AppState>,
    Json(req): Json<Credentials>,
) -> Result<impl IntoResponse, Refused> {
    check_email(&req.email)?;
    password::check_policy(&req.password)
        .map_err(|m| ApiError::bad_request(ErrorCode::WeakPassword, m))?;
    let hash = s.passwords.hash(&req.password).await?;
    let inserted = sqlx::query_scalar::<_, i64>(
        "INSERT INTO users (email, password_hash) VALUES ($1, $2) RETURNING id",
    )
    .bind(&req.email)
    .bind(&hash)
    .fetch_one(s.db())
    .await;
    match inserted {
        Ok(user_id) => Ok((StatusCode::CREATED, Json(Registered { user_id }))),
        Err(e) if super::is_unique_violation(&e) => Err(ApiError::conflict(
            ErrorCode::EmailTaken,
            "this email is already registered",
        )
        .into()),
        Err(e) => Err(ApiError::from(e).into()),
    }
}

/// An error answer of register and login: an [`ApiError`], or one that
/// carries headers (`Retry-After` of a lockout or an overload).
pub struct Refused(axum::response::Response);

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Self(e.into_response())
    }
}

impl From<sqlx::Error> for Refused {
    fn from(e: sqlx::Error) -> Self {
        ApiError::from(e).into()
    }
}

impl From<password::HashError> for Refused {
    fn from(e: password::HashError) -> Self {
        Self(e.into_response())
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> axum::response::Response {
        self.0
    }
}

#[derive(Serialize, ToSchema)]
pub struct LoggedIn {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    #[schema(schema_with = field::email)]
    pub email: String,
    #[schema(schema_with = field::password)]
    pub password: String,
    /// Required when 2FA is on (or `recovery_code`).
    #[serde(default)]
    #[schema(schema_with = field::optional_totp_code)]
    pub totp: Option<String>,
    /// A single-use recovery code, instead of `totp`.
    #[serde(default)]
    #[schema(schema_with = field::optional_recovery_code)]
    pub recovery_code: Option<String>,
}

/// Checks the password, then (in this order) that the account is not
/// frozen and the second factor when 2FA is on, and opens a session.
#[utoipa::path(post, path = "/api/v1/auth/login", request_body = Login,
    responses((status = 200, body = LoggedIn),
              (status = 401, description = "INVALID_CREDENTIALS; TOTP_REQUIRED (2FA is on, no code); INVALID_TOTP (wrong, expired or reused code or recovery code)", body = ErrorBody),
              (status = 403, description = "ACCOUNT_FROZEN", body = ErrorBody),
              (status = 429, description = "RATE_LIMITED (per-IP login budget); TOO_MANY_ATTEMPTS (too many failed logins for this email, from any address, or too many wrong codes for this account; every login of the email is refused until Retry-After)", body = ErrorBody),
              (status = 503, description = "OVERLOADED: too many password checks waiting; retry after Retry-After", body = ErrorBody)))]
pub async fn login(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(req): Json<Login>,
) -> Result<Json<LoggedIn>, Refused> {
    // The per-account budget, before anything is looked up: an unknown
    // email is counted and refused exactly like a known one.
    s.login_failures
        .reserve(&req.email)
        .map_err(|l| Refused(crate::ratelimit::login_locked(l)))?;
    let row: Option<(i64, String, bool, i64)> = match sqlx::query_as(
        "SELECT id, password_hash, frozen_at IS NOT NULL, session_epoch FROM users WHERE lower(email) = lower($1)",
    )
    .bind(&req.email)
    .fetch_optional(s.db())
    .await
    {
        Ok(row) => row,
        Err(e) => {
            // Nothing was checked (the database is out): not counted, so an
            // outage does not use up everyone's attempts.
            s.login_failures.release(&req.email);
            return Err(e.into());
        }
    };
    // Same work whether or not the user exists (dummy hash), same answer.
    let ok = match s
        .passwords
        .verify(&req.password, row.as_ref().map(|(_, h, _, _)| h.as_str()))
        .await
    {
        Ok(ok) => ok,
        Err(e) => {
            // Nothing was checked: the attempt does not count.
            s.login_failures.release(&req.email);
            return Err(e.into());
        }
    };
    let (user_id, frozen, epoch) = match row {
        Some((id, _, frozen, epoch)) if ok => (id, frozen, epoch),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidCredentials,
                "email or password is wrong",
            )
            .into());
        }
    };
    s.login_failures.succeeded(&req.email);
    if frozen {
        return Err(account_frozen().into());
    }
    let offered = SecondFactor {
        totp: req.totp.as_deref(),
        recovery_code: req.recovery_code.as_deref(),
    };
    require_second_factor(&s, user_id, offered).await?;
    let ip = client_ip(peer.ip(), &headers, &s.trusted_proxies);
    // None: the password changed, every session was ended or the account
    // was frozen while this login was being checked.
    let session_id = sessions::start(s.db(), user_id, epoch, s.tokens.ttl, Some(ip))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidCredentials,
                "the account changed during this login; log in again",
            )
        })?;
    let token = s
        .tokens
        .issue(user_id, session_id, now_ms() / 1000)
        .map_err(ApiError::internal)?;
    Ok(Json(LoggedIn {
        access_token: token,
        token_type: "Bearer",
        expires_in: s.tokens.ttl.as_secs(),
    }))
}

#[utoipa::path(get, path = "/api/v1/account/balances", responses((status = 200, body = [BalanceJson])), security(("bearer" = [])))]
pub async fn balances(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> Result<Json<Vec<BalanceJson>>, ApiError> {
    user.require_read()?;
    let rows: Vec<BalanceJson> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {BALANCE_COLUMNS} FROM balances WHERE user_id = $1 ORDER BY asset"
    )))
    .bind(user.user_id)
    .fetch_all(s.db())
    .await?;
    Ok(Json(rows))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    #[serde(default)]
    #[schema(schema_with = field::api_key_label)]
    pub label: String,
    /// `read` and/or `trade`; default `["read"]`.
    #[serde(default)]
    #[schema(schema_with = field::api_key_permissions)]
    pub permissions: Option<Vec<String>>,
    /// IP addresses or CIDR networks; empty allows any address.
    #[serde(default)]
    #[schema(schema_with = field::ip_allowlist)]
    pub ip_allowlist: Vec<String>,
    /// Unix ms after which the key stops working; absent: never.
    #[serde(default)]
    #[schema(schema_with = field::optional_expires_at)]
    pub expires_at: Option<i64>,
    /// Required when 2FA is on.
    #[serde(default)]
    #[schema(schema_with = field::optional_totp_code)]
    pub totp: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyInfo {
    pub id: i64,
    pub api_key: String,
    pub label: String,
    pub permissions: Vec<&'static str>,
    pub ip_allowlist: Vec<String>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    /// Unix ms after which the key is refused (401 `API_KEY_EXPIRED`).
    pub expires_at: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    /// Shown once; store it now.
    pub secret: String,
}

/// The widest allowlist entry a key with the withdraw permission may have:
/// 256 addresses (an IPv4 /24, an IPv6 /120).
const WITHDRAW_KEY_HOST_BITS_MAX: u8 = 8;

fn permissions(can_read: bool, can_trade: bool, can_withdraw: bool) -> Vec<&'static str> {
    [
        ("read", can_read),
        ("trade", can_trade),
        ("withdraw", can_withdraw),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect()
}

#[utoipa::path(post, path = "/api/v1/api-keys", request_body = NewApiKey,
    responses((status = 201, body = CreatedApiKey),
              (status = 400, description = "INVALID_LABEL, INVALID_PERMISSIONS, INVALID_IP_ALLOWLIST, INVALID_EXPIRY, TOO_MANY_API_KEYS (at most 30 per user), or malformed input", body = ErrorBody),
              (status = 401, description = "TOTP_REQUIRED, INVALID_TOTP (2FA is on)", body = ErrorBody),
              (status = 403, description = "PERMISSION_DENIED: API keys are managed with an access token", body = ErrorBody),
              (status = 429, description = "TOO_MANY_ATTEMPTS", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_api_key(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Json(req): Json<NewApiKey>,
) -> Result<impl IntoResponse, ApiError> {
    user.require_session()?;
    if req.label.chars().count() > API_KEY_LABEL_LEN_MAX {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidLabel,
            format!("label must have at most {API_KEY_LABEL_LEN_MAX} characters"),
        ));
    }
    let perms = req.permissions.unwrap_or_else(|| vec!["read".to_owned()]);
    if perms.is_empty()
        || perms
            .iter()
            .any(|p| !matches!(p.as_str(), "read" | "trade" | "withdraw"))
    {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidPermissions,
            "permissions are \"read\", \"trade\" and/or \"withdraw\"",
        ));
    }
    let (can_read, can_trade, can_withdraw) = (
        perms.iter().any(|p| p == "read"),
        perms.iter().any(|p| p == "trade"),
        perms.iter().any(|p| p == "withdraw"),
    );
    if can_withdraw && req.ip_allowlist.is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidPermissions,
            "a key with the withdraw permission needs an ip_allowlist",
        ));
    }
    if req.ip_allowlist.len() > API_KEY_IP_ALLOWLIST_LEN_MAX {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidIpAllowlist,
            format!("at most {API_KEY_IP_ALLOWLIST_LEN_MAX} entries"),
        ));
    }
    let mut allow = Vec::with_capacity(req.ip_allowlist.len());
    for entry in &req.ip_allowlist {
        let net = IpNet::parse(entry).ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidIpAllowlist,
                format!("{entry:?} is not an IP address or CIDR network"),
            )
        })?;
        allow.push(net.to_string());
    }
    // A withdrawing key is bound to a few addresses: a leaked key from
    // anywhere else moves nothing (an allowlist of the whole internet would
    // make the requirement void).
    if can_withdraw
        && let Some(wide) = req
            .ip_allowlist
            .iter()
            .filter_map(|e| IpNet::parse(e))
            .find(|n| n.host_bits() > WITHDRAW_KEY_HOST_BITS_MAX)
    {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidIpAllowlist,
            format!(
                "{wide} is too wide for a key with the withdraw permission (at most /24 for IPv4, /120 for IPv6)"
            ),
        ));
    }
    let expires_at = match req.expires_at {
        None => None,
        Some(ms) => Some(
            chrono::DateTime::from_timestamp_millis(ms)
                .filter(|_| u64::try_from(ms).is_ok_and(|ms| ms > now_ms()))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        ErrorCode::InvalidExpiry,
                        "expires_at must be a future time in Unix milliseconds",
                    )
                })?,
        ),
    };
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE user_id = $1")
        .bind(user.user_id)
        .fetch_one(s.db())
        .await?;
    if count >= API_KEYS_PER_USER_MAX {
        return Err(ApiError::bad_request(
            ErrorCode::TooManyApiKeys,
            format!("at most {API_KEYS_PER_USER_MAX} API keys per user"),
        ));
    }
    let offered = SecondFactor {
        totp: req.totp.as_deref(),
        recovery_code: None,
    };
    require_second_factor(&s, user.user_id, offered).await?;
    let (api_key, secret) = crate::auth::keys::generate();
    let (nonce, ciphertext) = s
        .keys
        .encrypt(&api_key, &secret)
        .map_err(ApiError::internal)?;
    let (id, created_at): (i64, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "INSERT INTO api_keys (api_key, user_id, label, can_read, can_trade, ip_allowlist, secret_nonce, secret_ciphertext, expires_at, can_withdraw)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id, created_at",
    )
    .bind(&api_key)
    .bind(user.user_id)
    .bind(&req.label)
    .bind(can_read)
    .bind(can_trade)
    .bind(&allow)
    .bind(&nonce)
    .bind(&ciphertext)
    .bind(expires_at)
    .bind(can_withdraw)
    .fetch_one(s.db())
    .await?;
    let info = ApiKeyInfo {
        id,
        api_key,
        label: req.label,
        permissions: permissions(can_read, can_trade, can_withdraw),
        ip_allowlist: allow,
        created_at: created_at.timestamp_millis(),
        last_used_at: None,
        expires_at: expires_at.map(|t| t.timestamp_millis()),
    };
    Ok((StatusCode::CREATED, Json(CreatedApiKey { info, secret })))
}

#[derive(sqlx::FromRow)]
struct KeyListRow {
    id: i64,
    api_key: String,
    label: String,
    can_read: bool,
    can_trade: bool,
    can_withdraw: bool,
    ip_allowlist: Vec<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[utoipa::path(get, path = "/api/v1/api-keys",
    responses((status = 200, body = [ApiKeyInfo]),
              (status = 403, description = "PERMISSION_DENIED: API keys are managed with an access token", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_api_keys(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> Result<Json<Vec<ApiKeyInfo>>, ApiError> {
    user.require_session()?;
    let rows: Vec<KeyListRow> = sqlx::query_as(
        "SELECT id, api_key, label, can_read, can_trade, can_withdraw, ip_allowlist, created_at, last_used_at, expires_at
         FROM api_keys WHERE user_id = $1 ORDER BY id",
    )
    .bind(user.user_id)
    .fetch_all(s.db())
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| ApiKeyInfo {
                id: r.id,
                api_key: r.api_key,
                label: r.label,
                permissions: permissions(r.can_read, r.can_trade, r.can_withdraw),
                ip_allowlist: r.ip_allowlist,
                created_at: r.created_at.timestamp_millis(),
                last_used_at: r.last_used_at.map(|t| t.timestamp_millis()),
                expires_at: r.expires_at.map(|t| t.timestamp_millis()),
            })
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", params(("id" = i64, Path)),
    responses((status = 204, description = "deleted"),
              (status = 403, description = "PERMISSION_DENIED: API keys are managed with an access token", body = ErrorBody),
              (status = 404, description = "NOT_FOUND: no such API key of this user", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_api_key(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    user.require_session()?;
    let deleted = sqlx::query("DELETE FROM api_keys WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user.user_id)
        .execute(s.db())
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(ApiError::not_found("no such API key"));
    }
    // The key is gone; its holder must also lose the Binance user data
    // stream it opened (only that key's: the user's other keys keep
    // theirs). If Redis is unreachable the streams still end at their next
    // check, which finds the key gone — logged, the delete stands.
    if let Err(e) = crate::binance::user_stream::revoke_api_key_listen_key(&s, id).await {
        tracing::warn!(user = user.user_id, key_id = id, error = ?e, "API key deleted but its listenKey could not be revoked");
    }
    // Its private WebSocket sessions end now, on every gateway.
    sessions::announce(&s, user.user_id).await;
    Ok(StatusCode::NO_CONTENT)
}
