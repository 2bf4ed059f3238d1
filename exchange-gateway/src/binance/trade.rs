//! Signed endpoints: orders (placed and cancelled through the order
//! service, the same path as `/api/v1/orders`), order and trade history,
//! and the account.
//!
//! Our placement is asynchronous (journaled, then matched). Binance answers
//! `RESULT`/`FULL` with the order's state after matching, so those wait a
//! bounded time ([`SETTLE_WAIT`]) for clearing to have applied the order's
//! command, then report what is known; `ACK` answers at once, except for
//! the orders Binance may refuse synchronously (`LIMIT_MAKER`, stops and
//! take-profits), which wait the same way first. A cancel likewise waits,
//! bounded, for the order to be final.

use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use exchange_store::{FILL_COLUMNS, FillRow, ORDER_COLUMNS, OrderRow};
use serde_json::{Value, json};

use crate::auth::authn::{AuthUser, Credential};
use crate::ratelimit::Kind;
use crate::state::now_ms;

use super::error::{Action, BnError};
use super::format::{
    is_conditional, normalize_decimal, order_status, order_type, pad8, parse_order_type, parse_stp,
    stp_mode, to_binance_symbol, waits_for_trigger,
};
use super::signed::{Need, authenticate};
use super::{BnState, MarketRow, Params, market_of};

/// How long `RESULT`/`FULL` placement and cancel wait for the outcome.
pub const SETTLE_WAIT: Duration = Duration::from_millis(1_500);
/// How often the outcome is looked for meanwhile.
pub const SETTLE_POLL: Duration = Duration::from_millis(20);
/// Default and largest pages of `allOrders` and `myTrades`.
pub const HISTORY_LIMIT_DEFAULT: u64 = 500;
pub const HISTORY_LIMIT_MAX: u64 = 1_000;
/// The most open orders `openOrders` lists.
pub const OPEN_ORDERS_MAX: i64 = 1_000;
/// Longest client order id (Binance allows 36; we store up to 64).
pub const CLIENT_ORDER_ID_LEN_MAX: usize = 36;

fn opt8(v: Option<&String>) -> String {
    pad8(v.map_or("0", String::as_str))
}

fn client_id(r: &OrderRow) -> String {
    r.client_order_id
        .clone()
        .unwrap_or_else(|| r.id.to_string())
}

/// An order as `GET /api/v3/order` shows it.
pub fn order_json(r: &OrderRow) -> Value {
    let waiting = waits_for_trigger(&r.order_type, r.triggered_ms.is_some(), &r.filled_quantity);
    json!({
        "symbol": to_binance_symbol(&r.market),
        "orderId": r.id,
        "orderListId": -1,
        "clientOrderId": client_id(r),
        "price": opt8(r.price.as_ref()),
        "origQty": opt8(r.quantity.as_ref()),
        "executedQty": pad8(&r.filled_quantity),
        "cummulativeQuoteQty": pad8(&r.filled_quote),
        "status": order_status(&r.status),
        "timeInForce": r.time_in_force,
        "type": order_type(&r.order_type, r.post_only),
        "side": r.side.to_ascii_uppercase(),
        "stopPrice": opt8(r.stop_price.as_ref()),
        "icebergQty": pad8("0"),
        "time": r.created_ms,
        "updateTime": r.updated_ms,
        "isWorking": !waiting,
        "workingTime": r.triggered_ms.unwrap_or(r.created_ms),
        "origQuoteOrderQty": opt8(r.quote_quantity.as_ref()),
        "selfTradePreventionMode": stp_mode(&r.stp),
    })
}

/// The placement answer (`RESULT`; `FULL` adds `fills`).
fn result_json(r: &OrderRow) -> Value {
    let mut v = order_json(r);
    if let Some(o) = v.as_object_mut() {
        for k in ["icebergQty", "time", "updateTime", "isWorking"] {
            o.remove(k);
        }
        if !is_conditional(&r.order_type) {
            o.remove("stopPrice");
        }
        o.insert("transactTime".into(), json!(r.created_ms));
    }
    v
}

async fn order_by_id(s: &BnState, user: i64, id: i64) -> Result<Option<OrderRow>, BnError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 AND user_id = $2"
    )))
    .bind(id)
    .bind(user)
    .fetch_optional(s.app.db())
    .await?)
}

