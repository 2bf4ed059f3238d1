//! The fast order book.
//!
//! Storage: every live order (resting or pending stop) is a node in one
//! arena (`Vec<Node>` + free list), found by id through a hash map that is
//! only ever *looked up*, never iterated. Resting orders form a doubly
//! linked FIFO per price level; levels live in their own arena and are
//! ordered by a `BTreeMap<ticks, level>` per side, with the best level
//! cached. Each user's orders form a second linked list, for cancel-all.
//! Pending stops and take-profits sit in four `BTreeMap`s (by kind and
//! side) keyed by trigger order.
//!
//! Everything that reaches an event is ordered by price, queue position,
//! order id or arrival — never by hash order — so the same commands give
//! the same events on every run and every machine.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use exchange_domain::{
    AmendOrder, Command, CommandKind, Event, FinalStatus, MarketSpec, MarketStatus, OrderId,
    OrderType, PlaceOrder, ReasonCode, SelfTradePrevention, Side, TimeInForce, Trigger, UserId,
};

use crate::rules::{self, Halt, Order, Params, accepts, taker_capacity};
use crate::snapshot::{self, Fnv, Header, Sink, SnapshotError};

const NIL: u32 = u32::MAX;
const NO_BID: u64 = 0;
const NO_ASK: u64 = u64::MAX;

/// Why a command was not applied at all (a service bug, not a user error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("sequence {got} is not after the last applied sequence {last}")]
    StaleSequence { last: u64, got: u64 },
}

/// A read-only view of one live order, in units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderView {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub side: Side,
    pub order_type: OrderType,
    /// Limit price (quote units per whole base unit), `None` for market stops.
    pub price: Option<u128>,
    pub stop_price: Option<u128>,
    /// Open base quantity (0 for a quote-budget stop).
    pub open_quantity: u128,
    pub filled_quantity: u128,
    /// Reserve still held, in the asset `side` spends.
    pub reserve: u128,
    /// `true` when resting in the book, `false` when a pending stop.
    pub resting: bool,
}

/// Price levels as `(price, total open quantity)` units, best first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Depth {
    pub bids: Vec<(u128, u128)>,
    pub asks: Vec<(u128, u128)>,
}

/// Multiplicative hash for integer ids: fast, and deterministic (unlike
/// `RandomState`). Only lookups use it; no iteration order depends on it.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

#[derive(Debug, Clone, Copy)]
struct Node {
    o: Order,
    prev: u32,
    next: u32,
    user_prev: u32,
    user_next: u32,
    /// Level index when resting, `NIL` when a pending stop.
    level: u32,
}

#[derive(Debug, Clone, Copy)]
struct Level {
    price: u64,
    /// Open lots of all orders in the level.
    total: u128,
    head: u32,
    tail: u32,
}

#[derive(Debug, Clone, Copy)]
struct UserOrders {
    head: u32,
    len: u32,
}

#[derive(Debug, Clone)]
struct Ladder {
    side: Side,
    map: BTreeMap<u64, u32>,
    best: u64,
    best_level: u32,
}

impl Ladder {
    fn new(side: Side) -> Self {
        let best = if side == Side::Buy { NO_BID } else { NO_ASK };
        Self {
            side,
            map: BTreeMap::new(),
            best,
            best_level: NIL,
        }
    }

    fn is_better(&self, a: u64, b: u64) -> bool {
        if self.side == Side::Buy { a > b } else { a < b }
    }

    fn refresh_best(&mut self) {
        let entry = if self.side == Side::Buy {
            self.map.last_key_value()
        } else {
            self.map.first_key_value()
        };
        match entry {
            Some((&price, &level)) => {
                self.best = price;
                self.best_level = level;
            }
            None => {
                self.best = if self.side == Side::Buy {
                    NO_BID
                } else {
                    NO_ASK
                };
                self.best_level = NIL;
            }
        }
    }
}

