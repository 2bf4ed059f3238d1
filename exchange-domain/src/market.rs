//! Assets, fee rates and market specifications.
//!
//! Units: every amount is a `u128` count of the smallest unit of its asset
//! (`10^-scale`). A **price** is the number of *quote* units paid for one
//! whole base unit (so `price_tick` is in quote units); a **quantity** is in
//! base units.
//!
//! The exactness rule: the quote amount of any fill, `price × qty`, must be a
//! whole number of quote units. With price `a × tick` and quantity
//! `b × step` that amount is `a × b × tick × step / 10^base_scale`, so it is
//! whole for every `a, b` exactly when `tick × step` is a multiple of
//! `10^base_scale` — which is "price decimals + quantity decimals <= quote
//! scale" stated in integers. [`MarketSpec::new`] refuses markets that break
//! it, so no trade ever needs rounding; only fees round (see [`FeeRate`]).

use serde::{Deserialize, Serialize};

use crate::money::{SCALE_MAX, pow10};
use crate::symbol::{AssetSymbol, MarketSymbol};

/// An asset and the number of decimals of its smallest unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asset {
    pub symbol: AssetSymbol,
    pub scale: u8,
}

/// Parts per million of the gross amount received (`1_000` = 0.1 %).
///
/// Rounding: a fee is rounded **up** to the receiving asset's smallest unit
/// (the exchange never books less than the stated rate; a user is never
/// charged more than one unit above it). The net is `gross - fee`, so
/// `fee + net == gross` exactly, and since the rate is at most 100 % the fee
/// never exceeds the gross. Rebates (negative rates) are not supported.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "u32", into = "u32")]
pub struct FeeRate(u32);

impl TryFrom<u32> for FeeRate {
    type Error = MarketSpecError;
    fn try_from(ppm: u32) -> Result<Self, Self::Error> {
        Self::from_ppm(ppm)
    }
}

impl From<FeeRate> for u32 {
    fn from(rate: FeeRate) -> u32 {
        rate.0
    }
}

impl FeeRate {
    pub const PPM_ONE: u32 = 1_000_000;
    pub const ZERO: FeeRate = FeeRate(0);

    /// `ppm` parts per million; refused above 100 %.
    pub fn from_ppm(ppm: u32) -> Result<Self, MarketSpecError> {
        if ppm > Self::PPM_ONE {
            return Err(MarketSpecError::FeeTooHigh);
        }
        Ok(Self(ppm))
    }

    pub fn ppm(self) -> u32 {
        self.0
    }

    /// The fee on `gross` units: `ceil(gross × ppm / 10^6)`, exact for every
    /// `u128` (split into quotient and remainder so nothing overflows).
    pub fn fee_on(self, gross: u128) -> u128 {
        let ppm = u128::from(self.0);
        let one = u128::from(Self::PPM_ONE);
        if let Ok(small) = u64::try_from(gross)
            && small <= u64::MAX / u64::from(Self::PPM_ONE)
        {
            // Hot path: 64-bit arithmetic, no 128-bit division.
            let p = small * u64::from(self.0);
            return u128::from(p.div_ceil(u64::from(Self::PPM_ONE)));
        }
        let (q, r) = (gross / one, gross % one);
        q * ppm + (r * ppm).div_ceil(one)
    }
}

/// Why a market specification was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarketSpecError {
    #[error("market symbol does not match its base and quote assets")]
    SymbolMismatch,
    #[error("asset scale is above the maximum of {SCALE_MAX}")]
    ScaleTooLarge,
    #[error("price tick must be greater than zero")]
    ZeroTick,
    #[error("quantity step must be greater than zero")]
    ZeroStep,
    #[error("minimum quantity must be a positive multiple of the quantity step")]
    BadMinQty,
    #[error(
        "price tick × quantity step is not a whole number of quote units: \
         price decimals + quantity decimals must not exceed the quote scale"
    )]
    InexactNotional,
    #[error("a tick or step is too large for the engine's 64-bit ticks and lots")]
    OutOfRange,
    #[error("fee rate must be at most 1000000 ppm (100%)")]
    FeeTooHigh,
}

/// Everything the engine needs to know about a market. Construct with
/// [`MarketSpec::new`], which enforces the exactness rule (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MarketSpecFields", into = "MarketSpecFields")]
pub struct MarketSpec {
    fields: MarketSpecFields,
    /// Quote units of one tick × one lot: `tick × step / 10^base_scale`.
    quote_per_tick_lot: u128,
    /// `min_qty / qty_step`, capped at `u64::MAX`.
    min_lots: u64,
}

