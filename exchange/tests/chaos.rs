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
//! Afterwards it checks:
//! - the journal is the workload, in order (by `client_order_id`);
//! - the trades clearing stored equal, one for one (trade id, maker and taker
//!   `client_order_id`, price, quantity), those of the same workload matched
//!   without faults by a plain price-time reference matcher in this file
//!   (an independent model, not the engine under test), and equal the trades
//!   in matching's stored event batches;
//! - every order is final or resting, with the filled quantity and the open
//!   set of the fault-free model;
//! - every stream group's pending entries drain to zero, no dead letters;
//! - `exchange admin reconcile` exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::Cluster;
use support::workload::{Rng, start_run, verify};

const ORDERS: usize = 20_000;
const USERS: usize = 20;
const MIN_KILLS: usize = 30;
const SEED: u64 = 0x0005_eedc_0de7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kills_lose_and_double_nothing() {
    let started = Instant::now();
    let redis_url = std::env::var("REDIS_URL").unwrap();
    let mut c = Cluster::start().await;
    let run = start_run(&c, SEED, ORDERS, USERS).await;
    let mut rng = Rng::new(SEED ^ 0xdead);
    let victims = ["matching", "clearing", "order", "marketdata"];
    let mut kills: BTreeMap<&str, usize> = BTreeMap::new();
    let mut total = 0;
    while !run.driver.is_finished() || total < MIN_KILLS {
        tokio::time::sleep(Duration::from_millis(800 + rng.below(1_600))).await;
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
    println!("{summary}");
    println!("chaos run took {:.1?}", started.elapsed());
}
