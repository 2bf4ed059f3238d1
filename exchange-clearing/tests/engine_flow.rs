//! A seeded random order flow through the real matching engine
//! (`exchange-engine`), with orders and reserves written as the order
//! service writes them, settled by clearing in reads of random size with
//! duplicated deliveries. Afterwards every reconcile invariant holds, and
//! clearing's view of every order (open or not, filled quantity, what is
//! still locked) equals the engine's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use exchange_clearing::Clearing;
use exchange_clearing::reconcile;
use exchange_common::Shutdown;
use exchange_common::ready::Heartbeats;
use exchange_common::redis::Redis;
use exchange_common::streams::StreamEntry;
use exchange_common::testing::{TestMarket, seed_market, test_env};
use exchange_domain::money::format_units;
use exchange_domain::{
    AmendOrder, Asset, AssetSymbol, Command, Event, EventBatch, FeeRate, MarketSpec,
    MarketSpecFields, MarketSymbol, OrderId, OrderType, PlaceOrder, SelfTradePrevention, Side,
    TimeInForce, UserId,
};
use exchange_engine::OrderBook;
use sqlx::{PgPool, Row as _};

const BASE_SCALE: u8 = 8;
const QUOTE_SCALE: u8 = 6;
const LOT: u128 = 10_000; // 0.0001 BTC
const TICK: u128 = 10_000; // 0.01 USDT

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[usize::try_from(self.below(v.len() as u64)).unwrap()]
    }
}

fn spec() -> MarketSpec {
    MarketSpec::new(MarketSpecFields {
        symbol: MarketSymbol::parse("BTC-USDT").unwrap(),
        base: Asset {
            symbol: AssetSymbol::parse("BTC").unwrap(),
            scale: BASE_SCALE,
        },
        quote: Asset {
            symbol: AssetSymbol::parse("USDT").unwrap(),
            scale: QUOTE_SCALE,
        },
        price_tick: TICK,
        qty_step: LOT,
        min_qty: LOT,
        min_notional: 1_000_000,
        maker_fee: FeeRate::from_ppm(1_000).unwrap(),
        taker_fee: FeeRate::from_ppm(2_000).unwrap(),
    })
    .unwrap()
}

async fn setup(db: &PgPool, users: i64) {
    seed_market(db, &TestMarket::new("BTC", BASE_SCALE, "USDT", QUOTE_SCALE)).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO market_sequences (market, last_seq) VALUES ('BTC-USDT', 0);
         INSERT INTO users (id, email, password_hash)
           SELECT g, 'u' || g || '@x.io', 'x' FROM generate_series(1, {users}) g;
         INSERT INTO ledger_journal (id, kind) VALUES (1, 'deposit');
         SELECT setval('ledger_journal_id_seq', 1);
         INSERT INTO ledger_postings (journal_id, account_kind, user_id, asset, amount)
           SELECT 1, 'user', g, a, v FROM generate_series(1, {users}) g,
             (VALUES ('BTC', 10), ('USDT', 100000)) AS d(a, v);
         INSERT INTO ledger_postings (journal_id, account_kind, user_id, asset, amount)
           VALUES (1, 'deposits', NULL, 'BTC', -10 * {users}), (1, 'deposits', NULL, 'USDT', -100000 * {users});
         INSERT INTO balances (user_id, asset, available)
           SELECT g, a, v FROM generate_series(1, {users}) g, (VALUES ('BTC', 10), ('USDT', 100000)) AS d(a, v);"
    )))
    .execute(db)
    .await
    .unwrap();
}