/// The order named by `orderId` or `origClientOrderId` in `market`.
async fn find_order(
    s: &BnState,
    user: i64,
    m: &MarketRow,
    p: &Params,
) -> Result<Option<OrderRow>, BnError> {
    if let Some(id) = p.u64("orderId")? {
        let id = i64::try_from(id).map_err(|_| BnError::illegal("orderId"))?;
        return Ok(order_by_id(s, user, id)
            .await?
            .filter(|o| o.market == m.symbol));
    }
    if let Some(cid) = p.get("origClientOrderId") {
        return Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 AND client_order_id = $2 AND market = $3"
        )))
        .bind(user)
        .bind(cid)
        .bind(&m.symbol)
        .fetch_optional(s.app.db())
        .await?);
    }
    Err(BnError::new(
        axum::http::StatusCode::BAD_REQUEST,
        -1102,
        "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!",
    ))
}

/// Waits (bounded) until clearing has applied the order's placement.
async fn wait_settled(s: &BnState, market: &str, seq: i64) -> Result<(), BnError> {
    let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
    loop {
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM cleared_batches WHERE market = $1 AND seq = $2)",
        )
        .bind(market)
        .bind(seq)
        .fetch_one(s.app.db())
        .await?;
        if done || tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// Waits (bounded) until none of `ids` is open; returns their rows.
async fn wait_final(s: &BnState, user: i64, ids: &[i64]) -> Result<Vec<OrderRow>, BnError> {
    let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
    loop {
        let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 AND id = ANY($2) ORDER BY id"
        )))
        .bind(user)
        .bind(ids)
        .fetch_all(s.app.db())
        .await?;
        if rows.iter().all(|r| !r.is_open()) || tokio::time::Instant::now() >= deadline {
            return Ok(rows);
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// The error of a non-2xx upstream answer.
fn upstream_error(body: &Value, action: Action) -> BnError {
    let code = body["error"]["code"].as_str().unwrap_or("");
    let msg = body["error"]["message"].as_str().unwrap_or("");
    BnError::from_code(code, msg, action)
}

/// A new client order id when the client sent none (Binance always has one).
fn generated_client_id() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..22)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("x-{tail}")
}

fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= CLIENT_ORDER_ID_LEN_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A decimal parameter, normalized for our strict parser.
pub(super) fn decimal(p: &Params, name: &str) -> Result<Option<String>, BnError> {
    match p.get(name) {
        None => Ok(None),
        Some(v) if v.len() <= 40 && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
            let n = normalize_decimal(v);
            if n == "0" {
                return Err(BnError::illegal(name));
            }
            Ok(Some(n))
        }
        Some(_) => Err(BnError::illegal(name)),
    }
}

/// A validated new order: the order service's body (without `user_id`),
/// and the response type asked for.
#[derive(Debug)]
pub struct NewOrder {
    pub body: Value,
    pub resp_type: &'static str,
    pub client_order_id: String,
}

