//! A new market trades at once (issue 19): the `exchange_markets`
//! notification (migration 0018) reaches matching and the order service
//! at the commit that creates the market, instead of their periodic
//! reloads. Real processes, public API only, as a new operator and their
//! first traders would: create the market, place a resting sell and a
//! crossing buy at once, and both settle and depth shows the rest within
//! a second of the creation's 201.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::{ADMIN_TOKEN, Cluster, units};

/// The bound, from the 201 of the creation.
const LIVE_WITHIN: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread")]
async fn a_market_trades_and_shows_depth_within_a_second_of_its_creation() {
    let c = Cluster::start().await;
    for asset in ["SOL", "USDT"] {
        c.admin(
            Method::POST,
            "/admin/v1/assets",
            &json!({"symbol": asset, "scale": 8}),
        )
        .await;
    }
    let (seller, buyer) = (
        c.user("seller@example.com").await,
        c.user("buyer@example.com").await,
    );
    c.deposit(&seller, "SOL", "10").await;
    c.deposit(&buyer, "USDT", "10000").await;
    // Matching's periodic reload is 5 s: wait past one so that the
    // creation below does not happen to fall just before it.
    tokio::time::sleep(Duration::from_millis(5_200)).await;

    let (status, body) = c
        .call(
            Method::POST,
            "/admin/v1/markets",
            Some(ADMIN_TOKEN),
            Some(&json!({"symbol":"SOL-USDT","base":"SOL","quote":"USDT","price_tick":"0.01",
                          "qty_step":"0.001","min_notional":"1","maker_fee":"0.001","taker_fee":"0.002"})),
        )
        .await;
    let created = Instant::now();
    assert_eq!(status, 201, "{body}");

    let sell =
        json!({"market":"SOL-USDT","side":"sell","type":"limit","price":"150.00","quantity":"3"});
    let buy =
        json!({"market":"SOL-USDT","side":"buy","type":"limit","price":"150.00","quantity":"1"});
    let ((s_status, s), (b_status, b)) = tokio::join!(c.place(&seller, &sell), async {
        // The buy right behind the sell, so that it crosses it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.place(&buyer, &buy).await
    });
    assert!((200..300).contains(&s_status), "sell: {s_status} {s}");
    assert!((200..300).contains(&b_status), "buy: {b_status} {b}");
    let id = |v: &Value| v["id"].as_i64().unwrap();

    // Settled, not only matched: 1 SOL less the 0.2 % taker fee reached
    // the buyer; the rest of the sell shows in depth.
    loop {
        let elapsed = created.elapsed();
        let bought = c.order(&buyer, id(&b)).await;
        let sold = c.order(&seller, id(&s)).await;
        let sol = c.balances(&buyer).await.get("SOL").map_or(0, |b| b.0);
        let (_, depth) = c
            .call(
                Method::GET,
                "/api/v1/markets/SOL-USDT/depth?limit=5",
                None,
                None,
            )
            .await;
        let asks: Vec<(i128, i128)> = depth["asks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| (units(l[0].as_str().unwrap()), units(l[1].as_str().unwrap())))
                    .collect()
            })
            .unwrap_or_default();
        let settled = bought["status"] == "filled"
            && sold["status"] == "partially_filled"
            && sol == units("0.998");
        if settled && asks == [(units("150"), units("2"))] {
            println!(
                "SOL-USDT traded, settled and showed depth {elapsed:.0?} after its creation's 201"
            );
            return;
        }
        assert!(
            elapsed < LIVE_WITHIN,
            "not live within {LIVE_WITHIN:?} of the creation: buy {bought}, sell {sold}, buyer's SOL {sol}, depth {depth}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
