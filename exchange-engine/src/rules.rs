//! Market rules shared by the fast book and the reference book: turning a
//! command's units into ticks and lots, validating a placement, and the
//! arithmetic of one fill. Sharing these keeps the differential test about
//! what differs (storage and matching), not about re-typed validation.

use exchange_domain::placement;
use exchange_domain::{
    AssetRole, Event, FeeRate, FinalStatus, MarketSpec, MarketStatus, OrderId, OrderType,
    PlaceError, PlaceField, PlaceOrder, Placement, PlacementShape, ReasonCode, SelfTradePrevention,
    Side, TimeInForce, TradeId, UserId,
};

/// Largest price in ticks; `u64::MAX` is kept free as the "no ask" sentinel.
pub(crate) const TICKS_MAX: u64 = placement::PRICE_TICKS_MAX;

/// The market's numbers in the engine's integer world.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub tick: u128,
    pub step: u128,
    /// Quote units of one tick × one lot.
    pub k: u128,
    pub maker_fee: FeeRate,
    pub taker_fee: FeeRate,
}

impl Params {
    pub fn new(spec: &MarketSpec) -> Self {
        Self {
            tick: spec.price_tick(),
            step: spec.qty_step(),
            k: spec.quote_per_tick_lot(),
            maker_fee: spec.maker_fee(),
            taker_fee: spec.taker_fee(),
        }
    }

    pub fn ticks(&self, units: u128) -> Result<u64, ReasonCode> {
        placement::price_ticks(PlaceField::Price, units, self.tick).map_err(reason)
    }

    pub fn lots(&self, units: u128) -> Result<u64, ReasonCode> {
        placement::quantity_lots(units, self.step).map_err(reason)
    }

    pub fn price_units(&self, ticks: u64) -> u128 {
        u128::from(ticks) * self.tick
    }

    pub fn qty_units(&self, lots: u64) -> u128 {
        u128::from(lots) * self.step
    }

    /// Quote units of `lots` at `ticks`, `None` on overflow.
    pub fn quote(&self, ticks: u64, lots: u64) -> Option<u128> {
        (u128::from(ticks) * u128::from(lots)).checked_mul(self.k)
    }

    /// How many whole lots `budget` quote units buy at `ticks`.
    pub fn affordable_lots(&self, budget: u128, ticks: u64) -> u64 {
        let per_lot = u128::from(ticks) * self.k;
        u64::try_from(budget / per_lot).unwrap_or(u64::MAX)
    }

    /// What an order of `side` must hold in reserve to rest `lots` at `ticks`.
    pub fn required_reserve(&self, side: Side, ticks: u64, lots: u64) -> Option<u128> {
        match side {
            Side::Buy => self.quote(ticks, lots),
            Side::Sell => Some(self.qty_units(lots)),
        }
    }
}

/// An order inside the engine: the canonical record that snapshots and the
/// state hash are made of (both books store exactly this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Order {
    pub id: u64,
    pub user: u64,
    pub side: Side,
    pub order_type: OrderType,
    pub tif: TimeInForce,
    pub post_only: bool,
    pub stp: SelfTradePrevention,
    /// Market orders spend a quote budget instead of a base quantity.
    pub by_quote: bool,
    /// Limit price in ticks; 0 for market orders.
    pub price: u64,
    /// Stop price in ticks; 0 when not a stop order.
    pub stop: u64,
    /// Open lots (unused when `by_quote`).
    pub lots: u64,
    pub filled: u64,
    /// Quote units still to spend when `by_quote`.
    pub budget: u128,
    /// Reserve not yet spent nor released, in the asset `side` spends.
    pub reserve: u128,
    /// Acceptance order; orders pending stops of equal price.
    pub arrival: u64,
}

impl Order {
    /// A pending conditional order: a stop or a take-profit.
    pub fn is_stop(&self) -> bool {
        self.order_type.is_conditional()
    }

    /// Once triggered a conditional order behaves as its plain counterpart.
    pub fn triggered(mut self) -> Self {
        self.order_type = self.order_type.on_trigger();
        self
    }

    /// Does last price `last` (ticks) trigger this pending order?
    pub fn triggers_at(&self, last: u64) -> bool {
        self.order_type
            .trigger(self.side)
            .is_some_and(|t| t.reached(last, self.stop))
    }

    pub fn is_done(&self) -> bool {
        if self.by_quote {
            self.budget == 0
        } else {
            self.lots == 0
        }
    }
}

