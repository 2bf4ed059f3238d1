//! Issue 4 end to end, over HTTP only, against the real services running as
//! separate processes: two users trade BTC-USDT; both orders reach their
//! final state, balances move by the trade minus maker and taker fees to
//! the last unit, both users see their fill, and `exchange admin reconcile`
//! passes. Also: cancel (locked back to available), an IOC that expires,
//! a post-only that would cross, insufficient balance (400, nothing
//! locked) and a repeated `client_order_id` (one order).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Cluster, UNIT, User, fmt_units, mul, units};

/// How long the pipeline may take to settle one step (generous for debug builds on 2 busy cores).
const SETTLE: Duration = Duration::from_secs(20);

async fn open_orders(c: &Cluster, u: &User) -> Vec<Value> {
    let (status, v) = c
        .call(
            Method::GET,
            "/api/v1/orders?market=BTC-USDT&status=open",
            Some(&u.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "open orders: {v}");
    v.as_array().expect("a list").clone()
}

async fn my_trades(c: &Cluster, u: &User) -> Vec<Value> {
    let (status, v) = c
        .call(
            Method::GET,
            "/api/v1/account/trades?market=BTC-USDT",
            Some(&u.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "my trades: {v}");
    v.as_array().expect("a list").clone()
}

fn id(order: &Value) -> i64 {
    order["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("an order with an id: {order}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_trade_and_every_unit_is_accounted_for() {
    let c = Cluster::start().await;
    // Fees as fractions of what each side receives.
    let (maker_fee, taker_fee) = ("0.001", "0.002");
    c.setup_btc_usdt(maker_fee, taker_fee).await;
    let a = c.user("alice@example.com").await;
    let b = c.user("bob@example.com").await;
    c.deposit(&a, "BTC", "1").await;
    c.deposit(&b, "USDT", "10000").await;
    c.wait_balances(&a, &[("BTC", UNIT, 0)], SETTLE).await;
    c.wait_balances(&b, &[("USDT", 10_000 * UNIT, 0)], SETTLE)
        .await;

    // A: limit sell 0.5 @ 20000, resting (maker).
    let sell = json!({"market":"BTC-USDT","side":"sell","type":"limit","price":"20000",
                      "quantity":"0.5","time_in_force":"GTC","client_order_id":"a-sell-1"});
    let (status, a_order) = c.place(&a, &sell).await;
    assert_eq!(status, 201, "A's sell: {a_order}");
    assert_eq!(a_order["client_order_id"], "a-sell-1");
    assert_eq!(a_order["market"], "BTC-USDT");
    assert_eq!(a_order["side"], "sell");
    assert_eq!(units(a_order["quantity"].as_str().unwrap()), UNIT / 2);
    let a_id = id(&a_order);

    // The same client_order_id again: the same order, not a second one.
    let (status, again) = c.place(&a, &sell).await;
    assert!(status == 200 || status == 201, "repeat: {status} {again}");
    assert_eq!(
        id(&again),
        a_id,
        "a repeated client_order_id must answer the same order"
    );
    c.wait_order(&a, a_id, &["new"], SETTLE).await;
    let open = open_orders(&c, &a).await;
    assert_eq!(
        open.len(),
        1,
        "exactly one open order after placing twice: {open:?}"
    );
    // 0.5 BTC reserved once, not twice.
    c.wait_balances(&a, &[("BTC", UNIT / 2, UNIT / 2)], SETTLE)
        .await;

    // B: limit buy 0.3 @ 20100 crosses; trades 0.3 @ 20000 (the maker's price).
    let (status, b_order) = c
        .place(
            &b,
            &json!({"market":"BTC-USDT","side":"buy","type":"limit","price":"20100",
                    "quantity":"0.3","client_order_id":"b-buy-1"}),
        )
        .await;
    assert_eq!(status, 201, "B's buy: {b_order}");
    let b_id = id(&b_order);
    let b_done = c.wait_order(&b, b_id, &["filled"], SETTLE).await;
    let a_part = c.wait_order(&a, a_id, &["partially_filled"], SETTLE).await;
    assert_eq!(
        units(b_done["filled_quantity"].as_str().unwrap()),
        3 * UNIT / 10
    );
    assert_eq!(
        units(a_part["filled_quantity"].as_str().unwrap()),
        3 * UNIT / 10
    );

    // Expected balances, computed here from the trade and the fee rates.
    let qty = 3 * UNIT / 10;
    let price = 20_000 * UNIT;
    let notional = mul(qty, price); // 6000 USDT
    let a_fee = mul(notional, units(maker_fee)); // A is maker, receives USDT
    let b_fee = mul(qty, units(taker_fee)); // B is taker, receives BTC
    assert_eq!(fmt_units(a_fee), "6");
    assert_eq!(fmt_units(b_fee), "0.0006");
    c.wait_balances(
        &a,
        &[
            ("BTC", UNIT / 2, UNIT / 2 - qty),
            ("USDT", notional - a_fee, 0),
        ],
        SETTLE,
    )
    .await;
    // B reserved 0.3 * 20100 and paid 0.3 * 20000: the difference is released.
    c.wait_balances(
        &b,
        &[
            ("BTC", qty - b_fee, 0),
            ("USDT", 10_000 * UNIT - notional, 0),
        ],
        SETTLE,
    )
    .await;

    // Both see the fill, with its fee, fee asset and liquidity.
    let check_fill =
        |fills: &[Value], order: i64, side: &str, fee: i128, fee_asset: &str, liq: &str| {
            assert_eq!(fills.len(), 1, "one fill: {fills:?}");
            let f = &fills[0];
            assert_eq!(f["order_id"].as_i64(), Some(order), "{f}");
            assert_eq!(f["market"], "BTC-USDT", "{f}");
            assert_eq!(f["side"], side, "{f}");
            assert_eq!(units(f["price"].as_str().unwrap()), price, "{f}");
            assert_eq!(units(f["quantity"].as_str().unwrap()), qty, "{f}");
            assert_eq!(units(f["fee"].as_str().unwrap()), fee, "{f}");
            assert_eq!(f["fee_asset"], fee_asset, "{f}");
            assert_eq!(f["liquidity"], liq, "{f}");
            assert!(f["id"].is_i64() || f["id"].is_string(), "{f}");
            assert!(
                f["time"].as_i64().unwrap_or(0) > 1_600_000_000_000,
                "time in ms: {f}"
            );
        };
    check_fill(
        &my_trades(&c, &a).await,
        a_id,
        "sell",
        a_fee,
        "USDT",
        "maker",
    );
    check_fill(&my_trades(&c, &b).await, b_id, "buy", b_fee, "BTC", "taker");
    let out = c.reconcile();
    assert!(
        out.status.success(),
        "reconcile after the trade failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Cancel A's rest (0.2 BTC): canceled, the reservation back to available.
    let (status, v) = c
        .call(
            Method::DELETE,
            &format!("/api/v1/orders/{a_id}"),
            Some(&a.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "cancel: {v}");
    let canceled = c.wait_order(&a, a_id, &["canceled"], SETTLE).await;
    assert_eq!(units(canceled["filled_quantity"].as_str().unwrap()), qty);
    c.wait_balances(
        &a,
        &[("BTC", UNIT - qty, 0), ("USDT", notional - a_fee, 0)],
        SETTLE,
    )
    .await;
    assert!(open_orders(&c, &a).await.is_empty());
    // Another user's order is a 404 (IDOR).
    let (status, _) = c
        .call(
            Method::GET,
            &format!("/api/v1/orders/{a_id}"),
            Some(&b.token),
            None,
        )
        .await;
    assert_eq!(status, 404, "B must not see A's order");

    // An IOC with nothing to match expires: shown as canceled, funds released.
    let (status, ioc) = c
        .place(
            &b,
            &json!({"market":"BTC-USDT","side":"buy","type":"limit","price":"19000",
                    "quantity":"0.1","time_in_force":"IOC"}),
        )
        .await;
    assert_eq!(status, 201, "IOC: {ioc}");
    let ioc = c.wait_order(&b, id(&ioc), &["canceled"], SETTLE).await;
    assert_eq!(units(ioc["filled_quantity"].as_str().unwrap()), 0);
    c.wait_balances(&b, &[("USDT", 10_000 * UNIT - notional, 0)], SETTLE)
        .await;

    // Post-only that would cross a resting ask: rejected (at placement with
    // a 400, or by matching as `rejected`), nothing stays locked.
    let (status, ask) = c
        .place(
            &a,
            &json!({"market":"BTC-USDT","side":"sell","type":"limit","price":"25000","quantity":"0.1"}),
        )
        .await;
    assert_eq!(status, 201, "resting ask: {ask}");
    c.wait_order(&a, id(&ask), &["new"], SETTLE).await;
    let (status, po) = c
        .place(
            &b,
            &json!({"market":"BTC-USDT","side":"buy","type":"limit","price":"25000",
                    "quantity":"0.1","post_only":true}),
        )
        .await;
    match status {
        201 => {
            let po = c
                .wait_order(&b, id(&po), &["rejected", "canceled", "filled"], SETTLE)
                .await;
            assert_eq!(po["status"], "rejected", "a crossing post-only order: {po}");
        }
        400 => assert!(po["error"]["code"].is_string(), "{po}"),
        other => panic!("post-only: {other} {po}"),
    }
    c.wait_balances(
        &b,
        &[
            ("BTC", qty - b_fee, 0),
            ("USDT", 10_000 * UNIT - notional, 0),
        ],
        SETTLE,
    )
    .await;
    assert_eq!(
        c.order(&a, id(&ask)).await["status"],
        "new",
        "the resting ask is untouched by a rejected post-only"
    );

    // Insufficient balance: 400 with a code, nothing locked, no order.
    let before = open_orders(&c, &b).await.len();
    let (status, v) = c
        .place(
            &b,
            &json!({"market":"BTC-USDT","side":"buy","type":"limit","price":"20000","quantity":"1"}),
        )
        .await;
    assert_eq!(status, 400, "insufficient balance: {v}");
    assert_eq!(v["error"]["code"], "INSUFFICIENT_BALANCE", "{v}");
    assert_eq!(open_orders(&c, &b).await.len(), before);
    let bal = c.balances(&b).await;
    assert_eq!(bal["USDT"], (10_000 * UNIT - notional, 0), "nothing locked");

    let out = c.reconcile();
    assert!(
        out.status.success(),
        "reconcile at the end failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("reconcile:\n{}", String::from_utf8_lossy(&out.stdout));
}
