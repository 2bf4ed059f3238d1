//! Account security (docs/API.md, "Account security"): the TOTP second
//! factor and its recovery codes, logout, logout-all and password change,
//! and [`require_second_factor`], which every route that needs the code
//! when 2FA is on calls (login, API-key creation, password change, and the
//! custody routes).

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use exchange_common::ApiError;
use exchange_common::ErrorCode;
use exchange_common::error::Json;

use super::schema::{ErrorBody, field};
use crate::auth::authn::{AuthUser, unauthorized};
use crate::auth::sessions::{self, EndReason};
use crate::auth::{password, totp};
use crate::state::{AppState, now_ms};

/// Wrong codes in a row (within [`TOTP_FAILURE_WINDOW`]) before codes are
/// refused with 429 until the window passes.
pub const TOTP_FAILURES_MAX: i32 = 5;
const TOTP_FAILURE_WINDOW: &str = "15 minutes";

/// What a request offers as its second factor.
#[derive(Debug, Clone, Copy, Default)]
pub struct SecondFactor<'a> {
    pub totp: Option<&'a str>,
    /// Accepted only where the contract allows it (login, disabling 2FA).
    pub recovery_code: Option<&'a str>,
}

#[derive(sqlx::FromRow)]
struct TotpState {
    enabled: bool,
    secret_nonce: Option<Vec<u8>>,
    secret_ciphertext: Option<Vec<u8>>,
}

async fn totp_state(s: &AppState, user_id: i64) -> Result<TotpState, ApiError> {
    sqlx::query_as(
        "SELECT totp_enabled_at IS NOT NULL AS enabled,
                totp_secret_nonce AS secret_nonce, totp_secret_ciphertext AS secret_ciphertext
         FROM users WHERE id = $1",
    )
    .bind(user_id)
    .fetch_optional(s.db())
    .await?
    .ok_or_else(|| ApiError::not_found("no such user"))
}

/// Counts an attempt before the code is checked (a right code then sets
/// the count back to zero), in one statement, so parallel requests cannot
/// each slip in under the limit; refuses when the window's attempts are
/// used up.
async fn reserve_attempt(s: &AppState, user_id: i64) -> Result<(), ApiError> {
    let reserved = sqlx::query(
        "UPDATE users SET
            totp_failed_attempts = CASE WHEN totp_failed_since > now() - $2::interval
                                        THEN totp_failed_attempts + 1 ELSE 1 END,
            totp_failed_since = CASE WHEN totp_failed_since > now() - $2::interval
                                     THEN totp_failed_since ELSE now() END
         WHERE id = $1
           AND NOT (totp_failed_attempts >= $3 AND totp_failed_since > now() - $2::interval)",
    )
    .bind(user_id)
    .bind(TOTP_FAILURE_WINDOW)
    .bind(TOTP_FAILURES_MAX)
    .execute(s.db())
    .await?;
    if reserved.rows_affected() == 0 {
        return Err(too_many_attempts());
    }
    Ok(())
}

/// The associated data binding a user's encrypted TOTP secret to them.
fn secret_aad(user_id: i64) -> String {
    format!("totp:{user_id}")
}

fn generator(s: &AppState, user_id: i64, st: &TotpState) -> Result<totp::Totp, ApiError> {
    let (Some(nonce), Some(ct)) = (&st.secret_nonce, &st.secret_ciphertext) else {
        return Err(ApiError::conflict(
            ErrorCode::TotpNotEnabled,
            "two-factor authentication is not set up",
        ));
    };
    s.keys
        .decrypt(&secret_aad(user_id), nonce, ct)
        .and_then(|b32| totp::decode_secret(&b32))
        .and_then(|raw| totp::Totp::new(&raw))
        .ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "TOTP secret of user {user_id} cannot be decrypted (encryption key changed?)"
            ))
        })
}

/// Accepts `code` once: only a step later than the last accepted one.
async fn consume_totp(
    s: &AppState,
    user_id: i64,
    st: &TotpState,
    code: &str,
) -> Result<bool, ApiError> {
    let Some(step) = generator(s, user_id, st)?.step_of(code.trim(), now_ms() / 1000) else {
        return Ok(false);
    };
    let step = i64::try_from(step).map_err(ApiError::internal)?;
    let accepted = sqlx::query(
        "UPDATE users SET totp_last_step = $2, totp_failed_attempts = 0, totp_failed_since = NULL
         WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
    )
    .bind(user_id)
    .bind(step)
    .execute(s.db())
    .await?;
    Ok(accepted.rows_affected() == 1)
}

