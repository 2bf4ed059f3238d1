//! Public endpoints: `ping`, `time`, `exchangeInfo` (from the markets
//! table), and market data translated from the marketdata service.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use reqwest::Method;
use serde_json::{Value, json};

use crate::state::now_ms;

use super::error::BnError;
use super::format::{Dec, ORDER_TYPES, decimals_of, market_status, mul8, pad8, to_binance_symbol};
use super::{BnState, MarketRow, Params, all_markets, market_of};

/// Binance's documented maxima where our markets have none.
const QTY_MAX: &str = "9000000000.00000000";
const PRICE_MAX: &str = "1000000000.00000000";
const NOTIONAL_MAX: &str = "9000000000000.00000000";
/// The minutes `avgPrice` averages over.
const AVG_PRICE_MINS: u64 = 5;
/// Marketdata's largest depth, trades and klines pages.
const DEPTH_LIMIT_MAX: u64 = 1_000;
const TRADES_LIMIT_MAX: u64 = 1_000;
const KLINES_LIMIT_MAX: u64 = 1_000;

pub async fn ping() -> Json<Value> {
    Json(json!({}))
}

pub async fn time() -> Json<Value> {
    Json(json!({"serverTime": now_ms()}))
}

/// One symbol of `exchangeInfo`.
pub fn symbol_info(m: &MarketRow) -> Value {
    let base_precision = m.base_scale;
    let quote_precision = m.quote_scale;
    json!({
        "symbol": to_binance_symbol(&m.symbol),
        "status": market_status(&m.status),
        "baseAsset": m.base,
        "baseAssetPrecision": base_precision,
        "quoteAsset": m.quote,
        "quotePrecision": quote_precision,
        "quoteAssetPrecision": quote_precision,
        "baseCommissionPrecision": base_precision,
        "quoteCommissionPrecision": quote_precision,
        "orderTypes": ORDER_TYPES,
        "icebergAllowed": false,
        "ocoAllowed": false,
        "otoAllowed": false,
        "quoteOrderQtyMarketAllowed": true,
        "allowTrailingStop": false,
        "cancelReplaceAllowed": false,
        "amendAllowed": false,
        "isSpotTradingAllowed": true,
        "isMarginTradingAllowed": false,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": pad8(&m.price_tick), "maxPrice": PRICE_MAX, "tickSize": pad8(&m.price_tick)},
            {"filterType": "LOT_SIZE", "minQty": pad8(&m.min_qty), "maxQty": QTY_MAX, "stepSize": pad8(&m.qty_step)},
            {"filterType": "MARKET_LOT_SIZE", "minQty": pad8(&m.min_qty), "maxQty": QTY_MAX, "stepSize": pad8(&m.qty_step)},
            {"filterType": "NOTIONAL", "minNotional": pad8(&m.min_notional), "applyMinToMarket": true,
             "maxNotional": NOTIONAL_MAX, "applyMaxToMarket": false, "avgPriceMins": AVG_PRICE_MINS},
        ],
        "permissions": ["SPOT"],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "NONE",
        "allowedSelfTradePreventionModes": ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        // Not Binance's: the market's fees, so clients need not guess.
        "makerCommission": pad8(&m.maker_fee),
        "takerCommission": pad8(&m.taker_fee),
        "pricePrecision": decimals_of(&m.price_tick),
        "quantityPrecision": decimals_of(&m.qty_step),
    })
}

/// The markets a request names with `symbol` or `symbols=[...]`, or all.
async fn selected_markets(s: &BnState, p: &Params) -> Result<Vec<MarketRow>, BnError> {
    if let Some(symbol) = p.get("symbol") {
        return Ok(vec![market_of(&s.app, symbol).await?]);
    }
    if let Some(list) = p.get("symbols") {
        // Distinct symbols, at most SYMBOLS_MAX (the weight was charged
        // for the distinct count).
        let names = match super::distinct_symbols(list) {
            None => return Err(BnError::illegal("symbols")),
            Some(Err(n)) => {
                return Err(BnError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    -1101,
                    format!(
                        "Too many parameters; expected '{}' and received '{n}'.",
                        super::SYMBOLS_MAX
                    ),
                ));
            }
            Some(Ok(names)) => names,
        };
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            out.push(market_of(&s.app, &n).await?);
        }
        return Ok(out);
    }
    all_markets(&s.app).await
}

