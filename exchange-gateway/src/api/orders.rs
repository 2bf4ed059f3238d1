//! Orders and my trades: authenticated, shape-checked at the edge, then
//! proxied to the order service's internal API with the caller's user id
//! (from the access token or API key, never from the request: a user can
//! only ever act on their own orders; another user's order is a 404).

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use exchange_common::ApiError;
use exchange_common::ErrorCode;
use exchange_common::error::{Json, Path, Query};
use exchange_domain::{OrderType, SelfTradePrevention, Side, TimeInForce};

use super::schema::{ErrorBody, field};
use crate::auth::authn::{AuthUser, Credential};
use crate::ratelimit::{Kind, Limited};
use crate::state::AppState;

/// A handler's failure: an API error or a rate-limit refusal (with `Retry-After`).
#[derive(Debug)]
pub enum Rejection {
    Api(ApiError),
    Limited(Limited),
}

impl From<ApiError> for Rejection {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<Limited> for Rejection {
    fn from(l: Limited) -> Self {
        Self::Limited(l)
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        match self {
            Self::Api(e) => e.into_response(),
            Self::Limited(l) => l.into_response(),
        }
    }
}

/// `POST /api/v1/orders` as API.md has it (plus `stop_price` and `stp`).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    #[schema(schema_with = field::market_symbol)]
    pub market: String,
    #[schema(schema_with = field::side)]
    pub side: Side,
    /// `limit`, `market`, `stop_limit`, `stop_market`, `take_profit_limit`
    /// or `take_profit_market`. The last four wait for `stop_price`: a stop
    /// buys when the last trade price rises to it and sells when it falls
    /// to it, a take-profit the other way round; one whose condition
    /// already holds is rejected (`STOP_WOULD_TRIGGER_IMMEDIATELY`).
    #[serde(rename = "type")]
    #[schema(schema_with = field::order_type)]
    pub order_type: OrderType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = field::optional_positive_decimal)]
    pub price: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = field::optional_positive_decimal)]
    pub quantity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = field::optional_positive_decimal)]
    pub quote_quantity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = field::optional_positive_decimal)]
    pub stop_price: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = field::time_in_force)]
    pub time_in_force: Option<TimeInForce>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = field::self_trade_prevention)]
    pub stp: Option<SelfTradePrevention>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = field::client_order_id)]
    pub client_order_id: Option<String>,
}

#[derive(Serialize)]
struct WithUser<'a, T: Serialize> {
    user_id: i64,
    #[serde(flatten)]
    inner: &'a T,
}