async fn consume_recovery_code(s: &AppState, user_id: i64, code: &str) -> Result<bool, ApiError> {
    let mut tx = s.db().begin().await?;
    let used = sqlx::query(
        "UPDATE totp_recovery_codes SET used_at = now()
         WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
    )
    .bind(user_id)
    .bind(totp::recovery_code_hash(code))
    .execute(&mut *tx)
    .await?;
    if used.rows_affected() == 1 {
        sqlx::query(
            "UPDATE users SET totp_failed_attempts = 0, totp_failed_since = NULL WHERE id = $1",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(used.rows_affected() == 1)
}

fn too_many_attempts() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooManyAttempts,
        "too many wrong codes; try again in 15 minutes",
    )
}

/// Checks `offered` against the user's second factor when it is on
/// (nothing to do when it is off). Missing → 401 `TOTP_REQUIRED`; wrong,
/// reused or (where not allowed) a recovery code → 401 `INVALID_TOTP`;
/// after [`TOTP_FAILURES_MAX`] wrong codes → 429 `TOO_MANY_ATTEMPTS`.
pub async fn require_second_factor(
    s: &AppState,
    user_id: i64,
    offered: SecondFactor<'_>,
) -> Result<(), ApiError> {
    let st = totp_state(s, user_id).await?;
    if !st.enabled {
        return Ok(());
    }
    check_offered(s, user_id, &st, offered, "a code").await
}

async fn check_offered(
    s: &AppState,
    user_id: i64,
    st: &TotpState,
    offered: SecondFactor<'_>,
    what: &str,
) -> Result<(), ApiError> {
    if offered.totp.is_none() && offered.recovery_code.is_none() {
        return Err(unauthorized(
            ErrorCode::TotpRequired,
            &format!("two-factor authentication is on: send \"totp\" with {what}"),
        ));
    }
    reserve_attempt(s, user_id).await?;
    let accepted = match offered {
        SecondFactor {
            totp: Some(code), ..
        } => consume_totp(s, user_id, st, code).await?,
        SecondFactor {
            recovery_code: Some(code),
            ..
        } => consume_recovery_code(s, user_id, code).await?,
        SecondFactor { .. } => false,
    };
    if accepted {
        return Ok(());
    }
    Err(unauthorized(
        ErrorCode::InvalidTotp,
        "the code is wrong, expired or already used",
    ))
}

#[derive(Serialize, ToSchema)]
pub struct TotpEnrolment {
    /// The shared secret, base32 (type it into an authenticator app).
    pub secret: String,
    /// The same as an `otpauth://` URI (for a QR code).
    pub otpauth_uri: String,
    /// Ten single-use codes for when the authenticator is lost; shown once.
    pub recovery_codes: Vec<String>,
}