/// One market's order book. See the crate docs for what it guarantees.
#[derive(Debug, Clone)]
pub struct OrderBook {
    spec: MarketSpec,
    p: Params,
    status: MarketStatus,
    nodes: Vec<Node>,
    free_nodes: Vec<u32>,
    index: IdMap<u32>,
    levels: Vec<Level>,
    free_levels: Vec<u32>,
    bids: Ladder,
    asks: Ladder,
    users: IdMap<UserOrders>,
    /// Buy stops by (stop asc, arrival): the first one triggers first.
    stop_buys: BTreeMap<(u64, u64), u32>,
    /// Sell stops by (u64::MAX - stop, arrival): highest stop first.
    stop_sells: BTreeMap<(u64, u64), u32>,
    /// Take-profit buys (trigger at or below) by (u64::MAX - stop,
    /// arrival): highest stop first, the first a falling price reaches.
    tp_buys: BTreeMap<(u64, u64), u32>,
    /// Take-profit sells (trigger at or above) by (stop, arrival): lowest
    /// stop first, the first a rising price reaches.
    tp_sells: BTreeMap<(u64, u64), u32>,
    last_price: u64,
    next_trade_id: u64,
    next_arrival: u64,
    last_seq: u64,
    last_time_ms: u64,
    scratch: Vec<u32>,
}

impl OrderBook {
    /// An empty book in `Trading` status.
    pub fn new(spec: MarketSpec) -> Self {
        Self::with_capacity(spec, 1024)
    }

    /// An empty book with room for `orders` live orders before growing.
    pub fn with_capacity(spec: MarketSpec, orders: usize) -> Self {
        let mut index = IdMap::default();
        index.reserve(orders);
        Self {
            spec,
            p: Params::new(&spec),
            status: MarketStatus::Trading,
            nodes: Vec::with_capacity(orders),
            free_nodes: Vec::new(),
            index,
            levels: Vec::with_capacity(1024),
            free_levels: Vec::new(),
            bids: Ladder::new(Side::Buy),
            asks: Ladder::new(Side::Sell),
            users: IdMap::default(),
            stop_buys: BTreeMap::new(),
            stop_sells: BTreeMap::new(),
            tp_buys: BTreeMap::new(),
            tp_sells: BTreeMap::new(),
            last_price: 0,
            next_trade_id: 1,
            next_arrival: 1,
            last_seq: 0,
            last_time_ms: 0,
            scratch: Vec::new(),
        }
    }

    pub fn spec(&self) -> &MarketSpec {
        &self.spec
    }
    pub fn status(&self) -> MarketStatus {
        self.status
    }
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
    /// Price of the last trade, in quote units per whole base unit.
    pub fn last_price(&self) -> Option<u128> {
        (self.last_price != 0).then(|| self.p.price_units(self.last_price))
    }
    pub fn best_bid(&self) -> Option<u128> {
        (self.bids.best != NO_BID).then(|| self.p.price_units(self.bids.best))
    }
    pub fn best_ask(&self) -> Option<u128> {
        (self.asks.best != NO_ASK).then(|| self.p.price_units(self.asks.best))
    }
    /// Live orders: resting plus pending stops.
    pub fn order_count(&self) -> usize {
        self.index.len()
    }

    pub fn order(&self, id: OrderId) -> Option<OrderView> {
        let idx = *self.index.get(&id.0)?;
        let n = &self.nodes[idx as usize];
        let o = &n.o;
        Some(OrderView {
            order_id: OrderId(o.id),
            user_id: UserId(o.user),
            side: o.side,
            order_type: o.order_type,
            price: (o.price != 0).then(|| self.p.price_units(o.price)),
            stop_price: (o.stop != 0).then(|| self.p.price_units(o.stop)),
            open_quantity: self.p.qty_units(o.lots),
            filled_quantity: self.p.qty_units(o.filled),
            reserve: o.reserve,
            resting: n.level != NIL,
        })
    }

    /// Every live order: resting (bids best-first, asks best-first, queue
    /// order), then pending stops in trigger order.
    pub fn orders(&self) -> Vec<OrderView> {
        let mut ids = Vec::with_capacity(self.index.len());
        for &level in self.bids.map.values().rev().chain(self.asks.map.values()) {
            let mut cur = self.levels[level as usize].head;
            while cur != NIL {
                ids.push(self.nodes[cur as usize].o.id);
                cur = self.nodes[cur as usize].next;
            }
        }
        for idx in self.pending() {
            ids.push(self.nodes[idx as usize].o.id);
        }
        ids.into_iter()
            .filter_map(|id| self.order(OrderId(id)))
            .collect()
    }

    /// Up to `limit` levels per side, best first, as `(price, quantity)` units.
    pub fn depth(&self, limit: usize) -> Depth {
        let level = |(&price, &l): (&u64, &u32)| {
            (
                self.p.price_units(price),
                self.levels[l as usize].total * self.p.step,
            )
        };
        let bids = self.bids.map.iter().rev().take(limit).map(level).collect();
        let asks = self.asks.map.iter().take(limit).map(level).collect();
        Depth { bids, asks }
    }

