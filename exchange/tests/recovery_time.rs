//! Recovery time (issue 7): with a book of 100,000 resting orders, `kill -9`
//! of the real matching process and a restart; the market is back (its
//! engine recovered from the newest snapshot plus the journal after it, and
//! consuming again) in under 5 s. Prints the figure, from the kill to
//! matching's `GET /internal/v1/markets` showing the market at the last
//! journaled seq, not halted. (Debug build; release is faster, see
//! docs/BENCHMARKS.md for the in-process figures.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{Cluster, INTERNAL_TOKEN};

const RESTING: usize = 100_000;
const PER_REQUEST: usize = 200;
const LIMIT: Duration = Duration::from_secs(5);

async fn market(c: &Cluster) -> Option<Value> {
    let url = format!(
        "http://{}/internal/v1/markets",
        c.env()["MATCHING_HTTP_ADDR"]
    );
    let r = c
        .client
        .get(url)
        .bearer_auth(INTERNAL_TOKEN)
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()?;
    let v: Value = r.json().await.ok()?;
    v.get("BTC-USDT").cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_recovers_a_100k_order_book_within_5_seconds() {
    let mut c = Cluster::start().await;
    c.setup_btc_usdt("0.001", "0.002").await;
    let u = c.user("book@example.com").await;
    c.deposit(&u, "BTC", "10000").await;
    c.deposit(&u, "USDT", "100000000").await;

    // Bids 1000.00.. and asks 30000.00.., never crossing: all rest.
    let fill_started = Instant::now();
    let order_url = c.env()["ORDER_SERVICE_URL"].clone();
    let bodies: Vec<Value> = (0..RESTING / PER_REQUEST)
        .map(|r| {
            json!({"orders": (0..PER_REQUEST).map(|i| {
                let n = r * PER_REQUEST + i;
                let buy = n.is_multiple_of(2);
                let cents = (n / 2) as u64;
                let price = if buy { 100_000 + cents } else { 3_000_000 + cents };
                json!({"user_id": u.id, "market": "BTC-USDT", "side": if buy {"buy"} else {"sell"},
                       "type": "limit", "price": format!("{}.{:02}", price / 100, price % 100),
                       "quantity": "0.01", "client_order_id": format!("r{n}")})
            }).collect::<Vec<_>>()})
        })
        .collect();
    let client = c.client.clone();
    futures_util::stream::iter(bodies)
        .map(|body| {
            let client = client.clone();
            let url = format!("{order_url}/internal/v1/orders/batch");
            async move {
                let r = client
                    .post(url)
                    .bearer_auth(INTERNAL_TOKEN)
                    .timeout(Duration::from_secs(60))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let v: Value = r.json().await.unwrap();
                for res in v.as_array().unwrap() {
                    assert_eq!(res["status"], 201, "{res}");
                }
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
    let db = sqlx::PgPool::connect(&c.db_url).await.unwrap();
    let last_seq: i64 =
        sqlx::query_scalar("SELECT last_seq FROM market_sequences WHERE market = 'BTC-USDT'")
            .fetch_one(&db)
            .await
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while market(&c).await.and_then(|m| m["last_seq"].as_i64()) != Some(last_seq) {
        assert!(
            Instant::now() < deadline,
            "matching did not apply seq {last_seq}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Wait for the snapshot the 100k commands trigger (or the 30 s one).
    let snapshot: i64 = loop {
        let s: Option<i64> =
            sqlx::query_scalar("SELECT max(seq) FROM matching_snapshots WHERE market = 'BTC-USDT'")
                .fetch_one(&db)
                .await
                .unwrap();
        if let Some(s) = s
            && s >= last_seq - 1_000
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot near seq {last_seq}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'new'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(open, RESTING as i64);
    println!(
        "{RESTING} resting orders placed and matched in {:.1?}; journal at seq {last_seq}, newest snapshot at seq {snapshot}",
        fill_started.elapsed()
    );

    c.kill("matching");
    let killed = Instant::now();
    c.restart("matching").await;
    let process_ready = killed.elapsed();
    loop {
        if let Some(m) = market(&c).await
            && m["last_seq"].as_i64() == Some(last_seq)
        {
            assert!(m["halted"].is_null(), "{m}");
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "matching did not recover"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recovered = killed.elapsed();
    println!(
        "matching kill -9 → process /ready in {process_ready:.2?}, market BTC-USDT recovered at seq {last_seq} in {recovered:.2?} (limit {LIMIT:?})"
    );
    assert!(recovered < LIMIT, "recovery took {recovered:?}");

    // And it trades: a crossing order after recovery matches the best ask.
    let b = c.user("taker@example.com").await;
    c.deposit(&b, "USDT", "1000").await;
    let (status, v) = c
        .place(
            &b,
            &json!({"market":"BTC-USDT","side":"buy","type":"limit","price":"30000","quantity":"0.01"}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    c.wait_order(
        &b,
        v["id"].as_i64().unwrap(),
        &["filled"],
        Duration::from_secs(30),
    )
    .await;
    println!("a crossing order after the restart filled against the recovered book");
}
