//! The operators' side of custody: withdrawals to approve or reject, the
//! manual network's payout reports, chain deposit reports, the deposit
//! address pool and custody freezes. Who may call each: the route's
//! permission group in [`crate::admin_routes`]; the wallet appends the
//! audit row in the change's own transaction, from the caller's context
//! sent with the body.

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use exchange_common::ApiError;
use exchange_common::error::{Json, Path, Query};
use exchange_store::audit::AuditContext;

use super::schema::{ErrorBody, field};
use crate::auth::operators::AdminCaller;
use crate::state::AppState;
use crate::upstream::WithdrawalAction;

/// A request body as the wallet receives it: the operator's fields and who
/// asked.
#[derive(Serialize)]
struct Audited<'a, T: Serialize> {
    #[serde(flatten)]
    body: &'a T,
    audit: &'a AuditContext,
}

#[derive(Serialize)]
struct Nothing {}

super::list_query! {
    pub struct AdminWithdrawalQuery {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[param(schema_with = field::withdrawal_status)]
        pub status: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub user_id: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub asset: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[param(schema_with = list_limit)]
        pub limit: Option<i64>,
    }
}

super::list_query! {
    pub struct AdminDepositQuery {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[param(schema_with = field::deposit_status)]
        pub status: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub user_id: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub asset: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[param(schema_with = list_limit)]
        pub limit: Option<i64>,
    }
}

fn list_limit() -> utoipa::openapi::schema::Object {
    field::limit(1_000)
}

