//! Shared by the property and differential tests: a market, a decoder from
//! raw random numbers to commands, and a money/quantity ledger that checks
//! every event stream for conservation.
#![allow(dead_code)]

use std::collections::BTreeMap;

use exchange_domain::{
    AmendOrder, Asset, AssetSymbol, Command, Event, FeeRate, FinalStatus, MarketSpec,
    MarketSpecFields, MarketStatus, MarketSymbol, OrderId, OrderType, PlaceOrder,
    SelfTradePrevention, Side, TimeInForce, UserId,
};

/// base scale 3, quote scale 2, tick 0.30 (30 units), step 0.2 (200 units):
/// one tick × one lot = 30 × 200 / 1000 = 6 quote units.
pub const TICK: u128 = 30;
pub const STEP: u128 = 200;
pub const BASE_ONE: u128 = 1_000;

pub fn spec() -> MarketSpec {
    MarketSpec::new(MarketSpecFields {
        symbol: MarketSymbol::parse("ETH-EUR").expect("valid"),
        base: Asset {
            symbol: AssetSymbol::parse("ETH").expect("valid"),
            scale: 3,
        },
        quote: Asset {
            symbol: AssetSymbol::parse("EUR").expect("valid"),
            scale: 2,
        },
        price_tick: TICK,
        qty_step: STEP,
        min_qty: STEP,
        min_notional: 300,
        maker_fee: FeeRate::from_ppm(1_500).expect("valid"),
        taker_fee: FeeRate::from_ppm(2_500).expect("valid"),
    })
    .expect("valid spec")
}

/// SplitMix64: a tiny seeded generator, so tests need no RNG crate.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Turns raw random words into a plausible, adversarial command stream:
/// prices cluster around a mid so orders cross often, few users so
/// self-trades happen, ids are reused for cancels and amends, and a few
/// commands are malformed on purpose.
#[derive(Debug, Default)]
pub struct Decoder {
    next_id: u64,
    placed: Vec<(u64, u64, Side)>,
}

impl Decoder {
    pub fn decode(&mut self, raw: [u32; 6]) -> Command {
        let [kind, a, b, c, d, e] = raw;
        let user = u64::from(a % 5) + 1;
        let side = if b % 2 == 0 { Side::Buy } else { Side::Sell };
        // buys 88..=102, sells 98..=112: the overlap trades, the rest rests
        let ticks = if side == Side::Buy {
            u128::from(88 + c % 15)
        } else {
            u128::from(98 + c % 15)
        };
        let lots = u128::from(1 + d % 12);
        let stp = match e % 8 {
            0 => SelfTradePrevention::ExpireTaker,
            1 => SelfTradePrevention::ExpireMaker,
            2 => SelfTradePrevention::ExpireBoth,
            _ => SelfTradePrevention::None,
        };
        let extra = if e % 3 == 0 { u128::from(e % 97) } else { 0 };
        let tif = match (e >> 3) % 10 {
            0 => TimeInForce::Ioc,
            1 => TimeInForce::Fok,
            _ => TimeInForce::Gtc,
        };
        let k = TICK * STEP / BASE_ONE;
        let limit_reserve = |side: Side| {
            if side == Side::Buy {
                ticks * lots * k
            } else {
                lots * STEP
            }
        };
        let pick = |placed: &Vec<(u64, u64, Side)>, r: u32| -> Option<(u64, u64, Side)> {
            if placed.is_empty() {
                return None;
            }
            // mostly recent orders, which are more likely still open
            let window = placed.len().min(40);
            let i = placed.len() - 1 - (r as usize % window);
            Some(placed[i])
        };
        match kind % 100 {
            0..=44 | 90..=99 => {
                let mut o = self.new_order(user, side, OrderType::Limit);
                o.price = Some(ticks * TICK);
                o.quantity = Some(lots * STEP);
                o.time_in_force = tif;
                o.post_only = (e >> 7) % 8 == 0;
                o.stp = stp;
                o.reserved = limit_reserve(side) + extra;
                if (e >> 10) % 50 == 0 {
                    o.price = Some(ticks * TICK + 1); // off tick
                }
                if (e >> 10) % 50 == 1 {
                    o.reserved = limit_reserve(side) - 1; // short reserve
                }
                Command::Place(o)
            }
            45..=51 => {
                let mut o = self.new_order(user, side, OrderType::Market);
                o.quantity = Some(lots * STEP);
                o.time_in_force = if tif == TimeInForce::Fok {
                    TimeInForce::Fok
                } else {
                    TimeInForce::Ioc
                };
                o.stp = stp;
                o.reserved = if side == Side::Buy {
                    u128::from(c % 8_000)
                } else {
                    lots * STEP + extra
                };
                Command::Place(o)
            }
            52..=55 => {
                let mut o = self.new_order(user, Side::Buy, OrderType::Market);
                let quote = u128::from(300 + c % 5_000);
                o.quote_quantity = Some(quote);
                o.stp = stp;
                o.reserved = quote + extra;
                Command::Place(o)
            }
            56..=61 => {
                let stop_limit = b % 4 < 2;
                let take_profit = (b >> 2) % 2 == 1;
                let order_type = match (take_profit, stop_limit) {
                    (false, true) => OrderType::StopLimit,
                    (false, false) => OrderType::StopMarket,
                    (true, true) => OrderType::TakeProfitLimit,
                    (true, false) => OrderType::TakeProfitMarket,
                };
                let mut o = self.new_order(user, side, order_type);
                // Buy stops and sell take-profits above the mid (they wait
                // for a rise), sell stops and buy take-profits below it.
                let above = (side == Side::Buy) != take_profit;
                let stop = if above {
                    101 + u128::from(d % 5)
                } else {
                    95 + u128::from(d % 5)
                };
                o.stop_price = Some(stop * TICK);
                o.quantity = Some(lots * STEP);
                o.stp = stp;
                if stop_limit {
                    o.price = Some(ticks * TICK);
                    o.time_in_force = tif;
                    o.reserved = limit_reserve(side) + extra;
                } else {
                    o.time_in_force = TimeInForce::Ioc;
                    o.reserved = if side == Side::Buy {
                        u128::from(c % 8_000)
                    } else {
                        lots * STEP
                    };
                }
                Command::Place(o)
            }
            62..=74 => match pick(&self.placed, b) {
                Some((id, owner, _)) => {
                    let user = if a % 10 == 0 {
                        UserId(owner % 5 + 1)
                    } else {
                        UserId(owner)
                    };
                    Command::Cancel {
                        order_id: OrderId(id),
                        user_id: user,
                    }
                }
                None => Command::Cancel {
                    order_id: OrderId(999_999),
                    user_id: UserId(user),
                },
            },
            75..=88 => {
                let (id, owner, side) = pick(&self.placed, b).unwrap_or((999_999, user, side));
                let new_price = (c % 3 != 0).then_some(ticks * TICK);
                let new_quantity = (c % 3 != 1).then_some(lots * STEP);
                let additional_reserve = if d % 2 == 0 { u128::from(e % 700) } else { 0 };
                Command::Amend(AmendOrder {
                    order_id: OrderId(id),
                    user_id: UserId(owner),
                    side,
                    new_price,
                    new_quantity,
                    additional_reserve,
                })
            }
            89 if a % 4 != 0 => Command::CancelAll {
                user_id: UserId(user),
            },
            _ => Command::SetStatus {
                status: match c % 10 {
                    0..=7 => MarketStatus::Trading,
                    8 => MarketStatus::CancelOnly,
                    _ => MarketStatus::Halted,
                },
            },
        }
    }

