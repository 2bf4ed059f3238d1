//! One market's derived state: depth book, recent trades, current candles
//! and the 1m history behind the 24h ticker.
//!
//! Pure: no sockets, no subscriptions, no wire format (the renderers read
//! it and the fan-out is built on it, never the other way round). Time
//! comes from the event batches (and the caller, for the ticker window),
//! never from the clock.
//! Invariant: `seq` is the last event batch applied, and batches are applied
//! only in order (`seq + 1`), so the depth book equals the engine's book at
//! `seq` exactly and a batch's [`Applied`] carries exactly its changes.

use std::collections::{BTreeMap, VecDeque};

use exchange_domain::event::{Event, EventBatch};
use exchange_domain::money::FormatUnits;
use exchange_domain::order::{MarketStatus, Side};
use exchange_domain::symbol::MarketSymbol;

use crate::kline::{Candle, Interval};

/// Recent trades kept per market (REST `/trades` serves at most this many).
pub const RECENT_TRADES_LEN_MAX: usize = 1_000;
/// 1m candles kept for the rolling 24h ticker: a day plus the current minute.
pub const TICKER_MINUTES_LEN_MAX: usize = 24 * 60 + 1;
pub const DAY_MS: u64 = 86_400_000;

/// Price levels `(price, quantity)` in units.
pub type Levels = Vec<(u128, u128)>;

/// Decimal scales of a market's assets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scales {
    pub base: u8,
    pub quote: u8,
}

/// A trade as market data shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TradeRow {
    pub id: u64,
    pub price: u128,
    pub quantity: u128,
    pub quote_amount: u128,
    pub taker_side: Side,
    pub time: u64,
}

/// The rolling 24h ticker, in units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ticker {
    pub last: u128,
    pub open: u128,
    pub high: u128,
    pub low: u128,
    pub volume: u128,
    pub quote_volume: u128,
}

impl Ticker {
    /// `(last - open) / open × 100`, rounded half away from zero to 2
    /// decimals, as a decimal string (`"-1.25"`); `"0"` without an open.
    pub fn change_percent(&self) -> String {
        if self.open == 0 {
            return "0".to_owned();
        }
        let (diff, negative) = if self.last >= self.open {
            (self.last - self.open, false)
        } else {
            (self.open - self.last, true)
        };
        // Hundredths of a percent: diff × 10^4 / open, rounded.
        let Some(scaled) = diff.checked_mul(20_000) else {
            return "0".to_owned();
        };
        let hundredths = (scaled / self.open).div_ceil(2);
        let body = FormatUnits {
            units: hundredths,
            scale: 2,
        }
        .to_string();
        if negative && hundredths != 0 {
            format!("-{body}")
        } else {
            body
        }
    }
}

/// What applying one batch changed.
#[derive(Debug, Default)]
pub struct Applied {
    /// Depth changes of this batch, the last total per price (may be empty).
    pub bids: BTreeMap<u128, u128>,
    pub asks: BTreeMap<u128, u128>,
    pub trades: Vec<TradeRow>,
    /// The current candle of every interval after the batch (when it traded).
    pub candles: Vec<(Interval, Candle)>,
}

/// Why a batch was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Already applied (at-least-once delivery, or a replica rebuilt past it).
    Duplicate,
    /// Batches `expected..batch.seq` are missing.
    Gap { expected: u64 },
}

#[derive(Debug)]
pub struct MarketState {
    pub symbol: MarketSymbol,
    pub scales: Scales,
    pub seq: u64,
    pub status: Option<MarketStatus>,
    bids: BTreeMap<u128, u128>,
    asks: BTreeMap<u128, u128>,
    trades: VecDeque<TradeRow>,
    candles: [Option<Candle>; Interval::ALL.len()],
    /// Closed 1m candles of (at least) the last 24h, oldest first.
    minutes: VecDeque<Candle>,
    last_price: Option<u128>,
    /// First trade id of each interval's current candle (Binance `k.f`).
    candle_first_trade: [u64; Interval::ALL.len()],
}

impl MarketState {
    pub fn new(symbol: MarketSymbol, scales: Scales) -> Self {
        Self {
            symbol,
            scales,
            seq: 0,
            status: None,
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            trades: VecDeque::with_capacity(RECENT_TRADES_LEN_MAX),
            candles: [None; Interval::ALL.len()],
            minutes: VecDeque::new(),
            last_price: None,
            candle_first_trade: [0; Interval::ALL.len()],
        }
    }

