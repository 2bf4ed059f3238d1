//! The decisions of one write batch, computed without I/O.
//!
//! [`lookups`], [`batch_markets`] and [`balance_keys`] say what the batch
//! must read; given those rows ([`Loaded`]: the orders its client order
//! ids and ids name, the available balances, the last trade prices) and
//! the markets, [`decide`] says what each request does — refused,
//! answered as things are, or a command to journal — and what the batch
//! moves from available to locked. Once the batch holds its order ids and
//! sequence numbers, [`sequence`] numbers the commands and [`answers`]
//! says what each client gets.
//!
//! Invariants:
//! - requests are decided in arrival order against one running view of
//!   the available balances: a request sees what earlier ones locked, and
//!   a refused one locks nothing, so it changes no other request's answer;
//! - a `(user, client_order_id)` placed before, or earlier in the same
//!   batch, is answered with that order and locks nothing more;
//! - nothing is decided on a balance whose asset scale is unknown.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::http::StatusCode;
use exchange_common::ApiError;
use exchange_domain::{
    AmendOrder, Command, MarketStatus, MarketSymbol, OrderId, OrderType, PlaceOrder,
    SequencedCommand, Side, UserId,
};

use super::{Outcome, Reply, Request};
use crate::markets::{MarketInfo, db_text, db_units};
use crate::rules::{self, AmendTarget, Reject, ValidPlace};
use crate::view::OrderRow;

/// What a batch reads before deciding, besides balances ([`balance_keys`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Lookups {
    /// The placements' `(user_id, client_order_id)`s, as two columns.
    pub client_id_users: Vec<i64>,
    pub client_ids: Vec<String>,
    /// The orders cancels and amends name.
    pub order_ids: Vec<i64>,
    /// Markets with market orders by base quantity, and their quote scale:
    /// the last trade price is their minimum-notional reference
    /// (`rules::check_market_notional`).
    pub price_markets: BTreeMap<String, u8>,
}

pub(super) fn lookups(requests: &[Request]) -> Lookups {
    let mut out = Lookups::default();
    let mut quote_scales: BTreeMap<String, u8> = BTreeMap::new();
    for r in requests {
        match r {
            Request::Place {
                user_id,
                market,
                order,
            } => {
                if let Some(c) = &order.client_order_id {
                    out.client_id_users.push(*user_id);
                    out.client_ids.push(c.clone());
                }
                let name = market.spec.symbol().to_string();
                if is_market_by_quantity(order) {
                    out.price_markets.insert(name.clone(), 0);
                }
                quote_scales
                    .entry(name)
                    .or_insert(market.spec.quote().scale);
            }
            Request::Cancel { order_id, .. } | Request::Amend { order_id, .. } => {
                out.order_ids.push(*order_id);
            }
            _ => {}
        }
    }
    for (name, scale) in &mut out.price_markets {
        *scale = quote_scales.get(name).copied().unwrap_or_default();
    }
    out
}

/// The markets this batch will append to (cancels and amends of unknown
/// orders append nothing; an extra market here only costs a lock).
pub(super) fn batch_markets(
    requests: &[Request],
    by_id: &HashMap<i64, OrderRow>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in requests {
        match r {
            Request::Place { market, .. }
            | Request::CancelAll { market, .. }
            | Request::SetStatus { market, .. } => {
                out.insert(market.spec.symbol().to_string());
            }
            Request::Cancel { order_id, .. } | Request::Amend { order_id, .. } => {
                if let Some(o) = by_id.get(order_id) {
                    out.insert(o.market.clone());
                }
            }
        }
    }
    out
}

/// Every `(user, asset)` balance the batch may spend: placements' spend
/// assets and the reserve assets of the user's own amended orders.
pub(super) fn balance_keys(
    requests: &[Request],
    by_id: &HashMap<i64, OrderRow>,
) -> BTreeSet<(i64, String)> {
    let mut keys = BTreeSet::new();
    for r in requests {
        match r {
            Request::Place {
                user_id,
                market,
                order,
            } => {
                keys.insert((*user_id, market.spend_asset(order.side).symbol.to_string()));
            }
            Request::Amend {
                user_id, order_id, ..
            } => {
                if let Some(o) = by_id.get(order_id).filter(|o| o.user_id == *user_id) {
                    keys.insert((*user_id, o.reserve_asset.clone()));
                }
            }
            _ => {}
        }
    }
    keys
}