/// The order service's part: journal the command (and for a placement,
/// lock the reserve and insert the order). `None` when it would refuse
/// (insufficient balance).
async fn journal(db: &PgPool, command: &Command) -> Option<u64> {
    let mut tx = db.begin().await.unwrap();
    if let Command::Place(p) = command {
        let (asset, scale) = match p.side {
            Side::Buy => ("USDT", QUOTE_SCALE),
            Side::Sell => ("BTC", BASE_SCALE),
        };
        let moved = sqlx::query(
            "UPDATE balances SET available = available - $3::numeric, locked = locked + $3::numeric
             WHERE user_id = $1 AND asset = $2 AND available >= $3::numeric",
        )
        .bind(i64::try_from(p.user_id.0).unwrap())
        .bind(asset)
        .bind(format_units(p.reserved, scale))
        .execute(&mut *tx)
        .await
        .unwrap();
        if moved.rows_affected() == 0 {
            return None;
        }
    }
    let seq: i64 = sqlx::query_scalar(
        "UPDATE market_sequences SET last_seq = last_seq + 1 WHERE market = 'BTC-USDT' RETURNING last_seq",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO order_commands (market, seq, time_ms, command) VALUES ('BTC-USDT', $1, 0, $2)",
    )
    .bind(seq)
    .bind(serde_json::to_value(command).unwrap())
    .execute(&mut *tx)
    .await
    .unwrap();
    if let Command::Place(p) = command {
        let fmt_q = |v: Option<u128>| v.map(|u| format_units(u, QUOTE_SCALE));
        sqlx::query(
            "INSERT INTO orders (id, user_id, market, side, type, time_in_force, post_only, price,
                quantity, quote_quantity, reserve_asset, reserved, locked_remaining, seq)
             VALUES ($1, $2, 'BTC-USDT', $3, $4, $5, $6, $7::numeric, $8::numeric, $9::numeric,
                $10, $11::numeric, $11::numeric, $12)",
        )
        .bind(i64::try_from(p.order_id.0).unwrap())
        .bind(i64::try_from(p.user_id.0).unwrap())
        .bind(if p.side == Side::Buy { "buy" } else { "sell" })
        .bind(if p.order_type == OrderType::Market {
            "market"
        } else {
            "limit"
        })
        .bind(match p.time_in_force {
            TimeInForce::Gtc => "GTC",
            TimeInForce::Ioc => "IOC",
            TimeInForce::Fok => "FOK",
        })
        .bind(p.post_only)
        .bind(fmt_q(p.price))
        .bind(p.quantity.map(|u| format_units(u, BASE_SCALE)))
        .bind(fmt_q(p.quote_quantity))
        .bind(if p.side == Side::Buy { "USDT" } else { "BTC" })
        .bind(format_units(
            p.reserved,
            if p.side == Side::Buy {
                QUOTE_SCALE
            } else {
                BASE_SCALE
            },
        ))
        .bind(seq)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    Some(u64::try_from(seq).unwrap())
}

