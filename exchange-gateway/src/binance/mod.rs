//! A Binance-compatible Spot REST API under `/api/v3`, so unmodified
//! clients (ccxt, python-binance, bots) trade here by changing their base
//! URL. It is a translation layer only: orders are placed and cancelled
//! through the order service exactly like `/api/v1/orders` (no second
//! order path), market data comes from the marketdata service, and account
//! reads (orders, fills, balances) are read from Postgres like the native
//! balance endpoint does.
//!
//! Invariants: every answer, error or not, carries
//! `X-MBX-USED-WEIGHT-1M`; every error is Binance's `{"code","msg"}`; a
//! signed request is checked (timestamp window, HMAC-SHA256 over query
//! string + body, key permissions) before anything else happens; the user
//! acted for is always the key's owner. The user data stream (listenKey
//! and its WebSocket on the gateway's WebSocket port) is [`user_stream`];
//! the wallet endpoints under `/sapi/v1/capital` (deposit address and
//! history, withdrawals) are [`capital`], on our custody service.
//! See docs/BINANCE.md.

pub mod capital;
pub mod error;
pub mod format;
pub mod openapi;
pub mod public;
pub mod signed;
pub mod trade;
pub mod user_stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use exchange_common::ErrorCode;
use exchange_common::http::REQUEST_BODY_BYTES_MAX;

use crate::ratelimit::{Kind, ip_key, request_ip};
use crate::state::{AppState, now_ms};
use error::BnError;

/// Tracked clients of the request-weight counter.
pub const WEIGHT_CLIENTS_MAX: usize = 100_000;
/// The longest query string or form body accepted.
pub const PARAMS_BYTES_MAX: usize = 8 * 1024;
/// Distinct symbols one `symbols=[...]` may name (duplicates are dropped
/// first); more: 400 `-1101`.
pub const SYMBOLS_MAX: usize = 100;

/// The Binance API's state: the gateway's, plus the weight counter.
#[derive(Clone)]
pub struct BnState {
    pub app: AppState,
    weights: Arc<Mutex<HashMap<String, (u64, u32)>>>,
}

impl BnState {
    /// Charges `weight` to `key`'s current minute unless that would pass
    /// `limit`: `Ok(total)` charged, or `Err(total)` (what was used, the
    /// request refused and not charged).
    fn charge_weight(&self, key: &str, weight: u32, now_ms: u64, limit: u32) -> Result<u32, u32> {
        let minute = now_ms / 60_000;
        let Ok(mut w) = self.weights.lock() else {
            return Ok(weight);
        };
        if w.len() >= WEIGHT_CLIENTS_MAX && !w.contains_key(key) {
            w.retain(|_, (m, _)| *m == minute);
            if w.len() >= WEIGHT_CLIENTS_MAX {
                // Too many clients at once: the per-IP request budget still
                // holds each of them.
                tracing::warn!("request weight table full, not tracking a new client");
                return Ok(weight);
            }
        }
        let e = w.entry(key.to_owned()).or_insert((minute, 0));
        if e.0 != minute {
            *e = (minute, 0);
        }
        let total = e.1.saturating_add(weight);
        if total > limit {
            return Err(e.1);
        }
        e.1 = total;
        Ok(total)
    }
}

/// `symbols=[...]` as a list of distinct symbols in the order given: `None`
/// when it is not a valid list, `Some(Err(n))` with more than
/// [`SYMBOLS_MAX`] distinct symbols.
pub fn distinct_symbols(text: &str) -> Option<Result<Vec<String>, usize>> {
    let mut out: Vec<String> = Vec::new();
    for s in format::parse_symbol_list(text)? {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    if out.len() > SYMBOLS_MAX {
        return Some(Err(out.len()));
    }
    Some(Ok(out))
}

/// How many symbols a request names: `Some(1)` for `symbol=`, the distinct
/// count of a valid `symbols=[...]`, `None` for all (or a list that will
/// be refused, charged as all).
fn symbol_count(params: &[(String, String)]) -> Option<usize> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    if get("symbol").is_some() {
        return Some(1);
    }
    match get("symbols").map(distinct_symbols) {
        Some(Some(Ok(list))) => Some(list.len()),
        _ => None,
    }
}

/// Whether a request's form body carries parameters: not on GET or HEAD,
/// whose parameters Binance reads from the query string only.
pub fn takes_body_params(method: &axum::http::Method) -> bool {
    !matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD)
}