/// The orders amends name, in arrival order.
pub(super) fn amended_order_ids(requests: &[Request]) -> Vec<i64> {
    requests
        .iter()
        .filter_map(|r| match r {
            Request::Amend { order_id, .. } => Some(*order_id),
            _ => None,
        })
        .collect()
}

/// Asset scales: every loaded market's, and those of the markets the
/// requests carry (a market created since the last cache load). A balance
/// in an asset of no known scale is never parsed with a guess: the
/// requests spending it fail with `ASSET_SCALE_UNKNOWN`.
pub(super) fn asset_scales(
    markets: &BTreeMap<String, MarketInfo>,
    requests: &[Request],
) -> HashMap<String, u8> {
    let carried = requests.iter().filter_map(|r| match r {
        Request::Place { market, .. }
        | Request::CancelAll { market, .. }
        | Request::SetStatus { market, .. } => Some(market),
        _ => None,
    });
    let mut scales = HashMap::new();
    for m in markets.values().chain(carried) {
        scales.insert(m.spec.base().symbol.to_string(), m.spec.base().scale);
        scales.insert(m.spec.quote().symbol.to_string(), m.spec.quote().scale);
    }
    scales
}

/// The rows a batch read, as [`decide`] needs them.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    /// Existing orders by `(user_id, client_order_id)`.
    pub by_client_id: HashMap<(i64, String), OrderRow>,
    /// The orders cancels and amends name, by id.
    pub by_id: HashMap<i64, OrderRow>,
    /// Last trade price per market of [`Lookups::price_markets`] that traded.
    pub last_price: HashMap<String, u128>,
    /// Available balance per `(user, asset)`; a missing row is zero.
    pub available: BTreeMap<(i64, String), u128>,
    /// Assets of balance rows read whose scale is unknown.
    pub unknown_scale: BTreeSet<String>,
}

/// What one request does.
#[derive(Debug)]
pub(super) enum Decision {
    /// Answered without a command: refused, or an order as it is.
    Done(Outcome),
    /// Same `client_order_id` as the earlier request at this index.
    SameAs(usize),
    /// A new order and its command; [`sequence`] gives both their id,
    /// sequence number and time.
    Place {
        order: Box<OrderRow>,
        command: PlaceOrder,
        market: MarketSymbol,
    },
    /// A command about existing orders or the market, and the order the
    /// request is answered with (none: answered with the command's seq).
    Command {
        market: MarketSymbol,
        command: Command,
        reply_order: Option<Box<OrderRow>>,
    },
}

impl Decision {
    /// The market whose journal the decision appends to.
    fn journal_market(&self) -> Option<MarketSymbol> {
        match self {
            Decision::Place { market, .. } | Decision::Command { market, .. } => Some(*market),
            Decision::Done(_) | Decision::SameAs(_) => None,
        }
    }
}

/// What one batch does.
#[derive(Debug)]
pub(super) struct Plan {
    /// One per request, in arrival order.
    pub decisions: Vec<Decision>,
    /// Moved from available to locked, per `(user, asset)`; never zero.
    pub locks: BTreeMap<(i64, String), u128>,
    /// The amends' extra reserve, added to their order rows' `reserved`
    /// and `locked_remaining`: `(order id, numeric text)`, sorted.
    pub amend_reserves: Vec<(i64, String)>,
    /// Market status changes, in arrival order.
    pub statuses: Vec<(String, MarketStatus)>,
}

impl Plan {
    /// Orders this batch creates.
    pub fn new_orders(&self) -> impl Iterator<Item = &OrderRow> {
        self.decisions.iter().filter_map(|d| match d {
            Decision::Place { order, .. } => Some(&**order),
            _ => None,
        })
    }

    /// Commands to journal per market: the sequence numbers to take.
    pub fn commands_per_market(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for market in self.decisions.iter().filter_map(Decision::journal_market) {
            *out.entry(market.to_string()).or_default() += 1;
        }
        out
    }
}

