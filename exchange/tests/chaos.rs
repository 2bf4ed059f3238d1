//! Chaos run (issue 7): a seeded workload of 20,000 limit orders from 20
//! users, submitted in a deterministic order, while the harness `kill -9`s
//! matching, clearing, the order service and marketdata at seeded random
//! moments (at least 30 kills) and restarts them.
//!
//! Determinism: one driver submits the workload serially, one placement per
//! request to the order service's `POST /internal/v1/orders/batch` (a request
//! of several placements journals them in no fixed order). A request that fails
//! (connection refused while the order service is down, 503, timeout) is
//! retried with the same `client_order_id`s until answered; placement is
//! idempotent, so the journal holds the workload exactly once, in order.
//! Every user is funded far beyond what the workload can lock, so no
//! placement depends on settlement timing.
//!
//! At the same time the same seeded workload runs through a second cluster
//! of the real services (its own database and Redis prefix) without any
//! fault: the fault-free run the chaos run is compared with. Its trades are
//! matching's (`event_batches`), checked against the model below; see
//! `fault_free_run` for what it leaves out to stay cheap.
//!
//! Afterwards it checks, for the chaos run:
//! - the journal is the workload, in order (by `client_order_id`);
//! - the trades clearing stored equal, one for one (trade id, maker and taker
//!   `client_order_id`, price, quantity), those of the same workload matched
//!   without faults by a plain price-time reference matcher
//!   (support/workload.rs: an independent model, not the engine under test),
//!   and equal the trades in matching's stored event batches;
//! - every order is final or resting, with the filled quantity and the open
//!   set of the fault-free model;
//! - every stream group's pending entries drain to zero, no dead letters;
//! - `exchange admin reconcile` exits 0;
//!
//! and then that the chaos run's trades equal the fault-free run's, one for
//! one: trade id, price, quantity, maker and taker (by `client_order_id` and
//! user id). Order ids are compared through the `client_order_id`s, not as
//! numbers: they come from the `order_ids` Postgres sequence, and `nextval`
//! is not transactional, so a placement whose transaction dies with a killed
//! order service (or is retried after a 503) burns ids, and every later order
//! gets a different id than in the fault-free run. The test prints how many
//! trades still have numerically equal order ids.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::workload::{
    Rng, StoredTrade, matched_trades, start_run, stored_trades, verify, wait_matched,
};
use support::{Cluster, Options};

const ORDERS: usize = 20_000;
const USERS: usize = 20;
const MIN_KILLS: usize = 30;
const SEED: u64 = 0x0005_eedc_0de7;