/// The request weight of an endpoint, as Binance documents it (docs/BINANCE.md,
/// "Request weights"), from the method, path, query string and form body
/// (the same parameters the handler reads: the body only where
/// [`takes_body_params`]).
pub fn weight_of(method: &axum::http::Method, path: &str, query: &str, body: &str) -> u32 {
    use axum::http::Method;
    let mut params = format::form_pairs(query).unwrap_or_default();
    if takes_body_params(method) {
        params.extend(format::form_pairs(body).unwrap_or_default());
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    match path {
        "/api/v3/exchangeInfo" => 20,
        "/api/v3/depth" => {
            // As served: at most 1000 levels.
            match param("limit")
                .and_then(|l| l.parse::<u64>().ok())
                .unwrap_or(100)
            {
                0..=100 => 5,
                101..=500 => 25,
                _ => 50,
            }
        }
        "/api/v3/trades" | "/api/v3/historicalTrades" => 25,
        "/api/v3/aggTrades" | "/api/v3/klines" | "/api/v3/uiKlines" | "/api/v3/avgPrice" => 2,
        "/api/v3/ticker/24hr" => match symbol_count(&params) {
            Some(0..=20) => 2,
            Some(21..=100) => 40,
            _ => 80,
        },
        "/api/v3/ticker/price" | "/api/v3/ticker/bookTicker" => match symbol_count(&params) {
            Some(1) if param("symbol").is_some() => 2,
            _ => 4,
        },
        "/api/v3/order" if method == Method::GET => 4,
        "/api/v3/order/test" if param("computeCommissionRates") == Some("true") => 20,
        "/api/v3/openOrders" if method == Method::GET => {
            if param("symbol").is_some() {
                6
            } else {
                80
            }
        }
        "/api/v3/myTrades" if param("orderId").is_some() => 5,
        "/api/v3/account" | "/api/v3/allOrders" | "/api/v3/myTrades" => 20,
        "/api/v3/userDataStream" => 2,
        "/sapi/v1/capital/deposit/address" => 10,
        _ => 1,
    }
}

/// The per-IP budgets (the gateway's requests per second, and Binance's
/// request weight per minute: `RATE_LIMIT_IP_PER_SECOND` × 60, 6000 by
/// default as on Binance) with Binance's 429 `-1003`, and
/// `X-MBX-USED-WEIGHT-1M` (the weight this IP used this minute, after this
/// request) on every answer.
async fn weigh(State(s): State<BnState>, req: Request, next: Next) -> Response {
    let key = request_ip(&req, &s.app.trusted_proxies).map_or_else(|| "unknown".to_owned(), ip_key);
    // A form body's parameters count as the handler will read them: the
    // body (size-limited) is buffered here and handed on.
    let (parts, body) = req.into_parts();
    let (body, body_text) = if takes_body_params(&parts.method) {
        match axum::body::to_bytes(body, REQUEST_BODY_BYTES_MAX).await {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                (Body::from(bytes), text)
            }
            Err(_) => (Body::empty(), String::new()),
        }
    } else {
        (body, String::new())
    };
    let weight = weight_of(
        &parts.method,
        parts.uri.path(),
        parts.uri.query().unwrap_or(""),
        &body_text,
    );
    let req = Request::from_parts(parts, body);
    let limit = weight_limit_per_minute(&s.app);
    let now = now_ms();
    let (mut resp, used) = match s.charge_weight(&key, weight, now, limit) {
        Err(used) => {
            metrics::counter!("exchange_rate_limited_total", "service" => "gateway", "kind" => "request_weight")
                .increment(1);
            let to_next_minute = 60 - (now / 1000) % 60;
            (
                BnError::too_many(-1003, to_next_minute).into_response(),
                used,
            )
        }
        Ok(used) => match s.app.limiter.check(Kind::Ip, &key) {
            Ok(()) => (next.run(req).await, used),
            Err(l) => (
                BnError::too_many(-1003, l.retry_after_secs()).into_response(),
                used,
            ),
        },
    };
    resp.headers_mut()
        .insert("x-mbx-used-weight-1m", HeaderValue::from(used));
    resp.headers_mut()
        .insert("x-mbx-used-weight", HeaderValue::from(used));
    resp
}

