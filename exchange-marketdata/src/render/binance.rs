//! Binance's spelling of market data: stream names (`btcusdt@depth`,
//! `@depth@100ms`, `@trade`, `@aggTrade`, `@kline_1m`, `@ticker`,
//! `@miniTicker`) and the event bodies (`depthUpdate`, `trade`, `aggTrade`,
//! `kline`, `24hrTicker`, `24hrMiniTicker`), rendered from a market's state.
//!
//! Depth events carry `U`/`u` = our depth `seq` numbers (the same sequence
//! as REST `lastUpdateId`): an event covers the batches `U..=u`, and each
//! event's `U` is the previous event's `u + 1`. Batches that changed no
//! level are folded into the next event rather than sent empty, so the
//! standard "buffer, snapshot, drop `u <= lastUpdateId`" sync works as on
//! Binance. Events are pushed as batches apply (no 100 ms / 1 s buffering).

use std::fmt::Write as _;

use exchange_domain::money::FormatUnits;
use exchange_domain::order::Side;
use exchange_domain::symbol::MarketSymbol;

use crate::kline::{Candle, Interval};
use crate::state::{DAY_MS, MarketState, Scales, Ticker, TradeRow};

/// A Binance stream's kind (the market is kept beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BnKind {
    Depth,
    Depth100ms,
    Trade,
    AggTrade,
    Ticker,
    MiniTicker,
    Kline(Interval),
}

pub const BN_KINDS_LEN: usize = 6 + Interval::ALL.len();

impl BnKind {
    pub fn index(self) -> usize {
        match self {
            BnKind::Depth => 0,
            BnKind::Depth100ms => 1,
            BnKind::Trade => 2,
            BnKind::AggTrade => 3,
            BnKind::Ticker => 4,
            BnKind::MiniTicker => 5,
            BnKind::Kline(i) => 6 + i.index(),
        }
    }

    /// The part after `<symbol>@`.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "depth" => BnKind::Depth,
            "depth@100ms" => BnKind::Depth100ms,
            "trade" => BnKind::Trade,
            "aggTrade" => BnKind::AggTrade,
            "ticker" => BnKind::Ticker,
            "miniTicker" => BnKind::MiniTicker,
            _ => BnKind::Kline(Interval::parse(text.strip_prefix("kline_")?)?),
        })
    }

    pub fn is_depth(self) -> bool {
        matches!(self, BnKind::Depth | BnKind::Depth100ms)
    }
}

impl std::fmt::Display for BnKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BnKind::Depth => f.write_str("depth"),
            BnKind::Depth100ms => f.write_str("depth@100ms"),
            BnKind::Trade => f.write_str("trade"),
            BnKind::AggTrade => f.write_str("aggTrade"),
            BnKind::Ticker => f.write_str("ticker"),
            BnKind::MiniTicker => f.write_str("miniTicker"),
            BnKind::Kline(i) => write!(f, "kline_{i}"),
        }
    }
}

/// `BTC-USDT` → `btcusdt` (stream names) .
pub fn lower_name(market: &MarketSymbol) -> String {
    market.to_string().replace('-', "").to_ascii_lowercase()
}

/// `BTC-USDT` → `BTCUSDT` (the `s` field).
pub fn upper_name(market: &MarketSymbol) -> String {
    market.to_string().replace('-', "")
}

/// A market's names in Binance's spelling, worked out once per market
/// rather than per message.
#[derive(Debug)]
pub struct BnNames {
    /// `BTCUSDT`: the events' `s` field.
    pub symbol: String,
    /// `btcusdt`: the first part of its stream names.
    pub stream: String,
}

impl BnNames {
    pub fn new(market: &MarketSymbol) -> Self {
        Self {
            symbol: upper_name(market),
            stream: lower_name(market),
        }
    }
}

/// Splits `btcusdt@kline_1m` into the symbol part (lowercased) and the kind.
pub fn split_stream(name: &str) -> Option<(String, BnKind)> {
    let (sym, kind) = name.split_once('@')?;
    if sym.is_empty() || sym.len() > 32 || !sym.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some((sym.to_ascii_lowercase(), BnKind::parse(kind)?))
}

/// A decimal with at least 8 fraction digits, as `/api/v3` writes them
/// (`"0.10000000"`), so REST and stream levels are the same strings.
struct Pad8(FormatUnits);

