//! The settlement plan: what a set of event batches does to trades, fills,
//! orders, balances and the ledger, computed without I/O.
//!
//! Everything is netted: one delta per order, one per (user, asset) balance
//! and one ledger posting per (account, asset) per market, however many
//! batches and trades went in. Applying the plan of batches `a ++ b` equals
//! applying the plans of `a` and of `b` one after the other, because every
//! delta is a sum (tested below and against Postgres).
//!
//! Invariants asserted while planning (a violation is a bug upstream, and
//! the batch is refused rather than booked):
//! - per market and asset the ledger postings sum to zero;
//! - a fee never exceeds what its payer receives;
//! - an order spends and releases only the asset it reserved.

use std::collections::{BTreeMap, BTreeSet};

use exchange_domain::{AssetRole, Event, EventBatch, FinalStatus, ReasonCode, Side};

/// The two assets of a market and their scales.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketAssets {
    pub base: String,
    pub base_scale: u8,
    pub quote: String,
    pub quote_scale: u8,
}

impl MarketAssets {
    /// How this market's amounts are shown.
    pub fn scales(&self) -> exchange_store::Scales {
        exchange_store::Scales {
            base: self.base_scale,
            quote: self.quote_scale,
        }
    }

    pub fn asset(&self, role: AssetRole) -> &str {
        match role {
            AssetRole::Base => &self.base,
            AssetRole::Quote => &self.quote,
        }
    }
    pub fn scale(&self, role: AssetRole) -> u8 {
        match role {
            AssetRole::Base => self.base_scale,
            AssetRole::Quote => self.quote_scale,
        }
    }
}

/// Why a set of batches cannot be settled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("unknown market {0}")]
    UnknownMarket(String),
    #[error("{market} seq {seq}: amount overflow")]
    Overflow { market: String, seq: u64 },
    #[error("{market} seq {seq}: trade {trade_id} fee {fee} exceeds the {received} received")]
    FeeExceedsReceived {
        market: String,
        seq: u64,
        trade_id: u64,
        fee: u128,
        received: u128,
    },
    #[error("{market} seq {seq}: release of {amount} without a user")]
    ReleaseWithoutUser {
        market: String,
        seq: u64,
        amount: u128,
    },
    #[error("{market} seq {seq}: order {order_id} spends or releases both assets")]
    MixedReserveAsset {
        market: String,
        seq: u64,
        order_id: u64,
    },
    #[error("{market} seq {seq}: order {order_id} appears in two markets")]
    OrderInTwoMarkets {
        market: String,
        seq: u64,
        order_id: u64,
    },
    #[error("{market}: ledger postings in {asset} sum to {sum}, not zero")]
    Unbalanced {
        market: String,
        asset: String,
        sum: i128,
    },
}

/// A ledger account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Account {
    User(u64),
    Fees,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeRow {
    pub market: String,
    pub seq: u64,
    pub trade_id: u64,
    pub price: u128,
    pub quantity: u128,
    pub quote_amount: u128,
    pub taker_side: Side,
    pub maker_order_id: u64,
    pub taker_order_id: u64,
    pub maker_user_id: u64,
    pub taker_user_id: u64,
    pub maker_fee: u128,
    pub taker_fee: u128,
    pub time_ms: u64,
}

/// One side of a trade, as the user's trade history shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillRow {
    pub user_id: u64,
    pub order_id: u64,
    pub market: String,
    pub trade_id: u64,
    pub side: Side,
    pub price: u128,
    pub quantity: u128,
    pub quote_amount: u128,
    pub fee: u128,
    /// The asset the side receives.
    pub fee_role: AssetRole,
    pub maker: bool,
    pub time_ms: u64,
}

/// The net change to one order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrderDelta {
    pub market: String,
    pub filled_quantity: u128,
    pub filled_quote: u128,
    /// Taken off `locked_remaining`: spent in trades plus released.
    pub unlocked: u128,
    /// The asset `unlocked` is in, once known.
    pub reserve_role: Option<AssetRole>,
    pub final_status: Option<FinalStatus>,
    pub reason: Option<ReasonCode>,
    pub amend: Option<AmendDelta>,
    /// Filled base quantity per batch seq, ascending: settlement needs to
    /// know which fills came before an amend (they count into the order's
    /// total quantity) when batches are applied out of order.
    pub fills: Vec<(u64, u128)>,
    /// The highest batch seq of the plan that touched the order.
    pub last_seq: u64,
    /// When this stop or take-profit triggered: the time of the batch
    /// that triggered it, if it is in the plan.
    pub triggered_ms: Option<u64>,
}