/// Binance's `REQUEST_WEIGHT` per minute, per client IP.
pub fn weight_limit_per_minute(s: &AppState) -> u32 {
    s.base
        .config
        .gateway
        .rate_limit_ip_per_second
        .saturating_mul(60)
        .max(1)
}

/// Request parameters from the query string and a form-encoded body (not
/// on GET or HEAD: [`takes_body_params`]), decoded. The first occurrence
/// of a name wins.
#[derive(Debug, Default, Clone)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn parse(query: &str, body: &str) -> Result<Self, BnError> {
        if query.len() > PARAMS_BYTES_MAX || body.len() > PARAMS_BYTES_MAX {
            return Err(BnError::new(
                axum::http::StatusCode::BAD_REQUEST,
                -1101,
                "Too many parameters sent for this endpoint.",
            ));
        }
        let mut pairs = format::form_pairs(query).ok_or_else(|| BnError::illegal("query"))?;
        pairs.extend(format::form_pairs(body).ok_or_else(|| BnError::illegal("body"))?);
        Ok(Self(pairs))
    }

    pub async fn from_request(req: Request) -> Result<Self, BnError> {
        let (query, body) = query_and_body(req).await?;
        Self::parse(&query, &body)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    pub fn require(&self, name: &str) -> Result<&str, BnError> {
        self.get(name).ok_or_else(|| BnError::missing(name))
    }

    /// An optional unsigned integer parameter.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, BnError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) => {
                v.parse().map(Some).map_err(|_| BnError::illegal(name))
            }
            Some(_) => Err(BnError::illegal(name)),
        }
    }

    /// `limit`: default `default`, values above `max` clamp to `max` (as
    /// Binance does for most endpoints), zero is refused.
    pub fn limit(&self, default: u64, max: u64) -> Result<u64, BnError> {
        match self.u64("limit")? {
            None => Ok(default),
            Some(0) => Err(BnError::illegal("limit")),
            Some(n) => Ok(n.min(max)),
        }
    }
}

/// A request's query string and its form body; the body is empty on GET
/// and HEAD (never read), as on Binance.
pub async fn query_and_body(req: Request) -> Result<(String, String), BnError> {
    let query = req.uri().query().unwrap_or("").to_owned();
    if !takes_body_params(req.method()) {
        return Ok((query, String::new()));
    }
    Ok((query, read_body(req.into_body()).await?))
}

pub async fn read_body(body: Body) -> Result<String, BnError> {
    let bytes = axum::body::to_bytes(body, REQUEST_BODY_BYTES_MAX)
        .await
        .map_err(|_| BnError::illegal("body"))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| BnError::illegal("body"))
}

/// One market row as the Binance API needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MarketRow {
    pub symbol: String,
    pub base: String,
    pub quote: String,
    pub price_tick: String,
    pub qty_step: String,
    pub min_qty: String,
    pub min_notional: String,
    pub maker_fee: String,
    pub taker_fee: String,
    pub status: String,
    pub base_scale: i16,
    pub quote_scale: i16,
}

const MARKET_SQL: &str = "SELECT m.symbol, m.base, m.quote, trim_scale(m.price_tick)::text AS price_tick, \
    trim_scale(m.qty_step)::text AS qty_step, trim_scale(m.min_qty)::text AS min_qty, \
    trim_scale(m.min_notional)::text AS min_notional, trim_scale(m.maker_fee)::text AS maker_fee, \
    trim_scale(m.taker_fee)::text AS taker_fee, m.status, b.scale AS base_scale, q.scale AS quote_scale \
    FROM markets m JOIN assets b ON b.symbol = m.base JOIN assets q ON q.symbol = m.quote";

pub async fn all_markets(s: &AppState) -> Result<Vec<MarketRow>, BnError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{MARKET_SQL} ORDER BY m.symbol"
    )))
    .fetch_all(s.db())
    .await?)
}

/// The market of a Binance symbol (`BTCUSDT`), or -1121.
pub async fn market_of(s: &AppState, symbol: &str) -> Result<MarketRow, BnError> {
    if !format::valid_binance_symbol(symbol) {
        return Err(BnError::invalid_symbol());
    }
    let row: Option<MarketRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{MARKET_SQL} WHERE m.base || m.quote = $1"
    )))
    .bind(symbol)
    .fetch_optional(s.db())
    .await?;
    row.ok_or_else(BnError::invalid_symbol)
}

