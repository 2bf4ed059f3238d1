//! Order book and matching for one market: pure and deterministic.
//!
//! Owns: [`OrderBook`] (price-time priority matching of limit, market,
//! stop-limit, stop-market, take-profit-limit and take-profit-market
//! orders with GTC/IOC/FOK, post-only,
//! self-trade prevention, cancel, cancel-all, amend and market status), its
//! snapshot byte format and state hash ([`snapshot`]), and a naive
//! [`reference::ReferenceBook`] that tests compare it against.
//!
//! `book.apply(seq, time_ms, &command) -> events`: sequence and time are
//! inputs; there is no clock, no I/O, no randomness, and no hash-map
//! iteration that reaches an event. The same commands from the same state
//! give byte-identical events and the same [`OrderBook::state_hash`].
//!
//! Invariants (asserted where they protect money, tested everywhere):
//! - the book is never crossed after a command (best bid < best ask);
//! - every fill is at the maker's price, within the taker's limit;
//! - prices and quantities are integer ticks and lots inside; every fill's
//!   quote amount is exact (see `exchange_domain::market`);
//! - per order, `reserved = spent + released`: the engine never spends more
//!   than the order service reserved, and releases the rest when the order
//!   ends (`OrderDone.release`), when an amend needs less
//!   (`Amended.released`), or when an amend is refused
//!   (`CommandRejected.release`);
//! - fee + net = gross for every fill; fees round up (`FeeRate`).
//!
//! Event order for a placement: `OrderAccepted`; then for each fill a
//! `Trade` (and `OrderDone` for a maker it finished, or expired by
//! self-trade prevention), a `BookLevel` each time the sweep leaves a level
//! it changed; then the taker's `OrderDone` or, if it rests, its
//! `BookLevel`; then, for each pending order that the new last price
//! triggers (buy stops lowest stop first, then sell stops highest first,
//! then take-profit buys highest first, then take-profit sells lowest
//! first, ties by arrival; re-checked after each one, so triggers cascade),
//! `StopTriggered` followed by that order's own events.
//!
//! Trigger directions (as Binance): a stop buys when the last price rises
//! to or above its stop price and sells when it falls to or below it; a
//! take-profit is the opposite (buys at or below, sells at or above). A
//! stop or take-profit whose condition already holds at placement is
//! rejected (`StopWouldTriggerImmediately`, Binance's -2021).

mod book;
pub mod reference;
mod rules;
pub mod snapshot;

pub use book::{ApplyError, Depth, OrderBook, OrderView};
pub use snapshot::SnapshotError;

#[cfg(test)]
mod tests;