impl OrderDelta {
    /// Base filled by this plan's batches with a seq below `seq`.
    pub fn filled_before(&self, seq: u64) -> u128 {
        self.fills
            .iter()
            .take_while(|(s, _)| *s < seq)
            .map(|(_, q)| *q)
            .sum()
    }
}

/// The last amend of an order in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmendDelta {
    /// The batch (journal) seq of the amend: an amend is applied to the
    /// order row only if it is newer than the one the row reflects, so a
    /// batch applied late never rolls price and quantity back.
    pub seq: u64,
    pub price: u128,
    pub open_quantity: u128,
}

/// Net change of one (user, asset) balance, in units of the asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BalanceDelta {
    pub available: i128,
    pub locked: i128,
}

/// Postings one journal entry collects before the next batch of its market
/// opens a new one. The database checks each journal's balance with a
/// per-row trigger that sums the journal's postings (quadratic in its size),
/// so journals stay small while still netting repeated traders.
pub const JOURNAL_POSTINGS_MAX: usize = 64;

/// A netted ledger entry: whole batches of one market, in one settlement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LedgerEntry {
    pub market: String,
    pub seq_first: u64,
    pub seq_last: u64,
    pub batches: u64,
    /// (account, asset) -> amount; zero amounts are dropped.
    pub postings: BTreeMap<(Account, String), i128>,
}

/// Everything one settlement writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub trades: Vec<TradeRow>,
    pub fills: Vec<FillRow>,
    pub orders: BTreeMap<u64, OrderDelta>,
    pub balances: BTreeMap<(u64, String), BalanceDelta>,
    pub ledger: Vec<LedgerEntry>,
    /// market -> index in `ledger` of the entry its next batch joins.
    open_entry: BTreeMap<String, usize>,
    /// asset -> scale, for every asset the plan touches.
    pub scales: BTreeMap<String, u8>,
}

fn signed(v: u128, market: &str, seq: u64) -> Result<i128, PlanError> {
    i128::try_from(v).map_err(|_| PlanError::Overflow {
        market: market.to_owned(),
        seq,
    })
}

struct Ctx<'a> {
    market: &'a str,
    seq: u64,
}

impl Ctx<'_> {
    fn overflow(&self) -> PlanError {
        PlanError::Overflow {
            market: self.market.to_owned(),
            seq: self.seq,
        }
    }
    fn add(&self, a: u128, b: u128) -> Result<u128, PlanError> {
        a.checked_add(b).ok_or_else(|| self.overflow())
    }
    fn iadd(&self, a: i128, b: i128) -> Result<i128, PlanError> {
        a.checked_add(b).ok_or_else(|| self.overflow())
    }
}

impl Plan {
    /// Plans `batches` in the order given (callers sort by market and seq).
    pub fn build(
        batches: &[&EventBatch],
        markets: &BTreeMap<String, MarketAssets>,
    ) -> Result<Plan, PlanError> {
        let mut plan = Plan::default();
        for batch in batches {
            plan.add_batch(batch, markets)?;
        }
        for entry in &plan.ledger {
            let market = &entry.market;
            let mut sums: BTreeMap<&str, i128> = BTreeMap::new();
            for ((_, asset), amount) in &entry.postings {
                let s = sums.entry(asset).or_default();
                *s = s.checked_add(*amount).ok_or(PlanError::Overflow {
                    market: market.clone(),
                    seq: entry.seq_last,
                })?;
            }
            if let Some((asset, sum)) = sums.into_iter().find(|(_, s)| *s != 0) {
                return Err(PlanError::Unbalanced {
                    market: market.clone(),
                    asset: asset.to_owned(),
                    sum,
                });
            }
        }
        plan.balances
            .retain(|_, d| d.available != 0 || d.locked != 0);
        for entry in &mut plan.ledger {
            entry.postings.retain(|_, a| *a != 0);
        }
        plan.ledger.retain(|e| !e.postings.is_empty());
        Ok(plan)
    }