/// Binance's `POST /api/v3/order` parameters into our placement.
pub fn parse_new_order(p: &Params, market: &str) -> Result<NewOrder, BnError> {
    let side = match p.require("side")? {
        "BUY" => "buy",
        "SELL" => "sell",
        _ => {
            return Err(BnError::new(
                axum::http::StatusCode::BAD_REQUEST,
                -1117,
                "Invalid side.",
            ));
        }
    };
    let t = p.require("type")?;
    let (our_type, post_only) = match parse_order_type(t) {
        Some(x) => x,
        None => {
            return Err(BnError::new(
                axum::http::StatusCode::BAD_REQUEST,
                -1116,
                "Invalid orderType.",
            ));
        }
    };
    let price = decimal(p, "price")?;
    let quantity = decimal(p, "quantity")?;
    let quote_qty = decimal(p, "quoteOrderQty")?;
    let stop_price = decimal(p, "stopPrice")?;
    let tif = match p.get("timeInForce") {
        None => None,
        Some(v @ ("GTC" | "IOC" | "FOK")) => Some(v),
        Some(_) => {
            return Err(BnError::new(
                axum::http::StatusCode::BAD_REQUEST,
                -1115,
                "Invalid timeInForce.",
            ));
        }
    };
    let limit_like = matches!(our_type, "limit" | "stop_limit" | "take_profit_limit");
    let conditional = is_conditional(our_type);
    if limit_like && price.is_none() {
        return Err(BnError::missing("price"));
    }
    if conditional && stop_price.is_none() {
        return Err(BnError::missing("stopPrice"));
    }
    if !conditional && stop_price.is_some() {
        return Err(BnError::not_required("stopPrice"));
    }
    if !limit_like && price.is_some() {
        return Err(BnError::not_required("price"));
    }
    if !limit_like {
        match (&quantity, &quote_qty) {
            (None, None) => return Err(BnError::missing("quantity")),
            (Some(_), Some(_)) => return Err(BnError::unsupported()),
            _ => {}
        }
    } else {
        if quantity.is_none() {
            return Err(BnError::missing("quantity"));
        }
        if quote_qty.is_some() {
            return Err(BnError::not_required("quoteOrderQty"));
        }
    }
    if p.get("icebergQty")
        .is_some_and(|v| normalize_decimal(v) != "0")
        || p.get("trailingDelta").is_some()
    {
        return Err(BnError::unsupported());
    }
    let stp = match p.get("selfTradePreventionMode") {
        None => None,
        Some(m) => Some(parse_stp(m).ok_or_else(|| BnError::illegal("selfTradePreventionMode"))?),
    };
    let client_order_id = match p.get("newClientOrderId") {
        Some(id) if valid_client_id(id) => id.to_owned(),
        Some(_) => return Err(BnError::illegal("newClientOrderId")),
        None => generated_client_id(),
    };
    let resp_type = match p.get("newOrderRespType") {
        None if matches!(t, "LIMIT" | "MARKET") => "FULL",
        None => "ACK",
        Some("ACK") => "ACK",
        Some("RESULT") => "RESULT",
        Some("FULL") => "FULL",
        Some(_) => return Err(BnError::illegal("newOrderRespType")),
    };
    // LIMIT_MAKER is a post-only GTC limit; a market order has no TIF.
    let tif = if post_only || !limit_like {
        None
    } else {
        Some(tif.unwrap_or("GTC"))
    };
    let body = json!({
        "market": market,
        "side": side,
        "type": our_type,
        "price": price,
        "quantity": quantity,
        "quote_quantity": quote_qty,
        "stop_price": stop_price,
        "time_in_force": tif,
        "post_only": post_only.then_some(true),
        "stp": stp,
        "client_order_id": client_order_id,
    });
    Ok(NewOrder {
        body,
        resp_type,
        client_order_id,
    })
}

fn charge_order_budgets(s: &BnState, user: &AuthUser) -> Result<(), BnError> {
    let to_bn = |l: crate::ratelimit::Limited| BnError::too_many(-1015, l.retry_after_secs());
    s.app
        .limiter
        .check(Kind::OrdersUser, &user.user_id.to_string())
        .map_err(to_bn)?;
    if let Credential::ApiKey { id, .. } = user.credential {
        s.app
            .limiter
            .check(Kind::OrdersApiKey, &id.to_string())
            .map_err(to_bn)?;
    }
    Ok(())
}

async fn fills_of(s: &BnState, user: i64, order_id: i64) -> Result<Vec<Value>, BnError> {
    let rows: Vec<FillRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {FILL_COLUMNS} FROM fills WHERE user_id = $1 AND order_id = $2 ORDER BY id"
    )))
    .bind(user)
    .bind(order_id)
    .fetch_all(s.app.db())
    .await?;
    Ok(rows
        .iter()
        .map(|f| {
            json!({"price": pad8(&f.price), "qty": pad8(&f.quantity), "commission": pad8(&f.fee),
                   "commissionAsset": f.fee_asset, "tradeId": f.trade_id})
        })
        .collect())
}

