//! Our own format (API.md): the REST bodies of `/depth`, `/trades`,
//! `/ticker` and the messages of the `depth:`, `trades:`, `kline:` and
//! `ticker:` channels.

use std::fmt::Write as _;

use exchange_domain::order::Side;
use exchange_domain::symbol::MarketSymbol;

use super::{price, qty};
use crate::kline::{Candle, Interval};
use crate::state::{MarketState, Scales, Ticker, TradeRow};

/// `[["price","quantity"],..]` with decimals in their shortest form.
fn write_levels(out: &mut String, scales: Scales, levels: impl Iterator<Item = (u128, u128)>) {
    super::write_levels(out, scales, levels, |d| d);
}

/// REST `/depth`: `{"seq":N,"bids":[..],"asks":[..]}`, at most `limit`
/// levels a side.
pub fn depth_json(state: &MarketState, limit: usize) -> String {
    let mut out = String::with_capacity(64 + limit * 48);
    let _ = write!(out, "{{\"seq\":{},\"bids\":", state.seq);
    write_levels(&mut out, state.scales, state.bids().take(limit));
    out.push_str(",\"asks\":");
    write_levels(&mut out, state.scales, state.asks().take(limit));
    out.push('}');
    out
}

/// The `depth:` channel's snapshot of at most `limit` levels a side.
pub fn depth_snapshot(state: &MarketState, limit: usize) -> String {
    let widest = state.bids().len().max(state.asks().len());
    let mut out = String::with_capacity(96 + limit.min(widest) * 96);
    let _ = write!(
        out,
        "{{\"channel\":\"depth:{}\",\"type\":\"snapshot\",\"seq\":{},\"bids\":",
        state.symbol, state.seq
    );
    write_levels(&mut out, state.scales, state.bids().take(limit));
    out.push_str(",\"asks\":");
    write_levels(&mut out, state.scales, state.asks().take(limit));
    out.push('}');
    out
}

/// A delta on the `depth:` channel. `first_seq` is written only for a
/// merged delta (a slow connection's): it covers `first_seq..=seq`, and a
/// plain delta covers `seq` alone.
pub fn depth_delta(
    symbol: &MarketSymbol,
    scales: Scales,
    first_seq: Option<u64>,
    seq: u64,
    bids: impl Iterator<Item = (u128, u128)>,
    asks: impl Iterator<Item = (u128, u128)>,
) -> String {
    let (lo, hi) = bids.size_hint();
    let mut out = String::with_capacity(112 + hi.unwrap_or(lo) * 48);
    let _ = write!(
        out,
        "{{\"channel\":\"depth:{symbol}\",\"type\":\"delta\",\"seq\":{seq},"
    );
    if let Some(first) = first_seq {
        let _ = write!(out, "\"first_seq\":{first},");
    }
    out.push_str("\"bids\":");
    write_levels(&mut out, scales, bids);
    out.push_str(",\"asks\":");
    write_levels(&mut out, scales, asks);
    out.push('}');
    out
}

fn write_trade(out: &mut String, scales: Scales, t: &TradeRow) {
    let side = match t.taker_side {
        Side::Buy => "buy",
        Side::Sell => "sell",
    };
    let _ = write!(
        out,
        "{{\"id\":{},\"price\":\"{}\",\"quantity\":\"{}\",\"taker_side\":\"{side}\",\"time\":{}}}",
        t.id,
        price(scales, t.price),
        qty(scales, t.quantity),
        t.time
    );
}

/// REST `/trades`: a JSON array of at most `limit` trades, oldest first.
pub fn trades_json(state: &MarketState, limit: usize) -> String {
    let mut out = String::from("[");
    for (n, t) in state.recent_trades(limit).iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        write_trade(&mut out, state.scales, t);
    }
    out.push(']');
    out
}

/// A trade on the `trades:` channel.
pub fn trade_message(state: &MarketState, t: &TradeRow) -> String {
    let mut out = String::with_capacity(192);
    let _ = write!(
        out,
        "{{\"channel\":\"trades:{}\",\"type\":\"trade\",\"data\":",
        state.symbol
    );
    write_trade(&mut out, state.scales, t);
    out.push('}');
    out
}

/// The current candle of `interval` on its `kline:` channel.
pub fn kline_message(state: &MarketState, interval: Interval, c: &Candle) -> String {
    let scales = state.scales;
    let mut out = String::with_capacity(224);
    let _ = write!(
        out,
        "{{\"channel\":\"kline:{interval}:{}\",\"type\":\"kline\",\"data\":",
        state.symbol
    );
    let _ = write!(
        out,
        "{{\"open_time\":{},\"open\":\"{}\",\"high\":\"{}\",\"low\":\"{}\",\"close\":\"{}\",\"volume\":\"{}\"}}",
        c.open_time,
        price(scales, c.open),
        price(scales, c.high),
        price(scales, c.low),
        price(scales, c.close),
        qty(scales, c.volume)
    );
    out.push('}');
    out
}

fn write_ticker(out: &mut String, scales: Scales, t: &Ticker) {
    let _ = write!(
        out,
        "{{\"last\":\"{}\",\"open\":\"{}\",\"high\":\"{}\",\"low\":\"{}\",\"volume\":\"{}\",\"quote_volume\":\"{}\",\"change_percent\":\"{}\"}}",
        price(scales, t.last),
        price(scales, t.open),
        price(scales, t.high),
        price(scales, t.low),
        qty(scales, t.volume),
        price(scales, t.quote_volume),
        t.change_percent()
    );
}

/// REST `/ticker`: the 24h ticker as of `now_ms`.
pub fn ticker_json(state: &MarketState, now_ms: u64) -> String {
    let mut out = String::with_capacity(200);
    write_ticker(&mut out, state.scales, &state.ticker(now_ms));
    out
}

/// `ticker` on the `ticker:` channel.
pub fn ticker_message(state: &MarketState, ticker: &Ticker) -> String {
    let mut out = String::with_capacity(256);
    let _ = write!(
        out,
        "{{\"channel\":\"ticker:{}\",\"type\":\"ticker\",\"data\":",
        state.symbol
    );
    write_ticker(&mut out, state.scales, ticker);
    out.push('}');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::state::fixtures::{batch, level, sym};

    #[test]
    fn rest_depth_shows_the_book_at_its_seq() {
        let mut s = MarketState::new(sym(), Scales { base: 2, quote: 2 });
        s.apply(&batch(
            1,
            0,
            vec![level(Side::Buy, 100, 5), level(Side::Sell, 110, 3)],
        ))
        .unwrap();
        s.apply(&batch(
            2,
            0,
            vec![level(Side::Buy, 100, 0), level(Side::Buy, 99, 7)],
        ))
        .unwrap();
        assert_eq!(
            depth_json(&s, 10),
            r#"{"seq":2,"bids":[["0.99","0.07"]],"asks":[["1.1","0.03"]]}"#
        );
    }
}
