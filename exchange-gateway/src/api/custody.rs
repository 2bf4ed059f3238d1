//! Deposits and withdrawals (API.md "Custody"): authenticated and checked
//! here (permission, frozen account, second factor), then proxied to the
//! wallet's internal API with the caller's user id, which never comes from
//! the request: a user only ever sees and moves their own.
//!
//! The address book is managed with a login session only (never an API
//! key): a leaked key cannot add the address money would leave to.

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use exchange_common::ApiError;
use exchange_common::error::{Json, Path, Query};

use super::schema::{ErrorBody, field};
use super::security::{SecondFactor, require_second_factor};
use crate::auth::authn::AuthUser;
use crate::state::AppState;
use crate::upstream::Relayed;

#[derive(Debug, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AssetQuery {
    /// The asset, e.g. `ETH`.
    pub asset: String,
}

#[utoipa::path(get, path = "/api/v1/account/deposit-address", params(AssetQuery),
    responses((status = 200, description = "`{asset, network, address}`: the same address every time for this user and network"),
              (status = 400, description = "UNKNOWN_ASSET, NO_NETWORK (an off-chain asset)", body = ErrorBody),
              (status = 503, description = "NO_DEPOSIT_ADDRESS: none free for the network right now (operators load more)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn deposit_address(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Query<AssetQuery>,
) -> Result<Response, ApiError> {
    user.require_read()?;
    Ok(s.wallet
        .deposit_address(user.user_id, &q)
        .await?
        .into_response())
}

#[derive(Debug, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CustodyListQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    /// Deposits: `pending`, `credited`, `reorged`. Withdrawals:
    /// `pending_approval`, `approved`, `signing`, `broadcast`, `confirmed`,
    /// `rejected`, `canceled`, `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(schema_with = list_limit)]
    pub limit: Option<i64>,
}

fn list_limit() -> utoipa::openapi::schema::Object {
    field::limit(1_000)
}

super::list_query! {
    /// `GET /api/v1/account/deposits`'s query (the wallet's list query).
    pub struct DepositListQuery {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub asset: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[param(schema_with = field::deposit_status)]
        pub status: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[param(schema_with = list_limit)]
        pub limit: Option<i64>,
    }
}

super::list_query! {
    /// `GET /api/v1/withdrawals`'s query (the wallet's list query).
    pub struct WithdrawalListQuery {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub asset: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[param(schema_with = field::withdrawal_status)]
        pub status: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[param(schema_with = list_limit)]
        pub limit: Option<i64>,
    }
}

