//! Placement and amend rules: pure functions from a request and a market
//! to either a validated order (units, the reserve it needs) or a stable
//! rejection code. Handlers and the batcher only translate.
//!
//! A placement goes through the same rules as in the engine
//! (`MarketSpec::check_placement`, `exchange_domain::placement`), plus
//! this service's own: the client order id, post-only only as GTC, the
//! minimum notional of a stop-market order by quantity at its stop price, a
//! quote budget for stop-market buys, two limits drawn tighter than the
//! engine's (see [`validate_place`]) and the reserve. So an order this service
//! accepts is rejected by the engine only for reasons that need the book
//! (post-only would take, a stop already reached, a duplicate id) or a
//! market status that changed in between.
//!
//! ## What an order reserves (moved from available to locked)
//!
//! | order | reserve |
//! |---|---|
//! | limit / stop-limit buy | `price × quantity` quote |
//! | limit / stop-limit sell, market / stop-market sell | `quantity` base |
//! | market / stop-market buy with `quote_quantity` | `quote_quantity` quote |
//! | market buy with `quantity` only | the user's **whole available quote** at placement |
//! | stop-market buy with `quantity` only | refused (`INVALID_ORDER`): use `quote_quantity` |
//!
//! Why the whole available balance for a market buy by base quantity: no
//! price is known before matching, and the engine never spends more than
//! the reserve (it stops at what the reserve affords), then releases the
//! rest in the same event batch, so the lock lasts one command. For a stop
//! order that lock would last until the trigger, which could be days, so a
//! stop-market buy must state its quote budget.

use exchange_common::ErrorCode;
use exchange_domain::money::{ParseError, parse_positive_units};
use exchange_domain::placement;
use exchange_domain::{
    CheckedPlacement, MarketSpec, MarketStatus, OrderType, PlaceError, PlaceField, Placement,
    PlacementShape, SelfTradePrevention, Side, TimeInForce,
};

/// The longest `client_order_id`, in bytes (the column's check).
pub const CLIENT_ORDER_ID_LEN_MAX: usize = 64;

/// A business rejection: a stable code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub code: ErrorCode,
    pub message: String,
}

impl Reject {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidOrder, message)
    }
}

/// A placement as the API receives it, after JSON decoding (amounts still text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceInput<'a> {
    pub side: Side,
    pub order_type: OrderType,
    pub price: Option<&'a str>,
    pub quantity: Option<&'a str>,
    pub quote_quantity: Option<&'a str>,
    pub stop_price: Option<&'a str>,
    pub time_in_force: Option<TimeInForce>,
    pub post_only: bool,
    pub stp: SelfTradePrevention,
    pub client_order_id: Option<&'a str>,
}

/// How much a validated order must lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// Exactly this many units of the spent asset.
    Exact(u128),
    /// Everything available of the spent asset (market buy by base quantity).
    AllAvailable,
}

/// A placement that passed every check this service can make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPlace {
    pub side: Side,
    pub order_type: OrderType,
    pub price: Option<u128>,
    pub quantity: Option<u128>,
    pub quote_quantity: Option<u128>,
    pub stop_price: Option<u128>,
    pub time_in_force: TimeInForce,
    pub post_only: bool,
    pub stp: SelfTradePrevention,
    pub client_order_id: Option<String>,
    pub reserve: Reserve,
}

fn amount(field: &str, text: Option<&str>, scale: u8) -> Result<Option<u128>, Reject> {
    text.map(|t| {
        parse_positive_units(t, scale)
            .map_err(|e: ParseError| Reject::new(ErrorCode::InvalidAmount, format!("{field} {e}")))
    })
    .transpose()
}

