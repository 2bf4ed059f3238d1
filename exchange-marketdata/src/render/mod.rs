//! Market data as its two wire formats spell it, side by side: [`native`]
//! (API.md: REST bodies and the `/ws` channels) and [`binance`] (the
//! Binance-style streams). Each reads the market's state
//! ([`crate::state`]) and returns text; neither knows who receives it.
//!
//! JSON is written by hand: every value is digits, a dot, a fixed word or a
//! validated symbol, so nothing needs escaping, and a message costs one
//! `String` (sized up front) however many connections share it.

pub mod binance;
pub mod native;

use std::fmt::{Display, Write as _};

use exchange_domain::money::FormatUnits;

use crate::state::Scales;

/// A price (or a quote amount): in quote units.
fn price(scales: Scales, units: u128) -> FormatUnits {
    FormatUnits {
        units,
        scale: scales.quote,
    }
}

/// A quantity: in base units.
fn qty(scales: Scales, units: u128) -> FormatUnits {
    FormatUnits {
        units,
        scale: scales.base,
    }
}

/// `[["price","quantity"],..]`, each decimal as the format `spell`s it.
fn write_levels<D: Display>(
    out: &mut String,
    scales: Scales,
    levels: impl Iterator<Item = (u128, u128)>,
    spell: impl Fn(FormatUnits) -> D,
) {
    out.push('[');
    for (n, (p, q)) in levels.enumerate() {
        if n > 0 {
            out.push(',');
        }
        let (p, q) = (spell(price(scales, p)), spell(qty(scales, q)));
        let _ = write!(out, "[\"{p}\",\"{q}\"]");
    }
    out.push(']');
}