pub async fn new_order(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let (user, p) = authenticate(&s, req, Need::Trade).await?;
    let m = market_of(&s.app, p.require("symbol")?).await?;
    let order = parse_new_order(&p, &m.symbol)?;
    charge_order_budgets(&s, &user)?;
    // Binance refuses synchronously, whatever the response type, a stop or
    // take-profit that would trigger at once and a LIMIT_MAKER that would
    // take (both -2010). Our engine decides after the order is journaled,
    // so these wait for the outcome even with ACK (bounded, as RESULT).
    let refusable = order.body["post_only"] == true
        || is_conditional(order.body["type"].as_str().unwrap_or(""));
    let mut body = order.body;
    body["user_id"] = json!(user.user_id);
    let r = s
        .app
        .orders
        .place(&body)
        .await
        .map_err(|e| BnError::from_api(&e, Action::Place))?;
    let placed = r.json().unwrap_or(Value::Null);
    if !r.status.is_success() {
        return Err(upstream_error(&placed, Action::Place));
    }
    let id = placed["id"].as_i64().ok_or_else(BnError::internal)?;
    let ack = || {
        Json(json!({
            "symbol": to_binance_symbol(&m.symbol),
            "orderId": id,
            "orderListId": -1,
            "clientOrderId": order.client_order_id,
            "transactTime": placed["created_at"].as_i64().unwrap_or_else(|| i64::try_from(now_ms()).unwrap_or(0)),
        }))
    };
    if order.resp_type == "ACK" && !refusable {
        return Ok(ack());
    }
    let row = order_by_id(&s, user.user_id, id)
        .await?
        .ok_or_else(BnError::internal)?;
    wait_settled(&s, &row.market, row.seq).await?;
    let row = order_by_id(&s, user.user_id, id)
        .await?
        .ok_or_else(BnError::internal)?;
    if row.status == "rejected" {
        let reason: Option<String> =
            sqlx::query_scalar("SELECT reason FROM orders WHERE id = $1 AND user_id = $2")
                .bind(id)
                .bind(user.user_id)
                .fetch_one(s.app.db())
                .await?;
        match reason.as_deref() {
            Some("STOP_WOULD_TRIGGER_IMMEDIATELY") if is_conditional(&row.order_type) => {
                return Err(BnError::would_trigger());
            }
            Some("POST_ONLY_WOULD_TAKE") => return Err(BnError::would_take()),
            _ => {}
        }
    }
    if order.resp_type == "ACK" {
        return Ok(ack());
    }
    let mut v = result_json(&row);
    if order.resp_type == "FULL" {
        v["fills"] = Value::Array(fills_of(&s, user.user_id, id).await?);
    }
    Ok(Json(v))
}

/// Validates like a placement and places nothing.
pub async fn test_order(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let (_user, p) = authenticate(&s, req, Need::Trade).await?;
    let m = market_of(&s.app, p.require("symbol")?).await?;
    parse_new_order(&p, &m.symbol)?;
    if p.get("computeCommissionRates") == Some("true") {
        return Ok(Json(json!({
            "standardCommissionForOrder": {"maker": pad8(&m.maker_fee), "taker": pad8(&m.taker_fee)},
            "taxCommissionForOrder": {"maker": pad8("0"), "taker": pad8("0")},
            "discount": {"enabledForAccount": false, "enabledForSymbol": false, "discountAsset": null, "discount": pad8("0")},
        })));
    }
    Ok(Json(json!({})))
}

pub async fn query_order(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let (user, p) = authenticate(&s, req, Need::Read).await?;
    let m = market_of(&s.app, p.require("symbol")?).await?;
    let row = find_order(&s, user.user_id, &m, &p)
        .await?
        .ok_or_else(BnError::no_such_order)?;
    Ok(Json(order_json(&row)))
}

fn cancel_json(r: &OrderRow) -> Value {
    let mut v = result_json(r);
    if let Some(o) = v.as_object_mut() {
        o.insert("origClientOrderId".into(), json!(client_id(r)));
        o.insert("transactTime".into(), json!(now_ms()));
        o.remove("workingTime");
    }
    v
}

pub async fn cancel_order(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let (user, p) = authenticate(&s, req, Need::Trade).await?;
    charge_order_budgets(&s, &user)?;
    let m = market_of(&s.app, p.require("symbol")?).await?;
    let row = find_order(&s, user.user_id, &m, &p)
        .await?
        .filter(|r| r.is_open())
        .ok_or_else(BnError::unknown_order)?;
    let r = s
        .app
        .orders
        .cancel_order(row.id, &[("user_id", user.user_id)])
        .await
        .map_err(|e| BnError::from_api(&e, Action::Cancel))?;
    if !r.status.is_success() {
        return Err(upstream_error(
            &r.json().unwrap_or(Value::Null),
            Action::Cancel,
        ));
    }
    let rows = wait_final(&s, user.user_id, &[row.id]).await?;
    let row = rows.first().ok_or_else(BnError::internal)?;
    Ok(Json(cancel_json(row)))
}

