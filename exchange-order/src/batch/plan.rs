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
use exchange_common::ErrorCode;
use exchange_domain::{
    AmendOrder, Command, MarketStatus, MarketSymbol, OrderId, OrderType, PlaceOrder,
    SequencedCommand, Side, UserId,
};

use super::{Outcome, Reply, Request};
use crate::rules::{self, AmendTarget, Reject, ValidPlace};
use exchange_store::OrderRow;
use exchange_store::audit::NewAuditEntry;
use exchange_store::{MarketInfo, db_text, db_units, wire_name};

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
                if is_market_by_quantity(order) {
                    out.price_markets
                        .entry(market.spec.symbol().to_string())
                        .or_insert(market.spec.quote().scale);
                }
            }
            Request::Cancel { order_id, .. } | Request::Amend { order_id, .. } => {
                out.order_ids.push(*order_id);
            }
            _ => {}
        }
    }
    out
}

/// The users who place or amend orders in this batch: a frozen one may
/// not (cancels stay allowed: they only reduce what is at risk).
pub(super) fn trading_users(requests: &[Request]) -> Vec<i64> {
    let users: BTreeSet<i64> = requests
        .iter()
        .filter_map(|r| match r {
            Request::Place { user_id, .. } | Request::Amend { user_id, .. } => Some(*user_id),
            _ => None,
        })
        .collect();
    users.into_iter().collect()
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
    /// Users of [`trading_users`] whose account is frozen (read only under
    /// the sequencer: see `Worker::apply_batch`).
    pub frozen: BTreeSet<i64>,
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
    /// Their audit rows, in the same order.
    pub audits: Vec<NewAuditEntry>,
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
    let mut audits = Vec::new();
    let mut decisions = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let decision = match r {
            Request::Place { user_id, .. } | Request::Amend { user_id, .. }
                if loaded.frozen.contains(user_id) =>
            {
                Decision::Done(Err(account_frozen()))
            }
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
            Request::SetStatus {
                market,
                status,
                audit,
            } => {
                let symbol = market.spec.symbol().to_string();
                audits.push(audit.entry(
                    "market.status",
                    &symbol,
                    serde_json::json!({ "status": status.as_str() }),
                ));
                statuses.push((symbol, *status));
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
        audits,
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
            ErrorCode::OrderNotOpen,
            "the order is no longer open",
        )));
    }
    let (Some(info), Ok(symbol), Some(side), Some(order_type)) = (
        markets.get(&o.market),
        MarketSymbol::parse(&o.market),
        Side::parse(&o.side),
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
            ErrorCode::OrderNotAmendable,
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
        side: order.side.as_str().to_owned(),
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

fn reject(r: Reject) -> ApiError {
    ApiError::bad_request(r.code, r.message)
}

fn order_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::OrderNotFound,
        "no such order",
    )
}

/// A balance in an asset whose scale this service has not loaded: its
/// amount cannot be read, so nothing is decided on it (never a guessed
/// scale, which would lock a wrong amount). Retryable: a market reload
/// brings the scale.
fn scale_unknown() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::AssetScaleUnknown,
        "the asset's scale is not known to the order service; nothing was applied, retry",
    )
}

fn account_frozen() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::AccountFrozen,
        "this account is frozen; contact support",
    )
}