    fn new_order(&mut self, user: u64, side: Side, order_type: OrderType) -> PlaceOrder {
        self.next_id += 1;
        self.placed.push((self.next_id, user, side));
        PlaceOrder {
            order_id: OrderId(self.next_id),
            user_id: UserId(user),
            side,
            order_type,
            price: None,
            quantity: None,
            quote_quantity: None,
            stop_price: None,
            time_in_force: TimeInForce::Gtc,
            post_only: false,
            stp: SelfTradePrevention::None,
            reserved: 0,
        }
    }
}

pub fn commands(seed: u64, n: usize) -> Vec<Command> {
    let mut rng = Rng(seed);
    let mut dec = Decoder::default();
    (0..n)
        .map(|_| {
            let raw = std::array::from_fn(|_| u32::try_from(rng.next() >> 32).unwrap_or(0));
            dec.decode(raw)
        })
        .collect()
}

#[derive(Debug, Default, Clone)]
pub struct Account {
    pub side: Option<Side>,
    pub reserved: u128,
    pub spent: u128,
    pub released: u128,
    pub filled: u128,
    pub limit: Option<u128>,
    pub done: bool,
}

/// Follows commands and events; every check returns a message on failure.
#[derive(Debug, Default)]
pub struct Ledger {
    pub orders: BTreeMap<u64, Account>,
    pub base_sold: u128,
    pub quote_paid: u128,
    pub trades: u64,
}

fn ceil_fee(gross: u128, ppm: u32) -> u128 {
    (gross * u128::from(ppm)).div_ceil(1_000_000)
}

impl Ledger {
    pub fn command(&mut self, cmd: &Command) {
        match cmd {
            Command::Place(p) => {
                let acc = self.orders.entry(p.order_id.0).or_default();
                // A duplicate id (never produced by the decoder) would mix two orders.
                acc.side = Some(p.side);
                acc.reserved += p.reserved;
                acc.limit = p.price;
            }
            Command::Amend(a) => {
                self.orders.entry(a.order_id.0).or_default().reserved += a.additional_reserve;
            }
            _ => {}
        }
    }

