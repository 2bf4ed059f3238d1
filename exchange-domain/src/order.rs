//! Ids and the small enums that describe an order and a market's state.

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// Assigned by the order service; unique across all markets.
    OrderId
);
id_type!(UserId);
id_type!(
    /// Assigned by the engine, consecutive per market from 1: unique as
    /// `(market, trade_id)`.
    TradeId
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    /// The snake_case name used in JSON, the REST API and the tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }

    /// The inverse of [`Side::as_str`].
    pub fn parse(name: &str) -> Option<Side> {
        match name {
            "buy" => Some(Side::Buy),
            "sell" => Some(Side::Sell),
            _ => None,
        }
    }

    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }

    /// The asset an order on this side spends (and so reserves): a buyer
    /// pays quote, a seller delivers base.
    pub fn spends(self) -> AssetRole {
        match self {
            Side::Buy => AssetRole::Quote,
            Side::Sell => AssetRole::Base,
        }
    }

    /// The asset an order on this side receives, and so pays its fee in.
    pub fn receives(self) -> AssetRole {
        self.spends().other()
    }
}

/// Which of a market's two assets an amount is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetRole {
    Base,
    Quote,
}

impl AssetRole {
    pub fn other(self) -> AssetRole {
        match self {
            AssetRole::Base => AssetRole::Quote,
            AssetRole::Quote => AssetRole::Base,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderType {
    Limit,
    Market,
    /// Becomes a limit order when the last trade price reaches `stop_price`
    /// (a buy stop at or above it, a sell stop at or below it).
    StopLimit,
    /// Becomes a market order when the last trade price reaches `stop_price`.
    StopMarket,
    /// Becomes a limit order when the last trade price reaches `stop_price`
    /// from the other side than a stop: a buy at or below it, a sell at or
    /// above it (Binance `TAKE_PROFIT_LIMIT`).
    TakeProfitLimit,
    /// Becomes a market order when the last trade price reaches
    /// `stop_price` the take-profit way (Binance `TAKE_PROFIT`).
    TakeProfitMarket,
}

/// Which way the last trade price must cross an order's `stop_price` for
/// the order to trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Trigger {
    /// When the last price is at or above the stop price.
    AtOrAbove,
    /// When the last price is at or below the stop price.
    AtOrBelow,
}

impl Trigger {
    /// Is the condition met for `last` against `stop` (any one unit)?
    pub fn reached<T: PartialOrd>(self, last: T, stop: T) -> bool {
        match self {
            Trigger::AtOrAbove => last >= stop,
            Trigger::AtOrBelow => last <= stop,
        }
    }
}

impl OrderType {
    /// Every type, in the order of their wire and storage names.
    pub const ALL: [OrderType; 6] = [
        OrderType::Limit,
        OrderType::Market,
        OrderType::StopLimit,
        OrderType::StopMarket,
        OrderType::TakeProfitLimit,
        OrderType::TakeProfitMarket,
    ];

    /// The snake_case name used in JSON, the REST API and the `orders` table.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderType::Limit => "limit",
            OrderType::Market => "market",
            OrderType::StopLimit => "stop_limit",
            OrderType::StopMarket => "stop_market",
            OrderType::TakeProfitLimit => "take_profit_limit",
            OrderType::TakeProfitMarket => "take_profit_market",
        }
    }

    /// The inverse of [`OrderType::as_str`].
    pub fn parse(name: &str) -> Option<OrderType> {
        OrderType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Waits for a trigger price (needs `stop_price`): stops and take-profits.
    pub fn is_conditional(self) -> bool {
        self.trigger(Side::Buy).is_some()
    }

    /// Carries a limit price (needs `price` and `quantity`).
    pub fn is_limit(self) -> bool {
        matches!(
            self,
            OrderType::Limit | OrderType::StopLimit | OrderType::TakeProfitLimit
        )
    }

    /// What a conditional order becomes once triggered (itself otherwise).
    pub fn on_trigger(self) -> OrderType {
        match self {
            OrderType::StopLimit | OrderType::TakeProfitLimit => OrderType::Limit,
            OrderType::StopMarket | OrderType::TakeProfitMarket => OrderType::Market,
            other => other,
        }
    }

    /// Which way the last price must reach `stop_price` for an order of
    /// this type on `side` to trigger; `None` for plain limit and market.
    /// A stop buys into a rise and sells into a fall; a take-profit is the
    /// opposite (Binance semantics).
    pub fn trigger(self, side: Side) -> Option<Trigger> {
        match (self, side) {
            (OrderType::StopLimit | OrderType::StopMarket, Side::Buy)
            | (OrderType::TakeProfitLimit | OrderType::TakeProfitMarket, Side::Sell) => {
                Some(Trigger::AtOrAbove)
            }
            (OrderType::StopLimit | OrderType::StopMarket, Side::Sell)
            | (OrderType::TakeProfitLimit | OrderType::TakeProfitMarket, Side::Buy) => {
                Some(Trigger::AtOrBelow)
            }
            (OrderType::Limit | OrderType::Market, _) => None,
        }
    }
}

/// Only `Gtc` orders rest. Market orders treat `Gtc` like `Ioc`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum TimeInForce {
    #[default]
    Gtc,
    Ioc,
    Fok,
}

