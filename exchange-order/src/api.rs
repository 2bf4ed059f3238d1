//! The internal HTTP API (the gateway is its only caller). Handlers parse,
//! call [`crate::rules`] and the [`Batcher`], and translate the outcome;
//! no business rule lives here.
//!
//! Every route requires `Authorization: Bearer $INTERNAL_TOKEN` (or
//! `INTERNAL_TOKEN_PREVIOUS`), else 401 `UNAUTHORIZED`. JSON bodies reject
//! unknown fields; amounts are decimal strings, ids JSON numbers.
//!
//! | route | answer |
//! |---|---|
//! | `POST /internal/v1/orders` `{user_id, market, side, type, price?, quantity?, quote_quantity?, stop_price?, time_in_force?, post_only?, stp?, client_order_id?}` | 201 order; 200 the existing order for a known `(user_id, client_order_id)` |
//! | `POST /internal/v1/orders/batch` `{orders: [placement, ...]}` (1..=1000) | 200 `[{status, order} \| {status, error: {code, message}}]`, one per placement, in order |
//! | `GET /internal/v1/orders/{id}?user_id=` | 200 order; 404 `ORDER_NOT_FOUND` (also another user's order) |
//! | `GET /internal/v1/orders?user_id=&market=&status=open\|closed&limit=` | 200 `[order]`, newest first, limit 1..=1000 (default 100) |
//! | `DELETE /internal/v1/orders/{id}?user_id=` | 200 the order as it is now (cancel journaled; an already final order is answered as it is, nothing journaled); 404 `ORDER_NOT_FOUND` |
//! | `POST /internal/v1/orders/cancel-all` `{user_id, market}` | 200 `{market, accepted, seq}` |
//! | `PATCH /internal/v1/orders/{id}` `{user_id, price?, quantity?}` (`quantity` = new open quantity) | 200 the order as it is now (amend journaled, with enough locked that matching applies it however far clearing lags, see `rules::amend_top_up`); 400 `ORDER_NOT_OPEN`, `ORDER_NOT_AMENDABLE`, `INSUFFICIENT_BALANCE`, validation codes; 404 |
//! | `PATCH /internal/v1/markets/{symbol}/status` `{status: trading\|cancel_only\|halted, audit: {actor, request_id, ip}}` | 200 `{market, status, seq}` (the audit row `market.status` is appended in the same transaction); 404 `MARKET_NOT_FOUND` |
//! | `GET /internal/v1/fills?user_id=&market=&limit=` | 200 `[fill]`, newest first |
//!
//! Placement errors: 404 `MARKET_NOT_FOUND`; 400 `MARKET_NOT_TRADING`,
//! `INVALID_ORDER`, `PRICE_NOT_ON_TICK`, `QUANTITY_NOT_ON_STEP`,
//! `QUANTITY_TOO_SMALL`, `NOTIONAL_TOO_SMALL`, `INVALID_AMOUNT`,
//! `INSUFFICIENT_BALANCE` (nothing locked), `INVALID_REQUEST` /
//! `INVALID_JSON` (shape). 503 `OVERLOADED` when the write queue is full,
//! 503 `UNAVAILABLE` when the database failed (nothing applied; retry),
//! 503 `OUTCOME_UNKNOWN` when the connection was lost during `COMMIT` or
//! the batch did not answer in time (it may have been applied; retrying
//! with the same `client_order_id` is safe), 503 `ASSET_SCALE_UNKNOWN`
//! when a balance's asset scale is not loaded (nothing applied; retry).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use exchange_common::ErrorCode;
use exchange_common::auth::require_internal_token;
use exchange_common::error::{Json, Path, Query};
use exchange_common::replica::Reads;
use exchange_common::{ApiError, Config};
use exchange_domain::{MarketStatus, OrderType, SelfTradePrevention, Side, TimeInForce};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;

use crate::batch::{Batcher, Reply, Request as BatchRequest};
use crate::rules::{self, PlaceInput};
use exchange_store::audit::AuditContext;
use exchange_store::page::{self, PageQuery, Position};
use exchange_store::{
    FILL_COLUMNS, FillJson, FillRow, MarketInfo, Markets, ORDER_COLUMNS, OrderJson, OrderRow,
};

