//! The exchange on a real 3-master Redis Cluster (scripts/lib/cluster-services.sh:
//! redis-server in cluster mode, joined by `redis-cli --cluster create`),
//! every service started as its own process with `REDIS_URL` +
//! `REDIS_CLUSTER_NODES` pointing at it:
//!
//! - trading: a resting sell and a crossing buy settle, balances move to the
//!   last unit (fees included), depth shows the rest, reconcile passes;
//! - private push: the buyer's private WebSocket receives its order, fill
//!   and balance events (clearing publishes on one node, the gateway's
//!   pattern subscription sits on another: classic Pub/Sub crosses the
//!   cluster bus; checked directly too);
//! - keys: a market's order stream and its dead letters hash to one slot
//!   (`CLUSTER KEYSLOT`), and the streams the services use exist there;
//! - `exchange admin dlq list` finds dead-letter streams on every master
//!   (SCAN on each), and `show` reads one.
//!
//! Needs CLUSTER_REDIS_URL and CLUSTER_REDIS_NODES (scripts/test.sh provides
//! them) besides DB_URL and REDIS_URL as every end-to-end test. Skipped,
//! saying so, only when they are unset outside scripts/test.sh
//! (EXCHANGE_CLUSTER_SERVICES unset).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use exchange_common::redis::{Redis, RedisConn};
use futures_util::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};
use support::{BIN, Cluster, Options, UNIT, mul, units};
use tokio_tungstenite::tungstenite::Message;

const SETTLE: Duration = Duration::from_secs(20);

fn var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// `(CLUSTER_REDIS_URL, CLUSTER_REDIS_NODES)`, or `None` (skipped, said on
/// stderr) outside the test command.
fn cluster_env() -> Option<(String, String)> {
    match (var("CLUSTER_REDIS_URL"), var("CLUSTER_REDIS_NODES")) {
        (Some(url), Some(nodes)) => Some((url, nodes)),
        _ => {
            assert!(
                var("EXCHANGE_CLUSTER_SERVICES").is_none(),
                "EXCHANGE_CLUSTER_SERVICES is set (the test harness started a Redis Cluster) but \
                 CLUSTER_REDIS_URL or CLUSTER_REDIS_NODES is not: scripts/lib/cluster-services.sh \
                 did not export them"
            );
            // Straight to stderr: the test harness would swallow eprintln! of a passing test.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED redis_cluster: CLUSTER_REDIS_URL / CLUSTER_REDIS_NODES are not set. These \
                 tests need the Redis Cluster of scripts/lib/cluster-services.sh: run \
                 scripts/test.sh, or `. scripts/lib/local-services.sh; . \
                 scripts/lib/cluster-services.sh; cluster_services_up $PWD` and export what it sets."
            );
            None
        }
    }
}

fn nodes_of(list: &str) -> Vec<String> {
    list.split(',').map(str::to_owned).collect()
}

async fn keyslot(conn: &mut RedisConn, key: &str) -> i64 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

/// `(first slot, last slot, master port)` of each range (`CLUSTER SLOTS`).
async fn slot_ranges(conn: &mut RedisConn) -> Vec<(i64, i64, i64)> {
    let reply: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(conn)
        .await
        .unwrap();
    reply
        .into_iter()
        .map(|r| {
            let int = |v: &redis::Value| redis::from_redis_value_ref::<i64>(v).unwrap();
            let master: Vec<redis::Value> = redis::from_redis_value_ref(&r[2]).unwrap();
            (int(&r[0]), int(&r[1]), int(&master[1]))
        })
        .collect()
}

fn master_of(ranges: &[(i64, i64, i64)], slot: i64) -> i64 {
    ranges
        .iter()
        .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
        .map(|r| r.2)
        .unwrap_or_else(|| panic!("slot {slot} is not served: {ranges:?}"))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Private pushes until `done` says every wanted one arrived (bounded).
async fn pushes_until(
    ws: &mut Ws,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while !done(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => got.push(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(_))) => {}
            other => panic!("private pushes ended or timed out ({other:?}); got so far: {got:#?}"),
        }
    }
    got
}