    /// Applies one command and returns its events.
    pub fn apply(
        &mut self,
        seq: u64,
        time_ms: u64,
        command: &Command,
    ) -> Result<Vec<Event>, ApplyError> {
        let mut out = Vec::new();
        self.apply_into(seq, time_ms, command, &mut out)?;
        Ok(out)
    }

    /// Like [`OrderBook::apply`], appending to `out` (no allocation when
    /// `out` has room: the hot path for the matching service and benches).
    pub fn apply_into(
        &mut self,
        seq: u64,
        time_ms: u64,
        command: &Command,
        out: &mut Vec<Event>,
    ) -> Result<(), ApplyError> {
        if seq <= self.last_seq {
            return Err(ApplyError::StaleSequence {
                last: self.last_seq,
                got: seq,
            });
        }
        self.last_seq = seq;
        self.last_time_ms = time_ms;
        match command {
            Command::Place(cmd) => self.place(cmd, out),
            Command::Cancel { order_id, user_id } => self.cancel(*order_id, *user_id, out),
            Command::CancelAll { user_id } => self.cancel_all(*user_id, out),
            Command::Amend(a) => self.amend(a, out),
            Command::SetStatus { status } => {
                self.status = *status;
                out.push(Event::MarketStatusChanged { status: *status });
            }
        }
        // The one invariant a cheap check can guard on every command.
        assert!(
            self.bids.best < self.asks.best,
            "book crossed: bid {} >= ask {}",
            self.bids.best,
            self.asks.best
        );
        Ok(())
    }

    // ---- commands -------------------------------------------------------

    fn place(&mut self, cmd: &PlaceOrder, out: &mut Vec<Event>) {
        let o = match rules::validate_place(
            &self.spec,
            self.status,
            cmd,
            self.last_price,
            self.next_arrival,
        ) {
            Ok(o) => o,
            Err(reason) => return out.push(rules::rejected(cmd, reason)),
        };
        if self.index.contains_key(&o.id) {
            return out.push(rules::rejected(cmd, ReasonCode::DuplicateOrderId));
        }
        if o.post_only && self.would_take(o.side, o.price) {
            return out.push(rules::rejected(cmd, ReasonCode::PostOnlyWouldTake));
        }
        self.next_arrival += 1;
        out.push(Event::OrderAccepted {
            order_id: cmd.order_id,
            user_id: cmd.user_id,
        });
        if o.is_stop() {
            self.add_stop(o);
            return;
        }
        self.execute_taker(o, out);
        self.run_stops(out);
    }

    fn cancel(&mut self, order_id: OrderId, user_id: UserId, out: &mut Vec<Event>) {
        let reject = |reason, side: Option<Side>| {
            rules::command_rejected(
                CommandKind::Cancel,
                Some(order_id),
                Some(user_id),
                reason,
                side.map_or(exchange_domain::AssetRole::Quote, Side::spends),
                0,
            )
        };
        if self.status == MarketStatus::Halted {
            return out.push(reject(ReasonCode::MarketHalted, None));
        }
        let Some(&idx) = self.index.get(&order_id.0) else {
            return out.push(reject(ReasonCode::OrderNotFound, None));
        };
        let o = self.nodes[idx as usize].o;
        if o.user != user_id.0 {
            return out.push(reject(ReasonCode::NotOrderOwner, Some(o.side)));
        }
        self.remove_order(idx, FinalStatus::Canceled, None, out);
    }