/// This service's code and message for a broken placement rule.
pub fn reject(e: PlaceError) -> Reject {
    let code = match e {
        PlaceError::MarketCancelOnly | PlaceError::MarketHalted => ErrorCode::MarketNotTrading,
        PlaceError::Zero(_) => ErrorCode::InvalidAmount,
        PlaceError::NotOnTick(_) => ErrorCode::PriceNotOnTick,
        PlaceError::QuantityNotOnStep => ErrorCode::QuantityNotOnStep,
        PlaceError::QuantityTooSmall => ErrorCode::QuantityTooSmall,
        PlaceError::ValueTooSmall | PlaceError::QuoteTooSmall => ErrorCode::NotionalTooSmall,
        PlaceError::StopPriceMissing
        | PlaceError::StopPriceNotAllowed
        | PlaceError::PostOnlyNotLimit
        | PlaceError::OutOfRange(_)
        | PlaceError::LimitFields
        | PlaceError::ValueOutOfRange
        | PlaceError::MarketWithPrice
        | PlaceError::FillOrKillByQuote
        | PlaceError::SellByQuote
        | PlaceError::MarketAmounts => ErrorCode::InvalidOrder,
    };
    Reject::new(code, e.to_string())
}

/// Checks `price` against the tick and the engine's 64-bit tick range.
pub fn check_price(spec: &MarketSpec, field: PlaceField, price: u128) -> Result<(), Reject> {
    placement::price_ticks(field, price, spec.price_tick())
        .map(drop)
        .map_err(reject)
}

/// Checks `qty` against the step, the 64-bit lot range and the minimum.
pub fn check_quantity(spec: &MarketSpec, qty: u128) -> Result<(), Reject> {
    placement::quantity_lots(qty, spec.qty_step()).map_err(reject)?;
    check_min_quantity(spec, qty)
}

/// The minimum quantity, compared in units (see [`MarketSpec::min_lots`]
/// for how the engine compares it).
fn check_min_quantity(spec: &MarketSpec, qty: u128) -> Result<(), Reject> {
    if qty < spec.min_qty() {
        return Err(reject(PlaceError::QuantityTooSmall));
    }
    Ok(())
}

/// `price × qty` in quote units, checked against the minimum notional.
pub fn check_notional(spec: &MarketSpec, price: u128, qty: u128) -> Result<u128, Reject> {
    let notional = spec
        .notional(price, qty)
        .ok_or_else(|| reject(PlaceError::ValueOutOfRange))?;
    if notional < spec.min_notional() {
        return Err(reject(PlaceError::ValueTooSmall));
    }
    Ok(notional)
}

/// The minimum-notional rule for a market order given by base quantity,
/// which has no price of its own: `quantity × reference` must reach the
/// minimum, where `reference` is the market's last trade price (the
/// analogue of Binance's `NOTIONAL` filter with `applyMinToMarket`, which
/// uses a recent average price). A market that has never traded has no
/// reference and the check passes: there is nothing defensible to compare
/// against, and the engine still never spends more than the reserve.
pub fn check_market_notional(
    spec: &MarketSpec,
    quantity: u128,
    reference: Option<u128>,
) -> Result<(), Reject> {
    match reference {
        Some(price) => check_notional(spec, price, quantity).map(|_| ()),
        None => Ok(()),
    }
}

/// Checks that the market accepts new orders.
pub fn check_status_for_place(status: MarketStatus) -> Result<(), Reject> {
    status.check_placement().map_err(reject)
}

pub fn check_client_order_id(id: &str) -> Result<(), Reject> {
    if id.is_empty()
        || id.len() > CLIENT_ORDER_ID_LEN_MAX
        || !id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Reject::invalid(format!(
            "client_order_id must be 1 to {CLIENT_ORDER_ID_LEN_MAX} printable ASCII characters"
        )));
    }
    Ok(())
}

