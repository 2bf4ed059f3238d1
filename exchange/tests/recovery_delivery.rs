//! Duplicated and reordered delivery, end to end, for every consumer
//! (issue 7): after three trades, every entry of the order stream (matching)
//! and of the event stream (clearing, which also updates the orders, and
//! marketdata; the gateway's private push is fed by clearing) is delivered again, in reverse
//! order. Nothing changes: no new event batch, no balance moved, marketdata's
//! trades and the orders as they were, no extra private WebSocket message,
//! nothing pending, no dead letter, reconcile ok.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use redis::streams::StreamRangeReply;
use serde_json::{Value, json};
use support::workload::stream_state;
use support::{Cluster, User};
use tokio_tungstenite::tungstenite::Message;

const SETTLE: Duration = Duration::from_secs(30);

fn limit(side: &str) -> Value {
    json!({"market":"BTC-USDT","side":side,"type":"limit","price":"20000","quantity":"0.1"})
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Text messages received until `quiet` passes without one.
async fn drain(ws: &mut Ws, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(quiet, ws.next()).await {
        if let Message::Text(t) = m {
            got.push(t.to_string());
        }
    }
    got
}

async fn state(c: &Cluster, users: &[&User], db: &sqlx::PgPool) -> Value {
    let mut balances = Vec::new();
    let mut orders = Vec::new();
    for u in users {
        balances.push(json!(format!("{:?}", c.balances(u).await)));
        let (_, o) = c
            .call(
                reqwest::Method::GET,
                "/api/v1/orders?market=BTC-USDT&status=closed",
                Some(&u.token),
                None,
            )
            .await;
        orders.push(o);
    }
    let md: Value = c
        .client
        .get(format!(
            "{}/api/v1/markets/BTC-USDT/trades",
            c.env()["MARKETDATA_URL"]
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let counts: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM event_batches), (SELECT count(*) FROM cleared_batches),
                (SELECT count(*) FROM trades), (SELECT count(*) FROM ledger_postings)",
    )
    .fetch_one(db)
    .await
    .unwrap();
    json!({"balances": balances, "orders": orders, "marketdata_trades": md,
           "db": [counts.0, counts.1, counts.2, counts.3]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consumer_ignores_duplicated_and_reordered_deliveries() {
    let c = Cluster::start().await;
    c.setup_btc_usdt("0.001", "0.002").await;
    let a = c.user("seller@example.com").await;
    let b = c.user("buyer@example.com").await;
    c.deposit(&a, "BTC", "1").await;
    c.deposit(&b, "USDT", "10000").await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/ws/private?token={}", c.ws_url, b.token))
            .await
            .unwrap();

    for _ in 0..3 {
        let (s, v) = c.place(&a, &limit("sell")).await;
        assert_eq!(s, 201, "{v}");
        let (s, w) = c.place(&b, &limit("buy")).await;
        assert_eq!(s, 201, "{w}");
        c.wait_order(&b, w["id"].as_i64().unwrap(), &["filled"], SETTLE)
            .await;
        c.wait_order(&a, v["id"].as_i64().unwrap(), &["filled"], SETTLE)
            .await;
    }
    let pushed = drain(&mut ws, Duration::from_millis(1_500)).await;
    let db = sqlx::PgPool::connect(&c.db_url).await.unwrap();
    let before = state(&c, &[&a, &b], &db).await;
    assert_eq!(before["db"][2], 3, "three trades: {before}");

    // Every entry of both streams again, newest first.
    let redis_url = c.env()["REDIS_URL"].clone();
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut redelivered = Vec::new();
    let streams = [
        format!("{}:orders:{{BTC-USDT}}", c.redis_prefix),
        format!("{}:events", c.redis_prefix),
    ];
    for stream in &streams {
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!reply.ids.is_empty(), "{stream} has entries");
        for entry in reply.ids.iter().rev() {
            let mut xadd = redis::cmd("XADD");
            xadd.arg(stream).arg("*");
            for (k, v) in &entry.map {
                let bytes: Vec<u8> = redis::from_redis_value(v.clone()).unwrap();
                xadd.arg(k).arg(bytes);
            }
            let _: String = xadd.query_async(&mut conn).await.unwrap();
        }
        redelivered.push(format!("{stream}: {} entries", reply.ids.len()));
    }
    println!("re-delivered in reverse order: {redelivered:?}");

    // Consumed (every group read up to the last entry, nothing pending),
    // then nothing changed.
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let (pending, dlq) = stream_state(&redis_url, &c.redis_prefix).await;
        assert!(dlq.iter().all(|(_, n)| *n == 0), "dead letters: {dlq:?}");
        let mut behind = Vec::new();
        for stream in &streams {
            let last: StreamRangeReply = redis::cmd("XREVRANGE")
                .arg(stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await
                .unwrap();
            let last = last.ids[0].id.clone();
            let groups: Vec<redis::Value> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query_async(&mut conn)
                .await
                .unwrap();
            for g in groups {
                let g: std::collections::BTreeMap<String, redis::Value> =
                    redis::from_redis_value(g).unwrap();
                let name: String = redis::from_redis_value(g["name"].clone()).unwrap();
                let read: String = redis::from_redis_value(g["last-delivered-id"].clone()).unwrap();
                if read != last {
                    behind.push(format!("{stream} {name} at {read}, last {last}"));
                }
            }
        }
        if behind.is_empty() && pending.iter().all(|(_, n)| *n == 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not consumed: {behind:?}, pending: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let extra = drain(&mut ws, Duration::from_millis(1_500)).await;
    let after = state(&c, &[&a, &b], &db).await;
    assert_eq!(before, after, "a redelivery changed something");
    assert!(
        extra.is_empty(),
        "the private WebSocket pushed again on redelivery: {extra:?}"
    );
    let out = c.reconcile();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    println!(
        "unchanged after redelivery: {} event batches, {} cleared, {} trades, {} ledger postings, marketdata trades, both users' balances and orders; \
         {} private pushes before, none after; nothing pending, no dead letters, reconcile ok",
        after["db"][0],
        after["db"][1],
        after["db"][2],
        after["db"][3],
        pushed.len()
    );
}
