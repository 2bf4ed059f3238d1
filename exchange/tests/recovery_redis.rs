//! Redis loss in the middle of a run (issue 7): `FLUSHALL` after a third of
//! a seeded workload, then a `kill -9` and restart of Redis (no persistence:
//! it comes back empty) after two thirds. The services run against a private
//! `redis-server` so other tests are not disturbed. Afterwards the checks of
//! the chaos run hold: the journal is the workload, the trades equal the
//! fault-free model, orders are final or resting as modelled, consumer
//! groups exist again with nothing pending, no dead letters, reconcile ok.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::private::PrivateRedis;
use support::workload::{start_run, verify, wait_done};
use support::{Cluster, Options};

const ORDERS: usize = 3_000;
const USERS: usize = 10;
const SEED: u64 = 0x7ed1_5105;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushall_and_restart_lose_nothing() {
    let started = Instant::now();
    let mut redis = PrivateRedis::start().await;
    let c = Cluster::start_with(Options {
        env: vec![("REDIS_URL".into(), redis.url.clone())],
        ..Options::default()
    })
    .await;
    println!("private redis on {}", redis.port);
    let run = start_run(&c, SEED, ORDERS, USERS).await;
    let done = &run.done;

    wait_done(done, ORDERS / 3).await;
    redis.flushall().await;
    println!("FLUSHALL after {} orders", ORDERS / 3);
    wait_done(done, 2 * ORDERS / 3).await;
    redis.restart(Duration::from_secs(1)).await;
    println!(
        "redis killed and restarted empty after {} orders (down 1 s)",
        2 * ORDERS / 3
    );
    let (requests, retries) = run.driver.await.unwrap();
    println!("{ORDERS} orders accepted in {requests} requests ({retries} retried)");
    let summary = verify(&c, &redis.url, &run.orders, &run.model).await;
    // The consumer groups were recreated on the empty Redis (the order
    // service consumes no stream: clearing updates the orders).
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut groups = Vec::new();
    for stream in [
        format!("{}:events", c.redis_prefix),
        format!("{}:orders:{{BTC-USDT}}", c.redis_prefix),
    ] {
        let info: Vec<std::collections::BTreeMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        for g in info {
            let name: String = redis::from_redis_value(g["name"].clone()).unwrap();
            groups.push(format!("{stream} {name}"));
        }
    }
    for want in [
        "events clearing",
        "events marketdata",
        "{BTC-USDT} matching",
    ] {
        assert!(
            groups.iter().any(|g| g.ends_with(want)),
            "group {want} missing after the Redis loss: {groups:?}"
        );
    }
    println!("consumer groups after the loss: {groups:?}");
    println!("{summary}");
    println!("redis loss run took {:.1?}", started.elapsed());
}
