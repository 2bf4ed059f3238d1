//! The book-independent rules of a new order, in one place: the order
//! service checks them at admission (with its own codes and messages) and
//! the engine checks them again on every journaled command (with its
//! [`ReasonCode`](crate::ReasonCode)s), so the two cannot drift apart.
//!
//! Invariant: [`MarketSpec::check_placement`] accepts exactly what the
//! engine has always accepted. The engine replays journals written by
//! older versions and must accept a command it accepted once, so a rule
//! that only the order service applies (a stricter limit, a rule about how
//! a reserve is computed) stays with the order service, not here.
//!
//! The rules, in the order they are checked (the first broken one is the
//! one reported):
//!
//! 1. the market takes new orders ([`MarketStatus::check_placement`], a
//!    separate call because the order service checks it before parsing);
//! 2. `stop_price` is given exactly for stops and take-profits;
//! 3. `post_only` only on a plain limit order;
//! 4. `stop_price` is a positive whole number of ticks, at most
//!    [`PRICE_TICKS_MAX`];
//! 5. a limit type (limit, stop-limit, take-profit-limit) has `price` and
//!    `quantity` and no `quote_quantity`; the price is on tick and in range
//!    (as 4), the quantity a positive whole number of steps that fits in
//!    `u64` lots, at least [`MarketSpec::min_lots`]; its value
//!    `price × quantity` fits in `u128` quote units and reaches the minimum
//!    notional;
//! 6. a market type has no `price` and exactly one of `quantity` (any side,
//!    checked as in 5) and `quote_quantity` (buys only, positive, not
//!    fill-or-kill, at least the minimum notional).
//!
//! Prices and quantities come out as the engine's integer ticks and lots,
//! so the engine does not divide twice.

use crate::command::PlaceOrder;
use crate::market::MarketSpec;
use crate::order::{MarketStatus, OrderType, Side, TimeInForce};

/// The highest price in ticks: the engine keeps `u64::MAX` free as its
/// "no ask" sentinel.
pub const PRICE_TICKS_MAX: u64 = u64::MAX - 1;

/// A new order's fields that the rules look at; amounts in units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub side: Side,
    pub order_type: OrderType,
    pub price: Option<u128>,
    pub quantity: Option<u128>,
    pub quote_quantity: Option<u128>,
    pub stop_price: Option<u128>,
    pub time_in_force: TimeInForce,
    pub post_only: bool,
}

impl From<&PlaceOrder> for Placement {
    #[inline]
    fn from(cmd: &PlaceOrder) -> Self {
        Self {
            side: cmd.side,
            order_type: cmd.order_type,
            price: cmd.price,
            quantity: cmd.quantity,
            quote_quantity: cmd.quote_quantity,
            stop_price: cmd.stop_price,
            time_in_force: cmd.time_in_force,
            post_only: cmd.post_only,
        }
    }
}

/// A placement that passed every book-independent rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedPlacement {
    pub shape: PlacementShape,
    /// The stop price in ticks, for stops and take-profits.
    pub stop_ticks: Option<u64>,
}

/// What a valid order buys or sells, by order type family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementShape {
    /// Limit, stop-limit or take-profit-limit.
    Limit {
        price_ticks: u64,
        lots: u64,
        /// Base units (`lots × qty_step`).
        quantity: u128,
        /// `price × quantity` in quote units.
        notional: u128,
    },
    /// A market type given a base quantity.
    MarketByQuantity {
        lots: u64,
        /// Base units (`lots × qty_step`).
        quantity: u128,
    },
    /// A market buy given the quote amount to spend.
    MarketByQuote {
        /// Quote units.
        budget: u128,
    },
}

/// Which amount of a placement a rule is about (named as in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceField {
    Price,
    Quantity,
    QuoteQuantity,
    StopPrice,
}

impl PlaceField {
    pub fn as_str(self) -> &'static str {
        match self {
            PlaceField::Price => "price",
            PlaceField::Quantity => "quantity",
            PlaceField::QuoteQuantity => "quote_quantity",
            PlaceField::StopPrice => "stop_price",
        }
    }
}