#[utoipa::path(get, path = "/api/v1/account/deposits", params(DepositListQuery),
    responses((status = 200, description = "my chain deposits, newest first: `[{id, asset, network, address, amount, tx_hash, log_index, confirmations, required_confirmations, status, time}]`"),
              (status = 400, description = "INVALID_STATUS, INVALID_LIMIT", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_deposits(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Query<DepositListQuery>,
) -> Result<Response, ApiError> {
    user.require_read()?;
    Ok(s.wallet
        .list_deposits(user.user_id, &q)
        .await?
        .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWithdrawalAddress {
    #[schema(schema_with = field::asset_symbol)]
    pub asset: String,
    /// On the asset's network; an Ethereum address's EIP-55 checksum is checked.
    pub address: String,
    #[serde(default)]
    #[schema(schema_with = field::api_key_label)]
    pub label: Option<String>,
    #[serde(default)]
    #[schema(schema_with = field::optional_totp_code)]
    pub totp: Option<String>,
}

/// What the wallet receives: the address without the second factor.
#[derive(Serialize)]
struct AddressForWallet<'a> {
    asset: &'a str,
    address: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
}

#[utoipa::path(post, path = "/api/v1/account/withdrawal-addresses", request_body = NewWithdrawalAddress,
    responses((status = 201, description = "`{id, asset, network, address, label, usable_from}`; usable from `usable_from` (ms), after WITHDRAWAL_ADDRESS_COOLDOWN_SECS"),
              (status = 400, description = "INVALID_ADDRESS (bad checksum, wrong length), INVALID_LABEL, UNKNOWN_ASSET, NO_NETWORK", body = ErrorBody),
              (status = 401, description = "TOTP_REQUIRED, INVALID_TOTP (2FA is on)", body = ErrorBody),
              (status = 403, description = "PERMISSION_DENIED (an API key), ACCOUNT_FROZEN", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_withdrawal_address(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Json(req): Json<NewWithdrawalAddress>,
) -> Result<Response, ApiError> {
    user.require_session()?;
    user.require_withdraw()?;
    let offered = SecondFactor {
        totp: req.totp.as_deref(),
        recovery_code: None,
    };
    require_second_factor(&s, user.user_id, offered).await?;
    let body = AddressForWallet {
        asset: &req.asset,
        address: &req.address,
        label: req.label.as_deref(),
    };
    Ok(s.wallet
        .add_withdrawal_address(user.user_id, &body)
        .await?
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/account/withdrawal-addresses",
    responses((status = 200, description = "my withdrawal address book")),
    security(("bearer" = [])))]
pub async fn list_withdrawal_addresses(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
) -> Result<Response, ApiError> {
    user.require_read()?;
    Ok(s.wallet
        .list_withdrawal_addresses(user.user_id)
        .await?
        .into_response())
}

#[utoipa::path(delete, path = "/api/v1/account/withdrawal-addresses/{id}", params(("id" = i64, Path)),
    responses((status = 200, description = "the deleted address"),
              (status = 403, description = "PERMISSION_DENIED (an API key)", body = ErrorBody),
              (status = 404, description = "ADDRESS_NOT_FOUND", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_withdrawal_address(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    user.require_session()?;
    Ok(s.wallet
        .delete_withdrawal_address(user.user_id, id)
        .await?
        .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWithdrawal {
    #[schema(schema_with = field::asset_symbol)]
    pub asset: String,
    /// An entry of my address book (for this asset) whose cooldown is over.
    pub address_id: i64,
    #[schema(schema_with = field::positive_decimal)]
    pub amount: String,
    #[serde(default)]
    #[schema(schema_with = field::optional_totp_code)]
    pub totp: Option<String>,
    /// The same id again answers the same withdrawal (200), never a second one.
    #[serde(default)]
    #[schema(schema_with = field::client_order_id)]
    pub client_withdrawal_id: Option<String>,
}

#[derive(Serialize)]
struct WithdrawalForWallet<'a> {
    asset: &'a str,
    address_id: i64,
    amount: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_withdrawal_id: Option<&'a str>,
}

#[utoipa::path(post, path = "/api/v1/withdrawals", request_body = NewWithdrawal,
    responses((status = 201, description = "the withdrawal; `amount + fee` moved from available to locked"),
              (status = 200, description = "the existing withdrawal of this client_withdrawal_id"),
              (status = 400, description = "AMOUNT_BELOW_MINIMUM, DAILY_LIMIT_EXCEEDED, INSUFFICIENT_BALANCE, ADDRESS_COOLING_DOWN, INVALID_AMOUNT, UNKNOWN_ASSET, NO_NETWORK: nothing is held", body = ErrorBody),
              (status = 401, description = "TOTP_REQUIRED, INVALID_TOTP (2FA is on)", body = ErrorBody),
              (status = 403, description = "ACCOUNT_FROZEN, WITHDRAWALS_DISABLED (the asset's kill switch), WITHDRAWALS_FROZEN (a deposit under review), PERMISSION_DENIED (an API key without withdraw)", body = ErrorBody),
              (status = 404, description = "ADDRESS_NOT_FOUND", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn request_withdrawal(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Json(req): Json<NewWithdrawal>,
) -> Result<Response, ApiError> {
    Ok(withdraw_for(&s, &user, &req).await?.into_response())
}

/// Requests a withdrawal for `user`: the one path of `POST
/// /api/v1/withdrawals` and Binance's `POST /sapi/v1/capital/withdraw/apply`.
/// The withdraw permission, never a frozen account, the second factor when
/// it is on, then the wallet with the caller's user id. The wallet's answer
/// (201 created, 200 the same `client_withdrawal_id` again, or a refusal)
/// is returned as it came.
pub async fn withdraw_for(
    s: &AppState,
    user: &AuthUser,
    req: &NewWithdrawal,
) -> Result<Relayed, ApiError> {
    user.require_withdraw()?;
    let offered = SecondFactor {
        totp: req.totp.as_deref(),
        recovery_code: None,
    };
    require_second_factor(s, user.user_id, offered).await?;
    let body = WithdrawalForWallet {
        asset: &req.asset,
        address_id: req.address_id,
        amount: &req.amount,
        client_withdrawal_id: req.client_withdrawal_id.as_deref(),
    };
    s.wallet.request_withdrawal(user.user_id, &body).await
}

#[utoipa::path(get, path = "/api/v1/withdrawals", params(WithdrawalListQuery),
    responses((status = 200, description = "my withdrawals, newest first"),
              (status = 400, description = "INVALID_STATUS, INVALID_LIMIT", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_withdrawals(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Query<WithdrawalListQuery>,
) -> Result<Response, ApiError> {
    user.require_read()?;
    Ok(s.wallet
        .list_withdrawals(user.user_id, &q)
        .await?
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/withdrawals/{id}", params(("id" = i64, Path)),
    responses((status = 200, description = "the withdrawal"),
              (status = 404, description = "WITHDRAWAL_NOT_FOUND (also another user's)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_withdrawal(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    user.require_read()?;
    Ok(s.wallet
        .get_withdrawal(user.user_id, id)
        .await?
        .into_response())
}

#[utoipa::path(delete, path = "/api/v1/withdrawals/{id}", params(("id" = i64, Path)),
    responses((status = 200, description = "canceled: `amount + fee` back to available"),
              (status = 404, description = "WITHDRAWAL_NOT_FOUND", body = ErrorBody),
              (status = 409, description = "WITHDRAWAL_IN_PROGRESS: signing or later", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_withdrawal(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    user.require_withdraw_permission()?;
    Ok(s.wallet
        .cancel_withdrawal(user.user_id, id)
        .await?
        .into_response())
}
