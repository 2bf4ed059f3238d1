//! What a connection subscribes to: our channels (`depth:BTC-USDT`,
//! `trades:`, `ticker:`, `kline:1m:`) and Binance's streams
//! (`btcusdt@depth`, ...), each one market's.

use exchange_domain::symbol::MarketSymbol;

use crate::kline::Interval;
use crate::render::binance::{BN_KINDS_LEN, BnKind, lower_name};

/// A public WebSocket channel's kind (the market is kept beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChannelKind {
    Depth,
    Trades,
    Ticker,
    Kline(Interval),
    /// A Binance-format stream (`btcusdt@depth`, ...).
    Bn(BnKind),
}

pub const CHANNEL_KINDS_LEN: usize = 3 + Interval::ALL.len() + BN_KINDS_LEN;

impl ChannelKind {
    /// Position among every kind, below [`CHANNEL_KINDS_LEN`].
    pub fn index(self) -> usize {
        match self {
            ChannelKind::Depth => 0,
            ChannelKind::Trades => 1,
            ChannelKind::Ticker => 2,
            ChannelKind::Kline(i) => 3 + i.index(),
            ChannelKind::Bn(k) => 3 + Interval::ALL.len() + k.index(),
        }
    }
}

/// `depth:BTC-USDT`, `trades:BTC-USDT`, `ticker:BTC-USDT`, `kline:1m:BTC-USDT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Channel {
    pub kind: ChannelKind,
    pub market: MarketSymbol,
}

impl Channel {
    /// Parses a channel name; `None` when it is not one of the four forms.
    pub fn parse(text: &str) -> Option<Self> {
        let (head, rest) = text.split_once(':')?;
        let (kind, market) = match head {
            "depth" => (ChannelKind::Depth, rest),
            "trades" => (ChannelKind::Trades, rest),
            "ticker" => (ChannelKind::Ticker, rest),
            "kline" => {
                let (interval, market) = rest.split_once(':')?;
                (ChannelKind::Kline(Interval::parse(interval)?), market)
            }
            _ => return None,
        };
        Some(Self {
            kind,
            market: MarketSymbol::parse(market).ok()?,
        })
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ChannelKind::Depth => write!(f, "depth:{}", self.market),
            ChannelKind::Trades => write!(f, "trades:{}", self.market),
            ChannelKind::Ticker => write!(f, "ticker:{}", self.market),
            ChannelKind::Kline(i) => write!(f, "kline:{i}:{}", self.market),
            ChannelKind::Bn(k) => write!(f, "{}@{k}", lower_name(&self.market)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse_and_print() {
        for text in [
            "depth:BTC-USDT",
            "trades:BTC-USDT",
            "ticker:BTC-USDT",
            "kline:4h:BTC-USDT",
        ] {
            assert_eq!(Channel::parse(text).unwrap().to_string(), text);
        }
        for bad in [
            "depth",
            "depth:btc-usdt",
            "kline:2m:BTC-USDT",
            "book:BTC-USDT",
            "kline:BTC-USDT",
        ] {
            assert!(Channel::parse(bad).is_none(), "{bad}");
        }
    }
}