    /// Applies `batch` if it is the next one.
    pub fn apply(&mut self, batch: &EventBatch) -> Result<Applied, Order> {
        if batch.seq <= self.seq {
            return Err(Order::Duplicate);
        }
        if batch.seq != self.seq + 1 {
            return Err(Order::Gap {
                expected: self.seq + 1,
            });
        }
        let mut applied = Applied::default();
        let mut traded = false;
        for event in &batch.events {
            match event {
                Event::BookLevel {
                    side,
                    price,
                    quantity,
                } => {
                    let (book, changes) = match side {
                        Side::Buy => (&mut self.bids, &mut applied.bids),
                        Side::Sell => (&mut self.asks, &mut applied.asks),
                    };
                    if *quantity == 0 {
                        book.remove(price);
                    } else {
                        book.insert(*price, *quantity);
                    }
                    changes.insert(*price, *quantity);
                }
                Event::Trade {
                    trade_id,
                    taker_side,
                    price,
                    quantity,
                    quote_amount,
                    ..
                } => {
                    let row = TradeRow {
                        id: trade_id.0,
                        price: *price,
                        quantity: *quantity,
                        quote_amount: *quote_amount,
                        taker_side: *taker_side,
                        time: batch.time_ms,
                    };
                    self.add_trade(row, batch.seq);
                    applied.trades.push(row);
                    traded = true;
                }
                Event::MarketStatusChanged { status } => self.status = Some(*status),
                _ => {}
            }
        }
        self.seq = batch.seq;
        if traded {
            applied.candles = Interval::ALL
                .into_iter()
                .filter_map(|i| self.candles[i.index()].map(|c| (i, c)))
                .collect();
        }
        Ok(applied)
    }

    fn add_trade(&mut self, t: TradeRow, seq: u64) {
        if self.trades.len() == RECENT_TRADES_LEN_MAX {
            self.trades.pop_front();
        }
        self.trades.push_back(t);
        self.last_price = Some(t.price);
        for interval in Interval::ALL {
            let slot = &mut self.candles[interval.index()];
            // A batch stamped earlier than the current candle (clock step
            // back in matching) joins the current candle: candles never reopen.
            let open_time = interval.open_time(t.time);
            match slot {
                Some(c) if open_time <= c.open_time => {
                    c.add(t.price, t.quantity, t.quote_amount, seq);
                }
                _ => {
                    if interval == Interval::M1
                        && let Some(closed) = *slot
                    {
                        self.minutes.push_back(closed);
                        while self.minutes.len() > TICKER_MINUTES_LEN_MAX {
                            self.minutes.pop_front();
                        }
                    }
                    self.candle_first_trade[interval.index()] = t.id;
                    *slot = Some(Candle::first(
                        open_time,
                        t.price,
                        t.quantity,
                        t.quote_amount,
                        seq,
                    ));
                }
            }
        }
    }

    /// Every bid level, best (highest) first.
    pub fn bids(&self) -> impl ExactSizeIterator<Item = (u128, u128)> + '_ {
        self.bids.iter().rev().map(|(p, q)| (*p, *q))
    }

    /// Every ask level, best (lowest) first.
    pub fn asks(&self) -> impl ExactSizeIterator<Item = (u128, u128)> + '_ {
        self.asks.iter().map(|(p, q)| (*p, *q))
    }

    /// Top `limit` levels per side: bids best (highest) first, asks lowest first.
    pub fn depth(&self, limit: usize) -> (Levels, Levels) {
        (
            self.bids().take(limit).collect(),
            self.asks().take(limit).collect(),
        )
    }

    /// The newest `limit` trades, oldest first.
    pub fn recent_trades(&self, limit: usize) -> Vec<TradeRow> {
        let skip = self.trades.len().saturating_sub(limit);
        self.trades.iter().skip(skip).copied().collect()
    }

    /// The current candle of `interval`, if any trade happened yet.
    pub fn candle(&self, interval: Interval) -> Option<Candle> {
        self.candles[interval.index()]
    }

    /// The id of the first trade in the current candle of `interval`.
    pub fn candle_first_trade(&self, interval: Interval) -> u64 {
        self.candle_first_trade[interval.index()]
    }

    /// The 24h ticker as of `now_ms`, at minute granularity: 1m candles
    /// opened within the last 24h (plus the minute that straddles the edge).
    pub fn ticker(&self, now_ms: u64) -> Ticker {
        let start = Interval::M1.open_time(now_ms.saturating_sub(DAY_MS));
        let mut window: Option<Candle> = None;
        let current = self.candles[Interval::M1.index()];
        for c in self.minutes.iter().chain(current.iter()) {
            if c.open_time < start {
                continue;
            }
            match &mut window {
                None => window = Some(*c),
                Some(w) => w.merge(c),
            }
        }
        let last = self.last_price.unwrap_or(0);
        match window {
            Some(w) => Ticker {
                last,
                open: w.open,
                high: w.high,
                low: w.low,
                volume: w.volume,
                quote_volume: w.quote_volume,
            },
            None => Ticker {
                last,
                open: last,
                high: last,
                low: last,
                volume: 0,
                quote_volume: 0,
            },
        }
    }
}