/// The plain fields of a [`MarketSpec`]; validated by [`MarketSpec::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketSpecFields {
    pub symbol: MarketSymbol,
    pub base: Asset,
    pub quote: Asset,
    /// Quote units.
    #[serde(with = "crate::money::units_string")]
    pub price_tick: u128,
    /// Base units.
    #[serde(with = "crate::money::units_string")]
    pub qty_step: u128,
    /// Base units; a positive multiple of `qty_step`.
    #[serde(with = "crate::money::units_string")]
    pub min_qty: u128,
    /// Quote units; `price × qty` of a limit order must reach it.
    #[serde(with = "crate::money::units_string")]
    pub min_notional: u128,
    pub maker_fee: FeeRate,
    pub taker_fee: FeeRate,
}

impl TryFrom<MarketSpecFields> for MarketSpec {
    type Error = MarketSpecError;
    fn try_from(fields: MarketSpecFields) -> Result<Self, Self::Error> {
        MarketSpec::new(fields)
    }
}

impl From<MarketSpec> for MarketSpecFields {
    fn from(spec: MarketSpec) -> Self {
        spec.fields
    }
}

impl MarketSpec {
    pub fn new(fields: MarketSpecFields) -> Result<Self, MarketSpecError> {
        let f = &fields;
        if f.symbol.base() != f.base.symbol || f.symbol.quote() != f.quote.symbol {
            return Err(MarketSpecError::SymbolMismatch);
        }
        if f.base.scale > SCALE_MAX || f.quote.scale > SCALE_MAX {
            return Err(MarketSpecError::ScaleTooLarge);
        }
        if f.price_tick == 0 {
            return Err(MarketSpecError::ZeroTick);
        }
        if f.qty_step == 0 {
            return Err(MarketSpecError::ZeroStep);
        }
        if f.min_qty == 0 || !f.min_qty.is_multiple_of(f.qty_step) {
            return Err(MarketSpecError::BadMinQty);
        }
        // The engine keeps prices and quantities as u64 ticks and lots; a
        // tick or step above u64::MAX would leave no room for any value.
        if u64::try_from(f.price_tick).is_err() || u64::try_from(f.qty_step).is_err() {
            return Err(MarketSpecError::OutOfRange);
        }
        let tick_lot = f
            .price_tick
            .checked_mul(f.qty_step)
            .ok_or(MarketSpecError::OutOfRange)?;
        let one_base = pow10(f.base.scale);
        if !tick_lot.is_multiple_of(one_base) {
            return Err(MarketSpecError::InexactNotional);
        }
        Ok(Self {
            fields,
            quote_per_tick_lot: tick_lot / one_base,
            min_lots: u64::try_from(f.min_qty / f.qty_step).unwrap_or(u64::MAX),
        })
    }

    pub fn fields(&self) -> &MarketSpecFields {
        &self.fields
    }
    pub fn symbol(&self) -> MarketSymbol {
        self.fields.symbol
    }
    pub fn base(&self) -> Asset {
        self.fields.base
    }
    pub fn quote(&self) -> Asset {
        self.fields.quote
    }
    pub fn price_tick(&self) -> u128 {
        self.fields.price_tick
    }
    pub fn qty_step(&self) -> u128 {
        self.fields.qty_step
    }
    pub fn min_qty(&self) -> u128 {
        self.fields.min_qty
    }
    pub fn min_notional(&self) -> u128 {
        self.fields.min_notional
    }
    pub fn maker_fee(&self) -> FeeRate {
        self.fields.maker_fee
    }
    pub fn taker_fee(&self) -> FeeRate {
        self.fields.taker_fee
    }
    /// Quote units paid for one lot at one tick; every fill's quote amount
    /// is `price_ticks × lots × quote_per_tick_lot`.
    pub fn quote_per_tick_lot(&self) -> u128 {
        self.quote_per_tick_lot
    }
    /// The minimum quantity in lots, as the engine compares it. A minimum
    /// above `u64::MAX` lots counts as `u64::MAX`, so an order of exactly
    /// `u64::MAX` lots meets it (the order service, comparing in units,
    /// refuses that one on its own).
    pub fn min_lots(&self) -> u64 {
        self.min_lots
    }

