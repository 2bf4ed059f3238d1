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