    fn add_batch(
        &mut self,
        batch: &EventBatch,
        markets: &BTreeMap<String, MarketAssets>,
    ) -> Result<(), PlanError> {
        let market = batch.market.to_string();
        let assets = markets
            .get(&market)
            .ok_or_else(|| PlanError::UnknownMarket(market.clone()))?;
        self.scales.insert(assets.base.clone(), assets.base_scale);
        self.scales.insert(assets.quote.clone(), assets.quote_scale);
        let cx = Ctx {
            market: &market,
            seq: batch.seq,
        };
        if let Some(&i) = self.open_entry.get(&market)
            && self.ledger[i].postings.len() >= JOURNAL_POSTINGS_MAX
        {
            self.open_entry.remove(&market);
        }
        for event in &batch.events {
            match event {
                Event::Trade {
                    trade_id,
                    maker_order_id,
                    maker_user_id,
                    taker_order_id,
                    taker_user_id,
                    taker_side,
                    price,
                    quantity,
                    quote_amount,
                    maker_fee,
                    taker_fee,
                } => {
                    let (buyer, buy_order, buy_fee, seller, sell_order, sell_fee) = match taker_side
                    {
                        Side::Buy => (
                            taker_user_id.0,
                            taker_order_id.0,
                            *taker_fee,
                            maker_user_id.0,
                            maker_order_id.0,
                            *maker_fee,
                        ),
                        Side::Sell => (
                            maker_user_id.0,
                            maker_order_id.0,
                            *maker_fee,
                            taker_user_id.0,
                            taker_order_id.0,
                            *taker_fee,
                        ),
                    };
                    for (fee, received) in [(buy_fee, *quantity), (sell_fee, *quote_amount)] {
                        if fee > received {
                            return Err(PlanError::FeeExceedsReceived {
                                market: market.clone(),
                                seq: batch.seq,
                                trade_id: trade_id.0,
                                fee,
                                received,
                            });
                        }
                    }
                    self.trades.push(TradeRow {
                        market: market.clone(),
                        seq: batch.seq,
                        trade_id: trade_id.0,
                        price: *price,
                        quantity: *quantity,
                        quote_amount: *quote_amount,
                        taker_side: *taker_side,
                        maker_order_id: maker_order_id.0,
                        taker_order_id: taker_order_id.0,
                        maker_user_id: maker_user_id.0,
                        taker_user_id: taker_user_id.0,
                        maker_fee: *maker_fee,
                        taker_fee: *taker_fee,
                        time_ms: batch.time_ms,
                    });
                    for (user, order, side, fee) in [
                        (
                            maker_user_id.0,
                            maker_order_id.0,
                            taker_side.opposite(),
                            *maker_fee,
                        ),
                        (taker_user_id.0, taker_order_id.0, *taker_side, *taker_fee),
                    ] {
                        self.fills.push(FillRow {
                            user_id: user,
                            order_id: order,
                            market: market.clone(),
                            trade_id: trade_id.0,
                            side,
                            price: *price,
                            quantity: *quantity,
                            quote_amount: *quote_amount,
                            fee,
                            fee_role: side.receives(),
                            maker: order == maker_order_id.0,
                            time_ms: batch.time_ms,
                        });
                    }
                    let q = signed(*quantity, &market, batch.seq)?;
                    let qa = signed(*quote_amount, &market, batch.seq)?;
                    let bf = signed(buy_fee, &market, batch.seq)?;
                    let sf = signed(sell_fee, &market, batch.seq)?;
                    // Balances: each side spends from locked, receives into available.
                    self.balance(&cx, buyer, &assets.quote, 0, -qa)?;
                    self.balance(&cx, buyer, &assets.base, q - bf, 0)?;
                    self.balance(&cx, seller, &assets.base, 0, -q)?;
                    self.balance(&cx, seller, &assets.quote, qa - sf, 0)?;
                    // Ledger: user -> user transfers, fees -> the fee account.
                    let entry = self.ledger_entry(&market, batch.seq);
                    for (account, asset, amount) in [
                        (Account::User(buyer), &assets.quote, -qa),
                        (Account::User(seller), &assets.quote, qa - sf),
                        (Account::Fees, &assets.quote, sf),
                        (Account::User(seller), &assets.base, -q),
                        (Account::User(buyer), &assets.base, q - bf),
                        (Account::Fees, &assets.base, bf),
                    ] {
                        let p = entry.postings.entry((account, asset.clone())).or_default();
                        *p = cx.iadd(*p, amount)?;
                    }
                    // Orders.
                    for (order, spent, role) in [
                        (buy_order, *quote_amount, AssetRole::Quote),
                        (sell_order, *quantity, AssetRole::Base),
                    ] {
                        let d = self.order(&cx, order, Some(role))?;
                        d.filled_quantity = cx.add(d.filled_quantity, *quantity)?;
                        match d.fills.last_mut() {
                            Some((s, q)) if *s == batch.seq => *q = cx.add(*q, *quantity)?,
                            _ => d.fills.push((batch.seq, *quantity)),
                        }
                        d.filled_quote = cx.add(d.filled_quote, *quote_amount)?;
                        d.unlocked = cx.add(d.unlocked, spent)?;
                    }
                }
                Event::OrderDone {
                    order_id,
                    user_id,
                    status,
                    reason,
                    release_asset,
                    release,
                    ..
                } => {
                    self.release(&cx, assets, user_id.0, *release_asset, *release)?;
                    let role = (*release > 0).then_some(*release_asset);
                    let d = self.order(&cx, order_id.0, role)?;
                    d.unlocked = cx.add(d.unlocked, *release)?;
                    d.final_status = Some(*status);
                    d.reason = *reason;
                }
                Event::Amended {
                    order_id,
                    user_id,
                    price,
                    quantity,
                    release_asset,
                    released,
                    ..
                } => {
                    self.release(&cx, assets, user_id.0, *release_asset, *released)?;
                    let role = (*released > 0).then_some(*release_asset);
                    let d = self.order(&cx, order_id.0, role)?;
                    d.unlocked = cx.add(d.unlocked, *released)?;
                    d.amend = Some(AmendDelta {
                        seq: batch.seq,
                        price: *price,
                        open_quantity: *quantity,
                    });
                }
                Event::CommandRejected {
                    order_id,
                    user_id,
                    release_asset,
                    release,
                    ..
                } => {
                    if *release == 0 {
                        continue;
                    }
                    let Some(user) = user_id else {
                        return Err(PlanError::ReleaseWithoutUser {
                            market: market.clone(),
                            seq: batch.seq,
                            amount: *release,
                        });
                    };
                    self.release(&cx, assets, user.0, *release_asset, *release)?;
                    if let Some(order) = order_id {
                        let d = self.order(&cx, order.0, Some(*release_asset))?;
                        d.unlocked = cx.add(d.unlocked, *release)?;
                    }
                }
                Event::StopTriggered { order_id, .. } => {
                    let d = self.order(&cx, order_id.0, None)?;
                    d.triggered_ms.get_or_insert(batch.time_ms);
                }
                Event::OrderAccepted { .. }
                | Event::BookLevel { .. }
                | Event::MarketStatusChanged { .. } => {}
            }
        }
        let entry = self.ledger_entry(&market, batch.seq);
        entry.batches += 1;
        Ok(())
    }

