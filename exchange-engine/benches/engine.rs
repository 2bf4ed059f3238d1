//! Throughput and latency of the order book on seeded command streams, in
//! one thread, and the same streams through the published `orderbook-rs`
//! crate for comparison. Run: `cargo bench -p exchange-engine`.
//!
//! Each stream has an untimed prefill (to reach the target resting-order
//! count) and a timed part. The stream is generated once by driving our own
//! book (so cancels and moves target live orders), then replayed on fresh
//! books: once timed as a whole (throughput) and once timing every command
//! (latency percentiles; `Instant` overhead, ~20-30 ns, is included).
#![allow(
    clippy::float_arithmetic,
    clippy::cast_possible_truncation,
    clippy::unwrap_used
)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use exchange_domain::{
    AmendOrder, Asset, AssetSymbol, Command, Event, FeeRate, MarketSpec, MarketSpecFields,
    MarketSymbol, OrderId, OrderType, PlaceOrder, SelfTradePrevention, Side, TimeInForce, UserId,
};
use exchange_engine::OrderBook;

fn spec() -> MarketSpec {
    // tick 0.01 USDT at scale 2 = 1 unit; step 1 BTC-unit at scale 0: k = 1.
    MarketSpec::new(MarketSpecFields {
        symbol: MarketSymbol::parse("BTC-USDT").unwrap(),
        base: Asset {
            symbol: AssetSymbol::parse("BTC").unwrap(),
            scale: 0,
        },
        quote: Asset {
            symbol: AssetSymbol::parse("USDT").unwrap(),
            scale: 2,
        },
        price_tick: 1,
        qty_step: 1,
        min_qty: 1,
        min_notional: 0,
        maker_fee: FeeRate::from_ppm(1_000).unwrap(),
        taker_fee: FeeRate::from_ppm(2_000).unwrap(),
    })
    .unwrap()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const MID: u64 = 100_000;

/// Builds a stream while driving a live book, so targets are live orders.
struct Builder {
    book: OrderBook,
    rng: Rng,
    seq: u64,
    next_id: u64,
    live: Vec<u64>,
    pos: HashMap<u64, usize>,
    cmds: Vec<Command>,
    out: Vec<Event>,
}

impl Builder {
    fn new(seed: u64, capacity: usize) -> Self {
        Self {
            book: OrderBook::with_capacity(spec(), capacity),
            rng: Rng(seed),
            seq: 0,
            next_id: 0,
            live: Vec::new(),
            pos: HashMap::new(),
            cmds: Vec::new(),
            out: Vec::new(),
        }
    }

    fn push(&mut self, cmd: Command) {
        self.seq += 1;
        self.out.clear();
        self.book
            .apply_into(self.seq, 0, &cmd, &mut self.out)
            .unwrap();
        for ev in &self.out {
            if let Event::OrderDone { order_id, .. } = ev
                && let Some(i) = self.pos.remove(&order_id.0)
            {
                self.live.swap_remove(i);
                if let Some(&moved) = self.live.get(i) {
                    self.pos.insert(moved, i);
                }
            }
        }
        if let Command::Place(p) = &cmd
            && self.book.order(p.order_id).is_some()
            && !self.pos.contains_key(&p.order_id.0)
        {
            self.pos.insert(p.order_id.0, self.live.len());
            self.live.push(p.order_id.0);
        }
        self.cmds.push(cmd);
    }

    fn limit(&mut self, users: u64, side: Side, price: u64, qty: u64, tif: TimeInForce) -> Command {
        self.next_id += 1;
        let user = 1 + self.rng.below(users);
        Command::Place(PlaceOrder {
            order_id: OrderId(self.next_id),
            user_id: UserId(user),
            side,
            order_type: OrderType::Limit,
            price: Some(u128::from(price)),
            quantity: Some(u128::from(qty)),
            quote_quantity: None,
            stop_price: None,
            time_in_force: tif,
            post_only: false,
            stp: SelfTradePrevention::None,
            reserved: if side == Side::Buy {
                u128::from(price) * u128::from(qty)
            } else {
                u128::from(qty)
            },
        })
    }

    fn market(&mut self, users: u64, side: Side, qty: u64) -> Command {
        self.next_id += 1;
        Command::Place(PlaceOrder {
            order_id: OrderId(self.next_id),
            user_id: UserId(1 + self.rng.below(users)),
            side,
            order_type: OrderType::Market,
            price: None,
            quantity: Some(u128::from(qty)),
            quote_quantity: None,
            stop_price: None,
            time_in_force: TimeInForce::Ioc,
            post_only: false,
            stp: SelfTradePrevention::None,
            reserved: if side == Side::Buy {
                u128::from(qty) * u128::from(MID * 2)
            } else {
                u128::from(qty)
            },
        })
    }

    fn random_live(&mut self) -> Option<u64> {
        (!self.live.is_empty()).then(|| self.live[self.rng.below(self.live.len() as u64) as usize])
    }

    fn cancel(&mut self) -> Option<Command> {
        let id = self.random_live()?;
        let o = self.book.order(OrderId(id))?;
        Some(Command::Cancel {
            order_id: OrderId(id),
            user_id: o.user_id,
        })
    }

    /// Move an order's price (exchange-core's "move"): the order service
    /// reserves the extra a higher buy price needs.
    fn mv(&mut self, band: u64) -> Option<Command> {
        let id = self.random_live()?;
        let o = self.book.order(OrderId(id))?;
        let old = o.price? as u64;
        let delta = 1 + self.rng.below(10);
        let up = self.rng.below(2) == 0;
        let mut new = if up {
            old + delta
        } else {
            old.saturating_sub(delta)
        };
        // keep within the side's band (a few ticks of overlap so some moves trade)
        new = match o.side {
            Side::Buy => new.clamp(MID - band, MID + 2),
            Side::Sell => new.clamp(MID - 2, MID + band),
        };
        if new == old {
            new = if o.side == Side::Buy {
                old - 1
            } else {
                old + 1
            };
        }
        let need = if o.side == Side::Buy {
            u128::from(new) * o.open_quantity
        } else {
            o.open_quantity
        };
        Some(Command::Amend(AmendOrder {
            order_id: OrderId(id),
            user_id: o.user_id,
            side: o.side,
            new_price: Some(u128::from(new)),
            new_quantity: None,
            additional_reserve: need.saturating_sub(o.reserve),
        }))
    }
}

struct Stream {
    name: &'static str,
    prefill: Vec<Command>,
    timed: Vec<Command>,
    resting_after_prefill: usize,
}

fn side(rng: &mut Rng) -> Side {
    if rng.below(2) == 0 {
        Side::Buy
    } else {
        Side::Sell
    }
}

/// Mix A (exchange-core): 9% GTC, 3% IOC, 6% cancel, 82% move; ~1,000 users,
/// ~1,000 resting orders over ~750 price levels.
fn mix_a(n: usize) -> Stream {
    let band = 750;
    let mut b = Builder::new(0xA11CE, 4096);
    while b.live.len() < 1_000 {
        let s = side(&mut b.rng);
        let off = 1 + b.rng.below(band);
        let price = if s == Side::Buy { MID - off } else { MID + off };
        let qty = 1 + b.rng.below(100);
        let c = b.limit(1_000, s, price, qty, TimeInForce::Gtc);
        b.push(c);
    }
    let prefill = std::mem::take(&mut b.cmds);
    let resting = b.live.len();
    while b.cmds.len() < n {
        let mut r = b.rng.below(100);
        // hold ~1,000 resting orders: above, a GTC becomes a cancel; below, the reverse
        if b.live.len() > 1_050 && r < 9 {
            r = 12;
        } else if b.live.len() < 950 && (12..18).contains(&r) {
            r = 0;
        }
        let cmd = if r < 9 {
            let s = side(&mut b.rng);
            let off = b.rng.below(band);
            // a GTC lands anywhere in its band, sometimes at the touch
            let price = if s == Side::Buy {
                MID + 1 - off.max(1)
            } else {
                MID - 1 + off.max(1)
            };
            let qty = 1 + b.rng.below(100);
            Some(b.limit(1_000, s, price, qty, TimeInForce::Gtc))
        } else if r < 12 {
            let s = side(&mut b.rng);
            let price = if s == Side::Buy { MID + 20 } else { MID - 20 };
            let qty = 1 + b.rng.below(50);
            Some(b.limit(1_000, s, price, qty, TimeInForce::Ioc))
        } else if r < 18 {
            b.cancel()
        } else {
            b.mv(band)
        };
        if let Some(c) = cmd {
            b.push(c);
        }
    }
    Stream {
        name: "A",
        prefill,
        timed: b.cmds,
        resting_after_prefill: resting,
    }
}

/// Mix B (crypto-like): 60% limit near the touch, 30% cancel, 10% market,
/// holding about `target` resting orders.
fn mix_b(n: usize, target: usize, name: &'static str) -> Stream {
    let mut b = Builder::new(0xB0B + target as u64, target * 2);
    let band = (target as u64 / 4).clamp(50, 5_000);
    while b.live.len() < target {
        let s = side(&mut b.rng);
        let off = 1 + b.rng.below(band);
        let price = if s == Side::Buy { MID - off } else { MID + off };
        let qty = 1 + b.rng.below(20);
        let c = b.limit(1_000, s, price, qty, TimeInForce::Gtc);
        b.push(c);
    }
    let prefill = std::mem::take(&mut b.cmds);
    let resting = b.live.len();
    while b.cmds.len() < n {
        let mut r = b.rng.below(100);
        // steer toward the target size without changing the mix much
        if b.live.len() > target + target / 20 && r < 60 {
            r = 60;
        } else if b.live.len() < target - target / 20 && (60..90).contains(&r) {
            r = 0;
        }
        let cmd = if r < 60 {
            let s = side(&mut b.rng);
            let best = match s {
                Side::Buy => b.book.best_bid().map_or(MID - 1, |p| p as u64),
                Side::Sell => b.book.best_ask().map_or(MID + 1, |p| p as u64),
            };
            // within 5 ticks of the own touch, 1 in 10 one tick through it
            let off = b.rng.below(6);
            let price = match s {
                Side::Buy if off == 5 => best + 1,
                Side::Buy => best.saturating_sub(off).max(1),
                Side::Sell if off == 5 => best.saturating_sub(1).max(1),
                Side::Sell => best + off,
            };
            let qty = 1 + b.rng.below(20);
            Some(b.limit(1_000, s, price, qty, TimeInForce::Gtc))
        } else if r < 90 {
            b.cancel()
        } else {
            let s = side(&mut b.rng);
            let qty = 1 + b.rng.below(30);
            Some(b.market(1_000, s, qty))
        };
        if let Some(c) = cmd {
            b.push(c);
        }
    }
    Stream {
        name,
        prefill,
        timed: b.cmds,
        resting_after_prefill: resting,
    }
}

struct Figures {
    /// Live orders and price levels when the stream ends.
    end: (usize, usize),
    cmds_per_s: f64,
    p50: u64,
    p99: u64,
    p999: u64,
}

fn percentiles(mut ns: Vec<u64>) -> (u64, u64, u64) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)];
    (at(0.50), at(0.99), at(0.999))
}