/// Checks everything about a placement that does not depend on the book:
/// the shared rules (`exchange_domain::placement`), then what only the
/// engine checks, the reserve and a stop already reached. The caller
/// checks, in this order after it: duplicate id, post-only.
pub(crate) fn validate_place(
    spec: &MarketSpec,
    status: MarketStatus,
    cmd: &PlaceOrder,
    last_price: u64,
    arrival: u64,
) -> Result<Order, ReasonCode> {
    status.check_placement().map_err(reason)?;
    let checked = spec
        .check_placement(&Placement::from(cmd))
        .map_err(reason)?;
    let mut order = Order {
        id: cmd.order_id.0,
        user: cmd.user_id.0,
        side: cmd.side,
        order_type: cmd.order_type,
        tif: cmd.time_in_force,
        post_only: cmd.post_only,
        stp: cmd.stp,
        by_quote: false,
        price: 0,
        stop: checked.stop_ticks.unwrap_or(0),
        lots: 0,
        filled: 0,
        budget: 0,
        reserve: cmd.reserved,
        arrival,
    };
    let enough = match checked.shape {
        PlacementShape::Limit {
            price_ticks,
            lots,
            quantity,
            notional,
        } => {
            order.price = price_ticks;
            order.lots = lots;
            let required = match order.side {
                Side::Buy => notional,
                Side::Sell => quantity,
            };
            cmd.reserved >= required
        }
        PlacementShape::MarketByQuantity { lots, quantity } => {
            order.lots = lots;
            match order.side {
                // A market buy by quantity spends at most its reserve.
                Side::Buy => cmd.reserved > 0,
                Side::Sell => cmd.reserved >= quantity,
            }
        }
        PlacementShape::MarketByQuote { budget } => {
            order.by_quote = true;
            order.budget = budget;
            cmd.reserved >= budget
        }
    };
    if !enough {
        return Err(ReasonCode::InsufficientReserve);
    }
    // A stop or take-profit whose condition already holds is refused, not
    // triggered at once (as Binance's -2021): the user meant a conditional
    // order, and a plain one is what to send for an immediate one. Before
    // the first trade there is no last price, so nothing is reached.
    if order.is_stop() && last_price != 0 && order.triggers_at(last_price) {
        return Err(ReasonCode::StopWouldTriggerImmediately);
    }
    Ok(order)
}

/// The engine's code for a broken placement rule.
pub(crate) fn reason(e: PlaceError) -> ReasonCode {
    match e {
        PlaceError::MarketCancelOnly => ReasonCode::MarketCancelOnly,
        PlaceError::MarketHalted => ReasonCode::MarketHalted,
        PlaceError::NotOnTick(_) => ReasonCode::PriceNotOnTick,
        PlaceError::QuantityNotOnStep => ReasonCode::QuantityNotOnStep,
        PlaceError::QuantityTooSmall => ReasonCode::QuantityTooSmall,
        PlaceError::ValueTooSmall | PlaceError::QuoteTooSmall => ReasonCode::NotionalTooSmall,
        PlaceError::OutOfRange(_) | PlaceError::ValueOutOfRange => ReasonCode::OutOfRange,
        PlaceError::StopPriceMissing
        | PlaceError::StopPriceNotAllowed
        | PlaceError::PostOnlyNotLimit
        | PlaceError::Zero(_)
        | PlaceError::LimitFields
        | PlaceError::MarketWithPrice
        | PlaceError::FillOrKillByQuote
        | PlaceError::SellByQuote
        | PlaceError::MarketAmounts => ReasonCode::InvalidOrder,
    }
}

/// Does a taker on `side` with limit `limit` (0 = market) accept `maker_price`?
#[inline]
pub(crate) fn accepts(side: Side, limit: u64, maker_price: u64) -> bool {
    limit == 0
        || match side {
            Side::Buy => maker_price <= limit,
            Side::Sell => maker_price >= limit,
        }
}

/// How many lots the taker can take at `ticks` right now.
#[inline]
pub(crate) fn taker_capacity(p: &Params, t: &Order, ticks: u64) -> u64 {
    if t.by_quote {
        p.affordable_lots(t.budget, ticks)
    } else if t.side == Side::Buy && t.price == 0 {
        t.lots.min(p.affordable_lots(t.reserve, ticks))
    } else {
        t.lots
    }
}