    fn ledger_entry(&mut self, market: &str, seq: u64) -> &mut LedgerEntry {
        let i = match self.open_entry.get(market) {
            Some(&i) => i,
            None => {
                self.ledger.push(LedgerEntry {
                    market: market.to_owned(),
                    seq_first: seq,
                    seq_last: seq,
                    ..LedgerEntry::default()
                });
                self.open_entry
                    .insert(market.to_owned(), self.ledger.len() - 1);
                self.ledger.len() - 1
            }
        };
        let entry = &mut self.ledger[i];
        entry.seq_first = entry.seq_first.min(seq);
        entry.seq_last = entry.seq_last.max(seq);
        entry
    }

    fn balance(
        &mut self,
        cx: &Ctx<'_>,
        user: u64,
        asset: &str,
        available: i128,
        locked: i128,
    ) -> Result<(), PlanError> {
        let d = self.balances.entry((user, asset.to_owned())).or_default();
        d.available = cx.iadd(d.available, available)?;
        d.locked = cx.iadd(d.locked, locked)?;
        Ok(())
    }

    fn release(
        &mut self,
        cx: &Ctx<'_>,
        assets: &MarketAssets,
        user: u64,
        role: AssetRole,
        amount: u128,
    ) -> Result<(), PlanError> {
        if amount == 0 {
            return Ok(());
        }
        let a = signed(amount, cx.market, cx.seq)?;
        self.balance(cx, user, assets.asset(role), a, -a)
    }

