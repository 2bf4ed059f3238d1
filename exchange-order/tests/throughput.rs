//! A rough placement throughput figure (ignored by default: it measures,
//! it does not assert). Run with
//! `cargo test -p exchange-order --release --test throughput -- --ignored --nocapture`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures"]
async fn placements_per_second() {
    let app = Arc::new(support::spawn().await);
    let users_len = 200;
    let concurrency = 256;
    let duration = Duration::from_secs(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let mut users = Vec::new();
    for _ in 0..users_len {
        users.push(support::user_with(&app.db, "100000000", "100000").await);
    }
    let users = Arc::new(users);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (app, users, ok, failed, latencies) = (
            app.clone(),
            users.clone(),
            ok.clone(),
            failed.clone(),
            latencies.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            let mut local = Vec::new();
            while started.elapsed() < duration {
                let user = users[i % users.len()];
                let side = if i % 2 == 0 { "buy" } else { "sell" };
                // Non-crossing prices: buys below 100, sells above.
                let price = if side == "buy" {
                    90 + (i % 10)
                } else {
                    101 + (i % 10)
                };
                let t = Instant::now();
                let (s, body) = app
                    .place(
                        json!({"user_id": user, "market": "BTC-USDT", "side": side, "type": "limit",
                                  "price": price.to_string(), "quantity": "0.1"}),
                    )
                    .await;
                local.push(u64::try_from(t.elapsed().as_micros()).unwrap());
                if s == 201 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("failed: {s} {body}");
                }
                i += concurrency;
            }
            latencies.lock().unwrap().extend(local);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let n = ok.load(Ordering::Relaxed);
    let mut l = latencies.lock().unwrap().clone();
    l.sort_unstable();
    let pct = |p: usize| l.get(l.len() * p / 100).copied().unwrap_or(0);
    println!(
        "placements: {n} accepted, {} failed in {secs:.1}s = {:.0}/s; latency p50 {} us, p99 {} us (concurrency {concurrency})",
        failed.load(Ordering::Relaxed),
        n as f64 / secs,
        pct(50),
        pct(99),
    );
    let journal: i64 = sqlx::query_scalar("SELECT count(*) FROM order_commands")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(u64::try_from(journal).unwrap(), n);
}
