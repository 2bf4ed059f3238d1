//! A deliberately naive order book: every live order in a `Vec`, every
//! question answered by a linear scan. It exists to be obviously right, so
//! the fast book can be checked against it (same events, same state hash);
//! never use it for anything else. It shares the fast book's validation and
//! fill arithmetic (`rules`), so the comparison is about storage and
//! matching order.

use exchange_domain::{
    AmendOrder, AssetRole, Command, CommandKind, Event, FinalStatus, MarketSpec, MarketStatus,
    OrderId, OrderType, PlaceOrder, ReasonCode, SelfTradePrevention, Side, TimeInForce, UserId,
};

use crate::book::{ApplyError, amend_plan};
use crate::rules::{self, Halt, Order, Params, accepts, taker_capacity};
use crate::snapshot::{self, Fnv, Header, Sink};

#[derive(Debug, Clone)]
pub struct ReferenceBook {
    spec: MarketSpec,
    p: Params,
    status: MarketStatus,
    /// (queue number, order): time priority is the queue number.
    resting: Vec<(u64, Order)>,
    stops: Vec<Order>,
    last_price: u64,
    next_trade_id: u64,
    next_arrival: u64,
    next_queue: u64,
    last_seq: u64,
    last_time_ms: u64,
}

fn better(side: Side, a: u64, b: u64) -> bool {
    if side == Side::Buy { a > b } else { a < b }
}

impl ReferenceBook {
    pub fn new(spec: MarketSpec) -> Self {
        Self {
            spec,
            p: Params::new(&spec),
            status: MarketStatus::Trading,
            resting: Vec::new(),
            stops: Vec::new(),
            last_price: 0,
            next_trade_id: 1,
            next_arrival: 1,
            next_queue: 1,
            last_seq: 0,
            last_time_ms: 0,
        }
    }

    pub fn apply(
        &mut self,
        seq: u64,
        time_ms: u64,
        command: &Command,
    ) -> Result<Vec<Event>, ApplyError> {
        if seq <= self.last_seq {
            return Err(ApplyError::StaleSequence {
                last: self.last_seq,
                got: seq,
            });
        }
        self.last_seq = seq;
        self.last_time_ms = time_ms;
        let mut out = Vec::new();
        match command {
            Command::Place(cmd) => self.place(cmd, &mut out),
            Command::Cancel { order_id, user_id } => self.cancel(*order_id, *user_id, &mut out),
            Command::CancelAll { user_id } => self.cancel_all(*user_id, &mut out),
            Command::Amend(a) => self.amend(a, &mut out),
            Command::SetStatus { status } => {
                self.status = *status;
                out.push(Event::MarketStatusChanged { status: *status });
            }
        }
        Ok(out)
    }

    fn best(&self, side: Side) -> Option<u64> {
        self.resting
            .iter()
            .filter(|(_, o)| o.side == side)
            .map(|(_, o)| o.price)
            .reduce(|a, b| if better(side, a, b) { a } else { b })
    }

    fn would_take(&self, side: Side, price: u64) -> bool {
        self.best(side.opposite())
            .is_some_and(|best| accepts(side, price, best))
    }

    fn level_total(&self, side: Side, price: u64) -> u128 {
        self.resting
            .iter()
            .filter(|(_, o)| o.side == side && o.price == price)
            .map(|(_, o)| u128::from(o.lots))
            .sum()
    }

    fn level_event(&self, side: Side, price: u64) -> Event {
        Event::BookLevel {
            side,
            price: self.p.price_units(price),
            quantity: self.level_total(side, price) * self.p.step,
        }
    }