/// Default and largest page of order and fill lists.
pub const LIST_LIMIT_DEFAULT: i64 = exchange_store::page::PAGE_LIMIT_DEFAULT;
pub const LIST_LIMIT_MAX: i64 = exchange_store::page::PAGE_LIMIT_MAX;

/// The handlers' state; one `Arc` so that axum's per-request clones are
/// a single atomic increment.
#[derive(Clone)]
pub struct AppState(Arc<StateInner>);

pub struct StateInner {
    pub config: Arc<Config>,
    pub db: PgPool,
    /// History reads (closed orders, fills): the read replica when in use
    /// (`exchange_common::replica` says which reads may lag, and why).
    pub reads: Reads,
    pub markets: Markets,
    pub batcher: Batcher,
}

impl AppState {
    pub fn new(inner: StateInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = StateInner;
    fn deref(&self) -> &StateInner {
        &self.0
    }
}

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/internal/v1/orders", post(place).get(list_orders))
        .route("/internal/v1/orders/cancel-all", post(cancel_all))
        .route("/internal/v1/orders/batch", post(place_batch))
        .route(
            "/internal/v1/orders/{id}",
            get(get_order).delete(cancel).patch(amend),
        )
        .route("/internal/v1/fills", get(list_fills))
        .route("/internal/v1/markets/{symbol}/status", patch(set_status))
        .route_layer(axum::middleware::from_fn_with_state(
            state.config.clone(),
            require_internal_token,
        ))
        .with_state(state)
}

fn market_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::MarketNotFound,
        "no such market",
    )
}

fn check_user(user_id: i64) -> Result<i64, ApiError> {
    if user_id <= 0 {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            "user_id must be positive",
        ));
    }
    Ok(user_id)
}

async fn market(state: &AppState, symbol: &str) -> Result<MarketInfo, ApiError> {
    match state.markets.get(symbol).await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(market_not_found()),
        Err(e) => {
            tracing::warn!(error = %e, "market lookup failed");
            Err(ApiError::unavailable("database unavailable, retry"))
        }
    }
}

fn order_response(row: &OrderRow, state: &AppState) -> OrderJson {
    OrderJson::new(row, state.markets.peek(&row.market).map(|m| m.scales()))
}

/// A failed read: text PostgreSQL cannot store in a parameter is the
/// caller's 400, as everywhere; anything else is 503 (retry), never a 500.
fn db_error(e: sqlx::Error) -> ApiError {
    if exchange_common::db::is_bad_text(&e) {
        return ApiError::from(e);
    }
    tracing::warn!(error = %e, "database error");
    ApiError::unavailable("database unavailable, retry")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceBody {
    pub user_id: i64,
    pub market: String,
    pub side: Side,
    #[serde(rename = "type")]
    pub order_type: OrderType,
    pub price: Option<String>,
    pub quantity: Option<String>,
    pub quote_quantity: Option<String>,
    pub stop_price: Option<String>,
    pub time_in_force: Option<TimeInForce>,
    pub post_only: Option<bool>,
    pub stp: Option<SelfTradePrevention>,
    pub client_order_id: Option<String>,
}

async fn place(
    State(state): State<AppState>,
    Json(body): Json<PlaceBody>,
) -> Result<Response, ApiError> {
    let (status, order) = place_one(&state, body).await?;
    Ok((status, Json(order)).into_response())
}

/// Validates one placement and waits for its batch.
async fn place_one(state: &AppState, body: PlaceBody) -> Result<(StatusCode, OrderJson), ApiError> {
    let user_id = check_user(body.user_id)?;
    let info = market(state, &body.market).await?;
    let input = PlaceInput {
        side: body.side,
        order_type: body.order_type,
        price: body.price.as_deref(),
        quantity: body.quantity.as_deref(),
        quote_quantity: body.quote_quantity.as_deref(),
        stop_price: body.stop_price.as_deref(),
        time_in_force: body.time_in_force,
        post_only: body.post_only.unwrap_or(false),
        stp: body.stp.unwrap_or_default(),
        client_order_id: body.client_order_id.as_deref(),
    };
    let order = rules::validate_place(&info.spec, info.status, &input)
        .map_err(|r| ApiError::bad_request(r.code, r.message))?;
    let reply = state
        .batcher
        .submit(BatchRequest::Place {
            user_id,
            market: info,
            order,
        })
        .await?;
    match reply {
        Reply::Placed { order, created } => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, order_response(&order, state)))
        }
        _ => Err(ApiError::internal(anyhow::anyhow!(
            "unexpected batch reply"
        ))),
    }
}