/// The `/api/v3` and `/sapi/v1/capital` routes, with their own weight
/// header and Binance-style 429 (merged next to the gateway's routes,
/// outside its JSON-error layers).
pub fn router(app: AppState) -> Router {
    let state = BnState {
        app,
        weights: Arc::new(Mutex::new(HashMap::new())),
    };
    Router::new()
        .route("/api/v3/ping", get(public::ping))
        .route("/api/v3/time", get(public::time))
        .route("/api/v3/exchangeInfo", get(public::exchange_info))
        .route("/api/v3/depth", get(public::depth))
        .route("/api/v3/trades", get(public::trades))
        .route("/api/v3/historicalTrades", get(public::trades))
        .route("/api/v3/aggTrades", get(public::agg_trades))
        .route("/api/v3/klines", get(public::klines))
        .route("/api/v3/uiKlines", get(public::klines))
        .route("/api/v3/ticker/24hr", get(public::ticker_24hr))
        .route("/api/v3/ticker/price", get(public::ticker_price))
        .route("/api/v3/ticker/bookTicker", get(public::book_ticker))
        .route("/api/v3/avgPrice", get(public::avg_price))
        .route(
            "/api/v3/order",
            post(trade::new_order)
                .get(trade::query_order)
                .delete(trade::cancel_order),
        )
        .route("/api/v3/order/test", post(trade::test_order))
        .route(
            "/api/v3/openOrders",
            get(trade::open_orders).delete(trade::cancel_open_orders),
        )
        .route("/api/v3/allOrders", get(trade::all_orders))
        .route("/api/v3/account", get(trade::account))
        .route("/api/v3/myTrades", get(trade::my_trades))
        .route(
            "/api/v3/userDataStream",
            post(user_stream::create)
                .put(user_stream::keep_alive)
                .delete(user_stream::close),
        )
        .route(
            "/sapi/v1/capital/deposit/address",
            get(capital::deposit_address),
        )
        .route(
            "/sapi/v1/capital/deposit/hisrec",
            get(capital::deposit_history),
        )
        .route(
            "/sapi/v1/capital/withdraw/apply",
            post(capital::withdraw_apply),
        )
        .route(
            "/sapi/v1/capital/withdraw/history",
            get(capital::withdraw_history),
        )
        .fallback(not_found)
        .layer(from_fn_with_state(state.clone(), weigh))
        .with_state(state)
}