pub async fn exchange_info(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let p = Params::from_request(req).await?;
    let markets = selected_markets(&s, &p).await?;
    let cfg = &s.app.base.config;
    Ok(Json(json!({
        "timezone": "UTC",
        "serverTime": now_ms(),
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": super::weight_limit_per_minute(&s.app)},
            {"rateLimitType": "RAW_REQUESTS", "interval": "SECOND", "intervalNum": 1, "limit": cfg.gateway.rate_limit_ip_per_second},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 1, "limit": cfg.gateway.rate_limit_orders_per_second},
        ],
        "exchangeFilters": [],
        "symbols": markets.iter().map(symbol_info).collect::<Vec<_>>(),
    })))
}

/// `GET /api/v1/markets/{market}/{what}` on marketdata, as JSON.
async fn md(
    s: &BnState,
    market: &str,
    what: &str,
    query: &[(&str, String)],
) -> Result<Value, BnError> {
    let r = s
        .app
        .marketdata
        .call::<_, ()>(
            Method::GET,
            &format!("/api/v1/markets/{market}/{what}"),
            Some(query),
            None,
        )
        .await
        .map_err(|e| BnError::from_api(&e, super::error::Action::Query))?;
    let body = r.json().unwrap_or(Value::Null);
    if r.status == StatusCode::NOT_FOUND {
        return Err(BnError::invalid_symbol());
    }
    if !r.status.is_success() {
        let code = body["error"]["code"].as_str().unwrap_or("");
        let msg = body["error"]["message"].as_str().unwrap_or("");
        return Err(BnError::from_code(code, msg, super::error::Action::Query));
    }
    Ok(body)
}

fn levels(v: &Value) -> Vec<[String; 2]> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    [
                        pad8(l[0].as_str().unwrap_or("0")),
                        pad8(l[1].as_str().unwrap_or("0")),
                    ]
                })
                .collect()
        })
        .unwrap_or_default()
}

pub async fn depth(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let p = Params::from_request(req).await?;
    let m = market_of(&s.app, p.require("symbol")?).await?;
    let limit = p.limit(100, DEPTH_LIMIT_MAX)?;
    let d = md(&s, &m.symbol, "depth", &[("limit", limit.to_string())]).await?;
    Ok(Json(json!({
        "lastUpdateId": d["seq"].as_u64().unwrap_or(0),
        "bids": levels(&d["bids"]),
        "asks": levels(&d["asks"]),
    })))
}

/// Recent trades of a market, oldest first, as marketdata keeps them.
async fn recent_trades(s: &BnState, m: &MarketRow, limit: u64) -> Result<Vec<Value>, BnError> {
    let t = md(s, &m.symbol, "trades", &[("limit", limit.to_string())]).await?;
    Ok(t.as_array().cloned().unwrap_or_default())
}

fn trade_json(t: &Value) -> Value {
    let price = t["price"].as_str().unwrap_or("0");
    let qty = t["quantity"].as_str().unwrap_or("0");
    json!({
        "id": t["id"].as_u64().unwrap_or(0),
        "price": pad8(price),
        "qty": pad8(qty),
        "quoteQty": mul8(price, qty),
        "time": t["time"].as_u64().unwrap_or(0),
        "isBuyerMaker": t["taker_side"] == "sell",
        "isBestMatch": true,
    })
}

pub async fn trades(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let p = Params::from_request(req).await?;
    let m = market_of(&s.app, p.require("symbol")?).await?;
    let limit = p.limit(500, TRADES_LIMIT_MAX)?;
    let from_id = p.u64("fromId")?;
    let fetch = if from_id.is_some() {
        TRADES_LIMIT_MAX
    } else {
        limit
    };
    let rows = recent_trades(&s, &m, fetch).await?;
    let out: Vec<Value> = rows
        .iter()
        .filter(|t| from_id.is_none_or(|f| t["id"].as_u64().unwrap_or(0) >= f))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(trade_json)
        .collect();
    Ok(Json(Value::Array(out)))
}

