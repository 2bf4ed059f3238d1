//! Recovery time with a large book (prints figures; ignored by default):
//! `cargo test --release -p exchange-matching --test recovery_bench -- --ignored --nocapture`

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use exchange_common::Shutdown;
use exchange_common::testing::{TestMarket, seed_market, test_env};
use sqlx::PgPool;
use tokio::net::TcpListener;

async fn time_to_ready(config: &exchange_common::Config, db: &PgPool, last: i64) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let started = Instant::now();
    let handle = tokio::spawn(exchange_matching::run(
        Arc::new(config.clone()),
        exchange_matching::Listeners { http: listener },
        shutdown.clone(),
    ));
    let http = reqwest::Client::new();
    loop {
        let v: serde_json::Value = http
            .get(format!("{url}/internal/v1/markets"))
            .bearer_auth(config.internal_token.expose())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["BTC-USDT"]["last_seq"] == last {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM event_batches")
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(n, last);
    shutdown.trigger();
    handle.await.unwrap().unwrap();
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures"]
async fn recovery_with_a_large_book() {
    let orders: i64 = std::env::var("BENCH_RESTING")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let env = test_env().await;
    let db = PgPool::connect(&env.db_url).await.unwrap();
    seed_market(&db, &TestMarket::default()).await;
    // Non-crossing limit orders: buys 80-90, sells 110-120 USDT, 0.1 BTC each.
    sqlx::query(
        "INSERT INTO order_commands (market, seq, time_ms, command)
         SELECT 'BTC-USDT', g, 1700000000000 + g, jsonb_build_object(
             'type', 'place', 'order_id', g, 'user_id', 1 + g % 100,
             'side', CASE WHEN g % 2 = 0 THEN 'buy' ELSE 'sell' END,
             'order_type', 'limit', 'price', p::text, 'quantity', '10000000',
             'time_in_force', 'GTC', 'post_only', false, 'stp', 'none',
             'reserved', (CASE WHEN g % 2 = 0 THEN p / 10 ELSE 10000000 END)::text)
         FROM generate_series(1, $1) g,
              LATERAL (SELECT CASE WHEN g % 2 = 0 THEN 80000000 + (g % 1000) * 10000
                                   ELSE 110000000 + (g % 1000) * 10000 END AS p) x",
    )
    .bind(orders)
    .execute(&db)
    .await
    .unwrap();
    let cold = time_to_ready(&env.config, &db, orders).await;
    let snaps: i64 = sqlx::query_scalar("SELECT count(*) FROM matching_snapshots")
        .fetch_one(&db)
        .await
        .unwrap();
    let warm = time_to_ready(&env.config, &db, orders).await;
    sqlx::query("DELETE FROM matching_snapshots")
        .execute(&db)
        .await
        .unwrap();
    let replay = time_to_ready(&env.config, &db, orders).await;
    println!(
        "{orders} resting orders: first start (replay, store and publish every batch) {:.2}s; \
         restart from a snapshot ({snaps} stored) {:.2}s; restart replaying and checking the whole journal {:.2}s",
        cold.as_secs_f64(),
        warm.as_secs_f64(),
        replay.as_secs_f64()
    );
}