/// The seeded workload through a cluster of its own without faults;
/// returns matching's trades (checked against the model), a summary and how
/// long it took.
///
/// It shares the two cores with the chaos run, so it runs only what the
/// trades go through and is made cheap where that cannot change them: the
/// order service (journal) and matching (the trades, in `event_batches`),
/// plus the gateway for the setup; no clearing (every user is funded beyond
/// what the workload can lock, so no placement waits for a settlement; the
/// chaos run checks clearing's trades against its own batches), no
/// marketdata; warnings-only logs; `synchronous_commit = off` on its own
/// database (nothing crashes here; durability does not change what is
/// matched, only how long each serial placement waits for its commit).
async fn fault_free_run() -> (Vec<StoredTrade>, String, Duration) {
    let started = Instant::now();
    let db_url = exchange_common::testing::empty_database().await;
    let db_name = db_url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let admin = sqlx::PgPool::connect(&std::env::var("DB_URL").unwrap())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {db_name} SET synchronous_commit = off"
    )))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    let c = Cluster::start_with(Options {
        env: vec![("LOG_LEVEL".into(), "warn".into())],
        db_url: Some(db_url.clone()),
        services: Some(vec!["order", "matching", "gateway"]),
    })
    .await;
    let run = start_run(&c, SEED, ORDERS, USERS).await;
    let (requests, retries) = run.driver.await.unwrap();
    let driver_took = started.elapsed();
    let last_seq = wait_matched(&c.db_url, Duration::from_secs(120)).await;
    assert_eq!(last_seq, ORDERS as i64, "one journaled command per order");
    let trades = matched_trades(&c.db_url).await;
    assert_eq!(
        trades.len(),
        run.model.trades.len(),
        "fault-free run vs model"
    );
    for (i, (t, want)) in trades.iter().zip(&run.model.trades).enumerate() {
        let got = (
            u64::try_from(t.id).unwrap(),
            t.maker_cid.clone(),
            t.taker_cid.clone(),
            t.price,
            t.quantity,
        );
        assert_eq!(&got, want, "trade #{i}: fault-free run vs model");
    }
    let summary = format!(
        "{ORDERS} orders in {requests} requests ({retries} retried), seq 1..{last_seq}, {} trades equal the model",
        trades.len()
    );
    println!(
        "fault-free run done in {:.1?} (driver {driver_took:.1?})",
        started.elapsed()
    );
    (trades, summary, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kills_lose_and_double_nothing() {
    let started = Instant::now();
    let redis_url = std::env::var("REDIS_URL").unwrap();
    // Concurrently, on its own database and Redis prefix, instead of after
    // it: the chaos run spends much of its time waiting for restarts.
    let fault_free = tokio::spawn(fault_free_run());
    let mut c = Cluster::start().await;
    let run = start_run(&c, SEED, ORDERS, USERS).await;
    let mut rng = Rng::new(SEED ^ 0xdead);
    let victims = ["matching", "clearing", "order", "marketdata"];
    let mut kills: BTreeMap<&str, usize> = BTreeMap::new();
    let mut total = 0;
    while !run.driver.is_finished() || total < MIN_KILLS {
        let pause = tokio::time::sleep(Duration::from_millis(800 + rng.below(1_600)));
        if total >= MIN_KILLS {
            // Enough kills: stop as soon as the workload is in.
            tokio::select! {
                () = pause => {}
                () = support::workload::wait_done(&run.done, ORDERS) => break,
            }
        } else {
            pause.await;
        }
        let v = victims[rng.index(victims.len())];
        c.kill(v);
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        c.restart(v).await;
        *kills.entry(v).or_default() += 1;
        total += 1;
    }
    let (requests, retries) = run.driver.await.unwrap();
    let load = started.elapsed();
    println!(
        "{total} kills {kills:?} while submitting {} orders in {requests} requests ({retries} retried) in {:.1?}",
        run.done.load(Ordering::Relaxed),
        load
    );
    let summary = verify(&c, &redis_url, &run.orders, &run.model).await;
    println!("chaos run: {summary}");
    let chaos = stored_trades(&c.db_url).await;
    let chaos_done = started.elapsed();

    let (reference, reference_summary, reference_took) = fault_free.await.unwrap();
    println!("fault-free run: {reference_summary}");
    compare(&chaos, &reference);
    println!(
        "chaos run verified after {chaos_done:.1?}; fault-free run (concurrent) took {reference_took:.1?}; total {:.1?}",
        started.elapsed()
    );
}

/// The chaos run's trades equal the fault-free run's, one for one.
fn compare(chaos: &[StoredTrade], reference: &[StoredTrade]) {
    assert_eq!(
        chaos.len(),
        reference.len(),
        "trade count: chaos run vs fault-free run"
    );
    let key = |t: &StoredTrade| {
        (
            t.id,
            t.price,
            t.quantity,
            t.maker_cid.clone(),
            t.taker_cid.clone(),
            t.maker_user_id,
            t.taker_user_id,
        )
    };
    let mut same_order_ids = 0;
    let mut first_shift = None;
    for (i, (a, b)) in chaos.iter().zip(reference).enumerate() {
        assert_eq!(
            key(a),
            key(b),
            "trade #{i}: chaos run vs fault-free run (id, price, quantity, maker, taker, maker user, taker user)"
        );
        if (a.maker_order_id, a.taker_order_id) == (b.maker_order_id, b.taker_order_id) {
            same_order_ids += 1;
        } else if first_shift.is_none() {
            first_shift = Some((i, a.taker_cid.clone(), a.taker_order_id, b.taker_order_id));
        }
    }
    println!(
        "{} trades equal the fault-free run's (trade id, price, quantity, maker and taker client_order_id and user); \
         numerically equal order ids in {same_order_ids} of them{}",
        chaos.len(),
        first_shift.map_or_else(String::new, |(i, cid, a, b)| format!(
            " (first differs at trade #{i}: taker {cid} is order {a} vs {b}: ids burnt by killed or retried placements)"
        ))
    );
}
