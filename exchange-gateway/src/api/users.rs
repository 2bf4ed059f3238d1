//! Operators acting on user accounts (`support` permission): freezing,
//! unfreezing and resetting a lost second factor. A freeze commits with its audit row and the end of every
//! session of the user, then cancels the user's open orders through the
//! order service, market by market, as any cancel-all (journaled, settled
//! by clearing: balances move from locked back to available, nothing else).
//! The order service refuses a frozen user's new orders from the commit on,
//! and checks it under the market sequencer, so the cancel-all cannot miss
//! an order that was in flight.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use exchange_common::ApiError;
use exchange_common::ErrorCode;
use exchange_common::error::{Json, Path};

use super::schema::{ErrorBody, REASON_LEN_MAX, field};
use super::security::all_sessions_ended;
use crate::auth::operators::AdminCaller;
use crate::auth::sessions::{self, EndReason};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Freeze {
    /// Why (kept with the account and in the audit log).
    #[schema(schema_with = field::freeze_reason)]
    pub reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct FreezeOutcome {
    pub user_id: i64,
    pub frozen: bool,
    pub reason: Option<String>,
    /// When the account was frozen (ms), while it is.
    pub frozen_at: Option<i64>,
    /// Markets where the user's open orders were sent to be canceled.
    pub canceled_in: Vec<String>,
    /// Markets where that was refused (`{"market","code"}`): freeze again
    /// to retry (the freeze itself stands).
    pub cancel_failed: Vec<CancelFailed>,
}

#[derive(Serialize, ToSchema)]
pub struct CancelFailed {
    pub market: String,
    pub code: String,
}

/// A reason an operator gives, trimmed: 1 to [`REASON_LEN_MAX`]
/// characters, without NUL.
fn checked_reason(reason: &str) -> Result<&str, ApiError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > REASON_LEN_MAX || reason.contains('\0') {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidReason,
            format!("reason is 1 to {REASON_LEN_MAX} characters, without NUL"),
        ));
    }
    Ok(reason)
}

fn user_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::UserNotFound,
        "no such user",
    )
}

/// Freezes an account: it cannot log in, trade or withdraw; reads with its
/// API keys still work. Freezing a frozen account again keeps the first
/// time, updates the reason and cancels open orders again.
#[utoipa::path(post, path = "/admin/v1/users/{id}/freeze", request_body = Freeze, params(("id" = i64, Path)),
    responses((status = 200, body = FreezeOutcome),
              (status = 400, description = "INVALID_REASON (empty, over 512 characters or with a NUL), or malformed input", body = ErrorBody),
              (status = 404, description = "USER_NOT_FOUND", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn freeze(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Path(user_id): Path<i64>,
    Json(req): Json<Freeze>,
) -> Result<Json<FreezeOutcome>, ApiError> {
    let reason = checked_reason(&req.reason)?;
    let mut tx = s.db().begin().await?;
    let frozen_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "UPDATE users SET frozen_at = COALESCE(frozen_at, now()), frozen_reason = $2
         WHERE id = $1 RETURNING frozen_at",
    )
    .bind(user_id)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(user_not_found)?;
    sessions::end_all(&mut tx, user_id, EndReason::Frozen, None).await?;
    let entry = caller.entry(
        "user.freeze",
        &format!("user:{user_id}"),
        json!({ "reason": reason }),
    );
    exchange_store::audit::append(&mut tx, &entry).await?;
    tx.commit().await?;
    all_sessions_ended(&s, user_id).await;
    tracing::warn!(user_id, actor = caller.actor(), "account frozen");

    let markets: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT market FROM orders
         WHERE user_id = $1 AND status IN ('new', 'partially_filled') ORDER BY market",
    )
    .bind(user_id)
    .fetch_all(s.db())
    .await?;
    let mut canceled_in = Vec::new();
    let mut cancel_failed = Vec::new();
    for market in markets {
        let relayed = s
            .orders
            .cancel_all(&json!({ "user_id": user_id, "market": market }))
            .await?;
        if relayed.status.is_success() {
            canceled_in.push(market);
        } else {
            let code = relayed
                .json()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or_else(|| relayed.status.to_string());
            tracing::warn!(user_id, %market, %code, "frozen account: canceling its open orders was refused");
            cancel_failed.push(CancelFailed { market, code });
        }
    }
    Ok(Json(FreezeOutcome {
        user_id,
        frozen: true,
        reason: Some(reason.to_owned()),
        frozen_at: Some(frozen_at.timestamp_millis()),
        canceled_in,
        cancel_failed,
    }))
}

