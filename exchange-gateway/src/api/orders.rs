//! Orders and my trades: authenticated, shape-checked at the edge, then
//! proxied to the order service's internal API with the caller's user id
//! (from the access token or API key, never from the request: a user can
//! only ever act on their own orders; another user's order is a 404).

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use exchange_common::ApiError;
use exchange_common::error::{Json, Path, Query};
use exchange_domain::{OrderType, SelfTradePrevention, Side, TimeInForce};

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
    pub market: String,
    #[schema(value_type = String, example = "buy")]
    pub side: Side,
    /// `limit`, `market`, `stop_limit`, `stop_market`, `take_profit_limit`
    /// or `take_profit_market`. The last four wait for `stop_price`: a stop
    /// buys when the last trade price rises to it and sells when it falls
    /// to it, a take-profit the other way round; one whose condition
    /// already holds is rejected (`STOP_WOULD_TRIGGER_IMMEDIATELY`).
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "limit")]
    pub order_type: OrderType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote_quantity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_price: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "GTC")]
    pub time_in_force: Option<TimeInForce>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "none")]
    pub stp: Option<SelfTradePrevention>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<String>,
}

#[derive(Serialize)]
struct WithUser<'a, T: Serialize> {
    user_id: i64,
    #[serde(flatten)]
    inner: &'a T,
}

/// Order placement budgets: per user, and per API key when one signed.
fn charge_order_budgets(s: &AppState, user: &AuthUser) -> Result<(), Limited> {
    s.limiter
        .check(Kind::OrdersUser, &user.user_id.to_string())?;
    if let Credential::ApiKey { id, .. } = user.credential {
        s.limiter.check(Kind::OrdersApiKey, &id.to_string())?;
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/orders", request_body = NewOrder,
    responses((status = 201, description = "the order"), (status = 200, description = "the existing order for a repeated client_order_id"),
              (status = 400, description = "invalid order, with a code"), (status = 403, description = "API key without trade permission"),
              (status = 429, description = "RATE_LIMITED"), (status = 503, description = "UNAVAILABLE")),
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

#[derive(Debug, Serialize)]
struct UserOnly {
    user_id: i64,
}

#[utoipa::path(get, path = "/api/v1/orders/{id}", responses((status = 200, description = "the order (API.md's fields plus quote_quantity, stop_price, time_in_force, post_only, stp, average_price, reason, and triggered_at in ms once a stop or take-profit triggered)"), (status = 404, description = "ORDER_NOT_FOUND (also for another user's order)")), security(("bearer" = [])))]
pub async fn get_order(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    user.require_read()?;
    let q = UserOnly {
        user_id: user.user_id,
    };
    let r = s
        .orders
        .call::<_, ()>(
            Method::GET,
            &format!("/internal/v1/orders/{id}"),
            Some(&q),
            None,
        )
        .await?;
    Ok(r.into_response())
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrderListQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market: Option<String>,
    /// `open` or `closed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/orders", params(("market" = Option<String>, Query), ("status" = Option<String>, Query, description = "open or closed"), ("limit" = Option<i64>, Query)),
    responses((status = 200, description = "my orders, newest first")), security(("bearer" = [])))]
pub async fn list_orders(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Query<OrderListQuery>,
) -> Result<Response, ApiError> {
    user.require_read()?;
    let q = WithUser {
        user_id: user.user_id,
        inner: &q,
    };
    let r = s
        .orders
        .call::<_, ()>(Method::GET, "/internal/v1/orders", Some(&q), None)
        .await?;
    Ok(r.into_response())
}

#[utoipa::path(delete, path = "/api/v1/orders/{id}", responses((status = 200, description = "the order as it is now; it becomes canceled once matching confirms"), (status = 404)), security(("bearer" = [])))]
pub async fn cancel(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    user.require_trade()?;
    let q = UserOnly {
        user_id: user.user_id,
    };
    let r = s
        .orders
        .call::<_, ()>(
            Method::DELETE,
            &format!("/internal/v1/orders/{id}"),
            Some(&q),
            None,
        )
        .await?;
    Ok(r.into_response())
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CancelAllQuery {
    pub market: String,
}

#[utoipa::path(delete, path = "/api/v1/orders", params(("market" = String, Query)),
    responses((status = 200, description = "cancel-all accepted: {market, accepted, seq}")), security(("bearer" = [])))]
pub async fn cancel_all(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Query<CancelAllQuery>,
) -> Result<Response, ApiError> {
    user.require_trade()?;
    let body = WithUser {
        user_id: user.user_id,
        inner: &q,
    };
    let r = s
        .orders
        .call::<(), _>(
            Method::POST,
            "/internal/v1/orders/cancel-all",
            None,
            Some(&body),
        )
        .await?;
    Ok(r.into_response())
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Amend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    /// The new open (unfilled) quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<String>,
}

#[utoipa::path(patch, path = "/api/v1/orders/{id}", request_body = Amend,
    responses((status = 200, description = "the order as it is now"), (status = 404)), security(("bearer" = [])))]
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
    let r = s
        .orders
        .call::<(), _>(
            Method::PATCH,
            &format!("/internal/v1/orders/{id}"),
            None,
            Some(&body),
        )
        .await?;
    Ok(r.into_response())
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TradesQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/account/trades", params(("market" = Option<String>, Query), ("limit" = Option<i64>, Query)),
    responses((status = 200, description = "my fills, newest first")), security(("bearer" = [])))]
pub async fn my_trades(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Query<TradesQuery>,
) -> Result<Response, ApiError> {
    user.require_read()?;
    let q = WithUser {
        user_id: user.user_id,
        inner: &q,
    };
    let r = s
        .orders
        .call::<_, ()>(Method::GET, "/internal/v1/fills", Some(&q), None)
        .await?;
    Ok(r.into_response())
}