/// The order budgets, per user and per API key when one signed: every
/// placement, amend, cancel and cancel-all takes one.
fn charge_order_budgets(s: &AppState, user: &AuthUser) -> Result<(), Limited> {
    s.limiter
        .check(Kind::OrdersUser, &user.user_id.to_string())?;
    if let Credential::ApiKey { id, .. } = user.credential {
        s.limiter.check(Kind::OrdersApiKey, &id.to_string())?;
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/orders", request_body = NewOrder,
    responses((status = 201, description = "the order, accepted; matching decides the rest: a post-only order that would take, or a stop or take-profit \
                whose condition already holds, then shows status rejected with reason POST_ONLY_WOULD_TAKE or STOP_WOULD_TRIGGER_IMMEDIATELY"), (status = 200, description = "the existing order for a repeated client_order_id"),
              (status = 400, description = "A rule of the market or the account, or malformed input: INVALID_ORDER (a combination the order type does not take, \
                e.g. a limit order without price), INVALID_AMOUNT (more decimal places than the asset's scale), PRICE_NOT_ON_TICK, QUANTITY_NOT_ON_STEP, \
                QUANTITY_TOO_SMALL, NOTIONAL_TOO_SMALL, MARKET_NOT_TRADING, INSUFFICIENT_BALANCE", body = ErrorBody),
              (status = 403, description = "PERMISSION_DENIED: an API key without the trade permission", body = ErrorBody),
              (status = 404, description = "MARKET_NOT_FOUND", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn place(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Json(req): Json<NewOrder>,
) -> Result<Response, Rejection> {
    user.require_trade()?;
    charge_order_budgets(&s, &user)?;
    let body = WithUser {
        user_id: user.user_id,
        inner: &req,
    };
    // Coalesced with concurrent placements into batch calls (upstream.rs).
    let r = s.orders.place(&body).await?;
    Ok(r.into_response())
}

/// A list's `market` filter becomes a database parameter in the order
/// service, which answers any database error with a retryable 503: text
/// Postgres cannot store (NUL) is refused here as the bad input it is.
fn check_market_filter(market: Option<&str>) -> Result<(), ApiError> {
    if market.is_some_and(|m| m.contains('\0')) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            "market must not contain NUL characters",
        ));
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct UserOnly {
    user_id: i64,
}

#[utoipa::path(get, path = "/api/v1/orders/{id}", params(("id" = i64, Path)),
    responses((status = 200, description = "the order (API.md's fields plus quote_quantity, stop_price, time_in_force, post_only, stp, average_price, reason, and triggered_at in ms once a stop or take-profit triggered)"),
              (status = 403, description = "PERMISSION_DENIED: an API key without the read permission", body = ErrorBody),
              (status = 404, description = "ORDER_NOT_FOUND (also for another user's order)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_order(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    user.require_read()?;
    let q = UserOnly {
        user_id: user.user_id,
    };
    let r = s.orders.get_order(id, &q).await?;
    Ok(r.into_response())
}

super::list_query! {
    pub struct OrderListQuery {
        /// Only this market's orders.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[param(schema_with = field::stored_text)]
        pub market: Option<String>,
        /// `open` or `closed`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[param(schema_with = field::order_list_status)]
        pub status: Option<String>,
        /// Page size, default 100.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[param(schema_with = list_limit)]
        pub limit: Option<i64>,
    }
}

/// The order service's page sizes.
fn list_limit() -> utoipa::openapi::schema::Object {
    field::limit(field::ORDER_LIST_LIMIT_MAX)
}

#[utoipa::path(get, path = "/api/v1/orders", params(OrderListQuery),
    responses((status = 200, description = "my orders, newest first (by creation): a bare array, or `{items, next_cursor}` with `cursor` or `paginate=true` (next_cursor null on the last page)"),
              (status = 400, description = "INVALID_LIMIT, INVALID_CURSOR (not a next_cursor of this list and user), INVALID_QUERY (a time range that is not start < end)", body = ErrorBody),
              (status = 403, description = "PERMISSION_DENIED: an API key without the read permission", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_orders(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Query<OrderListQuery>,
) -> Result<Response, ApiError> {
    user.require_read()?;
    check_market_filter(q.market.as_deref())?;
    let q = WithUser {
        user_id: user.user_id,
        inner: &q,
    };
    let r = s.orders.list_orders(&q).await?;
    Ok(r.into_response())
}

#[utoipa::path(delete, path = "/api/v1/orders/{id}", params(("id" = i64, Path)),
    responses((status = 200, description = "the order as it is now; it becomes canceled once matching confirms"),
              (status = 403, description = "PERMISSION_DENIED: an API key without the trade permission", body = ErrorBody),
              (status = 404, description = "ORDER_NOT_FOUND (also for another user's order)", body = ErrorBody),
              (status = 429, description = "RATE_LIMITED: the order budget (placements, amends and cancels share it)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(id): Path<i64>,
) -> Result<Response, Rejection> {
    user.require_cancel()?;
    charge_order_budgets(&s, &user)?;
    let q = UserOnly {
        user_id: user.user_id,
    };
    let r = s.orders.cancel_order(id, &q).await?;
    Ok(r.into_response())
}

#[derive(Debug, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CancelAllQuery {
    #[param(value_type = field::MarketSymbol, inline)]
    pub market: String,
}

#[utoipa::path(delete, path = "/api/v1/orders", params(CancelAllQuery),
    responses((status = 200, description = "cancel-all accepted: {market, accepted, seq} (with no open order in the market nothing is journaled and seq is the market's last command)"),
              (status = 403, description = "PERMISSION_DENIED: an API key without the trade permission", body = ErrorBody),
              (status = 404, description = "MARKET_NOT_FOUND", body = ErrorBody),
              (status = 429, description = "RATE_LIMITED: the order budget (placements, amends and cancels share it)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_all(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Query<CancelAllQuery>,
) -> Result<Response, Rejection> {
    user.require_cancel()?;
    charge_order_budgets(&s, &user)?;
    let body = WithUser {
        user_id: user.user_id,
        inner: &q,
    };
    let r = s.orders.cancel_all(&body).await?;
    Ok(r.into_response())
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Amend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = field::optional_positive_decimal)]
    pub price: Option<String>,
    /// The new open (unfilled) quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = field::optional_positive_decimal)]
    pub quantity: Option<String>,
}

#[utoipa::path(patch, path = "/api/v1/orders/{id}", request_body = Amend, params(("id" = i64, Path)),
    responses((status = 200, description = "the order as it is now"),
              (status = 400, description = "A rule of the market or the order, or malformed input: INVALID_ORDER (neither price nor quantity), INVALID_AMOUNT, \
                PRICE_NOT_ON_TICK, QUANTITY_NOT_ON_STEP, QUANTITY_TOO_SMALL, NOTIONAL_TOO_SMALL, MARKET_NOT_TRADING, ORDER_NOT_OPEN, ORDER_NOT_AMENDABLE, INSUFFICIENT_BALANCE", body = ErrorBody),
              (status = 403, description = "PERMISSION_DENIED: an API key without the trade permission", body = ErrorBody),
              (status = 404, description = "ORDER_NOT_FOUND (also for another user's order)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn amend(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(id): Path<i64>,
    Json(req): Json<Amend>,
) -> Result<Response, Rejection> {
    user.require_trade()?;
    charge_order_budgets(&s, &user)?;
    let body = WithUser {
        user_id: user.user_id,
        inner: &req,
    };
    let r = s.orders.amend_order(id, &body).await?;
    Ok(r.into_response())
}

super::list_query! {
    pub struct TradesQuery {
        /// Only this market's fills.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[param(schema_with = field::stored_text)]
        pub market: Option<String>,
        /// Page size, default 100.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[param(schema_with = list_limit)]
        pub limit: Option<i64>,
    }
}

#[utoipa::path(get, path = "/api/v1/account/trades", params(TradesQuery),
    responses((status = 200, description = "my fills, newest first: a bare array, or `{items, next_cursor}` with `cursor` or `paginate=true` (next_cursor null on the last page)"),
              (status = 400, description = "INVALID_LIMIT, INVALID_CURSOR (not a next_cursor of this list and user), INVALID_QUERY (a time range that is not start < end)", body = ErrorBody),
              (status = 403, description = "PERMISSION_DENIED: an API key without the read permission", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn my_trades(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Query<TradesQuery>,
) -> Result<Response, ApiError> {
    user.require_read()?;
    check_market_filter(q.market.as_deref())?;
    let q = WithUser {
        user_id: user.user_id,
        inner: &q,
    };
    let r = s.orders.list_fills(&q).await?;
    Ok(r.into_response())
}