    fn order(
        &mut self,
        cx: &Ctx<'_>,
        order_id: u64,
        role: Option<AssetRole>,
    ) -> Result<&mut OrderDelta, PlanError> {
        let d = self.orders.entry(order_id).or_insert_with(|| OrderDelta {
            market: cx.market.to_owned(),
            ..OrderDelta::default()
        });
        d.last_seq = d.last_seq.max(cx.seq);
        if d.market != cx.market {
            return Err(PlanError::OrderInTwoMarkets {
                market: cx.market.to_owned(),
                seq: cx.seq,
                order_id,
            });
        }
        if let Some(role) = role {
            match d.reserve_role {
                None => d.reserve_role = Some(role),
                Some(r) if r == role => {}
                Some(_) => {
                    return Err(PlanError::MixedReserveAsset {
                        market: cx.market.to_owned(),
                        seq: cx.seq,
                        order_id,
                    });
                }
            }
        }
        Ok(d)
    }

    /// The (market, seq) keys a plan over `batches` covers.
    pub fn keys(batches: &[&EventBatch]) -> BTreeSet<(String, u64)> {
        batches
            .iter()
            .map(|b| (b.market.to_string(), b.seq))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use exchange_domain::{MarketSymbol, OrderId, TradeId, UserId};
    use proptest::prelude::*;

    fn markets() -> BTreeMap<String, MarketAssets> {
        [(
            "BTC-USDT".to_owned(),
            MarketAssets {
                base: "BTC".into(),
                base_scale: 8,
                quote: "USDT".into(),
                quote_scale: 6,
            },
        )]
        .into_iter()
        .collect()
    }

    fn trade(id: u64, taker_side: Side, qty: u128, quote: u128, mf: u128, tf: u128) -> Event {
        Event::Trade {
            trade_id: TradeId(id),
            maker_order_id: OrderId(1),
            maker_user_id: UserId(10),
            taker_order_id: OrderId(2),
            taker_user_id: UserId(20),
            taker_side,
            price: 1,
            quantity: qty,
            quote_amount: quote,
            maker_fee: mf,
            taker_fee: tf,
        }
    }

    fn batch(seq: u64, events: Vec<Event>) -> EventBatch {
        EventBatch {
            market: MarketSymbol::parse("BTC-USDT").unwrap(),
            seq,
            time_ms: 1000 + seq,
            events,
        }
    }

    #[test]
    fn a_taker_buy_moves_both_assets_and_books_fees() {
        let b = batch(1, vec![trade(1, Side::Buy, 100, 5_000, 5, 1)]);
        let plan = Plan::build(&[&b], &markets()).unwrap();
        let bal = |u: u64, a: &str| plan.balances[&(u, a.to_owned())];
        // taker 20 buys: spends 5000 USDT locked, receives 100 - 1 BTC
        assert_eq!(
            bal(20, "USDT"),
            BalanceDelta {
                available: 0,
                locked: -5000
            }
        );
        assert_eq!(
            bal(20, "BTC"),
            BalanceDelta {
                available: 99,
                locked: 0
            }
        );
        // maker 10 sells: spends 100 BTC locked, receives 5000 - 5 USDT
        assert_eq!(
            bal(10, "BTC"),
            BalanceDelta {
                available: 0,
                locked: -100
            }
        );
        assert_eq!(
            bal(10, "USDT"),
            BalanceDelta {
                available: 4995,
                locked: 0
            }
        );
        let postings = &plan.ledger[0].postings;
        assert_eq!(postings[&(Account::Fees, "USDT".to_owned())], 5);
        assert_eq!(postings[&(Account::Fees, "BTC".to_owned())], 1);
        assert_eq!(plan.orders[&2].unlocked, 5000);
        assert_eq!(plan.orders[&1].unlocked, 100);
        assert_eq!(plan.fills.len(), 2);
        assert!(
            plan.fills
                .iter()
                .any(|f| f.maker && f.side == Side::Sell && f.fee == 5)
        );
    }

    #[test]
    fn a_trigger_marks_its_order_with_the_batch_time_and_moves_no_money() {
        let triggered = Event::StopTriggered {
            order_id: OrderId(7),
            user_id: UserId(30),
            stop_price: 1,
            last_price: 1,
        };
        let b = batch(4, vec![trade(1, Side::Buy, 100, 5_000, 5, 1), triggered]);
        let plan = Plan::build(&[&b], &markets()).unwrap();
        let d = &plan.orders[&7];
        assert_eq!(d.triggered_ms, Some(1004));
        assert_eq!(
            (d.filled_quantity, d.unlocked, d.final_status),
            (0, 0, None)
        );
        assert!(!plan.balances.keys().any(|(u, _)| *u == 30));
        assert_eq!(
            plan.orders[&1].triggered_ms, None,
            "the trade's orders did not trigger"
        );
    }

    #[test]
    fn a_fee_above_the_amount_received_is_refused() {
        let b = batch(1, vec![trade(1, Side::Sell, 100, 5_000, 101, 0)]);
        assert!(matches!(
            Plan::build(&[&b], &markets()),
            Err(PlanError::FeeExceedsReceived { .. })
        ));
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (
                1u64..1000,
                any::<bool>(),
                1u128..1_000_000,
                1u128..1_000_000,
                0u128..50,
                0u128..50
            )
                .prop_map(|(id, buy, q, qa, mf, tf)| trade(
                    id,
                    if buy { Side::Buy } else { Side::Sell },
                    q,
                    qa,
                    mf,
                    tf
                )),
            (0u128..1000, any::<bool>()).prop_map(|(r, base)| Event::OrderDone {
                order_id: OrderId(if base { 1 } else { 2 }),
                user_id: UserId(10),
                status: FinalStatus::Canceled,
                reason: None,
                filled_quantity: 0,
                release_asset: if base {
                    AssetRole::Base
                } else {
                    AssetRole::Quote
                },
                release: r,
            }),
        ]
    }