    pub fn events(
        &mut self,
        spec: &MarketSpec,
        cmd: &Command,
        events: &[Event],
    ) -> Result<(), String> {
        let base_one = exchange_domain::money::pow10(spec.base().scale);
        for ev in events {
            match ev {
                Event::Trade {
                    maker_order_id,
                    taker_order_id,
                    taker_side,
                    price,
                    quantity,
                    quote_amount,
                    maker_fee,
                    taker_fee,
                    ..
                } => {
                    self.trades += 1;
                    if price * quantity != quote_amount * base_one {
                        return Err(format!("inexact quote amount in {ev:?}"));
                    }
                    if price % spec.price_tick() != 0
                        || quantity % spec.qty_step() != 0
                        || *quantity == 0
                    {
                        return Err(format!("off-grid trade {ev:?}"));
                    }
                    let (maker_gross, taker_gross) = match taker_side {
                        Side::Buy => (*quote_amount, *quantity),
                        Side::Sell => (*quantity, *quote_amount),
                    };
                    if *maker_fee != ceil_fee(maker_gross, spec.maker_fee().ppm())
                        || *taker_fee != ceil_fee(taker_gross, spec.taker_fee().ppm())
                        || maker_fee > &maker_gross
                        || taker_fee > &taker_gross
                    {
                        return Err(format!("wrong fee in {ev:?}"));
                    }
                    let maker = self.orders.entry(maker_order_id.0).or_default();
                    if maker.limit != Some(*price) {
                        return Err(format!(
                            "maker not filled at its own price: {ev:?} vs {:?}",
                            maker.limit
                        ));
                    }
                    let taker = self
                        .orders
                        .get(&taker_order_id.0)
                        .cloned()
                        .unwrap_or_default();
                    if let Some(limit) = taker.limit {
                        let ok = if *taker_side == Side::Buy {
                            *price <= limit
                        } else {
                            *price >= limit
                        };
                        if !ok {
                            return Err(format!("fill outside the taker's limit {limit}: {ev:?}"));
                        }
                    }
                    for (id, side) in [
                        (maker_order_id.0, taker_side.opposite()),
                        (taker_order_id.0, *taker_side),
                    ] {
                        let acc = self.orders.entry(id).or_default();
                        if acc.done {
                            return Err(format!("order {id} traded after it was done"));
                        }
                        acc.filled += quantity;
                        match side {
                            Side::Buy => acc.spent += quote_amount,
                            Side::Sell => acc.spent += quantity,
                        }
                    }
                    self.base_sold += quantity;
                    self.quote_paid += quote_amount;
                }
                Event::OrderDone {
                    order_id,
                    status,
                    filled_quantity,
                    release_asset,
                    release,
                    ..
                } => {
                    let acc = self.orders.entry(order_id.0).or_default();
                    if acc.done {
                        return Err(format!("order {} done twice", order_id.0));
                    }
                    acc.done = true;
                    acc.released += release;
                    if *filled_quantity != acc.filled {
                        return Err(format!(
                            "order {} reports filled {filled_quantity}, trades say {}",
                            order_id.0, acc.filled
                        ));
                    }
                    if acc.side.is_some_and(|s| s.spends() != *release_asset) {
                        return Err(format!("release in the wrong asset: {ev:?}"));
                    }
                    if *status == FinalStatus::Rejected && acc.filled != 0 {
                        return Err(format!("rejected order has fills: {ev:?}"));
                    }
                    if acc.reserved != acc.spent + acc.released {
                        return Err(format!(
                            "order {}: reserved {} != spent {} + released {}",
                            order_id.0, acc.reserved, acc.spent, acc.released
                        ));
                    }
                }
                Event::Amended {
                    order_id,
                    price,
                    released,
                    ..
                } => {
                    let acc = self.orders.entry(order_id.0).or_default();
                    acc.released += released;
                    acc.limit = Some(*price);
                }
                Event::CommandRejected {
                    order_id, release, ..
                } if *release > 0 => {
                    let Some(id) = order_id else {
                        return Err(format!("release without an order: {ev:?}"));
                    };
                    self.orders.entry(id.0).or_default().released += release;
                }
                _ => {}
            }
        }
        let _ = cmd;
        Ok(())
    }

    /// For every order: `reserved == spent + released (+ still held if live)`,
    /// and buyers paid exactly what sellers were paid.
    pub fn check_book(&self, held: impl Fn(u64) -> Option<u128>) -> Result<(), String> {
        let (mut base_given, mut quote_given) = (0u128, 0u128);
        for (id, acc) in &self.orders {
            let live = held(*id);
            if acc.done && live.is_some() {
                return Err(format!("order {id} is done but still in the book"));
            }
            let holding = live.unwrap_or(0);
            if acc.reserved != acc.spent + acc.released + holding {
                return Err(format!(
                    "order {id}: reserved {} != spent {} + released {} + held {holding}",
                    acc.reserved, acc.spent, acc.released
                ));
            }
            match acc.side {
                Some(Side::Sell) => base_given += acc.spent,
                Some(Side::Buy) => quote_given += acc.spent,
                None => {}
            }
        }
        if base_given != self.base_sold || quote_given != self.quote_paid {
            return Err("quantity or money created or lost between buyers and sellers".into());
        }
        Ok(())
    }
}