/// Batches to feed a state with, for this crate's tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod fixtures {
    use super::*;
    use exchange_domain::order::{OrderId, TradeId, UserId};

    pub fn sym() -> MarketSymbol {
        MarketSymbol::parse("BTC-USDT").unwrap()
    }

    pub fn level(side: Side, price: u128, quantity: u128) -> Event {
        Event::BookLevel {
            side,
            price,
            quantity,
        }
    }

    pub fn trade(id: u64, price: u128, quantity: u128) -> Event {
        Event::Trade {
            trade_id: TradeId(id),
            maker_order_id: OrderId(1),
            maker_user_id: UserId(1),
            taker_order_id: OrderId(2),
            taker_user_id: UserId(2),
            taker_side: Side::Buy,
            price,
            quantity,
            quote_amount: price * quantity / 100,
            maker_fee: 0,
            taker_fee: 0,
        }
    }

    pub fn batch(seq: u64, time_ms: u64, events: Vec<Event>) -> EventBatch {
        EventBatch {
            market: sym(),
            seq,
            time_ms,
            events,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn applies_in_order_and_refuses_duplicates_and_gaps() {
        let mut s = MarketState::new(sym(), Scales { base: 2, quote: 2 });
        s.apply(&batch(
            1,
            0,
            vec![level(Side::Buy, 100, 5), level(Side::Sell, 110, 3)],
        ))
        .unwrap();
        assert_eq!(s.apply(&batch(1, 0, vec![])).unwrap_err(), Order::Duplicate);
        assert_eq!(
            s.apply(&batch(3, 0, vec![])).unwrap_err(),
            Order::Gap { expected: 2 }
        );
        s.apply(&batch(
            2,
            0,
            vec![level(Side::Buy, 100, 0), level(Side::Buy, 99, 7)],
        ))
        .unwrap();
        assert_eq!(s.depth(10), (vec![(99, 7)], vec![(110, 3)]));
    }

    #[test]
    fn candles_roll_and_ticker_covers_24h() {
        let mut s = MarketState::new(sym(), Scales { base: 2, quote: 2 });
        let m = 60_000;
        s.apply(&batch(1, 10, vec![trade(1, 100, 1)])).unwrap();
        s.apply(&batch(2, 20, vec![trade(2, 120, 2), trade(3, 90, 1)]))
            .unwrap();
        let applied = s.apply(&batch(3, m + 5, vec![trade(4, 110, 4)])).unwrap();
        let m1 = s.candle(Interval::M1).unwrap();
        assert_eq!(
            (m1.open_time, m1.open, m1.close, m1.volume),
            (m, 110, 110, 4)
        );
        let m5 = s.candle(Interval::M5).unwrap();
        assert_eq!(
            (m5.open, m5.high, m5.low, m5.close, m5.volume, m5.trades),
            (100, 120, 90, 110, 8, 4)
        );
        assert_eq!(applied.candles.len(), 6);
        let t = s.ticker(m + 10);
        assert_eq!(
            (t.last, t.open, t.high, t.low, t.volume),
            (110, 100, 120, 90, 8)
        );
        assert_eq!(t.change_percent(), "10");
        // A day later the first minute has left the window.
        let t = s.ticker(DAY_MS + m + 10);
        assert_eq!((t.open, t.high, t.low, t.volume), (110, 110, 110, 4));
        assert_eq!(
            s.recent_trades(2).iter().map(|t| t.id).collect::<Vec<_>>(),
            [3, 4]
        );
    }

    #[test]
    fn change_percent_rounds_half_away_from_zero() {
        let t = |open, last| {
            Ticker {
                open,
                last,
                ..Ticker::default()
            }
            .change_percent()
        };
        assert_eq!(t(0, 5), "0");
        assert_eq!(t(100, 100), "0");
        assert_eq!(t(300, 299), "-0.33");
        assert_eq!(t(8, 9), "12.5");
        assert_eq!(t(30_000, 30_001), "0");
        assert_eq!(t(20_000, 20_001), "0.01"); // 0.005 rounds up
        assert_eq!(t(20_000, 19_999), "-0.01");
    }
}