#[tokio::test]
async fn random_flow_through_the_engine_settles_and_reconciles() {
    let commands_len: usize = std::env::var("CLEARING_FLOW_COMMANDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let users = 6u64;
    let env = test_env().await;
    let db = PgPool::connect(&env.db_url).await.unwrap();
    let redis = Redis::with_prefix(&env.redis_url, &env.redis_prefix).unwrap();
    setup(&db, i64::try_from(users).unwrap()).await;
    let clearing = Arc::new(Clearing::new(
        db.clone(),
        redis,
        Heartbeats::default(),
        Some(5),
        Shutdown::new(),
    ));
    clearing.refresh_markets().await.unwrap();

    let mut rng = Rng(0x5eed_1234_abcd_0042);
    let mut book = OrderBook::new(spec());
    let market = MarketSymbol::parse("BTC-USDT").unwrap();
    let mut next_order = 1u64;
    let mut entries: Vec<StreamEntry> = Vec::new();
    let mut trades = 0usize;
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    for _ in 0..commands_len {
        let user = UserId(rng.below(users) + 1);
        let roll = rng.below(100);
        let command = if roll < 70 {
            let side = if rng.below(2) == 0 {
                Side::Buy
            } else {
                Side::Sell
            };
            let price = 100_000_000 + u128::from(rng.below(21)) * TICK; // 100.00..100.20
            let qty = u128::from(rng.below(200) + 100) * LOT; // 0.01..0.03 BTC
            let market_order = roll >= 60;
            let (order_type, price_opt, qty_opt, quote_opt, reserved) = if market_order {
                match side {
                    // by quote budget: 1..5 USDT
                    Side::Buy => {
                        let q = u128::from(rng.below(5) + 1) * 1_000_000;
                        (OrderType::Market, None, None, Some(q), q)
                    }
                    Side::Sell => (OrderType::Market, None, Some(qty), None, qty),
                }
            } else {
                let reserve = match side {
                    Side::Buy => price * qty / 100_000_000,
                    Side::Sell => qty,
                };
                (OrderType::Limit, Some(price), Some(qty), None, reserve)
            };
            let tif = *rng.pick(&[
                TimeInForce::Gtc,
                TimeInForce::Gtc,
                TimeInForce::Gtc,
                TimeInForce::Ioc,
                TimeInForce::Fok,
            ]);
            let id = OrderId(next_order);
            next_order += 1;
            *kinds.entry("place").or_default() += 1;
            Command::Place(PlaceOrder {
                order_id: id,
                user_id: user,
                side,
                order_type,
                price: price_opt,
                quantity: qty_opt,
                quote_quantity: quote_opt,
                stop_price: None,
                time_in_force: if market_order { TimeInForce::Ioc } else { tif },
                post_only: !market_order && tif == TimeInForce::Gtc && rng.below(10) == 0,
                stp: if rng.below(4) == 0 {
                    SelfTradePrevention::ExpireTaker
                } else {
                    SelfTradePrevention::None
                },
                reserved,
            })
        } else {
            let open = book.orders();
            if open.is_empty() {
                continue;
            }
            let o = rng.pick(&open).clone();
            if roll < 90 || o.open_quantity < 2 * LOT {
                *kinds.entry("cancel").or_default() += 1;
                Command::Cancel {
                    order_id: o.order_id,
                    user_id: o.user_id,
                }
            } else {
                *kinds.entry("amend").or_default() += 1;
                Command::Amend(AmendOrder {
                    order_id: o.order_id,
                    user_id: o.user_id,
                    side: o.side,
                    new_price: None,
                    new_quantity: Some(o.open_quantity / 2 / LOT * LOT),
                    additional_reserve: 0,
                })
            }
        };
        let Some(seq) = journal(&db, &command).await else {
            *kinds.entry("refused by the order service").or_default() += 1;
            continue;
        };
        let events = book.apply(seq, 1_700_000_000_000 + seq, &command).unwrap();
        trades += events
            .iter()
            .filter(|e| matches!(e, Event::Trade { .. }))
            .count();
        let batch = EventBatch {
            market,
            seq,
            time_ms: 1_700_000_000_000 + seq,
            events,
        };
        sqlx::query("INSERT INTO event_batches (market, seq, time_ms, events) VALUES ('BTC-USDT', $1, $2, $3)")
            .bind(i64::try_from(seq).unwrap())
            .bind(i64::try_from(batch.time_ms).unwrap())
            .bind(serde_json::to_value(&batch.events).unwrap())
            .execute(&db)
            .await
            .unwrap();
        entries.push(StreamEntry {
            id: format!("0-{seq}"),
            fields: [("batch".to_owned(), serde_json::to_vec(&batch).unwrap())]
                .into_iter()
                .collect(),
            deliveries: 1,
        });
    }
    println!(
        "flow: {} batches, {trades} trades, {kinds:?}",
        entries.len()
    );
    assert!(trades > 20, "the flow trades ({trades})");

    // Reads of 1..40 entries in stream order, some entries delivered again later.
    let mut i = 0;
    let mut redeliver: Vec<StreamEntry> = Vec::new();
    let mut lost = 0usize;
    while i < entries.len() {
        let n = usize::try_from(rng.below(40) + 1)
            .unwrap()
            .min(entries.len() - i);
        // Some entries never arrive (lost with Redis): catch-up finds them.
        let mut read: Vec<StreamEntry> = entries[i..i + n]
            .iter()
            .filter(|_| {
                let lose = rng.below(20) == 0;
                lost += usize::from(lose);
                !lose
            })
            .cloned()
            .collect();
        if !redeliver.is_empty() && rng.below(3) == 0 {
            read.append(&mut redeliver);
        }
        for e in &read {
            if rng.below(10) == 0 {
                redeliver.push(e.clone());
            }
        }
        let out = clearing.handle_entries(&read).await;
        for r in &out.results {
            assert_eq!(r, &Ok(()));
        }
        i += n;
    }
    let out = clearing.handle_entries(&redeliver).await;
    assert!(out.settled.applied.is_empty());
    assert!(lost > 0);
    let mut caught_up = 0;
    for _ in 0..10 {
        caught_up += clearing.catch_up(Duration::ZERO, 50).await.unwrap();
    }
    assert_eq!(caught_up, lost, "catch-up settles exactly the lost batches");
    assert_eq!(clearing.catch_up(Duration::ZERO, 50).await.unwrap(), 0);

    let report = reconcile::reconcile(
        &db,
        reconcile::Options {
            lag: Duration::ZERO,
            full: true,
        },
    )
    .await
    .unwrap();
    println!("{report}");
    assert!(report.ok(), "{report}");

    // Clearing's orders agree with the engine's book.
    let engine: BTreeMap<u64, (String, String)> = book
        .orders()
        .into_iter()
        .map(|o| {
            let scale = if o.side == Side::Buy {
                QUOTE_SCALE
            } else {
                BASE_SCALE
            };
            (
                o.order_id.0,
                (
                    format_units(o.filled_quantity, BASE_SCALE),
                    format_units(o.reserve, scale),
                ),
            )
        })
        .collect();
    let rows = sqlx::query(
        "SELECT id, trim_scale(filled_quantity)::text, trim_scale(locked_remaining)::text
         FROM orders WHERE status IN ('new', 'partially_filled') ORDER BY id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let stored: BTreeMap<u64, (String, String)> = rows
        .iter()
        .map(|r| {
            (
                u64::try_from(r.get::<i64, _>(0)).unwrap(),
                (r.get(1), r.get(2)),
            )
        })
        .collect();
    assert_eq!(stored, engine);
    let closed_locked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE status NOT IN ('new', 'partially_filled') AND locked_remaining <> 0",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(closed_locked, 0, "a finished order keeps nothing locked");
    let stored_trades: i64 = sqlx::query_scalar("SELECT count(*) FROM trades")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(usize::try_from(stored_trades).unwrap(), trades);
}
