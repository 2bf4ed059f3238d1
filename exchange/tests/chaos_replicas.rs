//! Chaos with two replicas of every service (issue 19): gateway, order,
//! matching, clearing and marketdata each run twice, side by side, as
//! separate processes with their own `*_CONSUMER_NAME` (marketdata's in a
//! group of its own, since each keeps every market). A seeded workload of
//! limit orders is placed serially through both order services in turn
//! while the harness `kill -9`s a replica chosen at seeded random and
//! restarts it, over and over.
//!
//! Same checks as the single-replica chaos test (`verify`): the journal is
//! the workload in order, every order matched and cleared once, the trades
//! equal the fault-free reference model's one for one, every stream
//! group's pending entries drain, no dead letters, `exchange admin
//! reconcile` exits 0; and at the end every market has exactly one live
//! lease, held by a running matching replica.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::workload::{Rng, start_run_on, verify, wait_done};
use support::{Cluster, Options};

const ORDERS: usize = 4_000;
const USERS: usize = 12;
const MIN_KILLS: usize = 16;
const SEED: u64 = 0x0002_4e91_1ca5;

/// Every process of the run: the harness's own and a second of each.
const PROCESSES: [(&str, &str); 10] = [
    ("gateway", "gateway"),
    ("gateway-b", "gateway"),
    ("order", "order"),
    ("order-b", "order"),
    ("matching", "matching"),
    ("matching-b", "matching"),
    ("clearing", "clearing"),
    ("clearing-b", "clearing"),
    ("marketdata", "marketdata"),
    ("marketdata-b", "marketdata"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_of_any_replica_lose_and_double_nothing() {
    let started = Instant::now();
    let redis_url = std::env::var("REDIS_URL").unwrap();
    let mut c = Cluster::start_with(Options::default()).await;
    for (name, service) in PROCESSES {
        if name.ends_with("-b") {
            c.add_replica(service, name).await;
        }
    }
    let order_urls = vec![c.http_url("order"), c.http_url("order-b")];
    let run = start_run_on(&c, SEED, ORDERS, USERS, order_urls).await;
    let mut rng = Rng::new(SEED ^ 0xbeef);
    let mut kills: BTreeMap<&str, usize> = BTreeMap::new();
    let mut total = 0;
    while !run.driver.is_finished() || total < MIN_KILLS {
        let pause = tokio::time::sleep(Duration::from_millis(600 + rng.below(1_200)));
        if total >= MIN_KILLS {
            tokio::select! {
                () = pause => {}
                () = wait_done(&run.done, ORDERS) => break,
            }
        } else {
            pause.await;
        }
        let (victim, _) = PROCESSES[rng.index(PROCESSES.len())];
        c.kill(victim);
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        c.restart(victim).await;
        *kills.entry(victim).or_default() += 1;
        total += 1;
    }
    let (requests, retries) = run.driver.await.unwrap();
    println!(
        "{total} kills {kills:?} while submitting {ORDERS} orders through two order services in {requests} requests ({retries} retried) in {:.1?}",
        started.elapsed()
    );
    let summary = verify(&c, &redis_url, &run.orders, &run.model).await;
    println!("chaos run with replicas: {summary}");

    let db = sqlx::PgPool::connect(&c.db_url).await.unwrap();
    let leases: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT m.symbol, coalesce(l.owner, ''), coalesce(l.expires_at > now(), false)
         FROM markets m LEFT JOIN matching_leases l ON l.market = m.symbol",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    for (market, owner, live) in &leases {
        assert!(
            *live && (owner.starts_with("matching-e2e-1/") || owner.starts_with("matching-b-e2e/")),
            "{market}: lease {owner} live {live}"
        );
    }
    println!(
        "leases at the end: {leases:?}; total {:.1?}",
        started.elapsed()
    );
}

/// Two processes under one consumer name (a misconfigured replica) share
/// one pending list and take each other's entries: both report it within
/// seconds (`/ready` down with `consumerName`, the conflicts counter), and
/// the survivor is ready again once the other is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_under_the_same_consumer_name_is_reported() {
    let mut c = Cluster::start_with(Options {
        services: Some(vec!["clearing"]),
        ..Options::default()
    })
    .await;
    c.start_replica(
        "clearing",
        "clearing-twin",
        vec![("CLEARING_CONSUMER_NAME".into(), "clearing-e2e-1".into())],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    for name in ["clearing", "clearing-twin"] {
        loop {
            let r = c.client.get(c.ready_url(name)).send().await;
            if let Ok(r) = r
                && r.status() == 503
            {
                let body = r.text().await.unwrap();
                if body.contains("\"consumerName\":\"down\"") {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{name} never reported the shared consumer name"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let metrics = c
            .client
            .get(format!("{}/metrics", c.http_url(name)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("exchange_consumer_name_conflicts_total{"),
            "{name}: {metrics}"
        );
    }
    c.kill("clearing-twin");
    c.wait_ready("clearing").await;
}