async fn not_found(req: Request) -> Response {
    let path = req.uri().path();
    if path.starts_with("/api/v3/") || path.starts_with("/sapi/") {
        BnError::new(
            axum::http::StatusCode::NOT_FOUND,
            -1000,
            "An unknown error occurred while processing the request.",
        )
        .into_response()
    } else {
        exchange_common::ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such route",
        )
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_merge_query_and_body() {
        let p = Params::parse("symbol=BTCUSDT&limit=5", "side=BUY&limit=7").unwrap_or_default();
        assert_eq!(p.get("symbol"), Some("BTCUSDT"));
        assert_eq!(p.get("side"), Some("BUY"));
        assert_eq!(p.get("limit"), Some("5"), "the first wins");
        assert_eq!(p.limit(100, 3).ok(), Some(3));
        assert_eq!(p.require("price").err().map(|e| e.code), Some(-1102));
        let bad = Params::parse("limit=-1", "").unwrap_or_default();
        assert_eq!(bad.limit(1, 2).err().map(|e| e.code), Some(-1100));
        assert!(Params::parse("a=%zz", "").is_err());
    }

    #[test]
    fn weights_as_binance_documents_them() {
        use axum::http::Method;
        let get = |path: &str, query: &str| weight_of(&Method::GET, path, query, "");
        let list = |n: usize| {
            let names: Vec<String> = (0..n).map(|i| format!("\"S{i}USDT\"")).collect();
            format!("symbols=[{}]", names.join(","))
        };
        assert_eq!(get("/api/v3/ping", ""), 1);
        assert_eq!(get("/api/v3/exchangeInfo", ""), 20);
        assert_eq!(get("/api/v3/depth", "symbol=BTCUSDT"), 5);
        assert_eq!(get("/api/v3/depth", "symbol=BTCUSDT&limit=100"), 5);
        assert_eq!(get("/api/v3/depth", "symbol=BTCUSDT&limit=101"), 25);
        assert_eq!(get("/api/v3/depth", "symbol=BTCUSDT&limit=1000"), 50);
        assert_eq!(get("/api/v3/depth", "symbol=BTCUSDT&limit=5000"), 50);
        assert_eq!(get("/api/v3/trades", "symbol=BTCUSDT"), 25);
        assert_eq!(get("/api/v3/klines", "symbol=BTCUSDT"), 2);
        assert_eq!(get("/api/v3/ticker/24hr", ""), 80);
        assert_eq!(get("/api/v3/ticker/24hr", "symbol=BTCUSDT"), 2);
        assert_eq!(get("/api/v3/ticker/24hr", &list(20)), 2);
        assert_eq!(get("/api/v3/ticker/24hr", &list(21)), 40);
        assert_eq!(get("/api/v3/ticker/24hr", &list(100)), 40);
        assert_eq!(
            get("/api/v3/ticker/24hr", &list(101)),
            80,
            "refused, charged as all"
        );
        // Duplicates count once.
        let dup = format!("symbols=[{}]", vec!["\"BTCUSDT\""; 50].join(","));
        assert_eq!(get("/api/v3/ticker/24hr", &dup), 2);
        assert_eq!(get("/api/v3/ticker/price", "symbol=BTCUSDT"), 2);
        assert_eq!(get("/api/v3/ticker/price", ""), 4);
        assert_eq!(get("/api/v3/ticker/bookTicker", &list(3)), 4);
        assert_eq!(get("/api/v3/order", "symbol=BTCUSDT&orderId=1"), 4);
        assert_eq!(weight_of(&Method::POST, "/api/v3/order", "", ""), 1);
        assert_eq!(weight_of(&Method::DELETE, "/api/v3/order", "", ""), 1);
        assert_eq!(get("/api/v3/openOrders", "symbol=BTCUSDT"), 6);
        assert_eq!(get("/api/v3/openOrders", ""), 80);
        assert_eq!(weight_of(&Method::DELETE, "/api/v3/openOrders", "", ""), 1);
        assert_eq!(get("/api/v3/allOrders", "symbol=BTCUSDT"), 20);
        assert_eq!(get("/api/v3/account", ""), 20);
        assert_eq!(get("/api/v3/myTrades", "symbol=BTCUSDT"), 20);
        assert_eq!(get("/api/v3/myTrades", "symbol=BTCUSDT&orderId=3"), 5);
        assert_eq!(
            weight_of(&Method::POST, "/api/v3/userDataStream", "", ""),
            2
        );
        assert_eq!(get("/sapi/v1/capital/deposit/address", ""), 10);
    }

    #[tokio::test]
    async fn body_parameters_weigh_as_they_are_served() {
        use axum::http::Method;
        // A POST's form body counts as its query would.
        let commission = "computeCommissionRates=true";
        assert_eq!(
            weight_of(&Method::POST, "/api/v3/order/test", "", commission),
            20
        );
        assert_eq!(
            weight_of(&Method::POST, "/api/v3/order/test", commission, ""),
            20
        );
        // A GET's body is neither weighed nor read.
        assert_eq!(
            weight_of(
                &Method::GET,
                "/api/v3/depth",
                "symbol=BTCUSDT",
                "limit=1000"
            ),
            5
        );
        let get = Request::builder()
            .method(Method::GET)
            .uri("/depth?symbol=BTCUSDT")
            .body(Body::from("limit=1000"))
            .unwrap_or_default();
        let p = Params::from_request(get).await.unwrap_or_default();
        assert_eq!((p.get("symbol"), p.get("limit")), (Some("BTCUSDT"), None));
        let post = Request::builder()
            .method(Method::POST)
            .uri("/order/test")
            .body(Body::from(commission))
            .unwrap_or_default();
        let p = Params::from_request(post).await.unwrap_or_default();
        assert_eq!(p.get("computeCommissionRates"), Some("true"));
    }

    #[test]
    fn symbol_lists_are_deduplicated_and_capped() {
        assert_eq!(
            distinct_symbols("[\"BTCUSDT\",\"ETHUSDT\",\"BTCUSDT\"]"),
            Some(Ok(vec!["BTCUSDT".to_owned(), "ETHUSDT".to_owned()]))
        );
        let many: Vec<String> = (0..101).map(|i| format!("\"S{i}USDT\"")).collect();
        assert_eq!(
            distinct_symbols(&format!("[{}]", many.join(","))),
            Some(Err(101))
        );
        assert_eq!(distinct_symbols("BTCUSDT"), None);
    }
}