/// Decides every request in arrival order.
pub(super) fn decide(
    requests: &[Request],
    loaded: Loaded,
    markets: &BTreeMap<String, MarketInfo>,
) -> Plan {
    let mut funds = Funds {
        available: loaded.available,
        locks: BTreeMap::new(),
    };
    let mut seen_client_id: HashMap<(i64, String), usize> = HashMap::new();
    let mut amend_reserves = Vec::new();
    let mut statuses = Vec::new();
    let mut decisions = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let decision = match r {
            Request::Place {
                user_id,
                market,
                order,
            } => {
                let key = order.client_order_id.clone().map(|c| (*user_id, c));
                if let Some(existing) = key.as_ref().and_then(|k| loaded.by_client_id.get(k)) {
                    Decision::Done(Ok(Reply::Placed {
                        order: Box::new(existing.clone()),
                        created: false,
                    }))
                } else if let Some(first) = key.as_ref().and_then(|k| seen_client_id.get(k)) {
                    Decision::SameAs(*first)
                } else {
                    if let Some(k) = key {
                        seen_client_id.insert(k, i);
                    }
                    let reference = loaded
                        .last_price
                        .get(&market.spec.symbol().to_string())
                        .copied();
                    decide_place(*user_id, market, order, reference, &mut funds)
                }
            }
            Request::Cancel { user_id, order_id } => {
                decide_cancel(*user_id, *order_id, loaded.by_id.get(order_id))
            }
            Request::CancelAll { user_id, market } => Decision::Command {
                market: market.spec.symbol(),
                command: Command::CancelAll {
                    user_id: UserId(user_id.unsigned_abs()),
                },
                reply_order: None,
            },
            Request::SetStatus { market, status } => {
                statuses.push((market.spec.symbol().to_string(), *status));
                Decision::Command {
                    market: market.spec.symbol(),
                    command: Command::SetStatus { status: *status },
                    reply_order: None,
                }
            }
            Request::Amend {
                user_id,
                order_id,
                price,
                quantity,
            } => {
                let order = loaded.by_id.get(order_id).filter(|o| o.user_id == *user_id);
                if order.is_some_and(|o| loaded.unknown_scale.contains(&o.reserve_asset)) {
                    Decision::Done(Err(scale_unknown()))
                } else {
                    decide_amend(
                        markets,
                        order,
                        *user_id,
                        price.as_deref(),
                        quantity.as_deref(),
                        &mut funds,
                        &mut amend_reserves,
                    )
                }
            }
        };
        decisions.push(decision);
    }
    amend_reserves.sort();
    Plan {
        decisions,
        locks: funds.locks.into_iter().filter(|(_, v)| *v > 0).collect(),
        amend_reserves,
        statuses,
    }
}

/// The running view of the batch's balances.
struct Funds {
    available: BTreeMap<(i64, String), u128>,
    locks: BTreeMap<(i64, String), u128>,
}

impl Funds {
    fn available(&self, key: &(i64, String)) -> u128 {
        self.available.get(key).copied().unwrap_or(0)
    }

    /// Moves `amount` (at most what is available) to locked.
    fn lock(&mut self, key: (i64, String), amount: u128) {
        let left = self.available(&key) - amount;
        self.available.insert(key.clone(), left);
        *self.locks.entry(key).or_default() += amount;
    }
}

fn decide_place(
    user_id: i64,
    market: &MarketInfo,
    order: &ValidPlace,
    reference: Option<u128>,
    funds: &mut Funds,
) -> Decision {
    let notional = match order.quantity {
        Some(q) if is_market_by_quantity(order) => {
            rules::check_market_notional(&market.spec, q, reference)
        }
        _ => Ok(()),
    };
    let key = (user_id, market.spend_asset(order.side).symbol.to_string());
    let amount = match (
        notional,
        rules::reserve_amount(order.reserve, funds.available(&key)),
    ) {
        (Err(r), _) => return Decision::Done(Err(reject(r))),
        (Ok(()), None) => return Decision::Done(Err(insufficient())),
        (Ok(()), Some(amount)) => amount,
    };
    funds.lock(key, amount);
    let command = PlaceOrder {
        order_id: OrderId(0),
        user_id: UserId(user_id.unsigned_abs()),
        side: order.side,
        order_type: order.order_type,
        price: order.price,
        quantity: order.quantity,
        quote_quantity: order.quote_quantity,
        stop_price: order.stop_price,
        time_in_force: order.time_in_force,
        post_only: order.post_only,
        stp: order.stp,
        reserved: amount,
    };
    Decision::Place {
        order: Box::new(new_order_row(user_id, market, order, amount)),
        command,
        market: market.spec.symbol(),
    }
}