#[utoipa::path(get, path = "/admin/v1/withdrawals", operation_id = "admin_list_withdrawals", params(AdminWithdrawalQuery),
    responses((status = 200, description = "withdrawals, oldest first, with `user_id`, `approvals_required`, `approved_by`, `network_fee`"),
              (status = 400, description = "INVALID_STATUS, INVALID_LIMIT", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn list_withdrawals(
    State(s): State<AppState>,
    Query(q): Query<AdminWithdrawalQuery>,
) -> Result<Response, ApiError> {
    Ok(s.wallet.admin_withdrawals(&q).await?.into_response())
}

async fn act<T: Serialize>(
    s: &AppState,
    caller: &AdminCaller,
    id: i64,
    action: WithdrawalAction,
    body: &T,
) -> Result<Response, ApiError> {
    let body = Audited {
        body,
        audit: &caller.context,
    };
    Ok(s.wallet
        .withdrawal_action(id, action, &body)
        .await?
        .into_response())
}

#[utoipa::path(post, path = "/admin/v1/withdrawals/{id}/approve", operation_id = "approve_withdrawal", params(("id" = i64, Path)),
    responses((status = 200, description = "the withdrawal: `approved` once two different operators approved (above auto_approve_limit)"),
              (status = 404, description = "WITHDRAWAL_NOT_FOUND", body = ErrorBody),
              (status = 409, description = "SAME_APPROVER (you approved it already), WITHDRAWAL_NOT_PENDING", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn approve(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    act(&s, &caller, id, WithdrawalAction::Approve, &Nothing {}).await
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    #[schema(schema_with = field::freeze_reason)]
    pub reason: String,
}

#[utoipa::path(post, path = "/admin/v1/withdrawals/{id}/reject", operation_id = "reject_withdrawal", params(("id" = i64, Path)), request_body = Reason,
    responses((status = 200, description = "rejected: `amount + fee` back to the user's available"),
              (status = 400, description = "INVALID_REASON", body = ErrorBody),
              (status = 404, description = "WITHDRAWAL_NOT_FOUND", body = ErrorBody),
              (status = 409, description = "WITHDRAWAL_NOT_PENDING (signing or later: fail it instead)", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn reject(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Path(id): Path<i64>,
    Json(req): Json<Reason>,
) -> Result<Response, ApiError> {
    act(&s, &caller, id, WithdrawalAction::Reject, &req).await
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Broadcast {
    /// The payout transaction's hash.
    #[schema(schema_with = field::tx_hash)]
    pub tx_hash: String,
}

#[utoipa::path(post, path = "/admin/v1/withdrawals/{id}/broadcast", operation_id = "broadcast_withdrawal", params(("id" = i64, Path)), request_body = Broadcast,
    responses((status = 200, description = "manual network: the operator sent the payout (signing → broadcast)"),
              (status = 404, description = "WITHDRAWAL_NOT_FOUND", body = ErrorBody),
              (status = 409, description = "NOT_MANUAL_NETWORK, WITHDRAWAL_NOT_PENDING", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn broadcast(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Path(id): Path<i64>,
    Json(req): Json<Broadcast>,
) -> Result<Response, ApiError> {
    act(&s, &caller, id, WithdrawalAction::Broadcast, &req).await
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Confirm {
    /// What the payout cost on chain, in the asset (default 0); the
    /// difference to the fee charged is booked to the fee account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = field::optional_decimal)]
    pub network_fee: Option<String>,
}

#[utoipa::path(post, path = "/admin/v1/withdrawals/{id}/confirm", operation_id = "confirm_withdrawal", params(("id" = i64, Path)), request_body = Confirm,
    responses((status = 200, description = "manual network: final on chain (broadcast → confirmed); the funds leave the ledger to custody"),
              (status = 400, description = "INVALID_AMOUNT", body = ErrorBody),
              (status = 404, description = "WITHDRAWAL_NOT_FOUND", body = ErrorBody),
              (status = 409, description = "NOT_MANUAL_NETWORK, WITHDRAWAL_NOT_PENDING", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn confirm(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Path(id): Path<i64>,
    Json(req): Json<Confirm>,
) -> Result<Response, ApiError> {
    act(&s, &caller, id, WithdrawalAction::Confirm, &req).await
}

#[utoipa::path(post, path = "/admin/v1/withdrawals/{id}/fail", operation_id = "fail_withdrawal", params(("id" = i64, Path)), request_body = Reason,
    responses((status = 200, description = "manual network: dropped or reverted (signing/broadcast → failed); `amount + fee` back to the user"),
              (status = 400, description = "INVALID_REASON", body = ErrorBody),
              (status = 404, description = "WITHDRAWAL_NOT_FOUND", body = ErrorBody),
              (status = 409, description = "NOT_MANUAL_NETWORK, WITHDRAWAL_NOT_PENDING", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn fail(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Path(id): Path<i64>,
    Json(req): Json<Reason>,
) -> Result<Response, ApiError> {
    act(&s, &caller, id, WithdrawalAction::Fail, &req).await
}

/// A transfer an external custody system saw on chain (manual adapter).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainDeposit {
    #[schema(schema_with = field::network)]
    pub network: String,
    #[schema(schema_with = field::tx_hash)]
    pub tx_hash: String,
    /// With `tx_hash`, the transfer's identity: reported any number of
    /// times, it is credited once.
    #[schema(minimum = 0)]
    pub log_index: i32,
    /// A deposit address the wallet gave a user.
    pub address: String,
    #[schema(schema_with = field::asset_symbol)]
    pub asset: String,
    #[schema(schema_with = field::positive_decimal)]
    pub amount: String,
    /// Credited when it reaches the asset's `confirmations`.
    #[schema(minimum = 0)]
    pub confirmations: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub block_number: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_hash: Option<String>,
    /// It left the chain: `reorged` if not credited yet; if credited, the
    /// user's withdrawals freeze until an operator releases them.
    #[serde(default)]
    pub removed: bool,
}

#[utoipa::path(post, path = "/admin/v1/custody/deposits", operation_id = "report_chain_deposit", request_body = ChainDeposit,
    responses((status = 200, description = "the deposit as it is now (pending, credited once at its confirmations, or reorged)"),
              (status = 400, description = "UNKNOWN_ADDRESS, UNKNOWN_ASSET, NETWORK_MISMATCH, INVALID_ADDRESS, INVALID_AMOUNT", body = ErrorBody),
              (status = 404, description = "DEPOSIT_NOT_FOUND (removing a transfer never seen)", body = ErrorBody),
              (status = 409, description = "TRANSFER_CONFLICT: the same transfer with another address, asset or amount", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn report_deposit(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Json(req): Json<ChainDeposit>,
) -> Result<Response, ApiError> {
    let body = Audited {
        body: &req,
        audit: &caller.context,
    };
    Ok(s.wallet.report_chain_deposit(&body).await?.into_response())
}

#[utoipa::path(get, path = "/admin/v1/custody/deposits", operation_id = "admin_list_deposits", params(AdminDepositQuery),
    responses((status = 200, description = "chain deposits, newest first"),
              (status = 400, description = "INVALID_STATUS, INVALID_LIMIT", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn list_deposits(
    State(s): State<AppState>,
    Query(q): Query<AdminDepositQuery>,
) -> Result<Response, ApiError> {
    Ok(s.wallet.admin_chain_deposits(&q).await?.into_response())
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DepositAddresses {
    #[schema(schema_with = field::network)]
    pub network: String,
    /// 1 to 1,000 addresses made by the external custody system; all are
    /// validated before any is added; known ones are skipped.
    pub addresses: Vec<String>,
}

#[utoipa::path(post, path = "/admin/v1/custody/deposit-addresses", request_body = DepositAddresses,
    responses((status = 200, description = "`{network, added, present, free}`"),
              (status = 400, description = "INVALID_ADDRESS, NO_NETWORK, INVALID_REQUEST", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn load_deposit_addresses(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Json(req): Json<DepositAddresses>,
) -> Result<Response, ApiError> {
    let body = Audited {
        body: &req,
        audit: &caller.context,
    };
    Ok(s.wallet
        .load_deposit_addresses(&body)
        .await?
        .into_response())
}

super::list_query! {
    pub struct FreezeQuery {
        /// `true`: only those still in force.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub open: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[param(schema_with = list_limit)]
        pub limit: Option<i64>,
    }
}

#[utoipa::path(get, path = "/admin/v1/custody/freezes", operation_id = "list_custody_freezes", params(FreezeQuery),
    responses((status = 200, description = "custody freezes (a credited deposit left the chain), newest first: a bare array, or `{items, next_cursor}` with `cursor` or `paginate=true`"),
              (status = 400, description = "INVALID_LIMIT, INVALID_CURSOR, INVALID_QUERY", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn list_freezes(
    State(s): State<AppState>,
    Query(q): Query<FreezeQuery>,
) -> Result<Response, ApiError> {
    Ok(s.wallet.custody_freezes(&q).await?.into_response())
}

#[utoipa::path(post, path = "/admin/v1/custody/freezes/{id}/release", operation_id = "release_custody_freeze", params(("id" = i64, Path)), request_body = Reason,
    responses((status = 200, description = "released (repeating it answers the same)"),
              (status = 400, description = "INVALID_REASON", body = ErrorBody),
              (status = 404, description = "FREEZE_NOT_FOUND", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn release_freeze(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Path(id): Path<i64>,
    Json(req): Json<Reason>,
) -> Result<Response, ApiError> {
    let body = Audited {
        body: &req,
        audit: &caller.context,
    };
    Ok(s.wallet
        .release_custody_freeze(id, &body)
        .await?
        .into_response())
}