/// The most placements one `POST /internal/v1/orders/batch` may carry.
pub const PLACE_BATCH_LEN_MAX: usize = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceBatchBody {
    pub orders: Vec<PlaceBody>,
}

/// One placement's outcome in a batch answer: `status` is what the single
/// placement route would have answered.
#[derive(Debug, Serialize)]
pub struct PlaceResult {
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorJson>,
}

#[derive(Debug, Serialize)]
pub struct ErrorJson {
    pub code: ErrorCode,
    pub message: String,
}

/// Many placements in one request (for a caller that coalesces, e.g. the
/// gateway under load, and for load tools): each is treated exactly like a
/// single placement and they usually share one database transaction.
/// Answers 200 with one result per order, in order.
async fn place_batch(
    State(state): State<AppState>,
    Json(body): Json<PlaceBatchBody>,
) -> Result<Json<Vec<PlaceResult>>, ApiError> {
    if body.orders.is_empty() || body.orders.len() > PLACE_BATCH_LEN_MAX {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            format!("orders must hold 1 to {PLACE_BATCH_LEN_MAX} placements"),
        ));
    }
    // Polled in order, so they enter the queue in order.
    let calls = body.orders.into_iter().map(|o| place_one(&state, o));
    let results = futures_util::future::join_all(calls).await;
    Ok(Json(
        results
            .into_iter()
            .map(|r| match r {
                Ok((status, order)) => PlaceResult {
                    status: status.as_u16(),
                    order: Some(order),
                    error: None,
                },
                Err(e) => PlaceResult {
                    status: e.status.as_u16(),
                    order: None,
                    error: Some(ErrorJson {
                        code: e.code,
                        message: e.message,
                    }),
                },
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserQuery {
    pub user_id: i64,
}

async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<UserQuery>,
) -> Result<Json<OrderJson>, ApiError> {
    let user_id = check_user(q.user_id)?;
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 AND user_id = $2");
    let row: Option<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&state.db)
        .await
        .map_err(db_error)?;
    match row {
        Some(r) => Ok(Json(order_response(&r, &state))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::OrderNotFound,
            "no such order",
        )),
    }
}

/// Cancel is asynchronous: the command is journaled and the order is
/// returned as it is now; its status becomes `canceled` once matching has
/// confirmed and clearing has released the funds. An order that is already
/// final is returned as it is (200), nothing is journaled.
async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<UserQuery>,
) -> Result<Json<OrderJson>, ApiError> {
    let user_id = check_user(q.user_id)?;
    match state
        .batcher
        .submit(BatchRequest::Cancel {
            user_id,
            order_id: id,
        })
        .await?
    {
        Reply::Order(o) => Ok(Json(order_response(&o, &state))),
        _ => Err(ApiError::internal(anyhow::anyhow!(
            "unexpected batch reply"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelAllBody {
    pub user_id: i64,
    pub market: String,
}

#[derive(Debug, Serialize)]
pub struct Accepted {
    pub market: String,
    pub accepted: bool,
    pub seq: u64,
}

async fn cancel_all(
    State(state): State<AppState>,
    Json(body): Json<CancelAllBody>,
) -> Result<Json<Accepted>, ApiError> {
    let user_id = check_user(body.user_id)?;
    let info = market(&state, &body.market).await?;
    // Nothing open in that market: the same answer, and nothing journaled
    // (a flood of empty cancel-alls must not grow the journal). `seq` is
    // then the market's last journaled command, which the answer is
    // ordered after. A placement still in flight is not yet an open order
    // and its command would follow anyway, as with any cancel-all that
    // races a placement.
    let (open, last_seq): (bool, i64) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM orders WHERE user_id = $1 AND market = $2 AND status IN ('new', 'partially_filled')),
                coalesce((SELECT last_seq FROM market_sequences WHERE market = $2), 0)",
    )
    .bind(user_id)
    .bind(&body.market)
    .fetch_one(&state.db)
    .await
    .map_err(db_error)?;
    if !open {
        return Ok(Json(Accepted {
            market: body.market,
            accepted: true,
            seq: u64::try_from(last_seq).unwrap_or(0),
        }));
    }
    match state
        .batcher
        .submit(BatchRequest::CancelAll {
            user_id,
            market: info,
        })
        .await?
    {
        Reply::Accepted { seq } => Ok(Json(Accepted {
            market: body.market,
            accepted: true,
            seq,
        })),
        _ => Err(ApiError::internal(anyhow::anyhow!(
            "unexpected batch reply"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmendBody {
    pub user_id: i64,
    pub price: Option<String>,
    /// The new open (unfilled) quantity.
    pub quantity: Option<String>,
}

/// Amend is asynchronous like cancel: the order comes back as it is now.
async fn amend(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(body): Json<AmendBody>,
) -> Result<Json<OrderJson>, ApiError> {
    let user_id = check_user(body.user_id)?;
    match state
        .batcher
        .submit(BatchRequest::Amend {
            user_id,
            order_id: id,
            price: body.price,
            quantity: body.quantity,
        })
        .await?
    {
        Reply::Order(o) => Ok(Json(order_response(&o, &state))),
        _ => Err(ApiError::internal(anyhow::anyhow!(
            "unexpected batch reply"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusBody {
    pub status: MarketStatus,
    /// Who asked: the audit row of the change is written in its transaction.
    pub audit: AuditContext,
}

#[derive(Debug, Serialize)]
pub struct StatusJson {
    pub market: String,
    pub status: &'static str,
    pub seq: u64,
}

/// Updates `markets.status` and journals `SetStatus` in one transaction.
async fn set_status(
    State(state): State<AppState>,
    Path(symbol): Path<String>,
    Json(body): Json<StatusBody>,
) -> Result<Json<StatusJson>, ApiError> {
    let info = market(&state, &symbol).await?;
    match state
        .batcher
        .submit(BatchRequest::SetStatus {
            market: info,
            status: body.status,
            audit: body.audit,
        })
        .await?
    {
        Reply::Accepted { seq } => Ok(Json(StatusJson {
            market: symbol,
            status: body.status.as_str(),
            seq,
        })),
        _ => Err(ApiError::internal(anyhow::anyhow!(
            "unexpected batch reply"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub user_id: i64,
    pub market: Option<String>,
    pub status: Option<String>,
    pub limit: Option<i64>,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub cursor: Option<String>,
    pub paginate: Option<bool>,
}

/// The paging parameters of a list query (`exchange_store::page`).
macro_rules! page_query {
    ($q:expr) => {
        PageQuery {
            limit: $q.limit,
            start_time: $q.start_time,
            end_time: $q.end_time,
            cursor: $q.cursor.clone(),
            paginate: $q.paginate,
        }
    };
}

/// The scopes of this service's cursors.
const ORDERS_SCOPE: &str = "orders";
const FILLS_SCOPE: &str = "fills";

/// A row with its page key (`exchange_store::page`).
#[derive(sqlx::FromRow)]
struct Keyed<T> {
    #[sqlx(flatten)]
    row: T,
    page_key: i64,
}

/// My orders, newest first by `(created_at, id)` (the page key is
/// `created_at` in microseconds); `start_time`/`end_time` bound
/// `created_at`.
async fn list_orders(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user_id = check_user(q.user_id)?;
    let page = page_query!(q).page(ORDERS_SCOPE, user_id)?;
    let open_only = q.status.as_deref() == Some("open");
    let status_filter = match q.status.as_deref() {
        None => "",
        Some("open") => "AND status IN ('new', 'partially_filled')",
        Some("closed") => "AND status NOT IN ('new', 'partially_filled')",
        Some(_) => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidQuery,
                "status must be open or closed",
            ));
        }
    };
    let sql = format!(
        "SELECT {ORDER_COLUMNS}, (extract(epoch FROM created_at) * 1000000)::int8 AS page_key
         FROM orders WHERE user_id = $1 AND ($2::text IS NULL OR market = $2) {status_filter}
           AND ($3::int8 IS NULL OR created_at >= timestamptz 'epoch' + $3 * interval '1 millisecond')
           AND ($4::int8 IS NULL OR created_at < timestamptz 'epoch' + $4 * interval '1 millisecond')
           AND ($5::int8 IS NULL OR (created_at, id) < (timestamptz 'epoch' + $5 * interval '1 microsecond', $6))
         ORDER BY created_at DESC, id DESC LIMIT $7"
    );
    let (sql, market) = (&sql, q.market.as_deref());
    let fetch = |db: PgPool| async move {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(user_id)
            .bind(market)
            .bind(page.start_ms)
            .bind(page.end_ms)
            .bind(page.before.map(|p| p.key))
            .bind(page.before.map(|p| p.id))
            .bind(page.limit + 1)
            .fetch_all(&db)
            .await
    };
    // Open orders are what a client cancels or amends next, right after
    // placing them: from the primary. The rest is history.
    let rows: Vec<Keyed<OrderRow>> = if open_only {
        fetch(state.db.clone()).await
    } else {
        state.reads.history(fetch).await
    }
    .map_err(db_error)?;
    let (rows, next) = page::finish(rows, &page, ORDERS_SCOPE, user_id, |r| Position {
        key: r.page_key,
        id: r.row.id,
    });
    let items: Vec<OrderJson> = rows
        .iter()
        .map(|r| order_response(&r.row, &state))
        .collect();
    Ok(Json(page::answer(items, next, &page)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FillsQuery {
    pub user_id: i64,
    pub market: Option<String>,
    pub limit: Option<i64>,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub cursor: Option<String>,
    pub paginate: Option<bool>,
}

/// My fills, newest first by `(time, id)` on `fills_user_time_idx` (a
/// market's: the same index, filtered); `start_time`/`end_time` bound the
/// fill's time.
async fn list_fills(
    State(state): State<AppState>,
    Query(q): Query<FillsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user_id = check_user(q.user_id)?;
    let page = page_query!(q).page(FILLS_SCOPE, user_id)?;
    let sql = format!(
        "SELECT {FILL_COLUMNS} FROM fills WHERE user_id = $1 AND ($2::text IS NULL OR market = $2)
           AND ($3::int8 IS NULL OR time_ms >= $3) AND ($4::int8 IS NULL OR time_ms < $4)
           AND ($5::int8 IS NULL OR (time_ms, id) < ($5, $6))
         ORDER BY time_ms DESC, id DESC LIMIT $7"
    );
    let (sql, market) = (&sql, q.market.as_deref());
    let rows: Vec<FillRow> = state
        .reads
        .history(|db: PgPool| async move {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(user_id)
                .bind(market)
                .bind(page.start_ms)
                .bind(page.end_ms)
                .bind(page.before.map(|p| p.key))
                .bind(page.before.map(|p| p.id))
                .bind(page.limit + 1)
                .fetch_all(&db)
                .await
        })
        .await
        .map_err(db_error)?;
    let (rows, next) = page::finish(rows, &page, FILLS_SCOPE, user_id, |r| Position {
        key: r.time_ms,
        id: r.id,
    });
    let items: Vec<FillJson> = rows
        .iter()
        .map(|r| FillJson::new(r, state.markets.peek(&r.market).map(|m| m.scales())))
        .collect();
    Ok(Json(page::answer(items, next, &page)))
}