async fn open_rows(s: &BnState, user: i64, market: Option<&str>) -> Result<Vec<OrderRow>, BnError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 AND ($2::text IS NULL OR market = $2) \
         AND status IN ('new', 'partially_filled') ORDER BY id LIMIT $3"
    )))
    .bind(user)
    .bind(market)
    .bind(OPEN_ORDERS_MAX)
    .fetch_all(s.app.db())
    .await?)
}

pub async fn open_orders(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let (user, p) = authenticate(&s, req, Need::Read).await?;
    let market = match p.get("symbol") {
        Some(sym) => Some(market_of(&s.app, sym).await?.symbol),
        None => None,
    };
    let rows = open_rows(&s, user.user_id, market.as_deref()).await?;
    Ok(Json(Value::Array(rows.iter().map(order_json).collect())))
}

pub async fn cancel_open_orders(
    State(s): State<BnState>,
    req: Request,
) -> Result<Json<Value>, BnError> {
    let (user, p) = authenticate(&s, req, Need::Trade).await?;
    charge_order_budgets(&s, &user)?;
    let m = market_of(&s.app, p.require("symbol")?).await?;
    let open = open_rows(&s, user.user_id, Some(&m.symbol)).await?;
    if open.is_empty() {
        return Err(BnError::unknown_order());
    }
    let r = s
        .app
        .orders
        .cancel_all(&json!({"user_id": user.user_id, "market": m.symbol}))
        .await
        .map_err(|e| BnError::from_api(&e, Action::Cancel))?;
    if !r.status.is_success() {
        return Err(upstream_error(
            &r.json().unwrap_or(Value::Null),
            Action::Cancel,
        ));
    }
    let ids: Vec<i64> = open.iter().map(|o| o.id).collect();
    let rows = wait_final(&s, user.user_id, &ids).await?;
    Ok(Json(Value::Array(rows.iter().map(cancel_json).collect())))
}

pub(super) fn i64_param(p: &Params, name: &str) -> Result<Option<i64>, BnError> {
    p.u64(name)?
        .map(|v| i64::try_from(v).map_err(|_| BnError::illegal(name)))
        .transpose()
}

pub async fn all_orders(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let (user, p) = authenticate(&s, req, Need::Read).await?;
    let m = market_of(&s.app, p.require("symbol")?).await?;
    let limit = i64::try_from(p.limit(HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX)?).unwrap_or(1);
    let from_id = i64_param(&p, "orderId")?;
    let start = i64_param(&p, "startTime")?;
    let end = i64_param(&p, "endTime")?;
    // From `orderId` (or a start time) the oldest `limit`; else the newest.
    let ascending = from_id.is_some() || start.is_some();
    let sql = format!(
        "SELECT * FROM (SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 AND market = $2 AND ($3::bigint IS NULL OR id >= $3) \
         AND ($4::bigint IS NULL OR created_at >= to_timestamp($4 / 1000.0)) \
         AND ($5::bigint IS NULL OR created_at <= to_timestamp($5 / 1000.0)) \
         ORDER BY id {} LIMIT $6) o ORDER BY id",
        if ascending { "ASC" } else { "DESC" }
    );
    // Order history: the read replica may serve it (the order just placed
    // is read by id, from the primary, as GET /api/v3/order).
    let (sql, symbol, user_id) = (&sql, m.symbol.as_str(), user.user_id);
    let rows: Vec<OrderRow> = s
        .app
        .reads()
        .history(|db| async move {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(user_id)
                .bind(symbol)
                .bind(from_id)
                .bind(start)
                .bind(end)
                .bind(limit)
                .fetch_all(&db)
                .await
        })
        .await?;
    Ok(Json(Value::Array(rows.iter().map(order_json).collect())))
}