/// Validates a placement against the market and computes its reserve:
/// the rules shared with the engine (`exchange_domain::placement`), with
/// this service's own rules where they always stood in the sequence.
pub fn validate_place(
    spec: &MarketSpec,
    status: MarketStatus,
    input: &PlaceInput<'_>,
) -> Result<ValidPlace, Reject> {
    if let Some(id) = input.client_order_id {
        check_client_order_id(id)?;
    }
    check_status_for_place(status)?;
    let (bs, qs) = (spec.base().scale, spec.quote().scale);
    let placement = Placement {
        side: input.side,
        order_type: input.order_type,
        price: amount("price", input.price, qs)?,
        quantity: amount("quantity", input.quantity, bs)?,
        quote_quantity: amount("quote_quantity", input.quote_quantity, qs)?,
        stop_price: amount("stop_price", input.stop_price, qs)?,
        time_in_force: input.time_in_force.unwrap_or_default(),
        post_only: input.post_only,
    };
    // Post-only must also be GTC here (the engine takes any time in
    // force). It comes right after the shared post-only rule, which a
    // post-only order passes only as a limit order without stop_price.
    if placement.post_only
        && placement.order_type == OrderType::Limit
        && placement.stop_price.is_none()
        && placement.time_in_force != TimeInForce::Gtc
    {
        return Err(Reject::invalid("post_only orders must be GTC"));
    }
    let checked = spec.check_placement(&placement);
    check_tighter_than_engine(spec, &placement, &checked)?;
    let reserve = reserve_for(spec, &placement, checked.map_err(reject)?.shape)?;
    Ok(ValidPlace {
        side: input.side,
        order_type: input.order_type,
        price: placement.price,
        quantity: placement.quantity,
        quote_quantity: placement.quote_quantity,
        stop_price: placement.stop_price,
        time_in_force: placement.time_in_force,
        post_only: input.post_only,
        stp: input.stp,
        client_order_id: input.client_order_id.map(str::to_owned),
        reserve,
    })
}

/// Two limits drawn tighter here than in the engine, which must keep
/// accepting what it once journaled. Both only bite near the engine's
/// 64-bit range, and both stand where they always stood, after the
/// quantity rules and before the minimum notional: they apply once the
/// shared check got that far.
fn check_tighter_than_engine(
    spec: &MarketSpec,
    placement: &Placement,
    checked: &Result<CheckedPlacement, PlaceError>,
) -> Result<(), Reject> {
    let past_quantity = matches!(
        checked,
        Ok(_) | Err(PlaceError::ValueOutOfRange | PlaceError::ValueTooSmall)
    );
    let (true, Some(quantity)) = (past_quantity, placement.quantity) else {
        return Ok(());
    };
    // The minimum in units, where the engine caps it at u64::MAX lots.
    check_min_quantity(spec, quantity)?;
    // price × quantity must fit in u128 before it is scaled down to quote
    // units; the engine multiplies ticks by lots, which overflows later.
    if let Some(price) = placement.price
        && spec.notional(price, quantity).is_none()
    {
        return Err(reject(PlaceError::ValueOutOfRange));
    }
    Ok(())
}

/// What a placement that passed the shared rules must lock, with the last
/// rules of this service that depend on its shape.
fn reserve_for(
    spec: &MarketSpec,
    placement: &Placement,
    shape: PlacementShape,
) -> Result<Reserve, Reject> {
    Ok(match shape {
        PlacementShape::Limit {
            quantity, notional, ..
        } => Reserve::Exact(match placement.side {
            Side::Buy => notional,
            Side::Sell => quantity,
        }),
        PlacementShape::MarketByQuantity { quantity, .. } => {
            // Min notional of a market order by base quantity (no price of
            // its own): a stop/take-profit market order is checked at its
            // stop price (it executes around there); a plain one against
            // the last trade price, in the batcher
            // ([`check_market_notional`]).
            if let Some(stop) = placement.stop_price {
                check_notional(spec, stop, quantity)?;
            }
            match placement.side {
                Side::Sell => Reserve::Exact(quantity),
                // A pending buy by quantity would lock the whole quote
                // balance until it triggers.
                Side::Buy if placement.order_type.is_conditional() => {
                    return Err(Reject::invalid(
                        "stop-market and take-profit-market buys need quote_quantity (the quote amount to spend)",
                    ));
                }
                Side::Buy => Reserve::AllAvailable,
            }
        }
        PlacementShape::MarketByQuote { budget } => Reserve::Exact(budget),
    })
}

/// The reserve actually locked, given what is available now; `None` when
/// the balance does not cover it (nothing is locked then).
pub fn reserve_amount(reserve: Reserve, available: u128) -> Option<u128> {
    match reserve {
        Reserve::Exact(n) if n <= available => Some(n),
        Reserve::Exact(_) => None,
        Reserve::AllAvailable if available > 0 => Some(available),
        Reserve::AllAvailable => None,
    }
}

/// A resting limit order as the database knows it, for amend checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmendTarget {
    pub side: Side,
    pub order_type: OrderType,
    pub price: Option<u128>,
    /// Open (unfilled) quantity.
    pub open_quantity: u128,
    /// What the order still holds locked.
    pub locked_remaining: u128,
}

