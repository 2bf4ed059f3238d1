//! Decimal text <-> fixed-point integer units, with a strict grammar.
//!
//! Accepted: `0`, `12`, `0.015`, `100.50` — ASCII digits, at most one dot with
//! digits on both sides, no sign, no exponent, no separators, no whitespace,
//! no superfluous leading zero, at most `scale` fractional digits.
//! Why strict: clients that send `1e5` or `1_000` almost always have a bug,
//! and guessing what they meant with someone's money is worse than refusing.

use std::fmt;

/// The largest scale an asset may have (wei-style 18 decimals).
pub const SCALE_MAX: u8 = 18;

/// Why a decimal string was refused. `Display` is a message fit for an API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("must not be empty")]
    Empty,
    #[error("must be a plain decimal like \"12.5\" (no sign, exponent, separators or spaces)")]
    Malformed,
    #[error("must not be negative")]
    Negative,
    #[error("has more than {scale} decimal places")]
    TooPrecise { scale: u8 },
    #[error("is too large")]
    Overflow,
    #[error("must be greater than zero")]
    Zero,
    #[error("scale {0} is above the maximum of 18")]
    ScaleTooLarge(u8),
}

/// `10^scale` for `scale <= 38`.
pub const fn pow10(scale: u8) -> u128 {
    10u128.pow(scale as u32)
}

/// Parses `text` into an integer count of `10^-scale` units. Zero is allowed.
pub fn parse_units(text: &str, scale: u8) -> Result<u128, ParseError> {
    if scale > SCALE_MAX {
        return Err(ParseError::ScaleTooLarge(scale));
    }
    if text.is_empty() {
        return Err(ParseError::Empty);
    }
    if text.starts_with('-')
        && text.len() > 1
        && text[1..].bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return Err(ParseError::Negative);
    }
    let (int_part, frac_part) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int_part) || frac_part.is_some_and(|f| !all_digits(f)) {
        return Err(ParseError::Malformed);
    }
    if int_part.len() > 1 && int_part.starts_with('0') {
        return Err(ParseError::Malformed);
    }
    let frac = frac_part.unwrap_or("");
    if frac.len() > usize::from(scale) {
        // Trailing zeros beyond the scale carry no value, but accepting them
        // would make "1.000000000000000000000" legal for some scales and not
        // others; refusing keeps the rule simple to state.
        return Err(ParseError::TooPrecise { scale });
    }
    let mut units: u128 = 0;
    for b in int_part.bytes().chain(frac.bytes()) {
        units = units
            .checked_mul(10)
            .and_then(|u| u.checked_add(u128::from(b - b'0')))
            .ok_or(ParseError::Overflow)?;
    }
    let missing = scale - u8::try_from(frac.len()).map_err(|_| ParseError::Overflow)?;
    units
        .checked_mul(pow10(missing))
        .ok_or(ParseError::Overflow)
}

/// Like [`parse_units`] but zero is refused: for prices and quantities.
pub fn parse_positive_units(text: &str, scale: u8) -> Result<u128, ParseError> {
    match parse_units(text, scale)? {
        0 => Err(ParseError::Zero),
        units => Ok(units),
    }
}

/// Formats `units` at `scale` as the shortest exact decimal: `1500, 3` -> `"1.5"`.
pub fn format_units(units: u128, scale: u8) -> String {
    FormatUnits { units, scale }.to_string()
}

/// Formats a signed unit count (ledger postings): `-1500, 3` -> `"-1.5"`.
pub fn format_signed_units(units: i128, scale: u8) -> String {
    let body = format_units(units.unsigned_abs(), scale);
    if units < 0 { format!("-{body}") } else { body }
}

/// Allocation-free `Display` for an amount, for use in `write!` and serializers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatUnits {
    pub units: u128,
    pub scale: u8,
}

impl fmt::Display for FormatUnits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let one = pow10(self.scale);
        let int = self.units / one;
        let mut frac = self.units % one;
        if frac == 0 {
            return write!(f, "{int}");
        }
        let mut width = usize::from(self.scale);
        while frac.is_multiple_of(10) {
            frac /= 10;
            width -= 1;
        }
        write!(f, "{int}.{frac:0width$}")
    }
}