    proptest! {
        /// Conservation: per asset, balances change by exactly what the fee
        /// account gains (negated), and the ledger agrees with balances.
        #[test]
        fn ledger_and_balances_conserve(events in proptest::collection::vec(arb_event(), 0..20)) {
            let b = batch(1, events);
            let Ok(plan) = Plan::build(&[&b], &markets()) else { return Ok(()); };
            for asset in ["BTC", "USDT"] {
                let user_total: i128 = plan.balances.iter()
                    .filter(|((_, a), _)| a == asset)
                    .map(|(_, d)| d.available + d.locked)
                    .sum();
                let fees: i128 = plan.ledger.iter()
                    .filter_map(|e| e.postings.get(&(Account::Fees, asset.to_owned())).copied())
                    .sum();
                prop_assert_eq!(user_total + fees, 0);
                for ((user, a), d) in &plan.balances {
                    if a != asset { continue; }
                    let ledger: i128 = plan.ledger.iter()
                        .filter_map(|e| e.postings.get(&(Account::User(*user), asset.to_owned())).copied())
                        .sum();
                    prop_assert_eq!(ledger, d.available + d.locked);
                }
            }
        }

        /// Planning a split of the batches twice sums to planning them at once.
        #[test]
        fn plans_compose(events in proptest::collection::vec(arb_event(), 0..20), split in 0usize..20) {
            let split = split.min(events.len());
            let a = batch(1, events[..split].to_vec());
            let b = batch(2, events[split..].to_vec());
            let (Ok(whole), Ok(pa), Ok(pb)) = (
                Plan::build(&[&a, &b], &markets()),
                Plan::build(&[&a], &markets()),
                Plan::build(&[&b], &markets()),
            ) else { return Ok(()); };
            let mut sum: BTreeMap<(u64, String), BalanceDelta> = BTreeMap::new();
            for p in [&pa, &pb] {
                for (k, d) in &p.balances {
                    let s = sum.entry(k.clone()).or_default();
                    s.available += d.available;
                    s.locked += d.locked;
                }
            }
            sum.retain(|_, d| d.available != 0 || d.locked != 0);
            prop_assert_eq!(sum, whole.balances);
        }
    }
}