/// A validated amend: new price and open quantity, and what it needs
/// locked (see [`amend_top_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidAmend {
    pub new_price: Option<u128>,
    pub new_quantity: Option<u128>,
    /// The whole reserve the amended order needs.
    pub required: u128,
    /// `required` minus what the order held as of clearing's last update:
    /// less than this can never be enough.
    pub shortfall: u128,
}

/// What an amend locks on top of the order's reserve: the **whole** new
/// reserve when the available balance covers it, else all of the available
/// balance; `None` (`INSUFFICIENT_BALANCE`) when even that is below the
/// shortfall.
///
/// Why not just the shortfall: `locked_remaining` is clearing's view and
/// lags the engine — an earlier amend that lowered the reserve, or fills
/// that spent it, may not be settled yet, so the engine can hold less than
/// we think and would refuse the amend (`INSUFFICIENT_RESERVE`) after we
/// answered 200. With the whole new reserve on top, `reserve + top-up >=
/// required` holds however far clearing lags; the engine releases the
/// excess (the old reserve) in the same `Amended` event, so the extra lock
/// lasts one command. Only when the available balance cannot cover the
/// whole new reserve does the amend rely on the order's own reserve, and
/// the engine may then refuse it if unsettled fills used that up (the
/// top-up comes back, the order is unchanged).
pub fn amend_top_up(valid: &ValidAmend, available: u128) -> Option<u128> {
    (available >= valid.shortfall).then(|| valid.required.min(available))
}

