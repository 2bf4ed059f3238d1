//! Settlement throughput, not a timed test: prints orders/s settled by one
//! clearing consumer draining `<prefix>:events` against real Postgres and
//! Redis. Ignored by default; run with
//!
//! ```text
//! CLEARING_BENCH_ORDERS=40000 [CLEARING_BENCH_USERS=1000] [CLEARING_BENCH_BATCH=1000] \
//!     cargo test --release -p exchange-clearing \
//!     --test throughput -- --ignored --nocapture
//! ```
//!
//! Workload: pairs of orders from distinct users; the maker's batch is an
//! acceptance, the taker's batch a full fill with maker and taker fees and
//! both orders done (what matching emits for a crossing limit order).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use exchange_clearing::{Clearing, ClearingHandler, reconcile};
use exchange_common::Shutdown;
use exchange_common::ready::Heartbeats;
use exchange_common::redis::Redis;
use exchange_common::streams::{ConsumerOptions, run_consumer};
use exchange_common::testing::{TestMarket, seed_market, test_env};
use exchange_domain::{
    AssetRole, Event, EventBatch, FinalStatus, MarketSymbol, OrderId, Side, TradeId, UserId,
};
use sqlx::PgPool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures"]
async fn settle_throughput() {
    let orders: u64 = std::env::var("CLEARING_BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let pairs = orders / 2;
    // Fewer users means more netting (one balance row and posting per user
    // and asset per journal, however many trades).
    let users: i64 = std::env::var("CLEARING_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let metrics = exchange_common::telemetry::metrics_handle();
    let env = test_env().await;
    let db = PgPool::connect(&env.db_url).await.unwrap();
    let redis = Redis::with_prefix(&env.redis_url, &env.redis_prefix).unwrap();
    let setup = Instant::now();
    seed_market(&db, &TestMarket::default()).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO market_sequences (market, last_seq) VALUES ('BTC-USDT', {orders});
         INSERT INTO users (id, email, password_hash)
           SELECT g, 'u' || g || '@x.io', 'x' FROM generate_series(1, {users}) g;
         INSERT INTO ledger_journal (id, kind) VALUES (1, 'deposit');
         SELECT setval('ledger_journal_id_seq', 1);
         SELECT setval('users_id_seq', {users});
         INSERT INTO ledger_postings (journal_id, account_kind, user_id, asset, amount)
           SELECT 1, 'user', g, a, 1000000 FROM generate_series(1, {users}) g, unnest(ARRAY['BTC', 'USDT']) a;
         INSERT INTO ledger_postings (journal_id, account_kind, user_id, asset, amount)
           SELECT 1, 'deposits', NULL, a, -1000000 * {users} FROM unnest(ARRAY['BTC', 'USDT']) a;
         INSERT INTO order_commands (market, seq, time_ms, command)
           SELECT 'BTC-USDT', g, 0, '{{}}' FROM generate_series(1, {orders}) g;
         -- pair i: maker 2i-1 sells 0.01 BTC at 30000 (user i mod U + 1),
         --         taker 2i buys it (user (i + 1) mod U + 1), reserving 300 USDT
         INSERT INTO orders (id, user_id, market, side, type, time_in_force, price, quantity,
                             reserve_asset, reserved, locked_remaining, seq)
           SELECT 2 * i - 1, i % {users} + 1, 'BTC-USDT', 'sell', 'limit', 'GTC', 30000, 0.01, 'BTC', 0.01, 0.01, 2 * i - 1
           FROM generate_series(1, {pairs}) i
           UNION ALL
           SELECT 2 * i, (i + 1) % {users} + 1, 'BTC-USDT', 'buy', 'limit', 'GTC', 30000, 0.01, 'USDT', 300, 300, 2 * i
           FROM generate_series(1, {pairs}) i;
         INSERT INTO balances (user_id, asset, available, locked)
           SELECT g, a, 1000000 - coalesce(o.l, 0), coalesce(o.l, 0)
           FROM generate_series(1, {users}) g CROSS JOIN unnest(ARRAY['BTC', 'USDT']) a
           LEFT JOIN (SELECT user_id, reserve_asset, sum(locked_remaining) l FROM orders GROUP BY 1, 2) o
             ON o.user_id = g AND o.reserve_asset = a;
         ANALYZE;"
    )))
    .execute(&db)
    .await
    .unwrap();
    let market = MarketSymbol::parse("BTC-USDT").unwrap();
    let user = |i: u64, shift: u64| i.wrapping_add(shift) % u64::try_from(users).unwrap() + 1;
    let mut payloads = Vec::with_capacity(usize::try_from(orders).unwrap());
    for i in 1..=pairs {
        let (maker, taker) = (user(i, 0), user(i, 1));
        let (mo, to) = (2 * i - 1, 2 * i);
        let accept = EventBatch {
            market,
            seq: mo,
            time_ms: 1,
            events: vec![Event::OrderAccepted {
                order_id: OrderId(mo),
                user_id: UserId(maker),
            }],
        };
        let fill = EventBatch {
            market,
            seq: to,
            time_ms: 2,
            events: vec![
                Event::OrderAccepted {
                    order_id: OrderId(to),
                    user_id: UserId(taker),
                },
                Event::Trade {
                    trade_id: TradeId(i),
                    maker_order_id: OrderId(mo),
                    maker_user_id: UserId(maker),
                    taker_order_id: OrderId(to),
                    taker_user_id: UserId(taker),
                    taker_side: Side::Buy,
                    price: 30_000_000_000,
                    quantity: 1_000_000,
                    quote_amount: 300_000_000,
                    maker_fee: 300_000,
                    taker_fee: 2_000,
                },
                Event::OrderDone {
                    order_id: OrderId(mo),
                    user_id: UserId(maker),
                    status: FinalStatus::Filled,
                    reason: None,
                    filled_quantity: 1_000_000,
                    release_asset: AssetRole::Base,
                    release: 0,
                },
                Event::OrderDone {
                    order_id: OrderId(to),
                    user_id: UserId(taker),
                    status: FinalStatus::Filled,
                    reason: None,
                    filled_quantity: 1_000_000,
                    release_asset: AssetRole::Quote,
                    release: 0,
                },
            ],
        };
        payloads.push(serde_json::to_string(&accept).unwrap());
        payloads.push(serde_json::to_string(&fill).unwrap());
    }
    let stream = redis.events_stream();
    let mut conn = redis.conn();
    for chunk in payloads.chunks(1_000) {
        let mut pipe = redis::pipe();
        for p in chunk {
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("batch")
                .arg(p)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }
    println!(
        "setup: {orders} orders, {pairs} trades, {users} users in {:.1}s",
        setup.elapsed().as_secs_f64()
    );

    let shutdown = Shutdown::new();
    let clearing = Arc::new(Clearing::new(
        db.clone(),
        redis.clone(),
        Heartbeats::default(),
        Some(5),
        shutdown.clone(),
    ));
    clearing.refresh_markets().await.unwrap();
    let mut opts = ConsumerOptions::new("eventStreamConsumer", &stream, "clearing", "bench");
    opts.batch_len_max = std::env::var("CLEARING_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    opts.block = Duration::from_millis(100);
    let started = Instant::now();
    let task = tokio::spawn(run_consumer(
        redis.clone(),
        Heartbeats::default(),
        opts.clone(),
        ClearingHandler(Arc::clone(&clearing)),
        shutdown.clone(),
    ));
    let want = i64::try_from(orders).unwrap();
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM cleared_batches")
            .fetch_one(&db)
            .await
            .unwrap();
        if n >= want {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {n} of {want} settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    shutdown.trigger();
    task.await.unwrap();
    #[allow(clippy::cast_precision_loss)]
    let rate = orders as f64 / elapsed;
    println!(
        "settled {orders} orders ({pairs} trades) in {elapsed:.2}s: {rate:.0} orders/s, \
         {:.0} trades/s (read size {})",
        rate / 2.0,
        opts.batch_len_max
    );
    // Where the time went: seconds per settlement step, summed over reads.
    let rendered = metrics.render();
    let mut steps: Vec<(String, f64)> = rendered
        .lines()
        .filter(|l| l.starts_with("exchange_clearing_step_seconds_sum"))
        .filter_map(|l| {
            let step = l.split('"').nth(1)?.to_owned();
            let secs = l.rsplit(' ').next()?.parse().ok()?;
            Some((step, secs))
        })
        .collect();
    steps.sort_by(|a, b| b.1.total_cmp(&a.1));
    let line: Vec<String> = steps.iter().map(|(s, v)| format!("{s} {v:.2}s")).collect();
    println!("time per step: {}", line.join(", "));
    let report = reconcile::reconcile(&db, reconcile::Options::default())
        .await
        .unwrap();
    assert!(report.ok(), "{report}");
}
