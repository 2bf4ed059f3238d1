//! Public market data, relayed from the marketdata service (same paths and
//! query) with a timeout; 503 `UNAVAILABLE` while it is down.

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use reqwest::Method;

use exchange_common::ApiError;
use exchange_common::ErrorCode;
use exchange_common::error::Path;

use super::schema::{ErrorBody, field};
use crate::state::AppState;

/// The longest query string relayed (the documented parameters fit easily).
pub const MARKETDATA_QUERY_LEN_MAX: usize = 256;

async fn relay(
    s: &AppState,
    symbol: &str,
    what: &str,
    query: Option<String>,
) -> Result<Response, ApiError> {
    // The symbol goes into a URL path: only the characters of a symbol.
    if symbol.is_empty()
        || symbol.len() > 32
        || !symbol
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            ErrorCode::MarketNotFound,
            "no such market",
        ));
    }
    let pairs: Vec<(String, String)> = match query.as_deref() {
        None | Some("") => Vec::new(),
        Some(q) if q.len() > MARKETDATA_QUERY_LEN_MAX => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidQuery,
                "query too long",
            ));
        }
        Some(q) => form_urlencoded_pairs(q)?,
    };
    let r = s
        .marketdata
        .call::<_, ()>(
            Method::GET,
            &format!("/api/v1/markets/{symbol}/{what}"),
            Some(&pairs),
            None,
        )
        .await?;
    Ok(r.into_response())
}

/// `a=1&b=2` into decoded pairs (the values are plain tokens: numbers,
/// intervals); anything percent-encoded is refused rather than guessed.
fn form_urlencoded_pairs(q: &str) -> Result<Vec<(String, String)>, ApiError> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let ok = |t: &str| {
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
            };
            if ok(k) && ok(v) {
                Ok((k.to_owned(), v.to_owned()))
            } else {
                Err(ApiError::bad_request(
                    ErrorCode::InvalidQuery,
                    "malformed query string",
                ))
            }
        })
        .collect()
}

// The query parameters of the relays, for the document only: the query is
// relayed as it is, and the marketdata service checks it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct DepthQuery {
    /// Levels per side, default 50.
    #[param(schema_with = depth_limit)]
    limit: Option<i64>,
}

fn depth_limit() -> utoipa::openapi::schema::Object {
    field::limit(field::DEPTH_LIMIT_MAX)
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct TradesQuery {
    /// Trades, newest first, default 100.
    #[param(schema_with = trades_limit)]
    limit: Option<i64>,
}

fn trades_limit() -> utoipa::openapi::schema::Object {
    field::limit(field::TRADES_LIMIT_MAX)
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct KlinesQuery {
    #[param(value_type = field::KlineInterval, inline)]
    interval: String,
    /// Candles, default 500.
    #[param(schema_with = klines_limit)]
    limit: Option<i64>,
}

fn klines_limit() -> utoipa::openapi::schema::Object {
    field::limit(field::KLINES_LIMIT_MAX)
}

#[utoipa::path(get, path = "/api/v1/markets/{symbol}/depth", params(("symbol" = String, Path), DepthQuery),
    responses((status = 200, description = "{seq, bids: [[price, qty]], asks: [[price, qty]]}"),
              (status = 400, description = "INVALID_LIMIT, INVALID_QUERY", body = ErrorBody),
              (status = 404, description = "MARKET_NOT_FOUND", body = ErrorBody)))]
pub async fn depth(
    State(s): State<AppState>,
    Path(symbol): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    relay(&s, &symbol, "depth", q).await
}

#[utoipa::path(get, path = "/api/v1/markets/{symbol}/trades", params(("symbol" = String, Path), TradesQuery),
    responses((status = 200, description = "[{id, price, quantity, taker_side, time}], newest first"),
              (status = 400, description = "INVALID_LIMIT, INVALID_QUERY", body = ErrorBody),
              (status = 404, description = "MARKET_NOT_FOUND", body = ErrorBody)))]
pub async fn trades(
    State(s): State<AppState>,
    Path(symbol): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    relay(&s, &symbol, "trades", q).await
}

#[utoipa::path(get, path = "/api/v1/markets/{symbol}/klines", params(("symbol" = String, Path), KlinesQuery),
    responses((status = 200, description = "[{open_time, open, high, low, close, volume}]"),
              (status = 400, description = "INVALID_INTERVAL, INVALID_LIMIT, INVALID_QUERY", body = ErrorBody),
              (status = 404, description = "MARKET_NOT_FOUND", body = ErrorBody)))]
pub async fn klines(
    State(s): State<AppState>,
    Path(symbol): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    relay(&s, &symbol, "klines", q).await
}

#[utoipa::path(get, path = "/api/v1/markets/{symbol}/ticker", params(("symbol" = String, Path)),
    responses((status = 200, description = "{last, open, high, low, volume, quote_volume, change_percent} over 24 h"),
              (status = 404, description = "MARKET_NOT_FOUND", body = ErrorBody)))]
pub async fn ticker(
    State(s): State<AppState>,
    Path(symbol): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    relay(&s, &symbol, "ticker", q).await
}