/// Validates an amend. `quantity` is the new **open** quantity.
pub fn validate_amend(
    spec: &MarketSpec,
    status: MarketStatus,
    target: &AmendTarget,
    price: Option<&str>,
    quantity: Option<&str>,
) -> Result<ValidAmend, Reject> {
    check_status_for_place(status)?;
    if target.order_type != OrderType::Limit {
        return Err(Reject::new(
            ErrorCode::OrderNotAmendable,
            "only resting limit orders can be amended",
        ));
    }
    let new_price = amount("price", price, spec.quote().scale)?;
    let new_quantity = amount("quantity", quantity, spec.base().scale)?;
    if new_price.is_none() && new_quantity.is_none() {
        return Err(Reject::invalid("an amend needs price or quantity"));
    }
    if let Some(p) = new_price {
        check_price(spec, PlaceField::Price, p)?;
    }
    if let Some(q) = new_quantity {
        check_quantity(spec, q)?;
    }
    let price = new_price
        .or(target.price)
        .ok_or_else(|| Reject::new(ErrorCode::OrderNotAmendable, "the order has no limit price"))?;
    let qty = new_quantity.unwrap_or(target.open_quantity);
    let notional = check_notional(spec, price, qty)?;
    let required = match target.side {
        Side::Buy => notional,
        Side::Sell => qty,
    };
    Ok(ValidAmend {
        new_price,
        new_quantity,
        required,
        shortfall: required.saturating_sub(target.locked_remaining),
    })
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use exchange_domain::{Asset, AssetSymbol, FeeRate, MarketSpecFields, MarketSymbol};

    /// BTC (8) / USDT (6): tick 0.01, step 0.0001, min qty 0.0001, min notional 1.
    pub fn spec() -> MarketSpec {
        MarketSpec::new(MarketSpecFields {
            symbol: MarketSymbol::parse("BTC-USDT").unwrap(),
            base: Asset {
                symbol: AssetSymbol::parse("BTC").unwrap(),
                scale: 8,
            },
            quote: Asset {
                symbol: AssetSymbol::parse("USDT").unwrap(),
                scale: 6,
            },
            price_tick: 10_000,
            qty_step: 10_000,
            min_qty: 10_000,
            min_notional: 1_000_000,
            maker_fee: FeeRate::from_ppm(1_000).unwrap(),
            taker_fee: FeeRate::from_ppm(2_000).unwrap(),
        })
        .unwrap()
    }

    pub fn limit<'a>(side: Side, price: &'a str, qty: &'a str) -> PlaceInput<'a> {
        PlaceInput {
            side,
            order_type: OrderType::Limit,
            price: Some(price),
            quantity: Some(qty),
            quote_quantity: None,
            stop_price: None,
            time_in_force: None,
            post_only: false,
            stp: SelfTradePrevention::None,
            client_order_id: None,
        }
    }

    fn code(r: Result<ValidPlace, Reject>) -> &'static str {
        r.expect_err("rejected").code.as_str()
    }

    #[test]
    fn limit_orders_reserve_their_worst_case() {
        let s = spec();
        let buy = validate_place(
            &s,
            MarketStatus::Trading,
            &limit(Side::Buy, "50000.01", "0.0002"),
        )
        .unwrap();
        assert_eq!(buy.reserve, Reserve::Exact(10_000_002)); // 10.000002 USDT
        assert_eq!(buy.time_in_force, TimeInForce::Gtc);
        let sell =
            validate_place(&s, MarketStatus::Trading, &limit(Side::Sell, "100", "0.5")).unwrap();
        assert_eq!(sell.reserve, Reserve::Exact(50_000_000));
    }

    #[test]
    fn rejection_codes() {
        let s = spec();
        let t = MarketStatus::Trading;
        assert_eq!(
            code(validate_place(&s, t, &limit(Side::Buy, "1.001", "1"))),
            "PRICE_NOT_ON_TICK"
        );
        assert_eq!(
            code(validate_place(&s, t, &limit(Side::Buy, "1", "1.00001"))),
            "QUANTITY_NOT_ON_STEP"
        );
        assert_eq!(
            code(validate_place(&s, t, &limit(Side::Buy, "1", "0.5"))),
            "NOTIONAL_TOO_SMALL"
        );
        assert_eq!(
            code(validate_place(&s, t, &limit(Side::Buy, "1", "1e5"))),
            "INVALID_AMOUNT"
        );
        assert_eq!(
            code(validate_place(&s, t, &limit(Side::Buy, "1.0000001", "1"))),
            "INVALID_AMOUNT"
        );
        assert_eq!(
            code(validate_place(&s, t, &limit(Side::Buy, "0", "1"))),
            "INVALID_AMOUNT"
        );
        assert_eq!(
            code(validate_place(&s, t, &limit(Side::Buy, "-1", "1"))),
            "INVALID_AMOUNT"
        );
        assert_eq!(
            code(validate_place(
                &s,
                MarketStatus::Halted,
                &limit(Side::Buy, "1", "1")
            )),
            "MARKET_NOT_TRADING"
        );
        let mut spec2 = *s.fields();
        spec2.min_qty = 100_000;
        let s2 = MarketSpec::new(spec2).unwrap();
        assert_eq!(
            code(validate_place(&s2, t, &limit(Side::Buy, "100", "0.0001"))),
            "QUANTITY_TOO_SMALL"
        );
        let mut no_qty = limit(Side::Buy, "1", "1");
        no_qty.quantity = None;
        assert_eq!(code(validate_place(&s, t, &no_qty)), "INVALID_ORDER");
        let mut po = limit(Side::Buy, "1", "1");
        po.post_only = true;
        po.time_in_force = Some(TimeInForce::Ioc);
        assert_eq!(code(validate_place(&s, t, &po)), "INVALID_ORDER");
        let mut coid = limit(Side::Buy, "1", "1");
        coid.client_order_id = Some("");
        assert_eq!(code(validate_place(&s, t, &coid)), "INVALID_ORDER");
        let long = "x".repeat(65);
        coid.client_order_id = Some(&long);
        assert_eq!(code(validate_place(&s, t, &coid)), "INVALID_ORDER");
        // A price whose tick count does not fit the engine's u64.
        let huge = format!("{}", u128::from(u64::MAX) * 10);
        assert_eq!(
            code(validate_place(&s, t, &limit(Side::Buy, &huge, "1"))),
            "INVALID_ORDER"
        );
    }

    #[test]
    fn market_and_stop_orders() {
        let s = spec();
        let t = MarketStatus::Trading;
        let mut m = limit(Side::Buy, "1", "1");
        m.order_type = OrderType::Market;
        m.price = None;
        assert_eq!(
            validate_place(&s, t, &m).unwrap().reserve,
            Reserve::AllAvailable
        );
        m.quantity = None;
        m.quote_quantity = Some("25");
        assert_eq!(
            validate_place(&s, t, &m).unwrap().reserve,
            Reserve::Exact(25_000_000)
        );
        m.quote_quantity = Some("0.5");
        assert_eq!(code(validate_place(&s, t, &m)), "NOTIONAL_TOO_SMALL");
        m.quote_quantity = Some("25");
        m.time_in_force = Some(TimeInForce::Fok);
        assert_eq!(code(validate_place(&s, t, &m)), "INVALID_ORDER");
        m.time_in_force = None;
        m.side = Side::Sell;
        assert_eq!(code(validate_place(&s, t, &m)), "INVALID_ORDER");
        m.quote_quantity = None;
        m.quantity = Some("0.3");
        assert_eq!(
            validate_place(&s, t, &m).unwrap().reserve,
            Reserve::Exact(30_000_000)
        );
        m.price = Some("1");
        assert_eq!(code(validate_place(&s, t, &m)), "INVALID_ORDER");

        let mut stop = limit(Side::Buy, "100", "1");
        stop.order_type = OrderType::StopLimit;
        assert_eq!(code(validate_place(&s, t, &stop)), "INVALID_ORDER");
        stop.stop_price = Some("90.001");
        assert_eq!(code(validate_place(&s, t, &stop)), "PRICE_NOT_ON_TICK");
        stop.stop_price = Some("90");
        assert_eq!(
            validate_place(&s, t, &stop).unwrap().reserve,
            Reserve::Exact(100_000_000)
        );
        let mut sm = stop.clone();
        sm.order_type = OrderType::StopMarket;
        sm.price = None;
        assert_eq!(code(validate_place(&s, t, &sm)), "INVALID_ORDER");
        sm.quantity = None;
        sm.quote_quantity = Some("10");
        assert_eq!(
            validate_place(&s, t, &sm).unwrap().reserve,
            Reserve::Exact(10_000_000)
        );

        // Take-profits validate like their stop counterparts.
        let mut tp = stop.clone();
        tp.order_type = OrderType::TakeProfitLimit;
        tp.side = Side::Sell;
        tp.stop_price = Some("110");
        assert_eq!(
            validate_place(&s, t, &tp).unwrap().reserve,
            Reserve::Exact(100_000_000) // 1 BTC (scale 8)
        );
        tp.stop_price = None;
        assert_eq!(code(validate_place(&s, t, &tp)), "INVALID_ORDER");
        let mut tpm = sm.clone();
        tpm.order_type = OrderType::TakeProfitMarket;
        assert_eq!(
            validate_place(&s, t, &tpm).unwrap().reserve,
            Reserve::Exact(10_000_000)
        );
        tpm.quote_quantity = None;
        tpm.quantity = Some("1");
        assert_eq!(code(validate_place(&s, t, &tpm)), "INVALID_ORDER");
        tpm.side = Side::Sell;
        assert_eq!(
            validate_place(&s, t, &tpm).unwrap().reserve,
            Reserve::Exact(100_000_000)
        );
    }

    /// Where this service draws its limits tighter than the engine (see
    /// `exchange_engine`'s `the_engine_keeps_its_own_edges_of_the_64_bit_lots`),
    /// and where its own post-only rule stands in the sequence.
    #[test]
    fn rules_of_this_service_alone() {
        let t = MarketStatus::Trading;
        let reject = |s: &MarketSpec, input: &PlaceInput<'_>| {
            let r = validate_place(s, t, input).expect_err("rejected");
            (r.code.as_str(), r.message)
        };
        let shared = |s: &MarketSpec, input: &PlaceInput<'_>| {
            let v =
                |text: Option<&str>, scale| text.map(|x| parse_positive_units(x, scale).unwrap());
            s.check_placement(&Placement {
                side: input.side,
                order_type: input.order_type,
                price: v(input.price, s.quote().scale),
                quantity: v(input.quantity, s.base().scale),
                quote_quantity: None,
                stop_price: None,
                time_in_force: TimeInForce::Gtc,
                post_only: false,
            })
        };
        // The minimum quantity in units: u64::MAX lots is still too few
        // when the minimum is more.
        let mut f = *spec().fields();
        f.min_qty = (u128::from(u64::MAX) + 1) * f.qty_step;
        let huge_min = MarketSpec::new(f).unwrap();
        let max_lots = "1844674407370955.1615"; // u64::MAX × 0.0001 BTC
        let order = limit(Side::Sell, "100", max_lots);
        assert!(shared(&huge_min, &order).is_ok());
        assert_eq!(
            reject(&huge_min, &order),
            (
                "QUANTITY_TOO_SMALL",
                "quantity is below the market minimum".into()
            )
        );
        // price × quantity must fit in u128 units, even where the minimum
        // notional is not met.
        let order = limit(Side::Sell, "184467440737095516.14", max_lots);
        assert!(shared(&spec(), &order).is_ok());
        let out_of_range = ("INVALID_ORDER", "order value is out of range".to_string());
        assert_eq!(reject(&spec(), &order), out_of_range);
        let mut f = *spec().fields();
        f.min_notional = u128::MAX;
        assert_eq!(reject(&MarketSpec::new(f).unwrap(), &order), out_of_range);
        // Post-only must be GTC, reported after the shared field rules.
        let mut po = limit(Side::Buy, "1.001", "1");
        po.post_only = true;
        po.time_in_force = Some(TimeInForce::Ioc);
        assert_eq!(
            reject(&spec(), &po),
            ("INVALID_ORDER", "post_only orders must be GTC".into())
        );
        po.stop_price = Some("1");
        assert_eq!(
            reject(&spec(), &po),
            (
                "INVALID_ORDER",
                "stop_price is only for stop and take-profit orders".into()
            )
        );
        po.stop_price = None;
        po.order_type = OrderType::StopLimit;
        assert_eq!(
            reject(&spec(), &po),
            (
                "INVALID_ORDER",
                "stop and take-profit orders need stop_price".into()
            )
        );
    }

    #[test]
    fn reserve_amounts() {
        assert_eq!(reserve_amount(Reserve::Exact(5), 5), Some(5));
        assert_eq!(reserve_amount(Reserve::Exact(6), 5), None);
        assert_eq!(reserve_amount(Reserve::AllAvailable, 5), Some(5));
        assert_eq!(reserve_amount(Reserve::AllAvailable, 0), None);
    }

    #[test]
    fn amends_lock_the_whole_new_reserve_when_available() {
        let s = spec();
        let t = MarketStatus::Trading;
        let target = AmendTarget {
            side: Side::Buy,
            order_type: OrderType::Limit,
            price: Some(100_000_000),   // 100 USDT
            open_quantity: 100_000_000, // 1 BTC
            locked_remaining: 100_000_000,
        };
        let up = validate_amend(&s, t, &target, Some("150"), None).unwrap();
        assert_eq!((up.required, up.shortfall), (150_000_000, 50_000_000));
        // Whole new reserve when affordable, else all available down to
        // the shortfall, else refused.
        assert_eq!(amend_top_up(&up, 1_000_000_000), Some(150_000_000));
        assert_eq!(amend_top_up(&up, 60_000_000), Some(60_000_000));
        assert_eq!(amend_top_up(&up, 50_000_000), Some(50_000_000));
        assert_eq!(amend_top_up(&up, 49_999_999), None);
        let down = validate_amend(&s, t, &target, None, Some("0.5")).unwrap();
        assert_eq!((down.required, down.shortfall), (50_000_000, 0));
        assert_eq!(amend_top_up(&down, 0), Some(0));
        assert_eq!(amend_top_up(&down, 80_000_000), Some(50_000_000));
        assert_eq!(down.new_quantity, Some(50_000_000));
        assert_eq!(
            validate_amend(&s, t, &target, None, None).unwrap_err().code,
            ErrorCode::InvalidOrder
        );
        let sell = AmendTarget {
            side: Side::Sell,
            locked_remaining: 100_000_000,
            ..target
        };
        assert_eq!(
            validate_amend(&s, t, &sell, None, Some("2"))
                .unwrap()
                .shortfall,
            100_000_000
        );
        let market = AmendTarget {
            order_type: OrderType::StopLimit,
            ..target
        };
        assert_eq!(
            validate_amend(&s, t, &market, Some("1"), None)
                .unwrap_err()
                .code,
            ErrorCode::OrderNotAmendable
        );
    }
}
