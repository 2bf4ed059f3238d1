//! Benchmark (prints figures; docs/BENCHMARKS.md "History"): the time of the
//! first and of the 1,000th page (100 items each) on a user with 1 million
//! fills, over HTTP against the real services, for `GET
//! /api/v1/account/trades` and `GET /api/v1/account/ledger`. Keyset pages:
//! the 1,000th should cost what the first costs.
//!
//! `cargo test [--release] -p exchange --test history_bench -- --ignored --nocapture`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use support::{Cluster, User};

const FILLS: i64 = 1_000_000;
const PAGE: usize = 100;
const DEEP_PAGE: usize = 1_000;
const REPEATS: usize = 7;

/// The median time of `REPEATS` requests of `path`.
async fn median(c: &Cluster, u: &User, path: &str) -> Duration {
    let mut times = Vec::new();
    for _ in 0..REPEATS {
        let t = Instant::now();
        let (s, v) = c.call(Method::GET, path, Some(&u.token), None).await;
        times.push(t.elapsed());
        assert_eq!(s, 200, "{path}: {v}");
        assert_eq!(v["items"].as_array().map(Vec::len), Some(PAGE), "{path}");
    }
    times.sort();
    times[REPEATS / 2]
}

/// The cursor of page `n` (1-based) of `list`, walked from the first.
async fn cursor_of(c: &Cluster, u: &User, list: &str, n: usize) -> String {
    let mut path = format!("{list}?limit={PAGE}&paginate=true");
    let mut cursor = String::new();
    for _ in 1..n {
        let (s, page): (u16, Value) = c.call(Method::GET, &path, Some(&u.token), None).await;
        assert_eq!(s, 200, "{page}");
        cursor = page["next_cursor"].as_str().unwrap().to_owned();
        path = format!("{list}?limit={PAGE}&cursor={cursor}");
    }
    cursor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures"]
async fn the_thousandth_page_costs_what_the_first_costs() {
    let c = Cluster::start().await;
    c.setup_btc_usdt("0.001", "0.002").await;
    let u = c.user("history@example.com").await;
    let db = sqlx::PgPool::connect(&c.db_url).await.unwrap();
    let seeded = Instant::now();
    sqlx::query(
        "INSERT INTO fills (user_id, order_id, market, trade_id, side, price, quantity, quote_amount,
                            fee, fee_asset, liquidity, time_ms)
         SELECT $1, 0, 'BTC-USDT', g, CASE WHEN g % 2 = 0 THEN 'buy' ELSE 'sell' END, 100, 0.001, 0.1,
                0.000001, 'BTC', 'maker', 1700000000000 + g
         FROM generate_series(1, $2::int8) AS g",
    )
    .bind(u.id)
    .bind(FILLS)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("ANALYZE fills").execute(&db).await.unwrap();
    eprintln!("seeded {FILLS} fills in {:?}", seeded.elapsed());
    for list in ["/api/v1/account/trades", "/api/v1/account/ledger"] {
        let first = median(&c, &u, &format!("{list}?limit={PAGE}&paginate=true")).await;
        let walk = Instant::now();
        let cursor = cursor_of(&c, &u, list, DEEP_PAGE).await;
        let walked = walk.elapsed();
        let deep = median(&c, &u, &format!("{list}?limit={PAGE}&cursor={cursor}")).await;
        eprintln!(
            "{list}: page 1 {:.1} ms, page {DEEP_PAGE} {:.1} ms (median of {REPEATS}); walking pages 1..{DEEP_PAGE} took {:.1} s",
            first.as_secs_f64() * 1e3,
            deep.as_secs_f64() * 1e3,
            walked.as_secs_f64()
        );
    }
}