fn decide_cancel(user_id: i64, order_id: i64, order: Option<&OrderRow>) -> Decision {
    let Some(o) = order.filter(|o| o.user_id == user_id) else {
        return Decision::Done(Err(order_not_found()));
    };
    if !o.is_open() {
        // Already final: nothing to cancel, answer as it is.
        return Decision::Done(Ok(Reply::Order(Box::new(o.clone()))));
    }
    match MarketSymbol::parse(&o.market) {
        Ok(market) => Decision::Command {
            market,
            command: Command::Cancel {
                order_id: OrderId(order_id.unsigned_abs()),
                user_id: UserId(user_id.unsigned_abs()),
            },
            reply_order: Some(Box::new(o.clone())),
        },
        Err(_) => Decision::Done(Err(order_not_found())),
    }
}

fn decide_amend(
    markets: &BTreeMap<String, MarketInfo>,
    order: Option<&OrderRow>,
    user_id: i64,
    price: Option<&str>,
    quantity: Option<&str>,
    funds: &mut Funds,
    amend_reserves: &mut Vec<(i64, String)>,
) -> Decision {
    let Some(o) = order else {
        return Decision::Done(Err(order_not_found()));
    };
    if !o.is_open() {
        return Decision::Done(Err(ApiError::bad_request(
            "ORDER_NOT_OPEN",
            "the order is no longer open",
        )));
    }
    let (Some(info), Ok(symbol), Some(side), Some(order_type)) = (
        markets.get(&o.market),
        MarketSymbol::parse(&o.market),
        parse_side(&o.side),
        OrderType::parse(&o.order_type),
    ) else {
        return Decision::Done(Err(order_not_found()));
    };
    let (bs, qs) = (info.spec.base().scale, info.spec.quote().scale);
    let spend_scale = info.spend_asset(side).scale;
    let num = |t: &str, s: u8| db_units(t, s).ok();
    let (Some(qty), Some(filled), Some(locked)) = (
        o.quantity.as_deref().and_then(|t| num(t, bs)),
        num(&o.filled_quantity, bs),
        num(&o.locked_remaining, spend_scale),
    ) else {
        return Decision::Done(Err(ApiError::bad_request(
            "ORDER_NOT_AMENDABLE",
            "only resting limit orders can be amended",
        )));
    };
    let target = AmendTarget {
        side,
        order_type,
        price: o.price.as_deref().and_then(|t| num(t, qs)),
        open_quantity: qty.saturating_sub(filled),
        locked_remaining: locked,
    };
    let valid = match rules::validate_amend(&info.spec, info.status, &target, price, quantity) {
        Ok(v) => v,
        Err(r) => return Decision::Done(Err(reject(r))),
    };
    // The whole new reserve if affordable (correct however far clearing
    // lags; the engine releases the old reserve): rules::amend_top_up.
    let key = (user_id, o.reserve_asset.clone());
    let Some(top_up) = rules::amend_top_up(&valid, funds.available(&key)) else {
        return Decision::Done(Err(insufficient()));
    };
    if top_up > 0 {
        funds.lock(key, top_up);
        amend_reserves.push((o.id, db_text(top_up, spend_scale)));
    }
    Decision::Command {
        market: symbol,
        command: Command::Amend(AmendOrder {
            order_id: OrderId(o.id.unsigned_abs()),
            user_id: UserId(user_id.unsigned_abs()),
            side,
            new_price: valid.new_price,
            new_quantity: valid.new_quantity,
            additional_reserve: top_up,
        }),
        reply_order: Some(Box::new(o.clone())),
    }
}

/// Gives the new orders their ids (in arrival order) and every command its
/// market's next sequence number (`first_seq`: the first the batch took
/// per market) and `time_ms`; returns the commands to journal and publish,
/// in arrival order.
pub(super) fn sequence(
    plan: &mut Plan,
    order_ids: Vec<i64>,
    mut next_seq: HashMap<String, i64>,
    time_ms: u64,
) -> anyhow::Result<Vec<SequencedCommand>> {
    let time_ms_i64 = i64::try_from(time_ms)?;
    let mut ids = order_ids.into_iter();
    let mut commands = Vec::new();
    for decision in &mut plan.decisions {
        let Some(market) = decision.journal_market() else {
            continue;
        };
        let slot = next_seq
            .get_mut(&market.to_string())
            .ok_or_else(|| anyhow::anyhow!("no sequence for {market}"))?;
        let seq = *slot;
        *slot += 1;
        let command = match decision {
            Decision::Place { order, command, .. } => {
                let id = ids
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("order id sequence returned too few ids"))?;
                order.id = id;
                order.seq = seq;
                order.created_ms = time_ms_i64;
                order.updated_ms = time_ms_i64;
                command.order_id = OrderId(id.unsigned_abs());
                Command::Place(command.clone())
            }
            Decision::Command { command, .. } => command.clone(),
            Decision::Done(_) | Decision::SameAs(_) => continue,
        };
        commands.push(SequencedCommand {
            market,
            seq: seq.unsigned_abs(),
            time_ms,
            command,
        });
    }
    Ok(commands)
}

