//! Processes killed with `kill -9` and restarted (the harness side of issue
//! 7): matching recovers its book from the journal, clearing settles what
//! was matched while it was down, the order service comes back, and the
//! balances end exact with reconcile passing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Cluster, UNIT, User, mul, units};

const SETTLE: Duration = Duration::from_secs(30);

fn limit(side: &str, price: &str, qty: &str) -> Value {
    json!({"market":"BTC-USDT","side":side,"type":"limit","price":price,"quantity":qty})
}

async fn place_ok(c: &Cluster, u: &User, order: &Value) -> i64 {
    let (status, v) = c.place(u, order).await;
    assert_eq!(status, 201, "{order}: {v}");
    v["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_services_come_back_and_nothing_is_lost_or_doubled() {
    let mut c = Cluster::start().await;
    c.setup_btc_usdt("0.001", "0.002").await;
    let a = c.user("seller@example.com").await;
    let b = c.user("buyer@example.com").await;
    c.deposit(&a, "BTC", "1").await;
    c.deposit(&b, "USDT", "10000").await;

    // A resting ask survives a matching crash: the restarted engine rebuilds
    // the book from the journal and the next bid trades against it.
    let ask = place_ok(&c, &a, &limit("sell", "20000", "0.1")).await;
    c.wait_order(&a, ask, &["new"], SETTLE).await;
    c.kill("matching");
    c.restart("matching").await;
    println!("matching killed and restarted");
    let bid = place_ok(&c, &b, &limit("buy", "20000", "0.1")).await;
    c.wait_order(&b, bid, &["filled"], SETTLE).await;
    c.wait_order(&a, ask, &["filled"], SETTLE).await;

    // Trades matched while clearing is down settle once it is back.
    c.kill("clearing");
    println!("clearing killed");
    let ask2 = place_ok(&c, &a, &limit("sell", "20000", "0.1")).await;
    let bid2 = place_ok(&c, &b, &limit("buy", "20000", "0.1")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.restart("clearing").await;
    println!("clearing restarted");
    c.wait_order(&a, ask2, &["filled"], SETTLE).await;
    c.wait_order(&b, bid2, &["filled"], SETTLE).await;

    // The order service restarts; placing works again and nothing repeats.
    c.kill("order");
    c.restart("order").await;
    println!("order service killed and restarted");
    let ask3 = place_ok(&c, &a, &limit("sell", "20000", "0.1")).await;
    let bid3 = place_ok(&c, &b, &limit("buy", "20000", "0.1")).await;
    c.wait_order(&a, ask3, &["filled"], SETTLE).await;
    c.wait_order(&b, bid3, &["filled"], SETTLE).await;

    // Three trades of 0.1 BTC at 20000, each settled exactly once.
    let qty = 3 * UNIT / 10;
    let notional = mul(qty, 20_000 * UNIT);
    let a_fee = mul(notional, units("0.001"));
    let b_fee = mul(qty, units("0.002"));
    c.wait_balances(
        &a,
        &[("BTC", UNIT - qty, 0), ("USDT", notional - a_fee, 0)],
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
    for u in [&a, &b] {
        let (status, fills) = c
            .call(
                reqwest::Method::GET,
                "/api/v1/account/trades?market=BTC-USDT",
                Some(&u.token),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            fills.as_array().unwrap().len(),
            3,
            "three fills each: {fills}"
        );
    }
    let out = c.reconcile();
    assert!(
        out.status.success(),
        "reconcile failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