/// Serde codec for `u128` unit counts as JSON strings of digits (`"150000000"`).
///
/// Why strings: a JSON number above 2^53 loses precision in many parsers
/// (JavaScript, jq, Postgres `json` -> float casts), and `u128` does not fit
/// in `serde_json`'s number model at all without a feature flag. Why raw units
/// rather than decimal text: wire events between services carry amounts
/// without their asset scale attached; the integer is exact and needs no
/// context to round-trip. Use `#[serde(with = "exchange_domain::money::units_string")]`.
pub mod units_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(units: &u128, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(units)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u128, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        super::parse_units(&text, 0).map_err(|e| D::Error::custom(format_args!("amount {e}")))
    }
}

/// Like [`units_string`] for `Option<u128>` (`null` or absent when `None`).
pub mod opt_units_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(
        units: &Option<u128>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match units {
            Some(units) => serializer.collect_str(units),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u128>, D::Error> {
        match Option::<std::borrow::Cow<'de, str>>::deserialize(deserializer)? {
            Some(text) => super::parse_units(&text, 0)
                .map(Some)
                .map_err(|e| D::Error::custom(format_args!("amount {e}"))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_plain_decimals() {
        assert_eq!(parse_units("0", 8), Ok(0));
        assert_eq!(parse_units("12", 2), Ok(1200));
        assert_eq!(parse_units("0.015", 3), Ok(15));
        assert_eq!(parse_units("100.50", 6), Ok(100_500_000));
        assert_eq!(parse_units("1", 0), Ok(1));
    }

    #[test]
    fn refuses_everything_that_is_not_a_plain_decimal() {
        for bad in [
            "NaN", "nan", "inf", "Infinity", "1e5", "1E5", "+1", "1_000", " 1", "1 ", "1,5", ".5",
            "5.", "1.2.3", "0x10", "01", "00.5", "١", "", "-", "--1", "1-",
        ] {
            let err = parse_units(bad, 8).expect_err(bad);
            assert!(
                matches!(
                    err,
                    ParseError::Malformed | ParseError::Empty | ParseError::Negative
                ),
                "{bad}: {err:?}"
            );
        }
        assert_eq!(parse_units("-1", 8), Err(ParseError::Negative));
        assert_eq!(parse_units("-0.5", 8), Err(ParseError::Negative));
    }

    #[test]
    fn refuses_zero_where_meaningless_and_excess_precision_and_overflow() {
        assert_eq!(parse_positive_units("0", 8), Err(ParseError::Zero));
        assert_eq!(parse_positive_units("0.000", 8), Err(ParseError::Zero));
        assert_eq!(
            parse_units("0.123", 2),
            Err(ParseError::TooPrecise { scale: 2 })
        );
        assert_eq!(
            parse_units("1.0", 0),
            Err(ParseError::TooPrecise { scale: 0 })
        );
        assert_eq!(
            parse_units("340282366920938463463374607431768211456", 0),
            Err(ParseError::Overflow)
        );
        assert_eq!(
            parse_units("340282366920938463464", 18),
            Err(ParseError::Overflow)
        );
        assert_eq!(parse_units("1", 19), Err(ParseError::ScaleTooLarge(19)));
    }

    #[test]
    fn formats_shortest_exact() {
        assert_eq!(format_units(0, 8), "0");
        assert_eq!(format_units(1500, 3), "1.5");
        assert_eq!(format_units(15, 3), "0.015");
        assert_eq!(format_units(100_000_000, 8), "1");
        assert_eq!(format_units(1, 18), "0.000000000000000001");
        assert_eq!(format_signed_units(-1500, 3), "-1.5");
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(text in "\\PC{0,40}", scale in 0u8..=20) {
            let _ = parse_units(&text, scale);
        }

        #[test]
        fn never_panics_on_decimal_looking_text(text in "[-+0-9._eE ]{0,45}", scale in 0u8..=18) {
            if let Ok(units) = parse_units(&text, scale) {
                // whatever is accepted reads back to the same value
                prop_assert_eq!(parse_units(&format_units(units, scale), scale), Ok(units));
            }
        }

        #[test]
        fn format_then_parse_round_trips(units in any::<u128>(), scale in 0u8..=18) {
            prop_assert_eq!(parse_units(&format_units(units, scale), scale), Ok(units));
        }
    }
}