/// Each request's answer, in arrival order.
pub(super) fn answers(plan: Plan, commands: &[SequencedCommand]) -> Vec<Outcome> {
    let mut seqs = commands.iter().map(|c| c.seq);
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(plan.decisions.len());
    for decision in plan.decisions {
        let outcome = match decision {
            Decision::Done(o) => o,
            Decision::SameAs(first) => match outcomes.get(first) {
                Some(Ok(Reply::Placed { order, .. })) => Ok(Reply::Placed {
                    order: order.clone(),
                    created: false,
                }),
                Some(other) => other.clone(),
                None => Err(ApiError::unavailable("retry")),
            },
            Decision::Place { order, .. } => {
                seqs.next();
                Ok(Reply::Placed {
                    order,
                    created: true,
                })
            }
            Decision::Command { reply_order, .. } => {
                let seq = seqs.next().unwrap_or(0);
                match reply_order {
                    Some(o) => Ok(Reply::Order(o)),
                    None => Ok(Reply::Accepted { seq }),
                }
            }
        };
        outcomes.push(outcome);
    }
    outcomes
}

/// The row of a new order; id, seq and times are set by [`sequence`].
fn new_order_row(
    user_id: i64,
    market: &MarketInfo,
    order: &ValidPlace,
    reserved: u128,
) -> OrderRow {
    let (bs, qs) = (market.spec.base().scale, market.spec.quote().scale);
    let spend = market.spend_asset(order.side);
    OrderRow {
        id: 0,
        user_id,
        client_order_id: order.client_order_id.clone(),
        market: market.spec.symbol().to_string(),
        side: side_str(order.side).to_owned(),
        order_type: order.order_type.as_str().to_owned(),
        time_in_force: wire_name(&order.time_in_force),
        post_only: order.post_only,
        stp: wire_name(&order.stp),
        price: order.price.map(|p| db_text(p, qs)),
        stop_price: order.stop_price.map(|p| db_text(p, qs)),
        quantity: order.quantity.map(|q| db_text(q, bs)),
        quote_quantity: order.quote_quantity.map(|q| db_text(q, qs)),
        filled_quantity: "0".to_owned(),
        filled_quote: "0".to_owned(),
        reserve_asset: spend.symbol.to_string(),
        reserved: db_text(reserved, spend.scale),
        locked_remaining: db_text(reserved, spend.scale),
        status: "new".to_owned(),
        reason: None,
        seq: 0,
        created_ms: 0,
        updated_ms: 0,
        triggered_ms: None,
    }
}

/// A plain market order given by base quantity (no price, no stop price):
/// its minimum notional is checked against the last trade price.
fn is_market_by_quantity(order: &ValidPlace) -> bool {
    order.order_type == OrderType::Market && order.quantity.is_some()
}

fn side_str(side: Side) -> &'static str {
    match side {
        Side::Buy => "buy",
        Side::Sell => "sell",
    }
}

fn parse_side(s: &str) -> Option<Side> {
    match s {
        "buy" => Some(Side::Buy),
        "sell" => Some(Side::Sell),
        _ => None,
    }
}

/// The JSON name of a serde enum value (`"GTC"`, `"expire_taker"`).
fn wire_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn reject(r: Reject) -> ApiError {
    ApiError::bad_request(r.code, r.message)
}

fn order_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "ORDER_NOT_FOUND", "no such order")
}

/// A balance in an asset whose scale this service has not loaded: its
/// amount cannot be read, so nothing is decided on it (never a guessed
/// scale, which would lock a wrong amount). Retryable: a market reload
/// brings the scale.
fn scale_unknown() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ASSET_SCALE_UNKNOWN",
        "the asset's scale is not known to the order service; nothing was applied, retry",
    )
}

fn insufficient() -> ApiError {
    ApiError::bad_request(
        "INSUFFICIENT_BALANCE",
        "the available balance does not cover the order",
    )
}