    fn has_id(&self, id: u64) -> bool {
        self.resting.iter().any(|(_, o)| o.id == id) || self.stops.iter().any(|o| o.id == id)
    }

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
        if self.has_id(o.id) {
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
            self.stops.push(o);
            return;
        }
        self.execute(o, out);
        self.run_stops(out);
    }

    fn cancel(&mut self, order_id: OrderId, user_id: UserId, out: &mut Vec<Event>) {
        let reject = |reason, asset| {
            rules::command_rejected(
                CommandKind::Cancel,
                Some(order_id),
                Some(user_id),
                reason,
                asset,
                0,
            )
        };
        if self.status == MarketStatus::Halted {
            return out.push(reject(ReasonCode::MarketHalted, AssetRole::Quote));
        }
        let owner = self
            .resting
            .iter()
            .map(|(_, o)| o)
            .chain(self.stops.iter())
            .find(|o| o.id == order_id.0)
            .map(|o| (o.user, o.side));
        match owner {
            None => out.push(reject(ReasonCode::OrderNotFound, AssetRole::Quote)),
            Some((user, side)) if user != user_id.0 => {
                out.push(reject(ReasonCode::NotOrderOwner, side.spends()))
            }
            Some(_) => self.cancel_id(order_id.0, out),
        }
    }

    fn cancel_id(&mut self, id: u64, out: &mut Vec<Event>) {
        if let Some(pos) = self.resting.iter().position(|(_, o)| o.id == id) {
            let (_, o) = self.resting.remove(pos);
            out.push(rules::done(&self.p, &o, FinalStatus::Canceled, None));
            out.push(self.level_event(o.side, o.price));
        } else if let Some(pos) = self.stops.iter().position(|o| o.id == id) {
            let o = self.stops.remove(pos);
            out.push(rules::done(&self.p, &o, FinalStatus::Canceled, None));
        }
    }

    fn cancel_all(&mut self, user_id: UserId, out: &mut Vec<Event>) {
        if self.status == MarketStatus::Halted {
            return out.push(rules::command_rejected(
                CommandKind::CancelAll,
                None,
                Some(user_id),
                ReasonCode::MarketHalted,
                AssetRole::Quote,
                0,
            ));
        }
        let mut ids: Vec<u64> = self
            .resting
            .iter()
            .map(|(_, o)| o)
            .chain(self.stops.iter())
            .filter(|o| o.user == user_id.0)
            .map(|o| o.id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.cancel_id(id, out);
        }
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
        let resting = self.resting.iter().position(|(_, o)| o.id == a.order_id.0);
        let stop = self.stops.iter().find(|o| o.id == a.order_id.0);
        let (pos, o) = match (resting, stop) {
            (Some(pos), _) => (Some(pos), self.resting[pos].1),
            (None, Some(o)) => (None, *o),
            (None, None) => return out.push(reject(ReasonCode::OrderNotFound)),
        };
        if o.user != a.user_id.0 {
            return out.push(reject(ReasonCode::NotOrderOwner));
        }
        if o.side != a.side {
            return out.push(reject(ReasonCode::SideMismatch));
        }
        let Some(pos) = pos else {
            return out.push(reject(ReasonCode::OrderNotAmendable));
        };
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
            let o = &mut self.resting[pos].1;
            o.lots = plan.lots;
            o.reserve = plan.reserve;
            out.push(self.level_event(a.side, plan.price));
        } else {
            let (_, mut moved) = self.resting.remove(pos);
            out.push(self.level_event(moved.side, moved.price));
            moved.price = plan.price;
            moved.lots = plan.lots;
            moved.reserve = plan.reserve;
            self.execute(moved, out);
            self.run_stops(out);
        }
    }

    /// Makers acceptable to `t`, best price first, then queue order.
    fn candidates(&self, t: &Order) -> Vec<Order> {
        let ms = t.side.opposite();
        let mut v: Vec<(u64, Order)> = self
            .resting
            .iter()
            .filter(|(_, o)| o.side == ms && accepts(t.side, t.price, o.price))
            .copied()
            .collect();
        v.sort_by(|(qa, a), (qb, b)| {
            let by_price = if ms == Side::Buy {
                b.price.cmp(&a.price)
            } else {
                a.price.cmp(&b.price)
            };
            by_price.then(qa.cmp(qb))
        });
        v.into_iter().map(|(_, o)| o).collect()
    }

    fn can_fill(&self, t: &Order) -> bool {
        let mut probe = *t;
        for m in self.candidates(t) {
            if m.user == t.user && t.stp != SelfTradePrevention::None {
                if t.stp == SelfTradePrevention::ExpireMaker {
                    continue;
                }
                return false;
            }
            let lots = taker_capacity(&self.p, &probe, m.price).min(m.lots);
            if lots == 0 {
                return false;
            }
            probe.lots -= lots;
            if probe.side == Side::Buy && probe.price == 0 {
                let cost = self.p.quote(m.price, lots).unwrap_or(u128::MAX);
                probe.reserve = probe.reserve.saturating_sub(cost);
            }
            if probe.lots == 0 {
                return true;
            }
        }
        false
    }

    fn execute(&mut self, mut t: Order, out: &mut Vec<Event>) {
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
            None => {
                self.resting.push((self.next_queue, t));
                self.next_queue += 1;
                out.push(self.level_event(t.side, t.price));
            }
            Some((status, reason)) => out.push(rules::done(&self.p, &t, status, reason)),
        }
    }

    fn sweep(&mut self, t: &mut Order, out: &mut Vec<Event>) -> Halt {
        let ms = t.side.opposite();
        let p = self.p;
        loop {
            if t.is_done() {
                return Halt::Done;
            }
            let Some(price) = self.best(ms) else {
                return Halt::NoLiquidity;
            };
            if !accepts(t.side, t.price, price) {
                return Halt::NoLiquidity;
            }
            let mut queue: Vec<(u64, u64)> = self
                .resting
                .iter()
                .filter(|(_, o)| o.side == ms && o.price == price)
                .map(|(q, o)| (*q, o.id))
                .collect();
            queue.sort_unstable();
            let mut changed = false;
            let mut halt = None;
            for (_, id) in queue {
                if t.is_done() {
                    halt = Some(Halt::Done);
                    break;
                }
                let Some(pos) = self.resting.iter().position(|(_, o)| o.id == id) else {
                    continue;
                };
                let m = self.resting[pos].1;
                if m.user == t.user && t.stp != SelfTradePrevention::None {
                    if t.stp == SelfTradePrevention::ExpireTaker {
                        halt = Some(Halt::SelfTrade);
                        break;
                    }
                    self.resting.remove(pos);
                    changed = true;
                    out.push(rules::done(
                        &p,
                        &m,
                        FinalStatus::Expired,
                        Some(ReasonCode::SelfTradePrevention),
                    ));
                    if t.stp == SelfTradePrevention::ExpireBoth {
                        halt = Some(Halt::SelfTrade);
                        break;
                    }
                    continue;
                }
                let lots = taker_capacity(&p, t, price).min(m.lots);
                if lots == 0 {
                    halt = Some(Halt::CannotAfford);
                    break;
                }
                let trade_id = self.next_trade_id;
                self.next_trade_id += 1;
                out.push(rules::fill(
                    &p,
                    trade_id,
                    t,
                    &mut self.resting[pos].1,
                    price,
                    lots,
                ));
                self.last_price = price;
                changed = true;
                let m = self.resting[pos].1;
                if m.lots == 0 {
                    out.push(rules::done(&p, &m, FinalStatus::Filled, None));
                    self.resting.remove(pos);
                } else {
                    halt = Some(if t.is_done() {
                        Halt::Done
                    } else {
                        Halt::CannotAfford
                    });
                    break;
                }
            }
            if changed {
                out.push(self.level_event(ms, price));
            }
            if let Some(halt) = halt {
                return halt;
            }
        }
    }

    /// The pending order the last price triggers next: the first reached
    /// in canonical order (see [`pending_rank`]).
    fn run_stops(&mut self, out: &mut Vec<Event>) {
        while self.last_price != 0 {
            let last = self.last_price;
            let next = self
                .stops
                .iter()
                .enumerate()
                .filter(|(_, o)| o.triggers_at(last))
                .min_by_key(|(_, o)| pending_rank(o))
                .map(|(i, _)| i);
            let Some(pos) = next else { return };
            let o = self.stops.remove(pos);
            out.push(Event::StopTriggered {
                order_id: OrderId(o.id),
                user_id: UserId(o.user),
                stop_price: self.p.price_units(o.stop),
                last_price: self.p.price_units(last),
            });
            self.execute(o.triggered(), out);
        }
    }

    fn write_state<S: Sink>(&self, s: &mut S) {
        let header = Header {
            version: snapshot::version_for(self.stops.iter()),
            status: self.status,
            last_seq: self.last_seq,
            last_time_ms: self.last_time_ms,
            last_price: self.last_price,
            next_trade_id: self.next_trade_id,
            next_arrival: self.next_arrival,
        };
        snapshot::write_prefix(s, &self.spec, &header);
        let mut resting = self.resting.clone();
        resting.sort_by(|(qa, a), (qb, b)| {
            let side = (a.side == Side::Sell).cmp(&(b.side == Side::Sell));
            let price = if a.side == Side::Buy {
                b.price.cmp(&a.price)
            } else {
                a.price.cmp(&b.price)
            };
            side.then(price).then(qa.cmp(qb))
        });
        snapshot::write_count(s, resting.len());
        for (_, o) in &resting {
            snapshot::write_order(s, o);
        }
        let mut stops = self.stops.clone();
        stops.sort_by_key(pending_rank);
        snapshot::write_count(s, stops.len());
        for o in &stops {
            snapshot::write_order(s, o);
        }
    }

    pub fn state_hash(&self) -> u64 {
        let mut h = Fnv::new();
        self.write_state(&mut h);
        h.finish()
    }

    pub fn snapshot(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.write_state(&mut bytes);
        snapshot::seal(&mut bytes);
        bytes
    }
}

/// Canonical rank of a pending order, written out plainly: stop buys
/// (lowest stop first), stop sells (highest first), take-profit buys
/// (highest first), take-profit sells (lowest first); ties by arrival.
/// Both the trigger order and the snapshot order.
fn pending_rank(o: &Order) -> (u8, u64, u64) {
    let take_profit = matches!(
        o.order_type,
        OrderType::TakeProfitLimit | OrderType::TakeProfitMarket
    );
    match (take_profit, o.side) {
        (false, Side::Buy) => (0, o.stop, o.arrival),
        (false, Side::Sell) => (1, u64::MAX - o.stop, o.arrival),
        (true, Side::Buy) => (2, u64::MAX - o.stop, o.arrival),
        (true, Side::Sell) => (3, o.stop, o.arrival),
    }
}