impl std::fmt::Display for PlaceField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rule a placement broke. The messages are the ones the API shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("the market accepts only cancels")]
    MarketCancelOnly,
    #[error("the market is halted")]
    MarketHalted,
    #[error("stop and take-profit orders need stop_price")]
    StopPriceMissing,
    #[error("stop_price is only for stop and take-profit orders")]
    StopPriceNotAllowed,
    #[error("post_only is only for limit orders")]
    PostOnlyNotLimit,
    /// Only the engine can meet it: the API parses amounts as positive.
    #[error("{0} must be greater than zero")]
    Zero(PlaceField),
    /// `price` or `stop_price`.
    #[error("{0} is not a multiple of the price tick")]
    NotOnTick(PlaceField),
    /// More ticks than [`PRICE_TICKS_MAX`], or lots beyond `u64`.
    #[error("{0} is out of range")]
    OutOfRange(PlaceField),
    #[error("limit orders need price and quantity, and no quote_quantity")]
    LimitFields,
    #[error("quantity is not a multiple of the quantity step")]
    QuantityNotOnStep,
    #[error("quantity is below the market minimum")]
    QuantityTooSmall,
    /// A limit order's `price × quantity` does not fit in `u128`.
    #[error("order value is out of range")]
    ValueOutOfRange,
    /// A limit order's `price × quantity` is below the minimum notional.
    #[error("order value is below the market minimum notional")]
    ValueTooSmall,
    #[error("market orders take no price")]
    MarketWithPrice,
    /// All-or-nothing on a quote budget has no exact meaning (a budget
    /// rarely divides into whole lots).
    #[error("fill-or-kill is not available with quote_quantity")]
    FillOrKillByQuote,
    #[error("quote_quantity is below the market minimum notional")]
    QuoteTooSmall,
    #[error("market sells take quantity, not quote_quantity")]
    SellByQuote,
    #[error("market orders need exactly one of quantity and quote_quantity")]
    MarketAmounts,
}

impl MarketStatus {
    /// Rule 1 (module docs): does the market take new orders?
    #[inline]
    pub fn check_placement(self) -> Result<(), PlaceError> {
        match self {
            MarketStatus::Trading => Ok(()),
            MarketStatus::CancelOnly => Err(PlaceError::MarketCancelOnly),
            MarketStatus::Halted => Err(PlaceError::MarketHalted),
        }
    }
}

impl MarketSpec {
    /// Rules 2 to 6 (module docs), in that order. The market status
    /// (rule 1) is [`MarketStatus::check_placement`].
    #[inline]
    pub fn check_placement(&self, p: &Placement) -> Result<CheckedPlacement, PlaceError> {
        let is_stop = p.order_type.is_conditional();
        if is_stop != p.stop_price.is_some() {
            return Err(if is_stop {
                PlaceError::StopPriceMissing
            } else {
                PlaceError::StopPriceNotAllowed
            });
        }
        if p.post_only && p.order_type != OrderType::Limit {
            return Err(PlaceError::PostOnlyNotLimit);
        }
        let stop_ticks = match p.stop_price {
            Some(stop) => Some(price_ticks(PlaceField::StopPrice, stop, self.price_tick())?),
            None => None,
        };
        let shape = if p.order_type.is_limit() {
            self.check_limit(p)?
        } else {
            self.check_market(p)?
        };
        Ok(CheckedPlacement { shape, stop_ticks })
    }

    #[inline]
    fn check_limit(&self, p: &Placement) -> Result<PlacementShape, PlaceError> {
        let (Some(price), Some(quantity), None) = (p.price, p.quantity, p.quote_quantity) else {
            return Err(PlaceError::LimitFields);
        };
        let price_ticks = price_ticks(PlaceField::Price, price, self.price_tick())?;
        let lots = self.check_quantity(quantity)?;
        // Ticks × lots cannot overflow (two u64s); only the scale can.
        let notional = (u128::from(price_ticks) * u128::from(lots))
            .checked_mul(self.quote_per_tick_lot())
            .ok_or(PlaceError::ValueOutOfRange)?;
        if notional < self.min_notional() {
            return Err(PlaceError::ValueTooSmall);
        }
        Ok(PlacementShape::Limit {
            price_ticks,
            lots,
            quantity,
            notional,
        })
    }

