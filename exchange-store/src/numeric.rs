//! The conversion between Postgres `NUMERIC` text and integer units: the
//! database keeps decimal values of the asset (`0.015`), the code counts
//! units (`1_500_000` at scale 8). Numerics cross the boundary as text
//! (`::text` on the way out, `$n::numeric` on the way in), never as floats.

use exchange_domain::money::{format_units, parse_units};

/// Converts a Postgres numeric's text to units at `scale`. Trailing zeros
/// beyond the scale (`1.50000000000`) are fine; real excess precision or a
/// negative value is an error (it would be a bug elsewhere).
pub fn db_units(text: &str, scale: u8) -> anyhow::Result<u128> {
    let trimmed = match text.split_once('.') {
        Some((int, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                int.to_owned()
            } else {
                format!("{int}.{frac}")
            }
        }
        None => text.to_owned(),
    };
    parse_units(&trimmed, scale)
        .map_err(|e| anyhow::anyhow!("numeric {text:?} at scale {scale}: {e}"))
}

/// Units as a decimal text for binding as `$n::numeric`.
pub fn db_text(units: u128, scale: u8) -> String {
    format_units(units, scale)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn numeric_text_to_units() {
        assert_eq!(db_units("1.50000000000", 8).unwrap(), 150_000_000);
        assert_eq!(db_units("0.015", 3).unwrap(), 15);
        assert_eq!(db_units("100", 2).unwrap(), 10_000);
        assert_eq!(db_units("0", 2).unwrap(), 0);
        assert_eq!(db_units("0.000", 2).unwrap(), 0);
        assert!(db_units("0.001", 2).is_err());
        assert!(db_units("-1", 2).is_err());
        assert_eq!(db_text(150_000_000, 8), "1.5");
    }
}

/// The scales of a market's two assets: how its amounts are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scales {
    pub base: u8,
    pub quote: u8,
}

impl Scales {
    /// For a market no longer known: the most digits a stored numeric
    /// can carry here, so nothing is cut.
    pub const STORED: Scales = Scales {
        base: 18,
        quote: 18,
    };
}

/// A numeric's text at `scale`, formatted shortest-exact; the raw text
/// should it not fit the scale (it cannot, by construction).
pub fn amount(text: &str, scale: u8) -> String {
    match db_units(text, scale) {
        Ok(units) => format_units(units, scale),
        Err(_) => text.to_owned(),
    }
}