/// Starts (or restarts) an enrolment: 2FA is not on until confirmed.
#[utoipa::path(post, path = "/api/v1/account/2fa/totp",
    responses((status = 200, body = TotpEnrolment),
              (status = 403, description = "PERMISSION_DENIED: needs an access token, not an API key", body = ErrorBody),
              (status = 409, description = "TOTP_ALREADY_ENABLED", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn enrol_totp(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> Result<Json<TotpEnrolment>, ApiError> {
    user.require_session()?;
    let (email, enabled): (String, bool) =
        sqlx::query_as("SELECT email, totp_enabled_at IS NOT NULL FROM users WHERE id = $1")
            .bind(user.user_id)
            .fetch_one(s.db())
            .await?;
    if enabled {
        return Err(ApiError::conflict(
            ErrorCode::TotpAlreadyEnabled,
            "two-factor authentication is already on; disable it first",
        ));
    }
    let (_, secret) = totp::new_secret();
    let (nonce, ciphertext) = s
        .keys
        .encrypt(&secret_aad(user.user_id), &secret)
        .map_err(ApiError::internal)?;
    let codes = totp::new_recovery_codes();
    let hashes: Vec<String> = codes.iter().map(|c| totp::recovery_code_hash(c)).collect();
    let mut tx = s.db().begin().await?;
    // The WHERE keeps a concurrent confirmation from being overwritten.
    let updated = sqlx::query(
        "UPDATE users SET totp_secret_nonce = $2, totp_secret_ciphertext = $3, totp_last_step = NULL
         WHERE id = $1 AND totp_enabled_at IS NULL",
    )
    .bind(user.user_id)
    .bind(&nonce)
    .bind(&ciphertext)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(ApiError::conflict(
            ErrorCode::TotpAlreadyEnabled,
            "two-factor authentication is already on; disable it first",
        ));
    }
    sqlx::query("DELETE FROM totp_recovery_codes WHERE user_id = $1")
        .bind(user.user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO totp_recovery_codes (user_id, code_hash) SELECT $1, unnest($2::text[])",
    )
    .bind(user.user_id)
    .bind(&hashes)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(TotpEnrolment {
        otpauth_uri: totp::otpauth_uri(&s.base.config.gateway.totp_issuer, &email, &secret),
        secret,
        recovery_codes: codes,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpCode {
    #[schema(schema_with = field::totp_code)]
    pub totp: String,
}

#[derive(Serialize, ToSchema)]
pub struct TotpStatus {
    pub enabled: bool,
}

/// Turns 2FA on with the first code from the app; every other session of
/// the user ends.
#[utoipa::path(post, path = "/api/v1/account/2fa/totp/confirm", request_body = TotpCode,
    responses((status = 200, body = TotpStatus),
              (status = 400, description = "INVALID_TOTP: wrong code, or malformed input", body = ErrorBody),
              (status = 409, description = "TOTP_NOT_ENABLED: no enrolment to confirm; TOTP_ALREADY_ENABLED", body = ErrorBody),
              (status = 429, description = "TOO_MANY_ATTEMPTS", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn confirm_totp(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Json(req): Json<TotpCode>,
) -> Result<Json<TotpStatus>, ApiError> {
    let session_id = user.require_session()?;
    let st = totp_state(&s, user.user_id).await?;
    if st.enabled {
        return Err(ApiError::conflict(
            ErrorCode::TotpAlreadyEnabled,
            "two-factor authentication is already on",
        ));
    }
    reserve_attempt(&s, user.user_id).await?;
    if !consume_totp(&s, user.user_id, &st, &req.totp).await? {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidTotp,
            "the code is wrong or expired",
        ));
    }
    let mut tx = s.db().begin().await?;
    // Only the enrolment the code was checked against: a reset or a new
    // enrolment in between leaves 2FA off.
    let enabled = sqlx::query(
        "UPDATE users SET totp_enabled_at = now()
         WHERE id = $1 AND totp_enabled_at IS NULL AND totp_secret_ciphertext = $2",
    )
    .bind(user.user_id)
    .bind(&st.secret_ciphertext)
    .execute(&mut *tx)
    .await?;
    if enabled.rows_affected() == 0 {
        return Err(ApiError::conflict(
            ErrorCode::TotpNotEnabled,
            "the enrolment changed meanwhile; enrol again",
        ));
    }
    sessions::end_all(
        &mut tx,
        user.user_id,
        EndReason::SecondFactorChanged,
        Some(session_id),
    )
    .await?;
    tx.commit().await?;
    all_sessions_ended(&s, user.user_id).await;
    Ok(Json(TotpStatus { enabled: true }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableTotp {
    #[serde(default)]
    #[schema(schema_with = field::optional_totp_code)]
    pub totp: Option<String>,
    #[serde(default)]
    #[schema(schema_with = field::optional_recovery_code)]
    pub recovery_code: Option<String>,
}

/// Turns 2FA off, with a code or a recovery code; every other session of
/// the user ends.
#[utoipa::path(delete, path = "/api/v1/account/2fa/totp", request_body = DisableTotp,
    responses((status = 200, body = TotpStatus),
              (status = 401, description = "TOTP_REQUIRED, INVALID_TOTP", body = ErrorBody),
              (status = 409, description = "TOTP_NOT_ENABLED", body = ErrorBody),
              (status = 429, description = "TOO_MANY_ATTEMPTS", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn disable_totp(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Json(req): Json<DisableTotp>,
) -> Result<Json<TotpStatus>, ApiError> {
    let session_id = user.require_session()?;
    let st = totp_state(&s, user.user_id).await?;
    if !st.enabled {
        return Err(ApiError::conflict(
            ErrorCode::TotpNotEnabled,
            "two-factor authentication is not on",
        ));
    }
    let offered = SecondFactor {
        totp: req.totp.as_deref(),
        recovery_code: req.recovery_code.as_deref(),
    };
    check_offered(
        &s,
        user.user_id,
        &st,
        offered,
        "a code or \"recovery_code\"",
    )
    .await?;
    let mut tx = s.db().begin().await?;
    sqlx::query(
        "UPDATE users SET totp_enabled_at = NULL, totp_secret_nonce = NULL, totp_secret_ciphertext = NULL,
                          totp_last_step = NULL
         WHERE id = $1",
    )
    .bind(user.user_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM totp_recovery_codes WHERE user_id = $1")
        .bind(user.user_id)
        .execute(&mut *tx)
        .await?;
    sessions::end_all(
        &mut tx,
        user.user_id,
        EndReason::SecondFactorChanged,
        Some(session_id),
    )
    .await?;
    tx.commit().await?;
    all_sessions_ended(&s, user.user_id).await;
    Ok(Json(TotpStatus { enabled: false }))
}

/// After a commit that ended every session of `user_id` (all but the
/// caller's, for a password or 2FA change): its Binance listenKey is
/// revoked too, since a user data stream is a session as well, and every
/// gateway's open WebSockets of the user re-check their credential.
pub async fn all_sessions_ended(s: &AppState, user_id: i64) {
    if let Err(e) = crate::binance::user_stream::revoke_user_listen_key(s, user_id).await {
        tracing::warn!(user_id, error = ?e, "the user's listenKey could not be revoked; its streams end when it expires");
    }
    sessions::announce(s, user_id).await;
}

/// Ends this access token's session at once (REST and private WebSocket).
#[utoipa::path(post, path = "/api/v1/auth/logout",
    responses((status = 204, description = "the token no longer works"),
              (status = 401, description = "UNAUTHORIZED, INVALID_TOKEN, SESSION_ENDED", body = ErrorBody),
              (status = 403, description = "PERMISSION_DENIED: needs an access token, not an API key", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn logout(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> Result<StatusCode, ApiError> {
    let session_id = user.require_session()?;
    sessions::end(s.db(), user.user_id, session_id).await?;
    sessions::announce(&s, user.user_id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends every session of the user: all access tokens, and every private
/// WebSocket (those opened with an API key too; the keys stay valid).
#[utoipa::path(post, path = "/api/v1/auth/logout-all",
    responses((status = 204, description = "every token of the user no longer works"),
              (status = 401, description = "UNAUTHORIZED, INVALID_TOKEN, SESSION_ENDED", body = ErrorBody),
              (status = 403, description = "PERMISSION_DENIED: needs an access token, not an API key", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn logout_all(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> Result<StatusCode, ApiError> {
    user.require_session()?;
    let mut tx = s.db().begin().await?;
    sessions::end_all(&mut tx, user.user_id, EndReason::LogoutAll, None).await?;
    tx.commit().await?;
    all_sessions_ended(&s, user.user_id).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(schema_with = field::password)]
    pub current_password: String,
    #[schema(schema_with = field::password)]
    pub new_password: String,
    /// Required when 2FA is on.
    #[serde(default)]
    #[schema(schema_with = field::optional_totp_code)]
    pub totp: Option<String>,
}

/// A password hash that could not run: 503 `OVERLOADED` when its queue is
/// full, else a 500.
fn hash_error(e: password::HashError) -> ApiError {
    match e {
        password::HashError::Overloaded => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            "too many password checks are waiting; retry in a second",
        ),
        password::HashError::Failed(e) => ApiError::internal(e),
    }
}

/// Changes the password; every other session ends (this one stays).
#[utoipa::path(post, path = "/api/v1/account/password", request_body = PasswordChange,
    responses((status = 204, description = "changed"),
              (status = 400, description = "WEAK_PASSWORD, or malformed input", body = ErrorBody),
              (status = 401, description = "INVALID_CREDENTIALS: the current password is wrong; TOTP_REQUIRED, INVALID_TOTP", body = ErrorBody),
              (status = 429, description = "TOO_MANY_ATTEMPTS", body = ErrorBody),
              (status = 503, description = "OVERLOADED: too many password checks waiting", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn change_password(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Json(req): Json<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let session_id = user.require_session()?;
    password::check_policy(&req.new_password)
        .map_err(|m| ApiError::bad_request(ErrorCode::WeakPassword, m))?;
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(user.user_id)
        .fetch_one(s.db())
        .await?;
    let ok = s
        .passwords
        .verify(&req.current_password, Some(&hash))
        .await
        .map_err(hash_error)?;
    if !ok {
        return Err(unauthorized(
            ErrorCode::InvalidCredentials,
            "the current password is wrong",
        ));
    }
    let offered = SecondFactor {
        totp: req.totp.as_deref(),
        recovery_code: None,
    };
    require_second_factor(&s, user.user_id, offered).await?;
    let new_hash = s
        .passwords
        .hash(&req.new_password)
        .await
        .map_err(hash_error)?;
    let mut tx = s.db().begin().await?;
    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
        .bind(user.user_id)
        .bind(&new_hash)
        .execute(&mut *tx)
        .await?;
    sessions::end_all(
        &mut tx,
        user.user_id,
        EndReason::PasswordChanged,
        Some(session_id),
    )
    .await?;
    tx.commit().await?;
    all_sessions_ended(&s, user.user_id).await;
    Ok(StatusCode::NO_CONTENT)
}