pub async fn my_trades(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let (user, p) = authenticate(&s, req, Need::Read).await?;
    let m = market_of(&s.app, p.require("symbol")?).await?;
    let limit = i64::try_from(p.limit(HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX)?).unwrap_or(1);
    let order_id = i64_param(&p, "orderId")?;
    let from_id = i64_param(&p, "fromId")?;
    let start = i64_param(&p, "startTime")?;
    let end = i64_param(&p, "endTime")?;
    let ascending = from_id.is_some() || start.is_some();
    let sql = format!(
        "SELECT * FROM (SELECT {FILL_COLUMNS} FROM fills \
         WHERE user_id = $1 AND market = $2 AND ($3::bigint IS NULL OR order_id = $3) \
         AND ($4::bigint IS NULL OR trade_id >= $4) AND ($5::bigint IS NULL OR time_ms >= $5) \
         AND ($6::bigint IS NULL OR time_ms <= $6) ORDER BY id {} LIMIT $7) f ORDER BY id",
        if ascending { "ASC" } else { "DESC" }
    );
    // Fills are final once written: history, which the replica may serve.
    let (sql, symbol, user_id) = (&sql, m.symbol.as_str(), user.user_id);
    let rows: Vec<FillRow> = s
        .app
        .reads()
        .history(|db| async move {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(user_id)
                .bind(symbol)
                .bind(order_id)
                .bind(from_id)
                .bind(start)
                .bind(end)
                .bind(limit)
                .fetch_all(&db)
                .await
        })
        .await?;
    let symbol = to_binance_symbol(&m.symbol);
    Ok(Json(Value::Array(
        rows.iter()
            .map(|f| {
                json!({
                    "symbol": symbol,
                    "id": f.trade_id,
                    "orderId": f.order_id,
                    "orderListId": -1,
                    "price": pad8(&f.price),
                    "qty": pad8(&f.quantity),
                    "quoteQty": pad8(&f.quote_amount),
                    "commission": pad8(&f.fee),
                    "commissionAsset": f.fee_asset,
                    "time": f.time_ms,
                    "isBuyer": f.side == "buy",
                    "isMaker": f.liquidity == "maker",
                    "isBestMatch": true,
                })
            })
            .collect(),
    )))
}

