//! The exchange's pure vocabulary: money as fixed-point integers, asset and
//! market symbols, market specifications and the book-independent rules of
//! a placement ([`placement`]), ids, commands and events. No I/O,
//! no clock, no async runtime (serde and thiserror only).
//!
//! Invariants:
//! - An amount never passes through floating point. Text enters through
//!   [`money::parse_units`] (a strict grammar) and leaves through
//!   [`money::format_units`]; in between it is a `u128` count of the
//!   smallest unit of its asset.
//! - A price is quote units per whole base unit; a quantity is base units.
//! - Every fill's quote amount is exact: [`market::MarketSpec::new`] refuses
//!   markets where `tick × step` is not a whole number of quote units, so
//!   trades never round. Only fees round, up, to the receiving asset's unit,
//!   and `fee + net == gross` ([`market::FeeRate`]).
//! - On the wire (commands, events, specs) amounts are JSON strings of raw
//!   integer units (`"150000000"`), never JSON numbers: see
//!   [`money::units_string`]. The public HTTP API formats them as decimals
//!   with [`money::format_units`].

pub mod command;
pub mod event;
pub mod market;
pub mod money;
pub mod order;
pub mod placement;
pub mod symbol;

pub use command::{AmendOrder, Command, PlaceOrder, SequencedCommand};
pub use event::{CommandKind, Event, EventBatch, FinalStatus, ReasonCode};
pub use market::{Asset, FeeRate, MarketSpec, MarketSpecError, MarketSpecFields};
pub use order::{
    AssetRole, MarketStatus, OrderId, OrderType, SelfTradePrevention, Side, TimeInForce, TradeId,
    Trigger, UserId,
};
pub use placement::{CheckedPlacement, PlaceError, PlaceField, Placement, PlacementShape};
pub use symbol::{AssetSymbol, MarketSymbol, SymbolError};