/// Each of our trades is its own aggregate (we do not merge fills of one
/// taker order at one price).
pub async fn agg_trades(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let p = Params::from_request(req).await?;
    let m = market_of(&s.app, p.require("symbol")?).await?;
    let limit = usize::try_from(p.limit(500, TRADES_LIMIT_MAX)?).unwrap_or(usize::MAX);
    let from_id = p.u64("fromId")?;
    let start = p.u64("startTime")?;
    let end = p.u64("endTime")?;
    let filtered = from_id.is_some() || start.is_some() || end.is_some();
    let rows = recent_trades(
        &s,
        &m,
        if filtered {
            TRADES_LIMIT_MAX
        } else {
            limit as u64
        },
    )
    .await?;
    let mut out: Vec<Value> = rows
        .iter()
        .filter(|t| {
            let id = t["id"].as_u64().unwrap_or(0);
            let time = t["time"].as_u64().unwrap_or(0);
            from_id.is_none_or(|f| id >= f)
                && start.is_none_or(|st| time >= st)
                && end.is_none_or(|e| time <= e)
        })
        .map(|t| {
            let id = t["id"].as_u64().unwrap_or(0);
            json!({
                "a": id,
                "p": pad8(t["price"].as_str().unwrap_or("0")),
                "q": pad8(t["quantity"].as_str().unwrap_or("0")),
                "f": id,
                "l": id,
                "T": t["time"].as_u64().unwrap_or(0),
                "m": t["taker_side"] == "sell",
                "M": true,
            })
        })
        .collect();
    // With a start, the oldest `limit`; otherwise the newest.
    if from_id.is_some() || start.is_some() {
        out.truncate(limit);
    } else if out.len() > limit {
        out.drain(..out.len() - limit);
    }
    Ok(Json(Value::Array(out)))
}

/// Our intervals and their length in milliseconds.
fn interval_ms(interval: &str) -> Option<u64> {
    const MIN: u64 = 60_000;
    match interval {
        "1m" => Some(MIN),
        "5m" => Some(5 * MIN),
        "15m" => Some(15 * MIN),
        "1h" => Some(60 * MIN),
        "4h" => Some(240 * MIN),
        "1d" => Some(1_440 * MIN),
        _ => None,
    }
}

pub async fn klines(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let p = Params::from_request(req).await?;
    let m = market_of(&s.app, p.require("symbol")?).await?;
    let interval = p.require("interval")?;
    let len = interval_ms(interval).ok_or_else(BnError::invalid_interval)?;
    let limit = usize::try_from(p.limit(500, KLINES_LIMIT_MAX)?).unwrap_or(usize::MAX);
    let start = p.u64("startTime")?;
    let end = p.u64("endTime")?;
    let fetch = if start.is_some() || end.is_some() {
        KLINES_LIMIT_MAX
    } else {
        limit as u64
    };
    let rows = md(
        &s,
        &m.symbol,
        "klines",
        &[
            ("interval", interval.to_owned()),
            ("limit", fetch.to_string()),
        ],
    )
    .await?;
    let mut out: Vec<Value> = rows
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|k| {
            let t = k["open_time"].as_u64().unwrap_or(0);
            start.is_none_or(|st| t + len > st) && end.is_none_or(|e| t <= e)
        })
        .map(|k| {
            let open_time = k["open_time"].as_u64().unwrap_or(0);
            json!([
                open_time,
                pad8(k["open"].as_str().unwrap_or("0")),
                pad8(k["high"].as_str().unwrap_or("0")),
                pad8(k["low"].as_str().unwrap_or("0")),
                pad8(k["close"].as_str().unwrap_or("0")),
                pad8(k["volume"].as_str().unwrap_or("0")),
                open_time + len - 1,
                "0.00000000",
                0,
                "0.00000000",
                "0.00000000",
                "0"
            ])
        })
        .collect();
    if start.is_some() {
        out.truncate(limit);
    } else if out.len() > limit {
        out.drain(..out.len() - limit);
    }
    Ok(Json(Value::Array(out)))
}

/// The best bid and ask of a market: `(bid, bid_qty, ask, ask_qty)`.
async fn best(s: &BnState, m: &MarketRow) -> Result<[String; 4], BnError> {
    let d = md(s, &m.symbol, "depth", &[("limit", "1".to_owned())]).await?;
    let side = |v: &Value| {
        let l = levels(v);
        l.first().cloned().unwrap_or_else(|| [pad8("0"), pad8("0")])
    };
    let [b, bq] = side(&d["bids"]);
    let [a, aq] = side(&d["asks"]);
    Ok([b, bq, a, aq])
}

