//! The market-data REST endpoints of API.md (the gateway proxies the same
//! paths): depth, recent trades, klines and the 24h ticker.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use exchange_common::error::{Path, Query};
use exchange_common::{ApiError, ErrorCode};
use exchange_domain::symbol::MarketSymbol;
use serde::Deserialize;

use crate::kline::Interval;
use crate::registry::Market;
use crate::render::native;
use crate::state::RECENT_TRADES_LEN_MAX;
use crate::store::load_klines;
use crate::ws::App;

pub const DEPTH_LIMIT_DEFAULT: usize = 50;
pub const DEPTH_LIMIT_MAX: usize = 1_000;
pub const TRADES_LIMIT_DEFAULT: usize = 100;
pub const TRADES_LIMIT_MAX: usize = RECENT_TRADES_LEN_MAX;
pub const KLINES_LIMIT_DEFAULT: usize = 500;
pub const KLINES_LIMIT_MAX: usize = 1_000;

/// Query parameters; unknown ones are ignored.
#[derive(Debug, Deserialize)]
pub struct Params {
    limit: Option<String>,
    interval: Option<String>,
}

fn limit(text: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    let Some(text) = text else { return Ok(default) };
    let bad = || {
        ApiError::bad_request(
            ErrorCode::InvalidLimit,
            format!("limit must be an integer from 1 to {max}"),
        )
    };
    if text.is_empty() || text.len() > 6 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(bad()),
    }
}

fn not_found(symbol: &str) -> ApiError {
    let shown: String = symbol.chars().take(40).collect();
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::MarketNotFound,
        format!("no market {shown:?}"),
    )
}

async fn market(app: &App, symbol: &str) -> Result<Arc<Market>, ApiError> {
    let Ok(sym) = MarketSymbol::parse(symbol) else {
        return Err(not_found(symbol));
    };
    match app.markets.market(sym).await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(not_found(symbol)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// The wall clock in Unix ms (for the ticker window only).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn json_body(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub async fn depth(
    State(app): State<App>,
    Path(symbol): Path<String>,
    Query(p): Query<Params>,
) -> Result<Response, ApiError> {
    let n = limit(p.limit.as_deref(), DEPTH_LIMIT_DEFAULT, DEPTH_LIMIT_MAX)?;
    let m = market(&app, &symbol).await?;
    let body = native::depth_json(m.lock().state(), n);
    Ok(json_body(body))
}

pub async fn trades(
    State(app): State<App>,
    Path(symbol): Path<String>,
    Query(p): Query<Params>,
) -> Result<Response, ApiError> {
    let n = limit(p.limit.as_deref(), TRADES_LIMIT_DEFAULT, TRADES_LIMIT_MAX)?;
    let m = market(&app, &symbol).await?;
    let body = native::trades_json(m.lock().state(), n);
    Ok(json_body(body))
}

pub async fn klines(
    State(app): State<App>,
    Path(symbol): Path<String>,
    Query(p): Query<Params>,
) -> Result<Response, ApiError> {
    let interval = match p.interval.as_deref() {
        Some(text) => Interval::parse(text),
        None => None,
    }
    .ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::InvalidInterval,
            "interval must be one of 1m, 5m, 15m, 1h, 4h, 1d",
        )
    })?;
    let n = limit(p.limit.as_deref(), KLINES_LIMIT_DEFAULT, KLINES_LIMIT_MAX)?;
    let m = market(&app, &symbol).await?;
    let (symbol, n) = (m.symbol, i64::try_from(n).unwrap_or(1));
    // Candles are history: the read replica may serve them.
    let rows = match &app.reads {
        Some(reads) => {
            reads
                .history(|db| async move { load_klines(&db, symbol, interval, n).await })
                .await?
        }
        None => load_klines(&app.markets.db, symbol, interval, n).await?,
    };
    Ok(axum::Json(rows).into_response())
}

pub async fn ticker(
    State(app): State<App>,
    Path(symbol): Path<String>,
) -> Result<Response, ApiError> {
    let m = market(&app, &symbol).await?;
    let body = native::ticker_json(m.lock().state(), wall_ms());
    Ok(json_body(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_strict_and_bounded() {
        assert_eq!(limit(None, 50, 1000).ok(), Some(50));
        assert_eq!(limit(Some("1000"), 50, 1000).ok(), Some(1000));
        for bad in [
            "0",
            "1001",
            "-1",
            "+5",
            "1e3",
            "",
            " 5",
            "99999999999999999999",
        ] {
            assert!(limit(Some(bad), 50, 1000).is_err(), "{bad}");
        }
    }
}