impl std::fmt::Display for Pad8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0.to_string();
        let frac = text.split_once('.').map_or(0, |(_, fr)| fr.len());
        f.write_str(&text)?;
        if frac == 0 {
            f.write_str(".")?;
        }
        for _ in frac..8 {
            f.write_str("0")?;
        }
        Ok(())
    }
}

fn price(scales: Scales, units: u128) -> Pad8 {
    Pad8(super::price(scales, units))
}

fn qty(scales: Scales, units: u128) -> Pad8 {
    Pad8(super::qty(scales, units))
}

/// `[["price","quantity"],..]` with decimals padded as `/api/v3` writes them.
fn write_levels(out: &mut String, scales: Scales, levels: impl Iterator<Item = (u128, u128)>) {
    super::write_levels(out, scales, levels, Pad8);
}

/// An event as the combined `/stream` endpoint wraps it:
/// `{"stream":"btcusdt@depth","data":<raw>}`.
pub fn combined(names: &BnNames, kind: BnKind, raw: &str) -> String {
    format!("{{\"stream\":\"{}@{kind}\",\"data\":{raw}}}", names.stream)
}

/// `depthUpdate` covering depth `seq`s `first..=last` (`U`, `u`): one
/// batch's changes, or several merged for a slow connection.
pub fn depth_update(
    names: &BnNames,
    scales: Scales,
    first: u64,
    last: u64,
    time_ms: u64,
    bids: impl Iterator<Item = (u128, u128)>,
    asks: impl Iterator<Item = (u128, u128)>,
) -> String {
    let mut out = String::with_capacity(160);
    let _ = write!(
        out,
        "{{\"e\":\"depthUpdate\",\"E\":{time_ms},\"s\":\"{}\",\"U\":{first},\"u\":{last},\"b\":",
        names.symbol
    );
    write_levels(&mut out, scales, bids);
    out.push_str(",\"a\":");
    write_levels(&mut out, scales, asks);
    out.push('}');
    out
}

/// `trade` or `aggTrade` (one trade per aggregate: `a = f = l = t`).
pub fn trade_event(names: &BnNames, scales: Scales, t: &TradeRow, agg: bool) -> String {
    let mut out = String::with_capacity(200);
    // The buyer is the maker when the taker sold.
    let m = t.taker_side == Side::Sell;
    if agg {
        let _ = write!(
            out,
            "{{\"e\":\"aggTrade\",\"E\":{},\"s\":\"{}\",\"a\":{},\"p\":\"{}\",\"q\":\"{}\",\"f\":{},\"l\":{},\"T\":{},\"m\":{m},\"M\":true}}",
            t.time,
            names.symbol,
            t.id,
            price(scales, t.price),
            qty(scales, t.quantity),
            t.id,
            t.id,
            t.time
        );
    } else {
        let _ = write!(
            out,
            "{{\"e\":\"trade\",\"E\":{},\"s\":\"{}\",\"t\":{},\"p\":\"{}\",\"q\":\"{}\",\"T\":{},\"m\":{m},\"M\":true}}",
            t.time,
            names.symbol,
            t.id,
            price(scales, t.price),
            qty(scales, t.quantity),
            t.time
        );
    }
    out
}

/// `kline` for the current candle of `interval` (`x` is false: a candle
/// is pushed when it trades, not when it closes).
pub fn kline_event(
    names: &BnNames,
    scales: Scales,
    interval: Interval,
    c: &Candle,
    first_trade: u64,
    last_trade: u64,
    time_ms: u64,
) -> String {
    let mut out = String::with_capacity(400);
    let close_time = c.open_time + interval.millis() - 1;
    let _ = write!(
        out,
        "{{\"e\":\"kline\",\"E\":{time_ms},\"s\":\"{s}\",\"k\":{{\"t\":{},\"T\":{close_time},\"s\":\"{s}\",\"i\":\"{interval}\",\"f\":{first_trade},\"L\":{last_trade},\"o\":\"{}\",\"c\":\"{}\",\"h\":\"{}\",\"l\":\"{}\",\"v\":\"{}\",\"n\":{},\"x\":false,\"q\":\"{}\",\"V\":\"0.00000000\",\"Q\":\"0.00000000\",\"B\":\"0\"}}}}",
        c.open_time,
        price(scales, c.open),
        price(scales, c.close),
        price(scales, c.high),
        price(scales, c.low),
        qty(scales, c.volume),
        c.trades,
        price(scales, c.quote_volume),
        s = names.symbol,
    );
    out
}