fn insufficient() -> ApiError {
    ApiError::bad_request(
        ErrorCode::InsufficientBalance,
        "the available balance does not cover the order",
    )
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::rules::PlaceInput;
    use crate::rules::tests::{limit, spec};
    use exchange_domain::{AssetSymbol, MarketSpec};

    const ALICE: i64 = 1;
    const BOB: i64 = 2;
    /// One whole unit of each asset of BTC-USDT, in units.
    const USDT: u128 = 1_000_000;
    const BTC: u128 = 100_000_000;
    const T: MarketStatus = MarketStatus::Trading;
    const INSUFFICIENT: (StatusCode, &str) = (StatusCode::BAD_REQUEST, "INSUFFICIENT_BALANCE");

    fn btc_usdt(status: MarketStatus) -> MarketInfo {
        MarketInfo {
            spec: spec(),
            status,
        }
    }

    /// ETH (8) / USDT (6), otherwise like BTC-USDT.
    fn eth_usdt() -> MarketInfo {
        let mut fields = *spec().fields();
        fields.symbol = MarketSymbol::parse("ETH-USDT").unwrap();
        fields.base.symbol = AssetSymbol::parse("ETH").unwrap();
        MarketInfo {
            spec: MarketSpec::new(fields).unwrap(),
            status: T,
        }
    }

    fn markets(status: MarketStatus) -> BTreeMap<String, MarketInfo> {
        [("BTC-USDT".to_owned(), btc_usdt(status))].into()
    }

    fn market_by_quantity(side: Side, quantity: &'static str) -> PlaceInput<'static> {
        PlaceInput {
            order_type: OrderType::Market,
            price: None,
            ..limit(side, "1", quantity)
        }
    }

    fn with_client_id(input: PlaceInput<'static>, id: &'static str) -> PlaceInput<'static> {
        PlaceInput {
            client_order_id: Some(id),
            ..input
        }
    }

    fn place_in(market: MarketInfo, user_id: i64, input: &PlaceInput<'_>) -> Request {
        Request::Place {
            user_id,
            market,
            order: rules::validate_place(&market.spec, market.status, input).unwrap(),
        }
    }

    fn place(user_id: i64, input: &PlaceInput<'_>) -> Request {
        place_in(btc_usdt(T), user_id, input)
    }

    fn amend(user_id: i64, order_id: i64, price: Option<&str>, quantity: Option<&str>) -> Request {
        Request::Amend {
            user_id,
            order_id,
            price: price.map(str::to_owned),
            quantity: quantity.map(str::to_owned),
        }
    }

    /// Alice's resting limit buy of 1 BTC at 100 USDT, holding its 100 USDT.
    fn resting_buy(id: i64) -> OrderRow {
        OrderRow {
            id,
            user_id: ALICE,
            client_order_id: None,
            market: "BTC-USDT".to_owned(),
            side: "buy".to_owned(),
            order_type: "limit".to_owned(),
            time_in_force: "GTC".to_owned(),
            post_only: false,
            stp: "none".to_owned(),
            price: Some("100.000000".to_owned()),
            stop_price: None,
            quantity: Some("1.00000000".to_owned()),
            quote_quantity: None,
            filled_quantity: "0".to_owned(),
            filled_quote: "0".to_owned(),
            reserve_asset: "USDT".to_owned(),
            reserved: "100".to_owned(),
            locked_remaining: "100.000000".to_owned(),
            status: "new".to_owned(),
            reason: None,
            seq: 1,
            created_ms: 1,
            updated_ms: 1,
            triggered_ms: None,
        }
    }

    fn filled(order: OrderRow) -> OrderRow {
        OrderRow {
            filled_quantity: order.quantity.clone().unwrap(),
            locked_remaining: "0".to_owned(),
            status: "filled".to_owned(),
            ..order
        }
    }

    fn funds(balances: &[(i64, &str, u128)]) -> Loaded {
        Loaded {
            available: balances
                .iter()
                .map(|(u, a, v)| ((*u, (*a).to_owned()), *v))
                .collect(),
            ..Loaded::default()
        }
    }

    fn with_orders(mut loaded: Loaded, orders: &[OrderRow]) -> Loaded {
        loaded.by_id = orders.iter().map(|o| (o.id, o.clone())).collect();
        loaded
    }

    /// What a batch did, as its clients and its writes show it.
    struct Applied {
        locks: BTreeMap<(i64, String), u128>,
        amend_reserves: Vec<(i64, String)>,
        statuses: Vec<(String, MarketStatus)>,
        commands: Vec<SequencedCommand>,
        outcomes: Vec<Outcome>,
    }

    impl Applied {
        fn locked(&self, user: i64, asset: &str) -> u128 {
            self.locks
                .get(&(user, asset.to_owned()))
                .copied()
                .unwrap_or(0)
        }
    }

    const TIME_MS: u64 = 1_700_000_000_000;

    /// Decides and sequences a batch as a worker does, with new order ids
    /// from 100 and every market's journal starting at seq 1.
    fn apply(
        requests: &[Request],
        loaded: Loaded,
        markets: &BTreeMap<String, MarketInfo>,
    ) -> Applied {
        let mut plan = decide(requests, loaded, markets);
        let order_ids = (100..).take(plan.new_orders().count()).collect();
        let first_seq = plan
            .commands_per_market()
            .into_keys()
            .map(|m| (m, 1))
            .collect();
        let commands = sequence(&mut plan, order_ids, first_seq, TIME_MS).unwrap();
        let (locks, amend_reserves, statuses) = (
            plan.locks.clone(),
            plan.amend_reserves.clone(),
            plan.statuses.clone(),
        );
        Applied {
            locks,
            amend_reserves,
            statuses,
            outcomes: answers(plan, &commands),
            commands,
        }
    }

    fn refusal(outcome: &Outcome) -> (StatusCode, &str) {
        let e = outcome.as_ref().expect_err("refused");
        (e.status, e.code.as_str())
    }

    /// `(order id, created)` of a placement's answer.
    fn placed(outcome: &Outcome) -> (i64, bool) {
        match outcome {
            Ok(Reply::Placed { order, created }) => (order.id, *created),
            other => panic!("not a placement: {other:?}"),
        }
    }

    fn answered_order(outcome: &Outcome) -> i64 {
        match outcome {
            Ok(Reply::Order(order)) => order.id,
            other => panic!("not an order: {other:?}"),
        }
    }

    fn accepted_seq(outcome: &Outcome) -> u64 {
        match outcome {
            Ok(Reply::Accepted { seq }) => *seq,
            other => panic!("not accepted: {other:?}"),
        }
    }

    #[test]
    fn an_order_the_balance_does_not_cover_is_refused_and_locks_nothing() {
        let requests = [
            place(ALICE, &limit(Side::Buy, "100", "0.2")),
            place(ALICE, &limit(Side::Sell, "100", "0.2")),
            place(ALICE, &limit(Side::Buy, "100", "0.05")),
        ];
        let done = apply(&requests, funds(&[(ALICE, "USDT", 10 * USDT)]), &markets(T));
        assert_eq!(refusal(&done.outcomes[0]), INSUFFICIENT);
        // No BTC row at all.
        assert_eq!(refusal(&done.outcomes[1]), INSUFFICIENT);
        // The refusals leave the balance to the order that fits.
        assert_eq!(placed(&done.outcomes[2]), (100, true));
        assert_eq!(done.locked(ALICE, "USDT"), 5 * USDT);
        assert_eq!(done.locked(ALICE, "BTC"), 0);
        assert_eq!(done.commands.len(), 1);
    }

    #[test]
    fn a_frozen_user_may_not_place_or_amend_but_others_may() {
        let mut loaded = funds(&[(ALICE, "USDT", 10 * USDT), (BOB, "USDT", 10 * USDT)]);
        loaded.frozen.insert(ALICE);
        let requests = [
            place(ALICE, &limit(Side::Buy, "100", "0.01")),
            place(BOB, &limit(Side::Buy, "100", "0.01")),
        ];
        let done = apply(&requests, loaded, &markets(T));
        assert_eq!(
            refusal(&done.outcomes[0]),
            (StatusCode::FORBIDDEN, "ACCOUNT_FROZEN")
        );
        assert_eq!(placed(&done.outcomes[1]), (100, true));
        assert_eq!(done.locked(ALICE, "USDT"), 0);
        assert_eq!(done.commands.len(), 1);
        assert_eq!(trading_users(&requests), vec![ALICE, BOB]);
    }

    #[test]
    fn requests_are_decided_in_arrival_order_and_never_overspend() {
        let requests = [
            place(ALICE, &limit(Side::Buy, "100", "0.06")),
            place(ALICE, &limit(Side::Buy, "100", "0.06")),
            place(ALICE, &limit(Side::Buy, "100", "0.04")),
        ];
        let done = apply(&requests, funds(&[(ALICE, "USDT", 10 * USDT)]), &markets(T));
        assert_eq!(placed(&done.outcomes[0]), (100, true));
        assert_eq!(refusal(&done.outcomes[1]), INSUFFICIENT);
        assert_eq!(placed(&done.outcomes[2]), (101, true));
        assert_eq!(done.locked(ALICE, "USDT"), 10 * USDT);
    }

    #[test]
    fn a_market_buy_by_quantity_locks_the_whole_available_quote() {
        let requests = [place(ALICE, &market_by_quantity(Side::Buy, "0.5"))];
        let done = apply(&requests, funds(&[(ALICE, "USDT", 7 * USDT)]), &markets(T));
        assert_eq!(placed(&done.outcomes[0]), (100, true));
        assert_eq!(done.locked(ALICE, "USDT"), 7 * USDT);
        let done = apply(&requests, funds(&[]), &markets(T));
        assert_eq!(refusal(&done.outcomes[0]), INSUFFICIENT);
    }

    #[test]
    fn a_client_order_id_placed_before_returns_that_order_and_locks_nothing() {
        let mut existing = resting_buy(7);
        existing.client_order_id = Some("a".to_owned());
        let mut loaded = funds(&[(ALICE, "USDT", 1_000 * USDT)]);
        loaded
            .by_client_id
            .insert((ALICE, "a".to_owned()), existing);
        let requests = [place(
            ALICE,
            &with_client_id(limit(Side::Buy, "100", "1"), "a"),
        )];
        let done = apply(&requests, loaded, &markets(T));
        assert_eq!(placed(&done.outcomes[0]), (7, false));
        assert!(done.locks.is_empty());
        assert!(done.commands.is_empty());
    }

    #[test]
    fn a_client_order_id_repeated_within_a_batch_places_one_order() {
        let requests = [
            place(ALICE, &with_client_id(limit(Side::Buy, "100", "0.05"), "a")),
            place(ALICE, &with_client_id(limit(Side::Buy, "100", "0.05"), "a")),
            // Another user's id is another order.
            place(BOB, &with_client_id(limit(Side::Buy, "100", "0.05"), "a")),
            // A repeat of a refused placement gets the same refusal.
            place(ALICE, &with_client_id(limit(Side::Buy, "100", "1"), "b")),
            place(ALICE, &with_client_id(limit(Side::Buy, "100", "0.01"), "b")),
        ];
        let loaded = funds(&[(ALICE, "USDT", 10 * USDT), (BOB, "USDT", 10 * USDT)]);
        let done = apply(&requests, loaded, &markets(T));
        assert_eq!(placed(&done.outcomes[0]), (100, true));
        assert_eq!(placed(&done.outcomes[1]), (100, false));
        assert_eq!(placed(&done.outcomes[2]), (101, true));
        assert_eq!(refusal(&done.outcomes[3]), INSUFFICIENT);
        assert_eq!(refusal(&done.outcomes[4]), INSUFFICIENT);
        assert_eq!(done.locked(ALICE, "USDT"), 5 * USDT);
        assert_eq!(done.locked(BOB, "USDT"), 5 * USDT);
        assert_eq!(done.commands.len(), 2);
    }

    /// The extra reserve the amend's command carries, if it is journaled.
    fn additional_reserve(done: &Applied) -> Option<u128> {
        done.commands.iter().find_map(|c| match &c.command {
            Command::Amend(a) => Some(a.additional_reserve),
            _ => None,
        })
    }

    #[test]
    fn an_amend_up_locks_its_whole_new_reserve_or_else_all_available() {
        // 150 USDT needed, 100 held: 50 lacking.
        let requests = [amend(ALICE, 7, Some("150"), None)];
        for (available, top_up, text) in [
            (1_000 * USDT, 150 * USDT, "150"),
            (60 * USDT, 60 * USDT, "60"),
            (50 * USDT, 50 * USDT, "50"),
        ] {
            let loaded = with_orders(funds(&[(ALICE, "USDT", available)]), &[resting_buy(7)]);
            let done = apply(&requests, loaded, &markets(T));
            assert_eq!(answered_order(&done.outcomes[0]), 7);
            assert_eq!(done.locked(ALICE, "USDT"), top_up);
            assert_eq!(additional_reserve(&done), Some(top_up));
            assert_eq!(done.amend_reserves, [(7, text.to_owned())]);
        }
    }

    #[test]
    fn an_amend_up_the_balance_cannot_fund_is_refused_and_locks_nothing() {
        let requests = [amend(ALICE, 7, Some("150"), None)];
        // 150 USDT needed, 100 held: 49.999999 available cannot make it.
        let loaded = with_orders(funds(&[(ALICE, "USDT", 50 * USDT - 1)]), &[resting_buy(7)]);
        let done = apply(&requests, loaded, &markets(T));
        assert_eq!(refusal(&done.outcomes[0]), INSUFFICIENT);
        assert!(done.locks.is_empty());
        assert!(done.amend_reserves.is_empty());
        assert!(done.commands.is_empty());
    }

    #[test]
    fn an_amend_down_locks_nothing_more() {
        let requests = [amend(ALICE, 7, None, Some("0.5"))];
        let loaded = with_orders(funds(&[]), &[resting_buy(7)]);
        let done = apply(&requests, loaded, &markets(T));
        assert_eq!(answered_order(&done.outcomes[0]), 7);
        assert_eq!(additional_reserve(&done), Some(0));
        assert!(done.locks.is_empty());
        assert!(done.amend_reserves.is_empty());
    }

    #[test]
    fn amends_of_orders_that_cannot_be_amended_are_refused_and_lock_nothing() {
        let rich = || funds(&[(ALICE, "USDT", 1_000 * USDT), (BOB, "USDT", 1_000 * USDT)]);
        let cases = [
            // Another user's order is no order of yours.
            (
                amend(BOB, 7, Some("150"), None),
                with_orders(rich(), &[resting_buy(7)]),
                markets(T),
                (StatusCode::NOT_FOUND, "ORDER_NOT_FOUND"),
            ),
            (
                amend(ALICE, 8, Some("150"), None),
                rich(),
                markets(T),
                (StatusCode::NOT_FOUND, "ORDER_NOT_FOUND"),
            ),
            (
                amend(ALICE, 7, Some("150"), None),
                with_orders(rich(), &[filled(resting_buy(7))]),
                markets(T),
                (StatusCode::BAD_REQUEST, "ORDER_NOT_OPEN"),
            ),
            (
                amend(ALICE, 7, Some("150"), None),
                with_orders(rich(), &[resting_buy(7)]),
                markets(MarketStatus::Halted),
                (StatusCode::BAD_REQUEST, "MARKET_NOT_TRADING"),
            ),
            (
                amend(ALICE, 7, Some("150"), None),
                with_orders(rich(), &[resting_buy(7)]),
                markets(MarketStatus::CancelOnly),
                (StatusCode::BAD_REQUEST, "MARKET_NOT_TRADING"),
            ),
            (
                amend(ALICE, 7, Some("150.001"), None),
                with_orders(rich(), &[resting_buy(7)]),
                markets(T),
                (StatusCode::BAD_REQUEST, "PRICE_NOT_ON_TICK"),
            ),
        ];
        for (request, loaded, markets, refused) in cases {
            let done = apply(&[request], loaded, &markets);
            assert_eq!(refusal(&done.outcomes[0]), refused);
            assert!(done.locks.is_empty());
            assert!(done.commands.is_empty());
        }
    }

    #[test]
    fn an_amend_spending_an_asset_of_unknown_scale_is_not_decided() {
        let mut loaded = with_orders(funds(&[]), &[resting_buy(7)]);
        loaded.unknown_scale.insert("USDT".to_owned());
        let done = apply(&[amend(ALICE, 7, Some("150"), None)], loaded, &markets(T));
        assert_eq!(
            refusal(&done.outcomes[0]),
            (StatusCode::SERVICE_UNAVAILABLE, "ASSET_SCALE_UNKNOWN")
        );
        assert!(done.commands.is_empty());
    }

    #[test]
    fn a_market_order_by_quantity_must_reach_the_min_notional_at_the_last_price() {
        let requests = [place(ALICE, &market_by_quantity(Side::Sell, "0.0001"))];
        let at = |last_price: Option<u128>| {
            let mut loaded = funds(&[(ALICE, "BTC", BTC)]);
            loaded.last_price = last_price
                .map(|p| ("BTC-USDT".to_owned(), p))
                .into_iter()
                .collect();
            apply(&requests, loaded, &markets(T))
        };
        // 0.0001 BTC at 100 USDT is 0.01 USDT, below the 1 USDT minimum.
        let done = at(Some(100 * USDT));
        assert_eq!(
            refusal(&done.outcomes[0]),
            (StatusCode::BAD_REQUEST, "NOTIONAL_TOO_SMALL")
        );
        assert!(done.locks.is_empty());
        // At 20,000 USDT it is 2 USDT.
        let done = at(Some(20_000 * USDT));
        assert_eq!(placed(&done.outcomes[0]), (100, true));
        assert_eq!(done.locked(ALICE, "BTC"), BTC / 10_000);
        // A market that never traded has no reference: the check passes.
        let done = at(None);
        assert_eq!(placed(&done.outcomes[0]), (100, true));
    }

    #[test]
    fn cancels_journal_open_orders_and_answer_final_ones_as_they_are() {
        let requests = [
            Request::Cancel {
                user_id: ALICE,
                order_id: 7,
            },
            Request::Cancel {
                user_id: ALICE,
                order_id: 8,
            },
            Request::Cancel {
                user_id: BOB,
                order_id: 7,
            },
            Request::Cancel {
                user_id: ALICE,
                order_id: 9,
            },
            Request::CancelAll {
                user_id: ALICE,
                market: btc_usdt(T),
            },
        ];
        let loaded = with_orders(funds(&[]), &[resting_buy(7), filled(resting_buy(8))]);
        let done = apply(&requests, loaded, &markets(T));
        assert_eq!(answered_order(&done.outcomes[0]), 7);
        assert_eq!(answered_order(&done.outcomes[1]), 8);
        let not_found = (StatusCode::NOT_FOUND, "ORDER_NOT_FOUND");
        assert_eq!(refusal(&done.outcomes[2]), not_found);
        assert_eq!(refusal(&done.outcomes[3]), not_found);
        assert_eq!(accepted_seq(&done.outcomes[4]), 2);
        let journaled: Vec<_> = done.commands.iter().map(|c| c.command.clone()).collect();
        assert_eq!(
            journaled,
            [
                Command::Cancel {
                    order_id: OrderId(7),
                    user_id: UserId(1),
                },
                Command::CancelAll { user_id: UserId(1) },
            ]
        );
        assert!(done.locks.is_empty());
    }

    #[test]
    fn each_market_numbers_its_commands_in_arrival_order() {
        let requests = [
            place(ALICE, &limit(Side::Buy, "100", "0.05")),
            place_in(eth_usdt(), ALICE, &limit(Side::Buy, "100", "0.05")),
            Request::SetStatus {
                market: btc_usdt(T),
                status: MarketStatus::Halted,
                audit: exchange_store::audit::AuditContext {
                    actor: "alice".to_owned(),
                    request_id: "r-1".to_owned(),
                    ip: None,
                },
            },
            place(ALICE, &limit(Side::Buy, "100", "0.05")),
        ];
        let mut all = markets(T);
        all.insert("ETH-USDT".to_owned(), eth_usdt());
        let done = apply(&requests, funds(&[(ALICE, "USDT", 100 * USDT)]), &all);
        let numbered: Vec<_> = done
            .commands
            .iter()
            .map(|c| (c.market.to_string(), c.seq, c.time_ms))
            .collect();
        assert_eq!(
            numbered,
            [
                ("BTC-USDT".to_owned(), 1, TIME_MS),
                ("ETH-USDT".to_owned(), 1, TIME_MS),
                ("BTC-USDT".to_owned(), 2, TIME_MS),
                ("BTC-USDT".to_owned(), 3, TIME_MS),
            ]
        );
        // New orders carry their id (in arrival order), seq and time, as
        // their command does.
        let Ok(Reply::Placed { order, .. }) = &done.outcomes[3] else {
            panic!("not placed: {:?}", done.outcomes[3]);
        };
        assert_eq!((order.id, order.seq), (102, 3));
        assert_eq!(u64::try_from(order.created_ms).unwrap(), TIME_MS);
        assert!(matches!(
            &done.commands[3].command,
            Command::Place(p) if p.order_id == OrderId(102) && p.reserved == 5 * USDT
        ));
        assert_eq!(accepted_seq(&done.outcomes[2]), 2);
        assert_eq!(
            done.statuses,
            [("BTC-USDT".to_owned(), MarketStatus::Halted)]
        );
        assert_eq!(done.locked(ALICE, "USDT"), 15 * USDT);
    }

    #[test]
    fn a_batch_reads_the_orders_it_names_and_the_balances_it_may_spend() {
        let requests = [
            place(ALICE, &with_client_id(limit(Side::Buy, "100", "1"), "a")),
            place(BOB, &market_by_quantity(Side::Sell, "1")),
            Request::Cancel {
                user_id: BOB,
                order_id: 8,
            },
            amend(ALICE, 7, Some("150"), None),
            // Bob's amend of Alice's order spends nothing.
            amend(BOB, 7, Some("150"), None),
        ];
        let wanted = lookups(&requests);
        assert_eq!(wanted.client_id_users, [ALICE]);
        assert_eq!(wanted.client_ids, ["a"]);
        assert_eq!(wanted.order_ids, [8, 7, 7]);
        assert_eq!(
            wanted.price_markets,
            BTreeMap::from([("BTC-USDT".to_owned(), 6)])
        );
        let by_id = with_orders(funds(&[]), &[resting_buy(7)]).by_id;
        assert_eq!(
            balance_keys(&requests, &by_id),
            BTreeSet::from([(ALICE, "USDT".to_owned()), (BOB, "BTC".to_owned()),])
        );
        assert_eq!(
            batch_markets(&requests, &by_id),
            BTreeSet::from(["BTC-USDT".to_owned()])
        );
        assert_eq!(amended_order_ids(&requests), [7, 7]);
    }
}