/// Why a taker stopped matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Halt {
    /// Nothing left to fill.
    Done,
    /// No (more) acceptable liquidity.
    NoLiquidity,
    /// Self-trade prevention expired the taker.
    SelfTrade,
    /// A budget or reserve cannot pay for one more lot.
    CannotAfford,
}

/// Executes one fill of `lots` at `ticks` between taker `t` and maker `m`:
/// moves quantities and reserves, and returns the trade event.
pub(crate) fn fill(
    p: &Params,
    trade_id: u64,
    t: &mut Order,
    m: &mut Order,
    ticks: u64,
    lots: u64,
) -> Event {
    let qty = p.qty_units(lots);
    // Bounded by the maker's notional, checked when the maker was accepted.
    let quote = p
        .quote(ticks, lots)
        .expect("fill notional is bounded by an accepted order");
    let (buyer, seller) = if t.side == Side::Buy {
        (&mut *t, &mut *m)
    } else {
        (&mut *m, &mut *t)
    };
    buyer.reserve = buyer
        .reserve
        .checked_sub(quote)
        .expect("a buyer never spends more than it reserved");
    seller.reserve = seller
        .reserve
        .checked_sub(qty)
        .expect("a seller never delivers more than it reserved");
    if t.by_quote {
        t.budget = t
            .budget
            .checked_sub(quote)
            .expect("a quote budget is never overspent");
    } else {
        t.lots -= lots;
    }
    t.filled += lots;
    m.lots -= lots;
    m.filled += lots;
    let (maker_fee, taker_fee) = match t.side {
        Side::Buy => (p.maker_fee.fee_on(quote), p.taker_fee.fee_on(qty)),
        Side::Sell => (p.maker_fee.fee_on(qty), p.taker_fee.fee_on(quote)),
    };
    Event::Trade {
        trade_id: TradeId(trade_id),
        maker_order_id: OrderId(m.id),
        maker_user_id: UserId(m.user),
        taker_order_id: OrderId(t.id),
        taker_user_id: UserId(t.user),
        taker_side: t.side,
        price: p.price_units(ticks),
        quantity: qty,
        quote_amount: quote,
        maker_fee,
        taker_fee,
    }
}

pub(crate) fn done(
    p: &Params,
    o: &Order,
    status: FinalStatus,
    reason: Option<ReasonCode>,
) -> Event {
    Event::OrderDone {
        order_id: OrderId(o.id),
        user_id: UserId(o.user),
        status,
        reason,
        filled_quantity: p.qty_units(o.filled),
        release_asset: o.side.spends(),
        release: o.reserve,
    }
}

/// The `OrderDone` for a refused placement: the whole reserve goes back.
pub(crate) fn rejected(cmd: &PlaceOrder, reason: ReasonCode) -> Event {
    Event::OrderDone {
        order_id: cmd.order_id,
        user_id: cmd.user_id,
        status: FinalStatus::Rejected,
        reason: Some(reason),
        filled_quantity: 0,
        release_asset: cmd.side.spends(),
        release: cmd.reserved,
    }
}

/// What becomes of a taker after matching: `None` means it rests.
pub(crate) fn disposition(t: &Order, halt: Halt) -> Option<(FinalStatus, Option<ReasonCode>)> {
    match halt {
        Halt::Done => Some((FinalStatus::Filled, None)),
        // A quote budget that cannot buy one more lot has spent all it can.
        Halt::CannotAfford if t.by_quote => Some((FinalStatus::Filled, None)),
        Halt::CannotAfford => Some((FinalStatus::Expired, Some(ReasonCode::ReserveExhausted))),
        Halt::SelfTrade => Some((FinalStatus::Expired, Some(ReasonCode::SelfTradePrevention))),
        Halt::NoLiquidity => {
            if t.order_type == OrderType::Limit && t.tif == TimeInForce::Gtc {
                None
            } else {
                Some((FinalStatus::Expired, Some(ReasonCode::ImmediateRemainder)))
            }
        }
    }
}

/// A rejected non-placement command.
pub(crate) fn command_rejected(
    command: exchange_domain::CommandKind,
    order_id: Option<OrderId>,
    user_id: Option<UserId>,
    reason: ReasonCode,
    release_asset: AssetRole,
    release: u128,
) -> Event {
    Event::CommandRejected {
        command,
        order_id,
        user_id,
        reason,
        release_asset,
        release,
    }
}