    /// The exact quote amount of `qty` base units at `price` (quote units per
    /// whole base unit), or `None` if it is not whole (off-grid input) or
    /// overflows.
    pub fn notional(&self, price: u128, qty: u128) -> Option<u128> {
        let product = price.checked_mul(qty)?;
        let one_base = pow10(self.fields.base.scale);
        product
            .is_multiple_of(one_base)
            .then_some(product / one_base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn fields(
        base_scale: u8,
        quote_scale: u8,
        tick: u128,
        step: u128,
    ) -> MarketSpecFields {
        MarketSpecFields {
            symbol: MarketSymbol::parse("BTC-USDT").expect("valid"),
            base: Asset {
                symbol: AssetSymbol::parse("BTC").expect("valid"),
                scale: base_scale,
            },
            quote: Asset {
                symbol: AssetSymbol::parse("USDT").expect("valid"),
                scale: quote_scale,
            },
            price_tick: tick,
            qty_step: step,
            min_qty: step,
            min_notional: 0,
            maker_fee: FeeRate::from_ppm(1_000).expect("valid"),
            taker_fee: FeeRate::from_ppm(2_000).expect("valid"),
        }
    }

    #[test]
    fn exactness_rule_is_enforced_at_creation() {
        // tick 0.01 USDT (scale 6 -> 10_000 units), step 0.0001 BTC (scale 8 -> 10_000):
        // 2 + 4 decimals <= 6: exact.
        let spec = MarketSpec::new(fields(8, 6, 10_000, 10_000)).expect("exact");
        assert_eq!(spec.quote_per_tick_lot(), 1);
        // step 0.00001 BTC: 2 + 5 > 6 decimals: a fill could be 0.0000001 USDT.
        assert_eq!(
            MarketSpec::new(fields(8, 6, 10_000, 1_000)),
            Err(MarketSpecError::InexactNotional)
        );
        // tick 0.05, step 0.2: product 0.01 is whole at scale 2 even though 2+1 > 2.
        assert!(MarketSpec::new(fields(1, 2, 5, 2)).is_ok());
    }

    #[test]
    fn refuses_bad_specs() {
        assert_eq!(
            MarketSpec::new(fields(8, 6, 0, 1)),
            Err(MarketSpecError::ZeroTick)
        );
        assert_eq!(
            MarketSpec::new(fields(8, 6, 1, 0)),
            Err(MarketSpecError::ZeroStep)
        );
        assert_eq!(
            MarketSpec::new(fields(19, 6, 1, 1)),
            Err(MarketSpecError::ScaleTooLarge)
        );
        let mut f = fields(0, 0, 1, 2);
        f.min_qty = 3;
        assert_eq!(MarketSpec::new(f), Err(MarketSpecError::BadMinQty));
        let mut f = fields(0, 0, 1, 1);
        f.symbol = MarketSymbol::parse("ETH-USDT").expect("valid");
        assert_eq!(MarketSpec::new(f), Err(MarketSpecError::SymbolMismatch));
        assert_eq!(
            FeeRate::from_ppm(1_000_001),
            Err(MarketSpecError::FeeTooHigh)
        );
        assert_eq!(
            MarketSpec::new(fields(0, 0, u128::from(u64::MAX) + 1, 1)),
            Err(MarketSpecError::OutOfRange)
        );
    }

    #[test]
    fn fees_round_up_and_never_exceed_gross() {
        let r = FeeRate::from_ppm(1_000).expect("valid"); // 0.1 %
        assert_eq!(r.fee_on(0), 0);
        assert_eq!(r.fee_on(1), 1); // 0.001 rounds up
        assert_eq!(r.fee_on(1_000), 1);
        assert_eq!(r.fee_on(1_001), 2);
        assert_eq!(r.fee_on(2_000_000), 2_000);
        assert_eq!(FeeRate::ZERO.fee_on(u128::MAX), 0);
        let full = FeeRate::from_ppm(1_000_000).expect("valid");
        assert_eq!(full.fee_on(u128::MAX), u128::MAX);
        // The wide path agrees with the narrow one at the boundary.
        let big = u128::from(u64::MAX);
        assert_eq!(r.fee_on(big), big.div_ceil(1_000));
    }

    #[test]
    fn notional_is_exact_or_none() {
        let spec = MarketSpec::new(fields(8, 6, 10_000, 10_000)).expect("exact");
        // 50_000.01 USDT × 0.0002 BTC = 10.000002 USDT
        assert_eq!(spec.notional(50_000_010_000, 20_000), Some(10_000_002));
        assert_eq!(spec.notional(1, 1), None);
    }

    #[test]
    fn spec_serde_validates() {
        let spec = MarketSpec::new(fields(8, 6, 10_000, 10_000)).expect("exact");
        let json = serde_json::to_string(&spec).expect("serialize");
        assert!(json.contains("\"price_tick\":\"10000\""), "{json}");
        assert_eq!(
            serde_json::from_str::<MarketSpec>(&json).expect("deserialize"),
            spec
        );
        let bad = json.replace("\"qty_step\":\"10000\"", "\"qty_step\":\"1000\"");
        assert!(serde_json::from_str::<MarketSpec>(&bad).is_err());
    }
}

#[cfg(test)]
mod fee_props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fee_is_the_ceiling_of_the_exact_rate(gross in 0u128..(1u128 << 100), ppm in 0u32..=1_000_000) {
            let rate = FeeRate::from_ppm(ppm).expect("in range");
            let fee = rate.fee_on(gross);
            // Independent formula: fee is the least f with f × 10^6 >= gross × ppm.
            let exact = gross * u128::from(ppm);
            prop_assert!(fee * 1_000_000 >= exact);
            prop_assert!(fee == 0 || (fee - 1) * 1_000_000 < exact);
            prop_assert!(fee <= gross);
        }
    }
}
