//! The exchange's pure vocabulary: money as fixed-point integers, assets,
//! markets, ids, commands and events. No I/O, no clock, no async runtime.
//!
//! Invariant: an amount never passes through floating point. Text enters
//! through [`money::parse_units`] (a strict grammar) and leaves through
//! [`money::format_units`]; in between it is an integer count of the
//! smallest unit at a known scale.

pub mod money;