fn run_ours(s: &Stream) -> Figures {
    let fresh = || {
        let mut book = OrderBook::with_capacity(spec(), s.resting_after_prefill * 2 + 1024);
        let mut out = Vec::with_capacity(64);
        for (seq, c) in (1u64..).zip(&s.prefill) {
            out.clear();
            book.apply_into(seq, 0, c, &mut out).unwrap();
        }
        (book, out)
    };
    let first = s.prefill.len() as u64 + 1;
    // throughput: best of 3 passes
    let mut best = f64::MAX;
    for _ in 0..3 {
        let (mut book, mut out) = fresh();
        let t = Instant::now();
        for (seq, c) in (first..).zip(&s.timed) {
            out.clear();
            book.apply_into(seq, 0, c, &mut out).unwrap();
            black_box(&out);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let (mut book, mut out) = fresh();
    let mut lat = Vec::with_capacity(s.timed.len());
    for (seq, c) in (first..).zip(&s.timed) {
        out.clear();
        let t = Instant::now();
        book.apply_into(seq, 0, c, &mut out).unwrap();
        black_box(&out);
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let (p50, p99, p999) = percentiles(lat);
    let depth = book.depth(usize::MAX);
    let end = (book.order_count(), depth.bids.len() + depth.asks.len());
    Figures {
        end,
        cmds_per_s: s.timed.len() as f64 / best,
        p50,
        p99,
        p999,
    }
}

/// The same stream through orderbook-rs 0.15: place -> `add_limit_order`
/// (GTC/IOC), market -> `submit_market_order`, cancel -> `cancel_order`,
/// move -> `update_order(UpdatePrice)`. Its book has no reserve, user or
/// fee bookkeeping in these calls; results are ignored (an error, e.g. a
/// move of an order it already filled differently, still costs its time).
mod theirs {
    use super::*;
    use orderbook_rs::OrderBook as TheirBook;
    use pricelevel::{Id, OrderUpdate, Price, Side as TSide, TimeInForce as TTif};

    fn tside(s: Side) -> TSide {
        if s == Side::Buy {
            TSide::Buy
        } else {
            TSide::Sell
        }
    }

    fn apply(book: &TheirBook<()>, c: &Command) {
        match c {
            Command::Place(p) => {
                let id = Id::from_u64(p.order_id.0);
                let qty = p.quantity.unwrap_or(0) as u64;
                match p.order_type {
                    OrderType::Market => {
                        let _ = black_box(book.submit_market_order(id, qty, tside(p.side)));
                    }
                    _ => {
                        let tif = if p.time_in_force == TimeInForce::Ioc {
                            TTif::Ioc
                        } else {
                            TTif::Gtc
                        };
                        let price = p.price.unwrap_or(0);
                        let _ = black_box(book.add_limit_order(
                            id,
                            price,
                            qty,
                            tside(p.side),
                            tif,
                            None,
                        ));
                    }
                }
            }
            Command::Cancel { order_id, .. } => {
                let _ = black_box(book.cancel_order(Id::from_u64(order_id.0)));
            }
            Command::Amend(a) => {
                let update = OrderUpdate::UpdatePrice {
                    order_id: Id::from_u64(a.order_id.0),
                    new_price: Price::new(a.new_price.unwrap_or(0)),
                };
                let _ = black_box(book.update_order(update));
            }
            _ => {}
        }
    }

    pub fn run(s: &Stream) -> Figures {
        let fresh = || {
            let book = TheirBook::<()>::new("BTC-USDT");
            for c in &s.prefill {
                apply(&book, c);
            }
            book
        };
        let book = fresh();
        let t = Instant::now();
        for c in &s.timed {
            apply(&book, c);
        }
        let secs = t.elapsed().as_secs_f64();
        let book = fresh();
        let mut lat = Vec::with_capacity(s.timed.len());
        for c in &s.timed {
            let t = Instant::now();
            apply(&book, c);
            lat.push(t.elapsed().as_nanos() as u64);
        }
        let (p50, p99, p999) = percentiles(lat);
        Figures {
            end: (0, 0),
            cmds_per_s: s.timed.len() as f64 / secs,
            p50,
            p99,
            p999,
        }
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: run a
    // tiny smoke pass then, so the bench code stays compiled and working.
    let full = std::env::args().any(|a| a == "--bench");
    let (n_a, n_b) = if full {
        (2_000_000, 1_000_000)
    } else {
        (2_000, 2_000)
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("exchange-engine bench: one thread; cpu: {cpu}; cores: {cores}");
    let gen_start = Instant::now();
    let streams = [
        mix_a(n_a),
        mix_b(n_b, 1_000, "B-1k"),
        mix_b(n_b, if full { 100_000 } else { 2_000 }, "B-100k"),
    ];
    println!(
        "streams generated in {:.1}s",
        gen_start.elapsed().as_secs_f64()
    );
    println!(
        "{:<7} {:>9} {:>8} {:>14} | {:>12} {:>7} {:>7} {:>8} | {:>12} {:>7} {:>7} {:>8} | {:>6}",
        "mix",
        "commands",
        "resting",
        "end ord/levels",
        "ours cmd/s",
        "p50 ns",
        "p99 ns",
        "p99.9 ns",
        "orderbook-rs",
        "p50 ns",
        "p99 ns",
        "p99.9 ns",
        "ratio"
    );
    for s in &streams {
        let ours = run_ours(s);
        let theirs = theirs::run(s);
        println!(
            "{:<7} {:>9} {:>8} {:>14} | {:>12.0} {:>7} {:>7} {:>8} | {:>12.0} {:>7} {:>7} {:>8} | {:>5.1}x",
            s.name,
            s.timed.len(),
            s.resting_after_prefill,
            format!("{}/{}", ours.end.0, ours.end.1),
            ours.cmds_per_s,
            ours.p50,
            ours.p99,
            ours.p999,
            theirs.cmds_per_s,
            theirs.p50,
            theirs.p99,
            theirs.p999,
            ours.cmds_per_s / theirs.cmds_per_s
        );
    }
    println!(
        "orderbook-rs adapter: GTC/IOC limit -> add_limit_order, market -> submit_market_order, \
         cancel -> cancel_order, move -> update_order(UpdatePrice); no user/STP/reserve/fee work on its side"
    );
}
