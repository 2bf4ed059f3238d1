//! Matching failover by lease (issue 19), with real processes: two
//! matching replicas on every market (`MATCHING_MARKETS=*`, the default
//! 2.5 s lease) while a seeded workload of limit orders is placed serially
//! on BTC-USDT (support/workload.rs, as the chaos test does).
//!
//! 1. Spread: with two markets and two replicas, each owns one; each
//!    owner's `/ready` names its market and `/metrics` counts it.
//! 2. `kill -9` of BTC-USDT's owner: the standby owns the market within
//!    5 s (measured from the kill to the new lease in the database).
//! 3. Fencing: the owner is paused (SIGSTOP) until the other replica has
//!    taken the market over, trading goes on, then it is resumed: no batch
//!    stored under its epoch after the takeover (`event_batches.epoch`).
//! 4. Graceful stop (SIGTERM) of the owner hands the lease over at once.
//!
//! Then the usual checks (`verify`): the journal is the workload in order,
//! every order matched once, the trades equal the fault-free reference
//! model's one for one, streams drained, no dead letters, reconcile ok.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use support::workload::{start_run, verify, wait_done};
use support::{Cluster, Options};

const ORDERS: usize = 4_000;
const USERS: usize = 10;
const SEED: u64 = 0x0fa1_10fe;
/// The bound on a takeover after the owner died.
const TAKEOVER_MAX: Duration = Duration::from_secs(5);
const MARKET: &str = "BTC-USDT";

