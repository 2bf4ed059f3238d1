//! Asset and market symbols: validated once, then `Copy` and allocation-free.
//!
//! An asset symbol is 1..=16 ASCII uppercase letters or digits (`BTC`,
//! `USDT`, `1INCH`). A market symbol is `BASE-QUOTE` of two distinct asset
//! symbols. Lowercase is refused rather than folded: a symbol is an
//! identifier that ends up in stream keys and URLs, and one spelling per
//! thing keeps those unambiguous.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

/// The longest asset symbol, in bytes.
pub const ASSET_SYMBOL_LEN_MAX: usize = 16;

/// Why a symbol was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SymbolError {
    #[error("asset symbol must be 1 to 16 uppercase ASCII letters or digits")]
    InvalidAsset,
    #[error("market symbol must be BASE-QUOTE, e.g. BTC-USDT")]
    InvalidMarket,
    #[error("market base and quote must differ")]
    SameAsset,
}

/// An asset symbol such as `BTC`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssetSymbol {
    bytes: [u8; ASSET_SYMBOL_LEN_MAX],
    len: u8,
}

impl AssetSymbol {
    pub fn parse(text: &str) -> Result<Self, SymbolError> {
        let raw = text.as_bytes();
        if raw.is_empty() || raw.len() > ASSET_SYMBOL_LEN_MAX {
            return Err(SymbolError::InvalidAsset);
        }
        if !raw
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(SymbolError::InvalidAsset);
        }
        let mut bytes = [0u8; ASSET_SYMBOL_LEN_MAX];
        bytes[..raw.len()].copy_from_slice(raw);
        let len = u8::try_from(raw.len()).map_err(|_| SymbolError::InvalidAsset)?;
        Ok(Self { bytes, len })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored (checked in `parse`).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Display for AssetSymbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for AssetSymbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AssetSymbol({})", self.as_str())
    }
}

impl FromStr for AssetSymbol {
    type Err = SymbolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for AssetSymbol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AssetSymbol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Self::parse(&text).map_err(D::Error::custom)
    }
}

/// A market symbol `BASE-QUOTE` such as `BTC-USDT`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MarketSymbol {
    base: AssetSymbol,
    quote: AssetSymbol,
}

impl MarketSymbol {
    pub fn new(base: AssetSymbol, quote: AssetSymbol) -> Result<Self, SymbolError> {
        if base == quote {
            return Err(SymbolError::SameAsset);
        }
        Ok(Self { base, quote })
    }

    pub fn parse(text: &str) -> Result<Self, SymbolError> {
        let (base, quote) = text.split_once('-').ok_or(SymbolError::InvalidMarket)?;
        let base = AssetSymbol::parse(base).map_err(|_| SymbolError::InvalidMarket)?;
        let quote = AssetSymbol::parse(quote).map_err(|_| SymbolError::InvalidMarket)?;
        Self::new(base, quote)
    }

    pub fn base(&self) -> AssetSymbol {
        self.base
    }

    pub fn quote(&self) -> AssetSymbol {
        self.quote
    }
}

impl fmt::Display for MarketSymbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.base, self.quote)
    }
}

impl fmt::Debug for MarketSymbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MarketSymbol({self})")
    }
}

impl FromStr for MarketSymbol {
    type Err = SymbolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for MarketSymbol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MarketSymbol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Self::parse(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_symbols() {
        assert_eq!(
            AssetSymbol::parse("BTC").map(|s| s.to_string()),
            Ok("BTC".to_string())
        );
        assert!(AssetSymbol::parse("1INCH").is_ok());
        assert!(AssetSymbol::parse("ABCDEFGHIJKLMNOP").is_ok());
        for bad in ["", "btc", "BT C", "BTC-", "ABCDEFGHIJKLMNOPQ", "BTÇ", "B_T"] {
            assert_eq!(
                AssetSymbol::parse(bad),
                Err(SymbolError::InvalidAsset),
                "{bad}"
            );
        }
    }

    #[test]
    fn market_symbols() {
        let m = MarketSymbol::parse("BTC-USDT").expect("valid");
        assert_eq!(m.base().as_str(), "BTC");
        assert_eq!(m.quote().as_str(), "USDT");
        assert_eq!(m.to_string(), "BTC-USDT");
        assert_eq!(MarketSymbol::parse("BTC-BTC"), Err(SymbolError::SameAsset));
        for bad in [
            "BTCUSDT",
            "BTC-",
            "-USDT",
            "btc-usdt",
            "BTC-USDT-X",
            "BTC_USDT",
        ] {
            assert!(MarketSymbol::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let m = MarketSymbol::parse("ETH-BTC").expect("valid");
        let json = serde_json::to_string(&m).expect("serialize");
        assert_eq!(json, "\"ETH-BTC\"");
        assert_eq!(
            serde_json::from_str::<MarketSymbol>(&json).expect("deserialize"),
            m
        );
        assert!(serde_json::from_str::<MarketSymbol>("\"eth-btc\"").is_err());
        assert!(serde_json::from_str::<AssetSymbol>("\"\"").is_err());
    }
}