    fn cancel_all(&mut self, user_id: UserId, out: &mut Vec<Event>) {
        if self.status == MarketStatus::Halted {
            return out.push(rules::command_rejected(
                CommandKind::CancelAll,
                None,
                Some(user_id),
                ReasonCode::MarketHalted,
                exchange_domain::AssetRole::Quote,
                0,
            ));
        }
        let Some(list) = self.users.get(&user_id.0) else {
            return;
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let mut cur = list.head;
        while cur != NIL {
            scratch.push(cur);
            cur = self.nodes[cur as usize].user_next;
        }
        // Order-id order: a canonical order independent of storage.
        scratch.sort_unstable_by_key(|&i| self.nodes[i as usize].o.id);
        for &idx in &scratch {
            self.remove_order(idx, FinalStatus::Canceled, None, out);
        }
        self.scratch = scratch;
    }

    fn amend(&mut self, a: &AmendOrder, out: &mut Vec<Event>) {
        let asset = a.side.spends();
        let reject = |reason| {
            rules::command_rejected(
                CommandKind::Amend,
                Some(a.order_id),
                Some(a.user_id),
                reason,
                asset,
                a.additional_reserve,
            )
        };
        match self.status {
            MarketStatus::Trading => {}
            MarketStatus::CancelOnly => return out.push(reject(ReasonCode::MarketCancelOnly)),
            MarketStatus::Halted => return out.push(reject(ReasonCode::MarketHalted)),
        }
        let Some(&idx) = self.index.get(&a.order_id.0) else {
            return out.push(reject(ReasonCode::OrderNotFound));
        };
        let node = self.nodes[idx as usize];
        let o = node.o;
        if o.user != a.user_id.0 {
            return out.push(reject(ReasonCode::NotOrderOwner));
        }
        if o.side != a.side {
            return out.push(reject(ReasonCode::SideMismatch));
        }
        if node.level == NIL {
            return out.push(reject(ReasonCode::OrderNotAmendable));
        }
        let plan = match amend_plan(&self.p, &o, a, |side, price| self.would_take(side, price)) {
            Ok(plan) => plan,
            Err(reason) => return out.push(reject(reason)),
        };
        out.push(Event::Amended {
            order_id: a.order_id,
            user_id: a.user_id,
            price: self.p.price_units(plan.price),
            quantity: self.p.qty_units(plan.lots),
            priority_kept: plan.keep,
            release_asset: asset,
            released: plan.released,
        });
        if plan.keep {
            let n = &mut self.nodes[idx as usize];
            let reduce = n.o.lots - plan.lots;
            n.o.lots = plan.lots;
            n.o.reserve = plan.reserve;
            let level = &mut self.levels[node.level as usize];
            level.total -= u128::from(reduce);
            out.push(self.level_event(o.side, node.level));
        } else {
            self.unlink_resting(idx, out);
            let mut moved = o;
            moved.price = plan.price;
            moved.lots = plan.lots;
            moved.reserve = plan.reserve;
            self.execute_taker(moved, out);
            self.run_stops(out);
        }
    }

    // ---- matching -------------------------------------------------------

    fn would_take(&self, side: Side, price: u64) -> bool {
        match side {
            Side::Buy => self.asks.best <= price,
            Side::Sell => self.bids.best >= price,
        }
    }

    fn execute_taker(&mut self, mut t: Order, out: &mut Vec<Event>) {
        if t.tif == TimeInForce::Fok && !self.can_fill(&t) {
            return out.push(rules::done(
                &self.p,
                &t,
                FinalStatus::Expired,
                Some(ReasonCode::FillOrKillUnfilled),
            ));
        }
        let halt = self.sweep(&mut t, out);
        match rules::disposition(&t, halt) {
            None => self.rest_new(t, out),
            Some((status, reason)) => out.push(rules::done(&self.p, &t, status, reason)),
        }
    }

    /// Would a fill-or-kill taker fill completely? Mirrors `sweep` without
    /// changing anything.
    fn can_fill(&self, t: &Order) -> bool {
        let maker_side = t.side.opposite();
        let ladder = self.ladder(maker_side);
        let levels: Box<dyn Iterator<Item = (&u64, &u32)>> = match maker_side {
            Side::Sell => Box::new(ladder.map.iter()),
            Side::Buy => Box::new(ladder.map.iter().rev()),
        };
        let mut probe = *t;
        for (&price, &level) in levels {
            if !accepts(t.side, t.price, price) {
                return false;
            }
            let mut cur = self.levels[level as usize].head;
            while cur != NIL {
                let m = &self.nodes[cur as usize].o;
                cur = self.nodes[cur as usize].next;
                if m.user == t.user && t.stp != SelfTradePrevention::None {
                    match t.stp {
                        SelfTradePrevention::ExpireMaker => continue,
                        _ => return false,
                    }
                }
                let lots = taker_capacity(&self.p, &probe, price).min(m.lots);
                if lots == 0 {
                    return false;
                }
                probe.lots -= lots;
                if probe.side == Side::Buy && probe.price == 0 {
                    // Only market buys are limited by their reserve.
                    probe.reserve -= self
                        .p
                        .quote(price, lots)
                        .unwrap_or(u128::MAX)
                        .min(probe.reserve);
                }
                if probe.lots == 0 {
                    return true;
                }
            }
        }
        false
    }

    fn sweep(&mut self, t: &mut Order, out: &mut Vec<Event>) -> Halt {
        let maker_side = t.side.opposite();
        loop {
            if t.is_done() {
                return Halt::Done;
            }
            let ladder = self.ladder(maker_side);
            let (price, level) = (ladder.best, ladder.best_level);
            if level == NIL || !accepts(t.side, t.price, price) {
                return Halt::NoLiquidity;
            }
            let (halt, changed) = self.sweep_level(t, level, price, out);
            if changed {
                out.push(self.level_event(maker_side, level));
            }
            if self.levels[level as usize].head == NIL {
                self.drop_level(maker_side, level);
            }
            if let Some(halt) = halt {
                return halt;
            }
        }
    }

    /// Matches `t` against one level. Returns why it stopped (`None`: the
    /// level ran out) and whether the level changed.
    fn sweep_level(
        &mut self,
        t: &mut Order,
        level: u32,
        price: u64,
        out: &mut Vec<Event>,
    ) -> (Option<Halt>, bool) {
        let p = self.p;
        let mut changed = false;
        let mut cur = self.levels[level as usize].head;
        while cur != NIL {
            if t.is_done() {
                return (Some(Halt::Done), changed);
            }
            let next = self.nodes[cur as usize].next;
            if self.nodes[cur as usize].o.user == t.user && t.stp != SelfTradePrevention::None {
                if t.stp == SelfTradePrevention::ExpireTaker {
                    return (Some(Halt::SelfTrade), changed);
                }
                changed = true;
                self.remove_order(
                    cur,
                    FinalStatus::Expired,
                    Some(ReasonCode::SelfTradePrevention),
                    out,
                );
                if t.stp == SelfTradePrevention::ExpireBoth {
                    return (Some(Halt::SelfTrade), changed);
                }
                cur = next;
                continue;
            }
            let m = &mut self.nodes[cur as usize].o;
            let lots = taker_capacity(&p, t, price).min(m.lots);
            if lots == 0 {
                return (Some(Halt::CannotAfford), changed);
            }
            let trade_id = self.next_trade_id;
            self.next_trade_id += 1;
            out.push(rules::fill(&p, trade_id, t, m, price, lots));
            let maker_left = m.lots;
            self.levels[level as usize].total -= u128::from(lots);
            self.last_price = price;
            changed = true;
            if maker_left != 0 {
                // The taker could not take the whole maker: it is done or
                // cannot pay for another lot.
                let halt = if t.is_done() {
                    Halt::Done
                } else {
                    Halt::CannotAfford
                };
                return (Some(halt), changed);
            }
            let done = rules::done(&p, &self.nodes[cur as usize].o, FinalStatus::Filled, None);
            out.push(done);
            self.queue_unlink(cur);
            self.forget(cur);
            cur = next;
        }
        (None, changed)
    }

    /// Triggers pending orders while the last price reaches one: each
    /// round takes the first reached of stop buys (lowest stop first), stop
    /// sells (highest first), take-profit buys (highest first), take-profit
    /// sells (lowest first), ties by arrival; its execution may move the
    /// last price and so trigger more (a cascade).
    fn run_stops(&mut self, out: &mut Vec<Event>) {
        while self.last_price != 0 {
            let last = self.last_price;
            // Each queue's first entry is the one the price reaches first,
            // so only it needs checking.
            let nodes = &self.nodes;
            let first = |queue: StopQueue, map: &BTreeMap<(u64, u64), u32>| {
                map.first_key_value()
                    .filter(|(_, idx)| nodes[**idx as usize].o.triggers_at(last))
                    .map(|(k, v)| (queue, *k, *v))
            };
            let found = first(StopQueue::StopBuys, &self.stop_buys)
                .or_else(|| first(StopQueue::StopSells, &self.stop_sells))
                .or_else(|| first(StopQueue::TpBuys, &self.tp_buys))
                .or_else(|| first(StopQueue::TpSells, &self.tp_sells));
            let Some((queue, key, idx)) = found else {
                return;
            };
            self.stop_queue(queue).remove(&key);
            let o = self.nodes[idx as usize].o;
            self.forget(idx);
            out.push(Event::StopTriggered {
                order_id: OrderId(o.id),
                user_id: UserId(o.user),
                stop_price: self.p.price_units(o.stop),
                last_price: self.p.price_units(last),
            });
            self.execute_taker(o.triggered(), out);
        }
    }

    // ---- storage --------------------------------------------------------

    fn ladder(&self, side: Side) -> &Ladder {
        if side == Side::Buy {
            &self.bids
        } else {
            &self.asks
        }
    }

    fn ladder_mut(&mut self, side: Side) -> &mut Ladder {
        if side == Side::Buy {
            &mut self.bids
        } else {
            &mut self.asks
        }
    }

    fn level_event(&self, side: Side, level: u32) -> Event {
        let l = &self.levels[level as usize];
        Event::BookLevel {
            side,
            price: self.p.price_units(l.price),
            quantity: l.total * self.p.step,
        }
    }

    /// Puts `o` in the arena, the id index and its user's list.
    fn alloc(&mut self, o: Order, level: u32) -> u32 {
        let node = Node {
            o,
            prev: NIL,
            next: NIL,
            user_prev: NIL,
            user_next: NIL,
            level,
        };
        let idx = match self.free_nodes.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                let i = u32::try_from(self.nodes.len()).expect("fewer than 4 billion live orders");
                self.nodes.push(node);
                i
            }
        };
        self.index.insert(o.id, idx);
        let list = self
            .users
            .entry(o.user)
            .or_insert(UserOrders { head: NIL, len: 0 });
        let old_head = list.head;
        list.head = idx;
        list.len += 1;
        self.nodes[idx as usize].user_next = old_head;
        if old_head != NIL {
            self.nodes[old_head as usize].user_prev = idx;
        }
        idx
    }

    /// Removes a node from the index and its user's list and frees it.
    fn forget(&mut self, idx: u32) {
        let n = self.nodes[idx as usize];
        self.index.remove(&n.o.id);
        if n.user_prev != NIL {
            self.nodes[n.user_prev as usize].user_next = n.user_next;
        }
        if n.user_next != NIL {
            self.nodes[n.user_next as usize].user_prev = n.user_prev;
        }
        if let Some(list) = self.users.get_mut(&n.o.user) {
            if list.head == idx {
                list.head = n.user_next;
            }
            list.len -= 1;
            if list.len == 0 {
                self.users.remove(&n.o.user);
            }
        }
        self.free_nodes.push(idx);
    }

    fn level_for(&mut self, side: Side, price: u64) -> u32 {
        if let Some(&l) = self.ladder(side).map.get(&price) {
            return l;
        }
        let level = Level {
            price,
            total: 0,
            head: NIL,
            tail: NIL,
        };
        let l = match self.free_levels.pop() {
            Some(l) => {
                self.levels[l as usize] = level;
                l
            }
            None => {
                let l = u32::try_from(self.levels.len()).expect("fewer than 4 billion levels");
                self.levels.push(level);
                l
            }
        };
        let ladder = self.ladder_mut(side);
        ladder.map.insert(price, l);
        if ladder.best_level == NIL || ladder.is_better(price, ladder.best) {
            ladder.best = price;
            ladder.best_level = l;
        }
        l
    }

    fn drop_level(&mut self, side: Side, level: u32) {
        let price = self.levels[level as usize].price;
        let ladder = self.ladder_mut(side);
        ladder.map.remove(&price);
        if ladder.best_level == level {
            ladder.refresh_best();
        }
        self.free_levels.push(level);
    }

    /// Appends a live limit order to the tail of its level.
    fn rest_new(&mut self, o: Order, out: &mut Vec<Event>) {
        let level = self.level_for(o.side, o.price);
        let idx = self.alloc(o, level);
        let l = &mut self.levels[level as usize];
        let tail = l.tail;
        l.tail = idx;
        if tail == NIL {
            l.head = idx;
        } else {
            self.nodes[tail as usize].next = idx;
        }
        self.nodes[idx as usize].prev = tail;
        self.levels[level as usize].total += u128::from(o.lots);
        out.push(self.level_event(o.side, level));
    }

    fn add_stop(&mut self, o: Order) {
        let idx = self.alloc(o, NIL);
        let (queue, key) = stop_key(&o);
        self.stop_queue(queue).insert(key, idx);
    }

    fn stop_queue(&mut self, queue: StopQueue) -> &mut BTreeMap<(u64, u64), u32> {
        match queue {
            StopQueue::StopBuys => &mut self.stop_buys,
            StopQueue::StopSells => &mut self.stop_sells,
            StopQueue::TpBuys => &mut self.tp_buys,
            StopQueue::TpSells => &mut self.tp_sells,
        }
    }

    /// Pending orders in canonical order: each queue in trigger order, the
    /// queues in [`StopQueue`] order.
    fn pending(&self) -> impl Iterator<Item = u32> + '_ {
        self.stop_buys
            .values()
            .chain(self.stop_sells.values())
            .chain(self.tp_buys.values())
            .chain(self.tp_sells.values())
            .copied()
    }

    fn pending_count(&self) -> usize {
        self.stop_buys.len() + self.stop_sells.len() + self.tp_buys.len() + self.tp_sells.len()
    }

    /// Unlinks a resting node from its level queue (the level stays, even empty).
    fn queue_unlink(&mut self, idx: u32) {
        let n = self.nodes[idx as usize];
        let l = &mut self.levels[n.level as usize];
        l.total -= u128::from(n.o.lots);
        if n.prev == NIL {
            l.head = n.next;
        } else {
            self.nodes[n.prev as usize].next = n.next;
        }
        if n.next == NIL {
            self.levels[n.level as usize].tail = n.prev;
        } else {
            self.nodes[n.next as usize].prev = n.prev;
        }
    }

    /// Takes a resting order out of the book entirely, with its level event.
    fn unlink_resting(&mut self, idx: u32, out: &mut Vec<Event>) {
        let n = self.nodes[idx as usize];
        self.queue_unlink(idx);
        self.forget(idx);
        out.push(self.level_event(n.o.side, n.level));
        if self.levels[n.level as usize].head == NIL {
            self.drop_level(n.o.side, n.level);
        }
    }

    /// Ends a live order (resting or stop) with `status`, releasing its reserve.
    /// Inside a sweep the caller emits the level event; elsewhere this does.
    fn remove_order(
        &mut self,
        idx: u32,
        status: FinalStatus,
        reason: Option<ReasonCode>,
        out: &mut Vec<Event>,
    ) {
        let n = self.nodes[idx as usize];
        out.push(rules::done(&self.p, &n.o, status, reason));
        if n.level == NIL {
            let (queue, key) = stop_key(&n.o);
            self.stop_queue(queue).remove(&key);
            self.forget(idx);
        } else if status == FinalStatus::Expired {
            // Self-trade expiry during a sweep: the sweep reports the level.
            self.queue_unlink(idx);
            self.forget(idx);
        } else {
            self.unlink_resting(idx, out);
        }
    }

    // ---- snapshot and hash ----------------------------------------------

    fn header(&self) -> Header {
        Header {
            version: snapshot::version_for(self.pending().map(|i| &self.nodes[i as usize].o)),
            status: self.status,
            last_seq: self.last_seq,
            last_time_ms: self.last_time_ms,
            last_price: self.last_price,
            next_trade_id: self.next_trade_id,
            next_arrival: self.next_arrival,
        }
    }

    fn write_state<S: Sink>(&self, s: &mut S) {
        snapshot::write_prefix(s, &self.spec, &self.header());
        let resting = self.index.len() - self.pending_count();
        snapshot::write_count(s, resting);
        let bid_levels = self.bids.map.values().rev();
        let ask_levels = self.asks.map.values();
        for &level in bid_levels.chain(ask_levels) {
            let mut cur = self.levels[level as usize].head;
            while cur != NIL {
                snapshot::write_order(s, &self.nodes[cur as usize].o);
                cur = self.nodes[cur as usize].next;
            }
        }
        snapshot::write_count(s, self.pending_count());
        for idx in self.pending() {
            snapshot::write_order(s, &self.nodes[idx as usize].o);
        }
    }

    /// The versioned snapshot bytes (format in [`crate::snapshot`]).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(256 + self.index.len() * 94);
        self.write_state(&mut bytes);
        snapshot::seal(&mut bytes);
        bytes
    }

    /// FNV-1a over the canonical state (equal to the snapshot's checksum).
    pub fn state_hash(&self) -> u64 {
        let mut h = Fnv::new();
        self.write_state(&mut h);
        h.finish()
    }

    /// Rebuilds a book from [`OrderBook::snapshot`] bytes taken with the same spec.
    pub fn restore(spec: MarketSpec, bytes: &[u8]) -> Result<Self, SnapshotError> {
        let d = snapshot::decode(&spec, bytes)?;
        snapshot::check_decoded(&d)?;
        let mut book = Self::with_capacity(spec, d.resting.len() + d.stops.len() + 1024);
        let h = d.header;
        book.status = h.status;
        book.last_seq = h.last_seq;
        book.last_time_ms = h.last_time_ms;
        book.last_price = h.last_price;
        book.next_trade_id = h.next_trade_id;
        book.next_arrival = h.next_arrival;
        let mut sink = Vec::new();
        for o in d.resting {
            book.rest_new(o, &mut sink);
            sink.clear();
        }
        for o in d.stops {
            book.add_stop(o);
        }
        Ok(book)
    }

    /// Full consistency check (tests): levels, totals, links, index, not crossed.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = 0usize;
        for (side, ladder) in [(Side::Buy, &self.bids), (Side::Sell, &self.asks)] {
            for (&price, &level) in &ladder.map {
                let l = &self.levels[level as usize];
                if l.price != price || l.head == NIL {
                    return Err(format!("level {price} on {side:?} is empty or misplaced"));
                }
                let (mut cur, mut prev, mut total) = (l.head, NIL, 0u128);
                while cur != NIL {
                    let n = &self.nodes[cur as usize];
                    if n.prev != prev
                        || n.level != level
                        || n.o.price != price
                        || n.o.side != side
                        || n.o.lots == 0
                    {
                        return Err(format!("order {} is mislinked", n.o.id));
                    }
                    if self.index.get(&n.o.id) != Some(&cur) {
                        return Err(format!("order {} missing from index", n.o.id));
                    }
                    if let Some(required) = self.p.required_reserve(side, price, n.o.lots)
                        && n.o.reserve < required
                    {
                        return Err(format!("order {} holds less reserve than it needs", n.o.id));
                    }
                    total += u128::from(n.o.lots);
                    seen += 1;
                    prev = cur;
                    cur = n.next;
                }
                if l.tail != prev || l.total != total {
                    return Err(format!("level {price} total or tail is wrong"));
                }
            }
            let mut check = ladder.clone();
            check.refresh_best();
            if check.best != ladder.best || check.best_level != ladder.best_level {
                return Err(format!("cached best {side:?} is stale"));
            }
        }
        if self.bids.best >= self.asks.best {
            return Err("book is crossed".into());
        }
        let stops = self.pending_count();
        if seen + stops != self.index.len() {
            return Err("index size does not match the book".into());
        }
        let user_total: usize = self.users.values().map(|u| u.len as usize).sum();
        if user_total != self.index.len() {
            return Err("user lists do not match the book".into());
        }
        Ok(())
    }
}