pub async fn account(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let (user, p) = authenticate(&s, req, Need::Read).await?;
    let omit_zero = p.get("omitZeroBalances") == Some("true");
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT a.symbol, coalesce(trim_scale(b.available), 0)::text, coalesce(trim_scale(b.locked), 0)::text \
         FROM assets a LEFT JOIN balances b ON b.asset = a.symbol AND b.user_id = $1 ORDER BY a.symbol",
    )
    .bind(user.user_id)
    .fetch_all(s.app.db())
    .await?;
    let balances: Vec<Value> = rows
        .iter()
        .filter(|(_, free, locked)| !omit_zero || free != "0" || locked != "0")
        .map(|(asset, free, locked)| json!({"asset": asset, "free": pad8(free), "locked": pad8(locked)}))
        .collect();
    let can_trade = !user.frozen
        && matches!(
            user.credential,
            Credential::ApiKey {
                can_trade: true,
                ..
            }
        );
    // Withdrawals (`/sapi/v1/capital/withdraw/apply`) need the key's
    // `withdraw` permission; deposits work for any key. Neither for a
    // frozen account.
    let can_withdraw = !user.frozen
        && matches!(
            user.credential,
            Credential::ApiKey {
                can_withdraw: true,
                ..
            }
        );
    let can_deposit = !user.frozen;
    Ok(Json(json!({
        "makerCommission": 0,
        "takerCommission": 0,
        "buyerCommission": 0,
        "sellerCommission": 0,
        "commissionRates": {"maker": pad8("0"), "taker": pad8("0"), "buyer": pad8("0"), "seller": pad8("0")},
        "canTrade": can_trade,
        "canWithdraw": can_withdraw,
        "canDeposit": can_deposit,
        "brokered": false,
        "requireSelfTradePrevention": false,
        "preventSor": false,
        "updateTime": now_ms(),
        "accountType": "SPOT",
        "balances": balances,
        "permissions": ["SPOT"],
        "uid": user.user_id,
    })))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(q: &str) -> Params {
        Params::parse(q, "").unwrap()
    }

    #[test]
    fn new_order_translation() {
        let o = parse_new_order(
            &p("symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.10000000&price=50000.00&newClientOrderId=abc"),
            "BTC-USDT",
        )
        .unwrap();
        assert_eq!(o.body["market"], "BTC-USDT");
        assert_eq!(o.body["side"], "buy");
        assert_eq!(o.body["type"], "limit");
        assert_eq!(o.body["quantity"], "0.1");
        assert_eq!(o.body["price"], "50000");
        assert_eq!(o.body["time_in_force"], "GTC");
        assert_eq!(o.body["client_order_id"], "abc");
        assert_eq!(o.resp_type, "FULL");

        let mk =
            parse_new_order(&p("side=SELL&type=LIMIT_MAKER&quantity=1&price=2"), "X-Y").unwrap();
        assert_eq!(mk.body["post_only"], true);
        assert_eq!(mk.body["time_in_force"], Value::Null);
        assert_eq!(mk.resp_type, "ACK");
        assert!(mk.client_order_id.starts_with("x-"));

        let q = parse_new_order(
            &p("side=BUY&type=MARKET&quoteOrderQty=100&newOrderRespType=RESULT"),
            "X-Y",
        )
        .unwrap();
        assert_eq!(q.body["quote_quantity"], "100");
        assert_eq!(q.body["quantity"], Value::Null);
        assert_eq!(q.resp_type, "RESULT");

        let st = parse_new_order(
            &p("side=SELL&type=STOP_LOSS_LIMIT&quantity=1&price=9&stopPrice=10&timeInForce=GTC&selfTradePreventionMode=EXPIRE_BOTH"),
            "X-Y",
        )
        .unwrap();
        assert_eq!(st.body["type"], "stop_limit");
        assert_eq!(st.body["stop_price"], "10");
        assert_eq!(st.body["stp"], "expire_both");

        let tp = parse_new_order(
            &p("side=SELL&type=TAKE_PROFIT_LIMIT&quantity=1&price=11&stopPrice=10.50&timeInForce=IOC"),
            "X-Y",
        )
        .unwrap();
        assert_eq!(tp.body["type"], "take_profit_limit");
        assert_eq!(tp.body["price"], "11");
        assert_eq!(tp.body["quantity"], "1");
        assert_eq!(tp.body["stop_price"], "10.5");
        assert_eq!(tp.body["time_in_force"], "IOC");
        assert_eq!(
            tp.resp_type, "ACK",
            "Binance's default for conditional types"
        );
        let tpl = parse_new_order(
            &p("side=SELL&type=TAKE_PROFIT_LIMIT&quantity=1&price=11&stopPrice=10"),
            "X-Y",
        )
        .unwrap();
        assert_eq!(tpl.body["time_in_force"], "GTC", "GTC by default");

        let tpm = parse_new_order(
            &p("side=SELL&type=TAKE_PROFIT&quantity=2&stopPrice=12&newOrderRespType=FULL"),
            "X-Y",
        )
        .unwrap();
        assert_eq!(tpm.body["type"], "take_profit_market");
        assert_eq!(tpm.body["quantity"], "2");
        assert_eq!(tpm.body["stop_price"], "12");
        assert_eq!(tpm.body["price"], Value::Null);
        assert_eq!(tpm.body["time_in_force"], Value::Null);
        assert_eq!(tpm.resp_type, "FULL");
    }

    #[test]
    fn new_order_refusals_use_binance_codes() {
        let code = |q: &str| parse_new_order(&p(q), "X-Y").unwrap_err().code;
        assert_eq!(code("type=LIMIT&quantity=1&price=1"), -1102, "no side");
        assert_eq!(code("side=BUY&type=LIMIT&quantity=1"), -1102, "no price");
        assert_eq!(code("side=BUY&type=MARKET"), -1102, "no quantity");
        assert_eq!(code("side=BUY&type=LIMIT&quantity=1e3&price=1"), -1100);
        assert_eq!(code("side=BUY&type=LIMIT&quantity=-1&price=1"), -1100);
        assert_eq!(code("side=BUY&type=LIMIT&quantity=0&price=1"), -1100);
        assert_eq!(
            code("side=BUY&type=TAKE_PROFIT&quantity=1"),
            -1102,
            "no stopPrice"
        );
        assert_eq!(
            code("side=SELL&type=TAKE_PROFIT_LIMIT&quantity=1&stopPrice=1"),
            -1102,
            "no price"
        );
        assert_eq!(
            code("side=SELL&type=TAKE_PROFIT_LIMIT&price=1&stopPrice=1"),
            -1102,
            "no quantity"
        );
        assert_eq!(
            code("side=SELL&type=TAKE_PROFIT&quantity=1&price=1&stopPrice=1"),
            -1106,
            "a market take-profit has no price"
        );
        assert_eq!(
            code("side=BUY&type=LIMIT&quantity=1&price=1&stopPrice=1"),
            -1106,
            "stopPrice only for conditional types"
        );
        assert_eq!(
            code("side=BUY&type=TAKE_PROFIT&quantity=1&stopPrice=1&trailingDelta=10"),
            -1014
        );
        assert_eq!(
            code("side=BUY&type=MARKET&quantity=1&quoteOrderQty=1"),
            -1014
        );
        assert_eq!(code("side=BUY&type=FOO&quantity=1"), -1116);
        assert_eq!(code("side=UP&type=MARKET&quantity=1"), -1117);
        assert_eq!(
            code("side=BUY&type=LIMIT&quantity=1&price=1&timeInForce=GTX"),
            -1115
        );
        assert_eq!(code("side=BUY&type=MARKET&quantity=1&price=1"), -1106);
        assert_eq!(
            code("side=BUY&type=LIMIT&quantity=1&price=1&newClientOrderId=has%20space"),
            -1100
        );
    }

    #[test]
    fn order_json_fields() {
        let r = OrderRow {
            id: 7,
            user_id: 1,
            client_order_id: None,
            market: "BTC-USDT".into(),
            side: "buy".into(),
            order_type: "limit".into(),
            time_in_force: "GTC".into(),
            post_only: false,
            stp: "none".into(),
            price: Some("50000".into()),
            stop_price: None,
            quantity: Some("0.1".into()),
            quote_quantity: None,
            filled_quantity: "0.05".into(),
            filled_quote: "2500".into(),
            reserve_asset: "USDT".into(),
            reserved: "5000".into(),
            locked_remaining: "2500".into(),
            status: "partially_filled".into(),
            reason: None,
            seq: 3,
            created_ms: 1,
            updated_ms: 2,
            triggered_ms: None,
        };
        let v = order_json(&r);
        assert_eq!(v["symbol"], "BTCUSDT");
        assert_eq!(v["clientOrderId"], "7");
        assert_eq!(v["price"], "50000.00000000");
        assert_eq!(v["origQty"], "0.10000000");
        assert_eq!(v["executedQty"], "0.05000000");
        assert_eq!(v["cummulativeQuoteQty"], "2500.00000000");
        assert_eq!(v["status"], "PARTIALLY_FILLED");
        assert_eq!(v["side"], "BUY");
        assert_eq!(v["type"], "LIMIT");
        let res = result_json(&r);
        assert_eq!(res["transactTime"], 1);
        assert!(res.get("stopPrice").is_none());
        assert_eq!(
            (v["isWorking"].as_bool(), v["workingTime"].as_i64()),
            (Some(true), Some(1))
        );

        // A stop-limit works from its trigger on, filled or not.
        let mut stop = r;
        stop.order_type = "stop_limit".into();
        stop.stop_price = Some("51000".into());
        stop.status = "new".into();
        stop.filled_quantity = "0".into();
        stop.filled_quote = "0".into();
        let v = order_json(&stop);
        assert_eq!(
            (v["type"].as_str(), v["isWorking"].as_bool()),
            (Some("STOP_LOSS_LIMIT"), Some(false))
        );
        stop.triggered_ms = Some(5);
        let v = order_json(&stop);
        assert_eq!(
            (v["isWorking"].as_bool(), v["workingTime"].as_i64()),
            (Some(true), Some(5))
        );
        // Canceled before it triggered: it never worked.
        stop.triggered_ms = None;
        stop.status = "canceled".into();
        assert_eq!(order_json(&stop)["isWorking"], false);
    }
}