async fn ticker_of(s: &BnState, m: &MarketRow, now: u64) -> Result<Value, BnError> {
    let t = md(s, &m.symbol, "ticker", &[]).await?;
    let [bid, bid_qty, ask, ask_qty] = best(s, m).await?;
    let text = |k: &str| t[k].as_str().unwrap_or("0").to_owned();
    let (last, open, volume, quote_volume) = (
        text("last"),
        text("open"),
        text("volume"),
        text("quote_volume"),
    );
    let d = |x: &str| Dec::parse(x).unwrap_or(Dec::ZERO);
    let change = d(&last).checked_sub(d(&open)).unwrap_or(Dec::ZERO);
    let weighted = d(&quote_volume)
        .checked_div(d(&volume), 8)
        .map_or_else(|| pad8("0"), |x| pad8(&x.to_string()));
    let last_trade = recent_trades(s, m, 1).await?;
    let (last_qty, last_id) = last_trade
        .first()
        .map(|x| {
            (
                x["quantity"].as_str().unwrap_or("0").to_owned(),
                x["id"].as_i64().unwrap_or(-1),
            )
        })
        .unwrap_or_else(|| ("0".to_owned(), -1));
    Ok(json!({
        "symbol": to_binance_symbol(&m.symbol),
        "priceChange": pad8(&change.to_string()),
        "priceChangePercent": text("change_percent"),
        "weightedAvgPrice": weighted,
        "prevClosePrice": pad8(&open),
        "lastPrice": pad8(&last),
        "lastQty": pad8(&last_qty),
        "bidPrice": bid,
        "bidQty": bid_qty,
        "askPrice": ask,
        "askQty": ask_qty,
        "openPrice": pad8(&open),
        "highPrice": pad8(&text("high")),
        "lowPrice": pad8(&text("low")),
        "volume": pad8(&volume),
        "quoteVolume": pad8(&quote_volume),
        "openTime": now.saturating_sub(86_400_000),
        "closeTime": now,
        "firstId": if last_id >= 0 { 0 } else { -1 },
        "lastId": last_id,
        "count": 0,
    }))
}

/// One object for `symbol=`, an array otherwise.
fn one_or_many(p: &Params, mut items: Vec<Value>) -> Value {
    if p.get("symbol").is_some() && items.len() == 1 {
        items.swap_remove(0)
    } else {
        Value::Array(items)
    }
}

pub async fn ticker_24hr(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let p = Params::from_request(req).await?;
    let now = now_ms();
    let mut out = Vec::new();
    for m in selected_markets(&s, &p).await? {
        out.push(ticker_of(&s, &m, now).await?);
    }
    Ok(Json(one_or_many(&p, out)))
}

pub async fn ticker_price(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let p = Params::from_request(req).await?;
    let mut out = Vec::new();
    for m in selected_markets(&s, &p).await? {
        let t = md(&s, &m.symbol, "ticker", &[]).await?;
        out.push(json!({
            "symbol": to_binance_symbol(&m.symbol),
            "price": pad8(t["last"].as_str().unwrap_or("0")),
        }));
    }
    Ok(Json(one_or_many(&p, out)))
}

pub async fn book_ticker(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let p = Params::from_request(req).await?;
    let mut out = Vec::new();
    for m in selected_markets(&s, &p).await? {
        let [bid, bid_qty, ask, ask_qty] = best(&s, &m).await?;
        out.push(json!({
            "symbol": to_binance_symbol(&m.symbol),
            "bidPrice": bid, "bidQty": bid_qty, "askPrice": ask, "askQty": ask_qty,
        }));
    }
    Ok(Json(one_or_many(&p, out)))
}

/// The volume-weighted price of the last five minutes' trades (of those
/// marketdata keeps), or the last price when there were none.
pub async fn avg_price(State(s): State<BnState>, req: Request) -> Result<Json<Value>, BnError> {
    let p = Params::from_request(req).await?;
    let m = market_of(&s.app, p.require("symbol")?).await?;
    let now = now_ms();
    let since = now.saturating_sub(AVG_PRICE_MINS * 60_000);
    let rows = recent_trades(&s, &m, TRADES_LIMIT_MAX).await?;
    let (mut quote, mut base) = (Dec::ZERO, Dec::ZERO);
    let mut last_time = 0;
    for t in rows
        .iter()
        .filter(|t| t["time"].as_u64().unwrap_or(0) >= since)
    {
        let (Some(px), Some(q)) = (
            Dec::parse(t["price"].as_str().unwrap_or("")),
            Dec::parse(t["quantity"].as_str().unwrap_or("")),
        ) else {
            continue;
        };
        quote = px
            .checked_mul(q)
            .and_then(|x| quote.checked_add(x))
            .unwrap_or(quote);
        base = base.checked_add(q).unwrap_or(base);
        last_time = t["time"].as_u64().unwrap_or(0);
    }
    let price = match quote.checked_div(base, 8) {
        Some(avg) => pad8(&avg.to_string()),
        None => {
            let t = md(&s, &m.symbol, "ticker", &[]).await?;
            pad8(t["last"].as_str().unwrap_or("0"))
        }
    };
    Ok(Json(
        json!({"mins": AVG_PRICE_MINS, "price": price, "closeTime": if last_time > 0 { last_time } else { now }}),
    ))
}