/// Unfreezes an account: it may log in and trade again.
#[utoipa::path(post, path = "/admin/v1/users/{id}/unfreeze", params(("id" = i64, Path)),
    responses((status = 200, body = FreezeOutcome),
              (status = 404, description = "USER_NOT_FOUND", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn unfreeze(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Path(user_id): Path<i64>,
) -> Result<Json<FreezeOutcome>, ApiError> {
    let mut tx = s.db().begin().await?;
    let was_frozen: bool = sqlx::query_scalar(
        "UPDATE users u SET frozen_at = NULL, frozen_reason = NULL
         FROM (SELECT id, frozen_at IS NOT NULL AS was FROM users WHERE id = $1 FOR UPDATE) old
         WHERE u.id = old.id RETURNING old.was",
    )
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(user_not_found)?;
    let entry = caller.entry(
        "user.unfreeze",
        &format!("user:{user_id}"),
        json!({ "was_frozen": was_frozen }),
    );
    exchange_store::audit::append(&mut tx, &entry).await?;
    tx.commit().await?;
    tracing::warn!(user_id, actor = caller.actor(), "account unfrozen");
    Ok(Json(FreezeOutcome {
        user_id,
        frozen: false,
        reason: None,
        frozen_at: None,
        canceled_in: Vec::new(),
        cancel_failed: Vec::new(),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct SecondFactorReset {
    pub user_id: i64,
    /// Whether 2FA was on (or enrolled) before the reset.
    pub was_enabled: bool,
}

/// Turns a user's second factor off, for one who lost the authenticator
/// and every recovery code (after verifying who they are, outside this
/// system). Every session of the user ends; the user may enrol again.
#[utoipa::path(post, path = "/admin/v1/users/{id}/2fa/reset", request_body = Freeze, params(("id" = i64, Path)),
    responses((status = 200, body = SecondFactorReset),
              (status = 400, description = "INVALID_REASON, or malformed input", body = ErrorBody),
              (status = 404, description = "USER_NOT_FOUND", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn reset_second_factor(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Path(user_id): Path<i64>,
    Json(req): Json<Freeze>,
) -> Result<Json<SecondFactorReset>, ApiError> {
    let reason = checked_reason(&req.reason)?;
    let mut tx = s.db().begin().await?;
    let was_enabled: bool = sqlx::query_scalar(
        "UPDATE users u SET totp_enabled_at = NULL, totp_secret_nonce = NULL,
                            totp_secret_ciphertext = NULL, totp_last_step = NULL
         FROM (SELECT id, totp_secret_ciphertext IS NOT NULL AS was FROM users WHERE id = $1 FOR UPDATE) old
         WHERE u.id = old.id RETURNING old.was",
    )
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(user_not_found)?;
    sqlx::query("DELETE FROM totp_recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    sessions::end_all(&mut tx, user_id, EndReason::SecondFactorChanged, None).await?;
    let entry = caller.entry(
        "user.2fa_reset",
        &format!("user:{user_id}"),
        json!({ "reason": reason, "was_enabled": was_enabled }),
    );
    exchange_store::audit::append(&mut tx, &entry).await?;
    tx.commit().await?;
    all_sessions_ended(&s, user_id).await;
    tracing::warn!(
        user_id,
        actor = caller.actor(),
        "second factor reset by an operator"
    );
    Ok(Json(SecondFactorReset {
        user_id,
        was_enabled,
    }))
}
