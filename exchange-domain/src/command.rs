//! Commands: what the order service sends the matching engine, one per
//! gapless per-market sequence number.
//!
//! Amounts are raw integer units of their asset (see [`crate::market`]),
//! carried in JSON as digit strings (see [`crate::money::units_string`]).

use serde::{Deserialize, Serialize};

use crate::order::{
    MarketStatus, OrderId, OrderType, SelfTradePrevention, Side, TimeInForce, UserId,
};
use crate::symbol::MarketSymbol;

/// A command as it travels on `exchange:orders:{MARKET}` and sits in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequencedCommand {
    pub market: MarketSymbol,
    pub seq: u64,
    pub time_ms: u64,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    Place(PlaceOrder),
    /// Cancel one order (resting or pending stop) of `user_id`.
    Cancel {
        order_id: OrderId,
        user_id: UserId,
    },
    /// Cancel every order of `user_id` in this market, in order-id order.
    CancelAll {
        user_id: UserId,
    },
    Amend(AmendOrder),
    SetStatus {
        status: MarketStatus,
    },
}

/// A new order. Which optional fields are required depends on the type:
///
/// | type | `price` | `quantity` | `quote_quantity` | `stop_price` |
/// |---|---|---|---|---|
/// | limit | yes | yes | no | no |
/// | market | no | one of the two (quote only for buys) || no |
/// | stop_limit | yes | yes | no | yes |
/// | stop_market | no | one of the two (quote only for buys) || yes |
/// | take_profit_limit | yes | yes | no | yes |
/// | take_profit_market | no | one of the two (quote only for buys) || yes |
///
/// Stops and take-profits trigger in opposite directions: see
/// [`OrderType::trigger`].
///
/// `reserved` is what the order service moved from the user's available to
/// locked balance for this order, in the asset the order spends (quote for
/// a buy, base for a sell). The engine never spends more than it, refuses a
/// limit order whose worst case (`price × quantity`, or `quantity`) exceeds
/// it, and returns what is left when the order is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub side: Side,
    pub order_type: OrderType,
    /// Limit price, quote units per whole base unit.
    #[serde(
        default,
        with = "crate::money::opt_units_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub price: Option<u128>,
    /// Base units.
    #[serde(
        default,
        with = "crate::money::opt_units_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub quantity: Option<u128>,
    /// Quote units to spend: market (and stop-market) buys only.
    #[serde(
        default,
        with = "crate::money::opt_units_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub quote_quantity: Option<u128>,
    /// Trigger price for stop and take-profit orders, quote units per whole
    /// base unit.
    #[serde(
        default,
        with = "crate::money::opt_units_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_price: Option<u128>,
    #[serde(default)]
    pub time_in_force: TimeInForce,
    #[serde(default)]
    pub post_only: bool,
    #[serde(default)]
    pub stp: SelfTradePrevention,
    #[serde(with = "crate::money::units_string")]
    pub reserved: u128,
}

/// Change a resting limit order. `new_quantity` is the new **open**
/// (unfilled) quantity. Reducing the quantity at the same price keeps time
/// priority; any other change removes the order and enters it again (it may
/// trade, as a taker, at its new price).
///
/// `additional_reserve` is what the order service locked on top of the
/// order's current reserve to pay for a larger amend (in the asset `side`
/// spends). If the amend is refused it comes back in the rejection; if the
/// amended order needs less than it holds, the excess comes back in the
/// `Amended` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmendOrder {
    pub order_id: OrderId,
    pub user_id: UserId,
    /// Must match the order's side; it tells which asset a refund is in
    /// even when the order is unknown.
    pub side: Side,
    #[serde(
        default,
        with = "crate::money::opt_units_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub new_price: Option<u128>,
    #[serde(
        default,
        with = "crate::money::opt_units_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub new_quantity: Option<u128>,
    #[serde(default, with = "crate::money::units_string")]
    pub additional_reserve: u128,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn place_json_uses_strings_for_amounts_and_round_trips() {
        let cmd = SequencedCommand {
            market: MarketSymbol::parse("BTC-USDT").expect("valid"),
            seq: 7,
            time_ms: 1_700_000_000_000,
            command: Command::Place(PlaceOrder {
                order_id: OrderId(1),
                user_id: UserId(2),
                side: Side::Buy,
                order_type: OrderType::Limit,
                price: Some(u128::MAX),
                quantity: Some(5),
                quote_quantity: None,
                stop_price: None,
                time_in_force: TimeInForce::Ioc,
                post_only: false,
                stp: SelfTradePrevention::ExpireBoth,
                reserved: 340_282_366_920_938_463_463_374_607_431_768_211_455,
            }),
        };
        let json = serde_json::to_string(&cmd).expect("serialize");
        assert!(
            json.contains("\"price\":\"340282366920938463463374607431768211455\""),
            "{json}"
        );
        assert!(json.contains("\"type\":\"place\""), "{json}");
        assert!(json.contains("\"time_in_force\":\"IOC\""), "{json}");
        assert!(!json.contains("quote_quantity"), "{json}");
        assert_eq!(
            serde_json::from_str::<SequencedCommand>(&json).expect("deserialize"),
            cmd
        );
    }

    #[test]
    fn amounts_as_json_numbers_or_decimals_are_refused() {
        let base = r#"{"type":"cancel_all","user_id":3}"#;
        assert!(serde_json::from_str::<Command>(base).is_ok());
        let amend = r#"{"type":"amend","order_id":1,"user_id":2,"side":"sell","new_quantity":5}"#;
        assert!(serde_json::from_str::<Command>(amend).is_err());
        let amend =
            r#"{"type":"amend","order_id":1,"user_id":2,"side":"sell","new_quantity":"0.5"}"#;
        assert!(serde_json::from_str::<Command>(amend).is_err());
        let amend = r#"{"type":"amend","order_id":1,"user_id":2,"side":"sell","new_quantity":"5"}"#;
        let parsed = serde_json::from_str::<Command>(amend).expect("valid");
        assert!(matches!(
            parsed,
            Command::Amend(AmendOrder {
                new_quantity: Some(5),
                additional_reserve: 0,
                ..
            })
        ));
    }
}