/// The four queues of pending conditional orders, in canonical order (the
/// order snapshots list them in and triggers are checked in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopQueue {
    StopBuys,
    StopSells,
    TpBuys,
    TpSells,
}

/// Where a pending order is queued, and its key there: the queue's first
/// key is the one the price reaches first.
fn stop_key(o: &Order) -> (StopQueue, (u64, u64)) {
    let high_first = (u64::MAX - o.stop, o.arrival);
    let low_first = (o.stop, o.arrival);
    match (o.order_type.trigger(o.side), o.side) {
        (Some(Trigger::AtOrAbove), Side::Buy) => (StopQueue::StopBuys, low_first),
        (Some(Trigger::AtOrBelow), Side::Sell) => (StopQueue::StopSells, high_first),
        (Some(Trigger::AtOrBelow), Side::Buy) => (StopQueue::TpBuys, high_first),
        (Some(Trigger::AtOrAbove), Side::Sell) => (StopQueue::TpSells, low_first),
        (None, _) => unreachable!("only conditional orders are queued as stops"),
    }
}

/// What an accepted amend does.
pub(crate) struct AmendPlan {
    pub price: u64,
    pub lots: u64,
    pub keep: bool,
    pub reserve: u128,
    pub released: u128,
}

/// Validates an amend of resting order `o` (shared with the reference book).
pub(crate) fn amend_plan(
    p: &Params,
    o: &Order,
    a: &AmendOrder,
    would_take: impl Fn(Side, u64) -> bool,
) -> Result<AmendPlan, ReasonCode> {
    let fix = |r| {
        if r == ReasonCode::InvalidOrder {
            ReasonCode::InvalidAmend
        } else {
            r
        }
    };
    if a.new_price.is_none() && a.new_quantity.is_none() {
        return Err(ReasonCode::InvalidAmend);
    }
    let price = match a.new_price {
        Some(units) => p.ticks(units).map_err(fix)?,
        None => o.price,
    };
    let lots = match a.new_quantity {
        Some(units) => p.lots(units).map_err(fix)?,
        None => o.lots,
    };
    let required = p
        .required_reserve(o.side, price, lots)
        .ok_or(ReasonCode::OutOfRange)?;
    let keep = price == o.price && lots <= o.lots;
    if !keep && o.post_only && would_take(o.side, price) {
        return Err(ReasonCode::PostOnlyWouldTake);
    }
    let total = o
        .reserve
        .checked_add(a.additional_reserve)
        .ok_or(ReasonCode::OutOfRange)?;
    if total < required {
        return Err(ReasonCode::InsufficientReserve);
    }
    Ok(AmendPlan {
        price,
        lots,
        keep,
        reserve: required,
        released: total - required,
    })
}