    #[inline]
    fn check_market(&self, p: &Placement) -> Result<PlacementShape, PlaceError> {
        if p.price.is_some() {
            return Err(PlaceError::MarketWithPrice);
        }
        match (p.quantity, p.quote_quantity, p.side) {
            (Some(quantity), None, _) => Ok(PlacementShape::MarketByQuantity {
                lots: self.check_quantity(quantity)?,
                quantity,
            }),
            (None, Some(budget), Side::Buy) => {
                if budget == 0 {
                    return Err(PlaceError::Zero(PlaceField::QuoteQuantity));
                }
                if p.time_in_force == TimeInForce::Fok {
                    return Err(PlaceError::FillOrKillByQuote);
                }
                if budget < self.min_notional() {
                    return Err(PlaceError::QuoteTooSmall);
                }
                Ok(PlacementShape::MarketByQuote { budget })
            }
            (None, Some(_), Side::Sell) => Err(PlaceError::SellByQuote),
            _ => Err(PlaceError::MarketAmounts),
        }
    }

    /// `quantity` in lots, at least the minimum.
    #[inline]
    fn check_quantity(&self, quantity: u128) -> Result<u64, PlaceError> {
        let lots = quantity_lots(quantity, self.qty_step())?;
        if lots < self.min_lots() {
            return Err(PlaceError::QuantityTooSmall);
        }
        Ok(lots)
    }
}

/// `price` (quote units, the value of `field`) as a whole number of
/// `tick`s: positive, on the tick, at most [`PRICE_TICKS_MAX`].
#[inline]
pub fn price_ticks(field: PlaceField, price: u128, tick: u128) -> Result<u64, PlaceError> {
    if price == 0 {
        return Err(PlaceError::Zero(field));
    }
    let (ticks, rest) = div_rem(price, tick);
    if rest != 0 {
        return Err(PlaceError::NotOnTick(field));
    }
    match u64::try_from(ticks) {
        Ok(t) if t <= PRICE_TICKS_MAX => Ok(t),
        _ => Err(PlaceError::OutOfRange(field)),
    }
}

/// `quantity` (base units) as a whole number of `step`s: positive, on the
/// step, within `u64`.
#[inline]
pub fn quantity_lots(quantity: u128, step: u128) -> Result<u64, PlaceError> {
    if quantity == 0 {
        return Err(PlaceError::Zero(PlaceField::Quantity));
    }
    let (lots, rest) = div_rem(quantity, step);
    if rest != 0 {
        return Err(PlaceError::QuantityNotOnStep);
    }
    u64::try_from(lots).map_err(|_| PlaceError::OutOfRange(PlaceField::Quantity))
}

