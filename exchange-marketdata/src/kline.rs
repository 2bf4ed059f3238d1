//! Kline intervals and candles (OHLCV in integer units).
//!
//! Candles are aligned to multiples of their length since the Unix epoch
//! (so `1d` starts at 00:00 UTC and `4h` at 00:00, 04:00, ... UTC).

use std::fmt;

/// The intervals served, shortest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Interval {
    M1,
    M5,
    M15,
    H1,
    H4,
    D1,
}

const MINUTE_MS: u64 = 60_000;

impl Interval {
    pub const ALL: [Interval; 6] = [
        Interval::M1,
        Interval::M5,
        Interval::M15,
        Interval::H1,
        Interval::H4,
        Interval::D1,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Interval::M1 => "1m",
            Interval::M5 => "5m",
            Interval::M15 => "15m",
            Interval::H1 => "1h",
            Interval::H4 => "4h",
            Interval::D1 => "1d",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.as_str() == text)
    }

    pub fn millis(self) -> u64 {
        match self {
            Interval::M1 => MINUTE_MS,
            Interval::M5 => 5 * MINUTE_MS,
            Interval::M15 => 15 * MINUTE_MS,
            Interval::H1 => 60 * MINUTE_MS,
            Interval::H4 => 240 * MINUTE_MS,
            Interval::D1 => 1_440 * MINUTE_MS,
        }
    }

    /// The open time of the candle containing `time_ms`.
    pub fn open_time(self, time_ms: u64) -> u64 {
        time_ms - time_ms % self.millis()
    }

    /// Position in [`Interval::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One candle. Prices in quote units per whole base unit, `volume` in base
/// units, `quote_volume` in quote units. `last_seq` is the last event batch
/// it includes: stored candles only ever move forward in `last_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candle {
    pub open_time: u64,
    pub open: u128,
    pub high: u128,
    pub low: u128,
    pub close: u128,
    pub volume: u128,
    pub quote_volume: u128,
    pub trades: u64,
    pub last_seq: u64,
}

impl Candle {
    pub fn first(open_time: u64, price: u128, qty: u128, quote: u128, seq: u64) -> Self {
        Self {
            open_time,
            open: price,
            high: price,
            low: price,
            close: price,
            volume: qty,
            quote_volume: quote,
            trades: 1,
            last_seq: seq,
        }
    }

    pub fn add(&mut self, price: u128, qty: u128, quote: u128, seq: u64) {
        self.high = self.high.max(price);
        self.low = self.low.min(price);
        self.close = price;
        // Saturating: a market cannot trade 2^128 units, and a wrong total is
        // better than a panic in the push loop.
        self.volume = self.volume.saturating_add(qty);
        self.quote_volume = self.quote_volume.saturating_add(quote);
        self.trades = self.trades.saturating_add(1);
        self.last_seq = seq;
    }

    /// Folds `later` (a candle that follows this one in time) into this one.
    pub fn merge(&mut self, later: &Candle) {
        self.high = self.high.max(later.high);
        self.low = self.low.min(later.low);
        self.close = later.close;
        self.volume = self.volume.saturating_add(later.volume);
        self.quote_volume = self.quote_volume.saturating_add(later.quote_volume);
        self.trades = self.trades.saturating_add(later.trades);
        self.last_seq = self.last_seq.max(later.last_seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_and_align() {
        for i in Interval::ALL {
            assert_eq!(Interval::parse(i.as_str()), Some(i));
            assert_eq!(Interval::ALL[i.index()], i);
        }
        assert_eq!(Interval::parse("2m"), None);
        assert_eq!(Interval::M1.open_time(125_000), 120_000);
        assert_eq!(Interval::H4.open_time(5 * 3_600_000 + 7), 4 * 3_600_000);
        assert_eq!(Interval::D1.open_time(86_400_000 * 3 + 1), 86_400_000 * 3);
    }

    #[test]
    fn candle_tracks_ohlcv() {
        let mut c = Candle::first(0, 10, 1, 10, 1);
        c.add(12, 2, 24, 2);
        c.add(9, 1, 9, 3);
        c.add(11, 1, 11, 4);
        assert_eq!((c.open, c.high, c.low, c.close), (10, 12, 9, 11));
        assert_eq!(
            (c.volume, c.quote_volume, c.trades, c.last_seq),
            (5, 54, 4, 4)
        );
    }
}