fn has(pushes: &[Value], kind: &str, pred: impl Fn(&Value) -> bool) -> bool {
    pushes.iter().any(|p| p["type"] == kind && pred(&p["data"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trading_private_push_and_dlq_tools_on_a_redis_cluster() {
    let Some((url, nodes)) = cluster_env() else {
        return;
    };
    let c = Cluster::start_with(Options {
        env: vec![
            ("REDIS_URL".into(), url.clone()),
            ("REDIS_CLUSTER_NODES".into(), nodes.clone()),
        ],
        ..Options::default()
    })
    .await;
    let redis = Redis::cluster_with_prefix(&url, &nodes_of(&nodes), &c.redis_prefix).unwrap();
    let mut conn = redis.conn();
    let ranges = slot_ranges(&mut conn).await;
    let masters: BTreeSet<i64> = ranges.iter().map(|r| r.2).collect();
    assert!(masters.len() >= 3, "a 3-master cluster: {ranges:?}");

    // Classic Pub/Sub crosses the cluster bus: a pattern subscription on
    // the first seed (where the gateway's sits) hears a PUBLISH sent to
    // another master.
    let mut ps = redis.pubsub().await.unwrap();
    ps.psubscribe(redis.key("probe:*")).await.unwrap();
    let other = nodes_of(&nodes)[0].clone();
    let direct = redis::Client::open(format!("redis://{other}")).unwrap();
    let mut direct = direct.get_multiplexed_async_connection().await.unwrap();
    // (Its answer counts the subscribers of that node only.)
    let _: i64 = redis::cmd("PUBLISH")
        .arg(redis.key("probe:1"))
        .arg("hello")
        .query_async(&mut direct)
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), ps.on_message().next())
        .await
        .expect("a message published on another master arrives")
        .unwrap();
    assert_eq!(msg.get_payload::<String>().unwrap(), "hello");
    drop(ps);

    let (maker_fee, taker_fee) = ("0.001", "0.002");
    c.setup_btc_usdt(maker_fee, taker_fee).await;
    let a = c.user("alice@example.com").await;
    let b = c.user("bob@example.com").await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/ws/private?token={}", c.ws_url, b.token))
            .await
            .unwrap();
    c.deposit(&a, "BTC", "1").await;
    c.deposit(&b, "USDT", "10000").await;
    c.wait_balances(&a, &[("BTC", UNIT, 0)], SETTLE).await;
    c.wait_balances(&b, &[("USDT", 10_000 * UNIT, 0)], SETTLE)
        .await;

    // A rests 0.5 @ 20000; B's buy 0.3 @ 20100 crosses at the maker's price.
    let (status, sell) = c
        .place(
            &a,
            &json!({"market":"BTC-USDT","side":"sell","type":"limit","price":"20000","quantity":"0.5"}),
        )
        .await;
    assert_eq!(status, 201, "A's sell: {sell}");
    let a_id = sell["id"].as_i64().unwrap();
    c.wait_order(&a, a_id, &["new"], SETTLE).await;
    let (status, buy) = c
        .place(
            &b,
            &json!({"market":"BTC-USDT","side":"buy","type":"limit","price":"20100","quantity":"0.3"}),
        )
        .await;
    assert_eq!(status, 201, "B's buy: {buy}");
    let b_id = buy["id"].as_i64().unwrap();
    c.wait_order(&b, b_id, &["filled"], SETTLE).await;
    c.wait_order(&a, a_id, &["partially_filled"], SETTLE).await;

    let qty = 3 * UNIT / 10;
    let notional = mul(qty, 20_000 * UNIT);
    let a_fee = mul(notional, units(maker_fee));
    let b_fee = mul(qty, units(taker_fee));
    c.wait_balances(
        &a,
        &[
            ("BTC", UNIT / 2, UNIT / 2 - qty),
            ("USDT", notional - a_fee, 0),
        ],
        SETTLE,
    )
    .await;
    c.wait_balances(
        &b,
        &[
            ("BTC", qty - b_fee, 0),
            ("USDT", 10_000 * UNIT - notional, 0),
        ],
        SETTLE,
    )
    .await;

    // Depth (marketdata, fed from the event stream) shows A's rest.
    let deadline = Instant::now() + SETTLE;
    loop {
        let (status, depth) = c
            .call(Method::GET, "/api/v1/markets/BTC-USDT/depth", None, None)
            .await;
        let asks: Vec<(i128, i128)> = depth["asks"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|lv| {
                        (
                            units(lv[0].as_str().unwrap()),
                            units(lv[1].as_str().unwrap()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if status == 200 && asks == [(20_000 * UNIT, UNIT / 2 - qty)] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "depth never showed the rest: {status} {depth}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // B's private WebSocket: its order filled, its fill, its balances.
    let pushes = pushes_until(&mut ws, SETTLE, |p| {
        has(p, "order", |d| {
            d["id"].as_i64() == Some(b_id) && d["status"] == "filled"
        }) && has(p, "trade", |d| d["order_id"].as_i64() == Some(b_id))
            && has(p, "balance", |d| {
                d["asset"] == "BTC" && units(d["available"].as_str().unwrap_or("0")) == qty - b_fee
            })
    })
    .await;
    let fill = pushes
        .iter()
        .find(|p| p["type"] == "trade")
        .map(|p| &p["data"])
        .unwrap();
    assert_eq!(units(fill["quantity"].as_str().unwrap()), qty, "{fill}");
    assert_eq!(units(fill["fee"].as_str().unwrap()), b_fee, "{fill}");

    // One market's keys on one slot; the streams are where the services
    // put them.
    let orders = redis.orders_stream("BTC-USDT");
    let orders_slot = keyslot(&mut conn, &orders).await;
    assert_eq!(
        keyslot(&mut conn, &Redis::dlq_stream(&orders)).await,
        orders_slot,
        "a market's stream and its dead letters share a slot"
    );
    assert_eq!(
        keyslot(&mut conn, "x:{BTC-USDT}").await,
        orders_slot,
        "the slot is the tag's"
    );
    for stream in [orders.clone(), redis.events_stream()] {
        let len: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(len > 0, "{stream} holds the trading's entries");
        let groups: Vec<BTreeMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!groups.is_empty(), "{stream} has its consumer groups");
    }

    // Dead letters on every master: `exchange admin dlq list` finds them all.
    let mut dlqs: BTreeMap<i64, String> = BTreeMap::new();
    for i in 0..1000 {
        let key = Redis::dlq_stream(&redis.orders_stream(&format!("M{i}-USDT")));
        let master = master_of(&ranges, keyslot(&mut conn, &key).await);
        dlqs.entry(master).or_insert(key);
        if dlqs.len() == masters.len() {
            break;
        }
    }
    assert_eq!(dlqs.len(), masters.len(), "a key on each master: {dlqs:?}");
    for key in dlqs.values() {
        let _: String = redis::cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("command")
            .arg("{}")
            .arg("dlq.error")
            .arg("boom")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let admin = |args: &[&str]| {
        let out = Command::new(&*BIN)
            .arg("admin")
            .arg("dlq")
            .args(args)
            .env_remove("ENV_FILE")
            .env("REDIS_URL", &url)
            .env("REDIS_CLUSTER_NODES", &nodes)
            .env("REDIS_KEY_PREFIX", &c.redis_prefix)
            .env("LOG_LEVEL", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "exchange admin dlq {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = admin(&["list"]);
    for key in dlqs.values() {
        assert!(
            listed.contains(&format!("{key}\t1")),
            "{key} listed: {listed}"
        );
    }
    let stream = dlqs
        .values()
        .next()
        .unwrap()
        .trim_end_matches(":dlq")
        .to_owned();
    assert!(admin(&["show", &stream]).contains("dlq.error: boom"));

    let out = c.reconcile();
    assert!(
        out.status.success(),
        "reconcile failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