/// u128 division with a 64-bit fast path (the common case on every command).
#[inline]
fn div_rem(a: u128, b: u128) -> (u128, u128) {
    if let (Ok(a), Ok(b)) = (u64::try_from(a), u64::try_from(b)) {
        (u128::from(a / b), u128::from(a % b))
    } else {
        (a / b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::MarketSpecFields;
    use crate::{Asset, AssetSymbol, FeeRate, MarketSymbol};
    use PlaceError::*;
    use PlaceField::{Price, Quantity, QuoteQuantity, StopPrice};

    const TICK: u128 = 10_000; // 0.01 USDT
    const STEP: u128 = 10_000; // 0.0001 BTC
    const MIN_NOTIONAL: u128 = 1_000_000; // 1 USDT

    /// BTC (8) / USDT (6): tick 0.01, step 0.0001, min qty 0.0002, min notional 1.
    fn spec() -> MarketSpec {
        spec_with(|_| {})
    }

    fn spec_with(edit: impl FnOnce(&mut MarketSpecFields)) -> MarketSpec {
        let mut f = MarketSpecFields {
            symbol: MarketSymbol::parse("BTC-USDT").expect("valid"),
            base: Asset {
                symbol: AssetSymbol::parse("BTC").expect("valid"),
                scale: 8,
            },
            quote: Asset {
                symbol: AssetSymbol::parse("USDT").expect("valid"),
                scale: 6,
            },
            price_tick: TICK,
            qty_step: STEP,
            min_qty: 2 * STEP,
            min_notional: MIN_NOTIONAL,
            maker_fee: FeeRate::ZERO,
            taker_fee: FeeRate::ZERO,
        };
        edit(&mut f);
        MarketSpec::new(f).expect("valid spec")
    }

    /// A GTC limit buy of `qty` base units at `price` quote units.
    fn limit(price: u128, qty: u128) -> Placement {
        Placement {
            side: Side::Buy,
            order_type: OrderType::Limit,
            price: Some(price),
            quantity: Some(qty),
            quote_quantity: None,
            stop_price: None,
            time_in_force: TimeInForce::Gtc,
            post_only: false,
        }
    }

    fn market(qty: Option<u128>, quote: Option<u128>) -> Placement {
        Placement {
            order_type: OrderType::Market,
            price: None,
            quantity: qty,
            quote_quantity: quote,
            ..limit(0, 0)
        }
    }

    fn stop(mut p: Placement, order_type: OrderType, stop: u128) -> Placement {
        p.order_type = order_type;
        p.stop_price = Some(stop);
        p
    }

    fn err(p: Placement) -> PlaceError {
        spec().check_placement(&p).expect_err("refused")
    }

    #[test]
    fn valid_placements_come_out_in_ticks_and_lots() {
        let s = spec();
        // 50,000.01 USDT × 0.0002 BTC = 10.000002 USDT.
        let p = limit(5_000_001 * TICK, 2 * STEP);
        assert_eq!(
            s.check_placement(&p),
            Ok(CheckedPlacement {
                shape: PlacementShape::Limit {
                    price_ticks: 5_000_001,
                    lots: 2,
                    quantity: 2 * STEP,
                    notional: 10_000_002,
                },
                stop_ticks: None,
            })
        );
        let sl = stop(p, OrderType::StopLimit, 4_900_000 * TICK);
        assert_eq!(
            s.check_placement(&sl).map(|c| c.stop_ticks),
            Ok(Some(4_900_000))
        );
        assert_eq!(
            s.check_placement(&market(Some(3 * STEP), None)),
            Ok(CheckedPlacement {
                shape: PlacementShape::MarketByQuantity {
                    lots: 3,
                    quantity: 3 * STEP,
                },
                stop_ticks: None,
            })
        );
        let tpm = stop(
            market(None, Some(MIN_NOTIONAL)),
            OrderType::TakeProfitMarket,
            TICK,
        );
        assert_eq!(
            s.check_placement(&tpm),
            Ok(CheckedPlacement {
                shape: PlacementShape::MarketByQuote {
                    budget: MIN_NOTIONAL
                },
                stop_ticks: Some(1),
            })
        );
        // Post-only is a plain limit's option, whatever its time in force
        // (the order service insists on GTC on its own).
        let mut po = limit(10_000 * TICK, 100 * STEP);
        po.post_only = true;
        po.time_in_force = TimeInForce::Ioc;
        assert!(s.check_placement(&po).is_ok());
        // Market sells by quantity; fill-or-kill is fine by quantity.
        let mut sell = market(Some(2 * STEP), None);
        sell.side = Side::Sell;
        sell.time_in_force = TimeInForce::Fok;
        assert!(s.check_placement(&sell).is_ok());
    }

    #[test]
    fn the_market_status_decides_first() {
        assert_eq!(MarketStatus::Trading.check_placement(), Ok(()));
        assert_eq!(
            MarketStatus::CancelOnly.check_placement(),
            Err(MarketCancelOnly)
        );
        assert_eq!(MarketStatus::Halted.check_placement(), Err(MarketHalted));
    }

    #[test]
    fn each_field_must_fit_the_order_type() {
        let ok = limit(10_000 * TICK, 100 * STEP);
        assert_eq!(
            err(Placement {
                order_type: OrderType::StopLimit,
                ..ok
            }),
            StopPriceMissing
        );
        assert_eq!(
            err(Placement {
                order_type: OrderType::TakeProfitMarket,
                ..market(Some(STEP * 2), None)
            }),
            StopPriceMissing
        );
        assert_eq!(
            err(Placement {
                stop_price: Some(TICK),
                ..ok
            }),
            StopPriceNotAllowed
        );
        for mut p in [
            market(Some(2 * STEP), None),
            stop(ok, OrderType::StopLimit, TICK),
        ] {
            p.post_only = true;
            assert_eq!(err(p), PostOnlyNotLimit, "{:?}", p.order_type);
        }
        assert_eq!(err(Placement { price: None, ..ok }), LimitFields);
        assert_eq!(
            err(Placement {
                quantity: None,
                ..ok
            }),
            LimitFields
        );
        assert_eq!(
            err(Placement {
                quote_quantity: Some(MIN_NOTIONAL),
                ..ok
            }),
            LimitFields
        );
        assert_eq!(
            err(Placement {
                price: Some(TICK),
                ..market(Some(2 * STEP), None)
            }),
            MarketWithPrice
        );
        assert_eq!(err(market(None, None)), MarketAmounts);
        assert_eq!(
            err(market(Some(2 * STEP), Some(MIN_NOTIONAL))),
            MarketAmounts
        );
        let mut sell = market(None, Some(MIN_NOTIONAL));
        sell.side = Side::Sell;
        assert_eq!(err(sell), SellByQuote);
        let mut fok = market(None, Some(MIN_NOTIONAL));
        fok.time_in_force = TimeInForce::Fok;
        assert_eq!(err(fok), FillOrKillByQuote);
    }

    #[test]
    fn amounts_must_be_positive_and_on_the_grid() {
        let ok = limit(10_000 * TICK, 100 * STEP);
        assert_eq!(err(limit(0, 10 * STEP)), Zero(Price));
        assert_eq!(err(limit(100 * TICK, 0)), Zero(Quantity));
        assert_eq!(err(stop(ok, OrderType::StopLimit, 0)), Zero(StopPrice));
        assert_eq!(err(market(None, Some(0))), Zero(QuoteQuantity));
        assert_eq!(err(limit(100 * TICK + 1, 10 * STEP)), NotOnTick(Price));
        assert_eq!(
            err(stop(ok, OrderType::StopLimit, TICK - 1)),
            NotOnTick(StopPrice)
        );
        assert_eq!(err(limit(100 * TICK, 10 * STEP + 1)), QuantityNotOnStep);
        assert_eq!(err(market(Some(STEP / 2), None)), QuantityNotOnStep);
    }

    #[test]
    fn ticks_and_lots_have_the_engines_range() {
        let s = spec_with(|f| f.min_notional = 0);
        let top = u128::from(PRICE_TICKS_MAX) * TICK;
        let p = market(Some(2 * STEP), None);
        let at = |stop_price| s.check_placement(&stop(p, OrderType::StopMarket, stop_price));
        assert_eq!(at(top).map(|c| c.stop_ticks), Ok(Some(PRICE_TICKS_MAX)));
        assert_eq!(at(top + TICK), Err(OutOfRange(StopPrice)));
        assert_eq!(
            s.check_placement(&limit(top + TICK, 2 * STEP)),
            Err(OutOfRange(Price))
        );
        let max_lots = u128::from(u64::MAX) * STEP;
        assert!(s.check_placement(&market(Some(max_lots), None)).is_ok());
        assert_eq!(
            s.check_placement(&market(Some(max_lots + STEP), None)),
            Err(OutOfRange(Quantity))
        );
        // Units that do not fit u128 after the price times the quantity
        // still fit as ticks × lots × quote per tick-lot: the engine's way.
        assert!(top.checked_mul(max_lots).is_none());
        assert!(s.check_placement(&limit(top, max_lots)).is_ok());
        let coarse = spec_with(|f| {
            f.base.scale = 0;
            f.price_tick = u128::from(u64::MAX);
            f.qty_step = u128::from(u64::MAX);
            f.min_qty = f.qty_step;
            f.min_notional = 0;
        });
        let huge = u128::from(u64::MAX) * 3;
        assert_eq!(
            coarse.check_placement(&limit(huge, huge)),
            Err(ValueOutOfRange)
        );
    }

    #[test]
    fn minimums_of_quantity_and_value() {
        assert_eq!(err(limit(10_000 * TICK, STEP)), QuantityTooSmall);
        assert_eq!(err(market(Some(STEP), None)), QuantityTooSmall);
        // 0.99 USDT × 1 BTC.
        assert_eq!(err(limit(99 * TICK, 100_000_000)), ValueTooSmall);
        assert!(
            spec()
                .check_placement(&limit(100 * TICK, 100_000_000))
                .is_ok()
        );
        assert_eq!(err(market(None, Some(MIN_NOTIONAL - 1))), QuoteTooSmall);
        // A market order by quantity has no price to value it at here.
        assert!(
            spec()
                .check_placement(&market(Some(2 * STEP), None))
                .is_ok()
        );
    }

    #[test]
    fn a_minimum_beyond_u64_lots_counts_as_u64_max_lots() {
        let s = spec_with(|f| f.min_qty = (u128::from(u64::MAX) + 1) * STEP);
        assert_eq!(s.min_lots(), u64::MAX);
        let max_lots = u128::from(u64::MAX) * STEP;
        assert!(s.check_placement(&market(Some(max_lots), None)).is_ok());
        assert_eq!(
            s.check_placement(&market(Some(max_lots - STEP), None)),
            Err(QuantityTooSmall)
        );
    }

    #[test]
    fn the_first_broken_rule_is_the_one_reported() {
        // Each line breaks its rule and every later one it can.
        let mut p = stop(market(Some(1), Some(0)), OrderType::StopLimit, 1);
        p.price = None;
        p.stop_price = None;
        p.post_only = true;
        assert_eq!(err(p), StopPriceMissing);
        p.stop_price = Some(1);
        assert_eq!(err(p), PostOnlyNotLimit);
        p.post_only = false;
        assert_eq!(err(p), NotOnTick(StopPrice));
        p.stop_price = Some(TICK);
        assert_eq!(err(p), LimitFields);
        p.quote_quantity = None;
        p.price = Some(u128::MAX);
        assert_eq!(err(p), NotOnTick(Price));
        p.price = Some(TICK);
        assert_eq!(err(p), QuantityNotOnStep);
        p.quantity = Some(STEP);
        assert_eq!(err(p), QuantityTooSmall);
        p.quantity = Some(2 * STEP);
        assert_eq!(err(p), ValueTooSmall);

        let mut m = stop(market(Some(1), Some(0)), OrderType::StopMarket, TICK);
        m.price = Some(1);
        assert_eq!(err(m), MarketWithPrice);
        m.price = None;
        assert_eq!(err(m), MarketAmounts);
        m.quantity = None;
        m.time_in_force = TimeInForce::Fok;
        assert_eq!(err(m), Zero(QuoteQuantity));
        m.quote_quantity = Some(1);
        assert_eq!(err(m), FillOrKillByQuote);
        m.time_in_force = TimeInForce::Ioc;
        assert_eq!(err(m), QuoteTooSmall);
        m.side = Side::Sell;
        assert_eq!(err(m), SellByQuote);
    }

    #[test]
    fn messages_name_the_field() {
        assert_eq!(
            NotOnTick(StopPrice).to_string(),
            "stop_price is not a multiple of the price tick"
        );
        assert_eq!(OutOfRange(Quantity).to_string(), "quantity is out of range");
        assert_eq!(
            Zero(QuoteQuantity).to_string(),
            "quote_quantity must be greater than zero"
        );
    }
}