/// What happens when an incoming order would trade with a resting order of
/// the same user. The incoming (taker) order's mode decides.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SelfTradePrevention {
    /// Trade with yourself like with anyone else.
    #[default]
    None,
    /// The incoming order's remainder expires; the resting order stays.
    ExpireTaker,
    /// The resting order expires; the incoming order goes on matching.
    ExpireMaker,
    /// Both expire.
    ExpireBoth,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MarketStatus {
    #[default]
    Trading,
    /// Only cancels (and status changes) are accepted.
    CancelOnly,
    /// Nothing but a status change is accepted.
    Halted,
}

impl MarketStatus {
    /// The snake_case name used in JSON, the REST API and `markets.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            MarketStatus::Trading => "trading",
            MarketStatus::CancelOnly => "cancel_only",
            MarketStatus::Halted => "halted",
        }
    }

    /// The inverse of [`MarketStatus::as_str`].
    pub fn parse(name: &str) -> Option<MarketStatus> {
        [
            MarketStatus::Trading,
            MarketStatus::CancelOnly,
            MarketStatus::Halted,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_and_market_status_names_round_trip_and_match_serde() {
        for side in [Side::Buy, Side::Sell] {
            assert_eq!(Side::parse(side.as_str()), Some(side));
            let json = serde_json::to_string(&side).expect("serialize");
            assert_eq!(json, format!("\"{}\"", side.as_str()));
        }
        for status in [
            MarketStatus::Trading,
            MarketStatus::CancelOnly,
            MarketStatus::Halted,
        ] {
            assert_eq!(MarketStatus::parse(status.as_str()), Some(status));
            let json = serde_json::to_string(&status).expect("serialize");
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert_eq!(Side::parse("BUY"), None);
        assert_eq!(MarketStatus::parse("open"), None);
    }

    #[test]
    fn order_type_names_round_trip_and_match_serde() {
        for t in OrderType::ALL {
            assert_eq!(OrderType::parse(t.as_str()), Some(t));
            let json = serde_json::to_string(&t).expect("serialize");
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
        assert_eq!(OrderType::parse("TAKE_PROFIT"), None);
    }

    #[test]
    fn stops_and_take_profits_trigger_in_opposite_directions() {
        use Trigger::{AtOrAbove, AtOrBelow};
        assert_eq!(OrderType::StopLimit.trigger(Side::Buy), Some(AtOrAbove));
        assert_eq!(OrderType::StopMarket.trigger(Side::Sell), Some(AtOrBelow));
        assert_eq!(
            OrderType::TakeProfitLimit.trigger(Side::Buy),
            Some(AtOrBelow)
        );
        assert_eq!(
            OrderType::TakeProfitMarket.trigger(Side::Sell),
            Some(AtOrAbove)
        );
        assert_eq!(OrderType::Limit.trigger(Side::Buy), None);
        assert!(AtOrAbove.reached(10, 10) && AtOrAbove.reached(11, 10));
        assert!(!AtOrAbove.reached(9, 10));
        assert!(AtOrBelow.reached(10, 10) && !AtOrBelow.reached(11, 10));
        assert_eq!(OrderType::TakeProfitLimit.on_trigger(), OrderType::Limit);
        assert_eq!(OrderType::TakeProfitMarket.on_trigger(), OrderType::Market);
        assert!(
            OrderType::TakeProfitLimit.is_limit() && OrderType::TakeProfitLimit.is_conditional()
        );
        assert!(!OrderType::TakeProfitMarket.is_limit());
    }
}