/// Process names and their `MATCHING_CONSUMER_NAME`s (lease owners are
/// `<consumer name>/<instance>`).
const REPLICAS: [(&str, &str); 2] = [
    ("matching", "matching-e2e-1"),
    ("matching-b", "matching-b-e2e"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    process: &'static str,
    owner: String,
    epoch: i64,
    live: bool,
}

async fn lease(db: &sqlx::PgPool, market: &str) -> Option<Lease> {
    let row: Option<(String, i64, bool)> = sqlx::query_as(
        "SELECT owner, epoch, expires_at > now() FROM matching_leases WHERE market = $1",
    )
    .bind(market)
    .fetch_optional(db)
    .await
    .unwrap();
    row.map(|(owner, epoch, live)| {
        let process = REPLICAS
            .iter()
            .find(|(_, name)| owner.starts_with(&format!("{name}/")))
            .map(|(p, _)| *p)
            .unwrap_or_else(|| panic!("lease owner {owner} is no replica of this test"));
        Lease {
            process,
            owner,
            epoch,
            live,
        }
    })
}

/// Waits until `market`'s lease is live and `accept`ed; returns it and how
/// long that took.
async fn wait_lease(
    db: &sqlx::PgPool,
    market: &str,
    within: Duration,
    accept: impl Fn(&Lease) -> bool,
) -> (Lease, Duration) {
    let started = Instant::now();
    loop {
        if let Some(l) = lease(db, market).await
            && l.live
            && accept(&l)
        {
            return (l, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "{market}: lease not as expected within {within:?}: {:?}",
            lease(db, market).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text(c: &Cluster, url: &str) -> String {
    c.client
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_a_dead_or_paused_owner_and_a_fenced_owner_stores_nothing() {
    let redis_url = std::env::var("REDIS_URL").unwrap();
    let mut c = Cluster::start_with(Options::default()).await;
    c.add_replica("matching", "matching-b").await;
    let db = sqlx::PgPool::connect(&c.db_url).await.unwrap();
    let run = start_run(&c, SEED, ORDERS, USERS).await;
    c.admin(
        Method::POST,
        "/admin/v1/assets",
        &json!({"symbol":"ETH","scale":8}),
    )
    .await;
    c.admin(
        Method::POST,
        "/admin/v1/markets",
        &json!({"symbol":"ETH-USDT","base":"ETH","quote":"USDT","price_tick":"0.01",
                "qty_step":"0.0001","min_notional":"1","maker_fee":"0.001","taker_fee":"0.002"}),
    )
    .await;

    // 1. Spread: one market each, shown by /ready and /metrics.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (btc, eth) = loop {
        let (b, e) = (lease(&db, MARKET).await, lease(&db, "ETH-USDT").await);
        if let (Some(b), Some(e)) = (&b, &e)
            && b.live
            && e.live
            && b.process != e.process
        {
            break (b.clone(), e.clone());
        }
        assert!(Instant::now() < deadline, "markets not spread: {b:?} {e:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (l, market, other) in [(&btc, MARKET, "ETH-USDT"), (&eth, "ETH-USDT", MARKET)] {
        let ready = text(&c, c.ready_url(l.process)).await;
        assert!(
            ready.contains(&format!("\"owns {market}\":\"up\"")),
            "{ready}"
        );
        assert!(!ready.contains(&format!("owns {other}")), "{ready}");
        let metrics = text(&c, &format!("{}/metrics", c.http_url(l.process))).await;
        assert!(
            metrics.contains(&format!(
                "exchange_matching_market_owned{{market=\"{market}\"}} 1"
            )),
            "{metrics}"
        );
    }
    println!(
        "spread: {MARKET} on {}, ETH-USDT on {}",
        btc.process, eth.process
    );

    // 2. kill -9 of the owner while orders flow.
    wait_done(&run.done, ORDERS / 4).await;
    let killed_at = Instant::now();
    c.kill(btc.process);
    let (taken, _) = wait_lease(&db, MARKET, TAKEOVER_MAX * 2, |l| l.owner != btc.owner).await;
    let took = killed_at.elapsed();
    println!(
        "kill -9 of {}: {} owns {MARKET} (epoch {}) after {took:.2?}",
        btc.process, taken.process, taken.epoch
    );
    assert!(took <= TAKEOVER_MAX, "takeover took {took:?}");
    assert!(taken.epoch > btc.epoch);
    c.restart(btc.process).await;

    // 3. Fencing: pause the owner until the other replica has taken over.
    wait_done(&run.done, ORDERS / 2).await;
    let owner = lease(&db, MARKET).await.unwrap();
    let paused_at = Instant::now();
    c.signal(owner.process, "STOP");
    let (successor, _) =
        wait_lease(&db, MARKET, TAKEOVER_MAX * 2, |l| l.owner != owner.owner).await;
    let took = paused_at.elapsed();
    println!(
        "{} paused: {} owns {MARKET} (epoch {}) after {took:.2?}",
        owner.process, successor.process, successor.epoch
    );
    assert!(
        took <= TAKEOVER_MAX,
        "takeover of a paused owner took {took:?}"
    );
    // Read after the takeover committed: everything the paused owner
    // stored before it is at or below this seq.
    let stored_top: i64 =
        sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM event_batches WHERE market = $1")
            .bind(MARKET)
            .fetch_one(&db)
            .await
            .unwrap();
    // Trading goes on under the new owner, then the old one wakes up.
    wait_done(&run.done, ORDERS * 5 / 8).await;
    c.signal(owner.process, "CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_batches WHERE market = $1 AND epoch = $2 AND seq > $3",
    )
    .bind(MARKET)
    .bind(owner.epoch)
    .bind(stored_top)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        late, 0,
        "the fenced owner stored batches after the takeover"
    );
    let newer: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_batches WHERE market = $1 AND epoch = $2")
            .bind(MARKET)
            .bind(successor.epoch)
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(
        newer > 0,
        "the new owner stored the batches since the takeover"
    );
    // The woken replica stays up as a standby: no stale loop of the market
    // it lost keeps it unready.
    c.wait_ready(owner.process).await;
    let still = lease(&db, MARKET).await.unwrap();
    assert_eq!(
        still.owner, successor.owner,
        "the woken owner did not take the market back"
    );
    let metrics = text(&c, &format!("{}/metrics", c.http_url(owner.process))).await;
    assert!(
        metrics.contains(&format!(
            "exchange_matching_leases_lost_total{{market=\"{MARKET}\"}}"
        )),
        "the woken owner counts the lost lease: {metrics}"
    );
    println!(
        "fencing: nothing stored under epoch {} above seq {stored_top}; {newer} batches under epoch {}",
        owner.epoch, successor.epoch
    );

    // 4. A graceful stop hands the lease over at once.
    wait_done(&run.done, ORDERS * 3 / 4).await;
    let owner = lease(&db, MARKET).await.unwrap();
    let stopped_at = Instant::now();
    c.signal(owner.process, "TERM");
    let (next, _) = wait_lease(&db, MARKET, TAKEOVER_MAX, |l| l.owner != owner.owner).await;
    let took = stopped_at.elapsed();
    println!(
        "SIGTERM of {}: {} owns {MARKET} after {took:.2?}",
        owner.process, next.process
    );
    assert!(
        took < Duration::from_secs(2),
        "graceful handover took {took:?}"
    );
    c.wait_exit(owner.process, Duration::from_secs(10)).await;
    c.restart(owner.process).await;

    let (requests, retries) = run.driver.await.unwrap();
    println!("driver: {requests} requests, {retries} retried");
    let summary = verify(&c, &redis_url, &run.orders, &run.model).await;
    println!("failover run: {summary}");
}