/// `24hrMiniTicker` as of `now_ms`.
pub fn mini_ticker_event(names: &BnNames, scales: Scales, t: &Ticker, now_ms: u64) -> String {
    let mut out = String::with_capacity(256);
    let _ = write!(
        out,
        "{{\"e\":\"24hrMiniTicker\",\"E\":{now_ms},\"s\":\"{}\",\"c\":\"{}\",\"o\":\"{}\",\"h\":\"{}\",\"l\":\"{}\",\"v\":\"{}\",\"q\":\"{}\"}}",
        names.symbol,
        price(scales, t.last),
        price(scales, t.open),
        price(scales, t.high),
        price(scales, t.low),
        qty(scales, t.volume),
        price(scales, t.quote_volume),
    );
    out
}

/// `24hrTicker` of `state` as of `now_ms` (`t` is its ticker then).
pub fn ticker_event(state: &MarketState, names: &BnNames, t: &Ticker, now_ms: u64) -> String {
    let scales = state.scales;
    let (change, neg) = if t.last >= t.open {
        (t.last - t.open, "")
    } else {
        (t.open - t.last, "-")
    };
    // Volume-weighted average price, in quote units per whole base unit.
    let weighted = if t.volume == 0 {
        0
    } else {
        t.quote_volume
            .checked_mul(10u128.pow(u32::from(scales.base)))
            .map_or(0, |x| x / t.volume)
    };
    let (bids, asks) = state.depth(1);
    let (b, bq) = bids.first().copied().unwrap_or((0, 0));
    let (a, aq) = asks.first().copied().unwrap_or((0, 0));
    let last = state.recent_trades(1).first().copied();
    let (last_qty, last_id) = last.map_or((0, 0), |r| (r.quantity, r.id));
    let neg = if change == 0 { "" } else { neg };
    let mut out = String::with_capacity(512);
    let _ = write!(
        out,
        "{{\"e\":\"24hrTicker\",\"E\":{now_ms},\"s\":\"{}\",\"p\":\"{neg}{}\",\"P\":\"{}\",\"w\":\"{}\",\"x\":\"{}\",\"c\":\"{}\",\"Q\":\"{}\",\"b\":\"{}\",\"B\":\"{}\",\"a\":\"{}\",\"A\":\"{}\",\"o\":\"{}\",\"h\":\"{}\",\"l\":\"{}\",\"v\":\"{}\",\"q\":\"{}\",\"O\":{},\"C\":{now_ms},\"F\":0,\"L\":{last_id},\"n\":0}}",
        names.symbol,
        price(scales, change),
        t.change_percent(),
        price(scales, weighted),
        price(scales, t.open),
        price(scales, t.last),
        qty(scales, last_qty),
        price(scales, b),
        qty(scales, bq),
        price(scales, a),
        qty(scales, aq),
        price(scales, t.open),
        price(scales, t.high),
        price(scales, t.low),
        qty(scales, t.volume),
        price(scales, t.quote_volume),
        now_ms.saturating_sub(DAY_MS),
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_parse_and_print() {
        for name in [
            "btcusdt@depth",
            "btcusdt@depth@100ms",
            "btcusdt@trade",
            "btcusdt@aggTrade",
            "btcusdt@ticker",
            "btcusdt@miniTicker",
            "btcusdt@kline_1m",
            "btcusdt@kline_4h",
        ] {
            let (sym, kind) = split_stream(name).unwrap();
            assert_eq!(format!("{sym}@{kind}"), name);
        }
        assert_eq!(split_stream("BTCUSDT@trade").unwrap().0, "btcusdt");
        for bad in [
            "btcusdt",
            "btcusdt@depth@500ms",
            "btcusdt@kline_2m",
            "@trade",
            "btc-usdt@trade",
            "btcusdt@bookTicker",
        ] {
            assert!(split_stream(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn decimals_are_padded_like_rest() {
        let p = |units, scale| Pad8(FormatUnits { units, scale }).to_string();
        assert_eq!(p(110, 2), "1.10000000");
        assert_eq!(p(100, 2), "1.00000000");
        assert_eq!(p(0, 2), "0.00000000");
        assert_eq!(p(123_456_789_012, 10), "12.3456789012");
    }
}
