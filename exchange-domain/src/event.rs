//! Events: what the matching engine emits for one command, in order.
//!
//! Each event carries what clearing, the order service and market data need
//! without looking anything up. Amounts are raw integer units (JSON digit
//! strings); prices are quote units per whole base unit.
//!
//! Money rule, per order: `reserved` (from `Place`, plus every amend's
//! `additional_reserve`) `== spent in trades + every release`. A release
//! appears in exactly these places: `OrderDone.release`,
//! `Amended.released`, `CommandRejected.release`. A buyer spends the trade's
//! `quote_amount`; a seller spends its `quantity`.

use serde::{Deserialize, Serialize};

use crate::order::{AssetRole, MarketStatus, OrderId, Side, TradeId, UserId};
use crate::symbol::MarketSymbol;

/// The events of one command, as published on `exchange:events` and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    pub market: MarketSymbol,
    pub seq: u64,
    pub time_ms: u64,
    pub events: Vec<Event>,
}

/// Stable machine codes, for rejections and for why an order ended.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    thiserror::Error,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReasonCode {
    #[error("the fields do not fit the order type")]
    InvalidOrder,
    #[error("price is not a multiple of the price tick")]
    PriceNotOnTick,
    #[error("quantity is not a multiple of the quantity step")]
    QuantityNotOnStep,
    #[error("quantity is below the market minimum")]
    QuantityTooSmall,
    #[error("order value is below the market minimum notional")]
    NotionalTooSmall,
    #[error("a price or quantity is out of range")]
    OutOfRange,
    #[error("the reserved amount does not cover the order")]
    InsufficientReserve,
    #[error("a post-only order would have taken liquidity")]
    PostOnlyWouldTake,
    /// Also for take-profits, whose condition runs the other way.
    #[error("the stop price is already reached by the last trade price")]
    StopWouldTriggerImmediately,
    #[error("the order id is already in use")]
    DuplicateOrderId,
    #[error("the market accepts only cancels")]
    MarketCancelOnly,
    #[error("the market is halted")]
    MarketHalted,
    #[error("no such open order")]
    OrderNotFound,
    #[error("the order belongs to another user")]
    NotOrderOwner,
    #[error("the side does not match the order")]
    SideMismatch,
    #[error("only resting limit orders can be amended")]
    OrderNotAmendable,
    #[error("an amend must change the price or the quantity to a positive value")]
    InvalidAmend,
    #[error("the sequence number is not after the last one applied")]
    StaleSequence,
    // Why an accepted order expired.
    #[error("fill-or-kill order could not be filled completely")]
    FillOrKillUnfilled,
    #[error("unfilled remainder of an immediate order")]
    ImmediateRemainder,
    #[error("self-trade prevention")]
    SelfTradePrevention,
    #[error("the reserved amount is used up")]
    ReserveExhausted,
}

/// How an order ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalStatus {
    Filled,
    /// By the user (cancel, cancel-all).
    Canceled,
    /// By the engine: IOC/market remainder, FOK, self-trade prevention.
    Expired,
    /// Refused at placement; nothing traded.
    Rejected,
}

/// Which command a [`Event::CommandRejected`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Place,
    Cancel,
    CancelAll,
    Amend,
    SetStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A placement passed validation (a stop order is now pending).
    OrderAccepted {
        order_id: OrderId,
        user_id: UserId,
    },
    /// One fill. The buyer receives `quantity` base, the seller
    /// `quote_amount` quote; each pays its fee in what it receives, so the
    /// maker's fee is in quote when the taker buys and in base when the
    /// taker sells (and the taker's in the other asset).
    Trade {
        trade_id: TradeId,
        maker_order_id: OrderId,
        maker_user_id: UserId,
        taker_order_id: OrderId,
        taker_user_id: UserId,
        taker_side: Side,
        #[serde(with = "crate::money::units_string")]
        price: u128,
        #[serde(with = "crate::money::units_string")]
        quantity: u128,
        #[serde(with = "crate::money::units_string")]
        quote_amount: u128,
        #[serde(with = "crate::money::units_string")]
        maker_fee: u128,
        #[serde(with = "crate::money::units_string")]
        taker_fee: u128,
    },
    /// The order is finished: release `release` units of `release_asset`
    /// back to the user's available balance. For a rejected placement this
    /// is the whole reserve.
    OrderDone {
        order_id: OrderId,
        user_id: UserId,
        status: FinalStatus,
        /// Why, for rejected and expired orders.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<ReasonCode>,
        /// Base units filled over the order's life.
        #[serde(with = "crate::money::units_string")]
        filled_quantity: u128,
        release_asset: AssetRole,
        #[serde(with = "crate::money::units_string")]
        release: u128,
    },
    /// An amend took effect. `price` and `quantity` are the order's new
    /// limit price and open quantity (before any fill the amend caused).
    Amended {
        order_id: OrderId,
        user_id: UserId,
        #[serde(with = "crate::money::units_string")]
        price: u128,
        #[serde(with = "crate::money::units_string")]
        quantity: u128,
        priority_kept: bool,
        release_asset: AssetRole,
        #[serde(with = "crate::money::units_string")]
        released: u128,
    },
    /// A cancel, cancel-all, amend or status change was refused; nothing
    /// changed except that an amend's `additional_reserve` is released.
    CommandRejected {
        command: CommandKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order_id: Option<OrderId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<UserId>,
        reason: ReasonCode,
        release_asset: AssetRole,
        #[serde(with = "crate::money::units_string")]
        release: u128,
    },
    /// A pending stop or take-profit order became live because the last
    /// trade price reached its stop price; its own events follow.
    StopTriggered {
        order_id: OrderId,
        user_id: UserId,
        #[serde(with = "crate::money::units_string")]
        stop_price: u128,
        #[serde(with = "crate::money::units_string")]
        last_price: u128,
    },
    /// The new total open quantity resting at `price` on `side`; `0` means
    /// the level is gone. Applying these in order keeps a depth view exact.
    BookLevel {
        side: Side,
        #[serde(with = "crate::money::units_string")]
        price: u128,
        #[serde(with = "crate::money::units_string")]
        quantity: u128,
    },
    MarketStatusChanged {
        status: MarketStatus,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_with_string_amounts_and_stable_codes() {
        let events = vec![
            Event::Trade {
                trade_id: TradeId(1),
                maker_order_id: OrderId(2),
                maker_user_id: UserId(3),
                taker_order_id: OrderId(4),
                taker_user_id: UserId(5),
                taker_side: Side::Buy,
                price: 5_000_000,
                quantity: u128::MAX,
                quote_amount: 7,
                maker_fee: 1,
                taker_fee: 2,
            },
            Event::OrderDone {
                order_id: OrderId(4),
                user_id: UserId(5),
                status: FinalStatus::Expired,
                reason: Some(ReasonCode::FillOrKillUnfilled),
                filled_quantity: 0,
                release_asset: AssetRole::Quote,
                release: 10,
            },
        ];
        let json = serde_json::to_string(&events).expect("serialize");
        assert!(
            json.contains("\"quantity\":\"340282366920938463463374607431768211455\""),
            "{json}"
        );
        assert!(
            json.contains("\"reason\":\"FILL_OR_KILL_UNFILLED\""),
            "{json}"
        );
        assert!(json.contains("\"type\":\"order_done\""), "{json}");
        assert_eq!(
            serde_json::from_str::<Vec<Event>>(&json).expect("deserialize"),
            events
        );
    }
}
