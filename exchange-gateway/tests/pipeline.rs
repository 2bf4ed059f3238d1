//! Through the gateway with the real pipeline in-process (order service,
//! matching, clearing): a crossing pair of orders fills, each user's private
//! WebSocket receives their own order, trade and balance events with
//! consecutive `seq` and nothing of the other's, and the fills and
//! balances read back over REST are exact. Orders that never trade are
//! pushed too: a resting limit order reaches its owner as `new`, its cancel
//! as `canceled` with the released balance, each with the next per-user
//! `seq`; another user's connection receives nothing of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use support::{App, spawn, start_pipeline};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A seller holding 1 BTC and a buyer holding 100,000 USDT, logged in:
/// their tokens.
async fn seller_and_buyer(app: &App) -> (String, String) {
    let seller = app.register("seller@example.com").await;
    let buyer = app.register("buyer@example.com").await;
    app.deposit(seller, "BTC", "1").await;
    app.deposit(buyer, "USDT", "100000").await;
    (
        app.login("seller@example.com").await,
        app.login("buyer@example.com").await,
    )
}

async fn connect(app: &App, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/ws/private", app.ws_url))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"op":"auth","token":token}).to_string(),
    ))
    .await
    .unwrap();
    let hello = next_text(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(hello["type"], "authenticated");
    ws
}

async fn next_text(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                return Some(serde_json::from_str(t.as_str()).unwrap());
            }
            Ok(Some(Ok(_))) => {}
            _ => return None,
        }
    }
}

/// Everything pushed to `ws` until `wait` passes with nothing new.
async fn drain(ws: &mut Ws, wait: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(m) = next_text(ws, wait).await {
        out.push(m);
    }
    out
}

async fn wait_status(app: &App, token: &str, id: i64, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = app.get_auth(&format!("/api/v1/orders/{id}"), token).await;
        assert_eq!(code, 200, "{body}");
        if body["status"] == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "order {id} never reached {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_trade_reaches_each_user_privately_and_over_rest() {
    let app = spawn().await;
    let _pipeline = start_pipeline(&app).await;
    app.seed_market().await;
    let (s, b) = seller_and_buyer(&app).await;
    app.wait_subscriber_up().await;
    let mut ws_s = connect(&app, &s).await;
    let mut ws_b = connect(&app, &b).await;

    let (status, sell) = app
        .place(
            &s,
            &json!({"market":"BTC-USDT","side":"sell","type":"limit","price":"50000","quantity":"0.1"}),
        )
        .await;
    assert_eq!(status, 201, "{sell}");
    let sell_id = sell["id"].as_i64().unwrap();
    // Let the sell rest first, so the seller is the maker.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM event_batches")
        .fetch_one(&app.db)
        .await
        .map_or(true, |n| n == 0)
    {
        assert!(
            Instant::now() < deadline,
            "the sell order was never matched"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, buy) = app
        .place(
            &b,
            &json!({"market":"BTC-USDT","side":"buy","type":"limit","price":"50000","quantity":"0.1"}),
        )
        .await;
    assert_eq!(status, 201, "{buy}");
    let buy_id = buy["id"].as_i64().unwrap();
    wait_status(&app, &s, sell_id, "filled").await;
    wait_status(&app, &b, buy_id, "filled").await;

    // Fees in what each receives: the maker seller pays 0.1% of 5000 USDT,
    // the taker buyer 0.2% of 0.1 BTC.
    let (_, bal) = app.get_auth("/api/v1/account/balances", &s).await;
    assert_eq!(
        bal,
        json!([{"asset":"BTC","available":"0.9","locked":"0"},{"asset":"USDT","available":"4995","locked":"0"}])
    );
    let (_, bal) = app.get_auth("/api/v1/account/balances", &b).await;
    assert_eq!(
        bal,
        json!([{"asset":"BTC","available":"0.0998","locked":"0"},{"asset":"USDT","available":"95000","locked":"0"}])
    );
    let (_, fills) = app
        .get_auth("/api/v1/account/trades?market=BTC-USDT", &s)
        .await;
    assert_eq!(fills.as_array().unwrap().len(), 1, "{fills}");
    assert_eq!(fills[0]["order_id"].as_i64(), Some(sell_id));
    assert_eq!(fills[0]["liquidity"], "maker");
    assert_eq!(fills[0]["fee"], "5");
    assert_eq!(fills[0]["fee_asset"], "USDT");
    let (_, fills) = app.get_auth("/api/v1/account/trades", &b).await;
    assert_eq!(fills[0]["order_id"].as_i64(), Some(buy_id));
    assert_eq!(fills[0]["liquidity"], "taker");

    for (ws, mine, theirs) in [(&mut ws_s, sell_id, buy_id), (&mut ws_b, buy_id, sell_id)] {
        let msgs = drain(ws, Duration::from_secs(2)).await;
        let kinds: Vec<&str> = msgs.iter().map(|m| m["type"].as_str().unwrap()).collect();
        for kind in ["order", "trade", "balance"] {
            assert!(kinds.contains(&kind), "no {kind} event in {msgs:?}");
        }
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(m["seq"], json!(i + 1), "consecutive seq: {msgs:?}");
            match m["type"].as_str().unwrap() {
                "order" => {
                    assert_eq!(m["data"]["id"].as_i64(), Some(mine), "{m}");
                    assert_ne!(m["data"]["id"].as_i64(), Some(theirs));
                }
                "trade" => assert_eq!(m["data"]["order_id"].as_i64(), Some(mine), "{m}"),
                _ => {}
            }
        }
        let last_order = msgs.iter().rev().find(|m| m["type"] == "order").unwrap();
        assert_eq!(last_order["data"]["status"], "filled", "{msgs:?}");
    }
}

/// Messages until one of type `kind` arrives (within 30 s), that one included.
async fn until(ws: &mut Ws, kind: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = next_text(ws, left)
            .await
            .unwrap_or_else(|| panic!("no {kind} message; got {out:?}"));
        let done = m["type"] == kind;
        out.push(m);
        if done {
            return out;
        }
    }
}

#[tokio::test]
async fn a_resting_order_and_its_cancel_are_pushed_to_their_owner_only() {
    let app = spawn().await;
    let _pipeline = start_pipeline(&app).await;
    app.seed_market().await;
    let alice = app.register("alice@example.com").await;
    let a = app.login("alice@example.com").await;
    app.register("bob@example.com").await;
    let b = app.login("bob@example.com").await;
    app.deposit(alice, "USDT", "1000").await;
    app.wait_subscriber_up().await;
    let mut ws_a = connect(&app, &a).await;
    let mut ws_b = connect(&app, &b).await;

    // Far below any seller: it rests, nothing trades.
    let (status, placed) = app
        .place(
            &a,
            &json!({"market":"BTC-USDT","side":"buy","type":"limit","price":"10000",
                    "quantity":"0.01","client_order_id":"rest-1"}),
        )
        .await;
    assert_eq!(status, 201, "{placed}");
    let id = placed["id"].as_i64().unwrap();

    let msgs = until(&mut ws_a, "order").await;
    assert_eq!(msgs.len(), 1, "only the order update: {msgs:?}");
    let m = &msgs[0];
    assert_eq!(m["seq"], 1, "{m}");
    assert_eq!(m["data"]["id"].as_i64(), Some(id), "{m}");
    assert_eq!(m["data"]["status"], "new", "{m}");
    assert_eq!(m["data"]["client_order_id"], "rest-1", "{m}");
    assert_eq!(m["data"]["filled_quantity"], "0", "{m}");
    // The pushed order is the REST view of it.
    let (_, rest) = app.get_auth(&format!("/api/v1/orders/{id}"), &a).await;
    assert_eq!(m["data"], rest, "push equals GET /orders/{{id}}");

    // The cancel: the order ends as canceled and its 100 USDT reserve is
    // back in Alice's available balance, next in her sequence.
    let (status, body) = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/orders/{id}"),
            &a,
            None,
        )
        .await;
    assert!(status == 200 || status == 202, "{status} {body}");
    let mut msgs = until(&mut ws_a, "order").await;
    if !msgs.iter().any(|m| m["type"] == "balance") {
        msgs.extend(until(&mut ws_a, "balance").await);
    }
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m["seq"], json!(i + 2), "consecutive seq: {msgs:?}");
    }
    let order = msgs.iter().find(|m| m["type"] == "order").unwrap();
    assert_eq!(order["data"]["id"].as_i64(), Some(id));
    assert_eq!(order["data"]["status"], "canceled", "{order}");
    let balance = msgs.iter().find(|m| m["type"] == "balance").unwrap();
    assert_eq!(
        balance["data"],
        json!({"asset":"USDT","available":"1000","locked":"0"})
    );

    // Bob saw none of it.
    assert_eq!(
        next_text(&mut ws_b, Duration::from_secs(2)).await,
        None,
        "bob receives nothing of alice's"
    );
}

/// A stop order that triggers and rests unfilled is seen as triggered:
/// before, its row could not tell it from one still waiting for its stop
/// price (both `new`, nothing filled), so the Binance API called it not
/// working. The push and `GET /orders/{id}` carry `triggered_at` once it
/// triggered, and nothing while it waits.
#[tokio::test]
async fn a_triggered_stop_that_rests_unfilled_is_reported_triggered() {
    let app = spawn().await;
    let _pipeline = start_pipeline(&app).await;
    app.seed_market().await;
    let (s, b) = seller_and_buyer(&app).await;
    let stopper = app.register("stopper@example.com").await;
    let t = app.login("stopper@example.com").await;
    app.deposit(stopper, "USDT", "1000").await;
    app.wait_subscriber_up().await;
    let trade_at = |price: &'static str| {
        let (s, b) = (s.clone(), b.clone());
        let app = &app;
        async move {
            let (status, sell) = app
                .place(
                    &s,
                    &json!({"market":"BTC-USDT","side":"sell","type":"limit",
                                    "price":price,"quantity":"0.01"}),
                )
                .await;
            assert_eq!(status, 201, "{sell}");
            let (status, buy) = app
                .place(
                    &b,
                    &json!({"market":"BTC-USDT","side":"buy","type":"limit",
                                    "price":price,"quantity":"0.01"}),
                )
                .await;
            assert_eq!(status, 201, "{buy}");
            wait_status(app, &s, sell["id"].as_i64().unwrap(), "filled").await;
            wait_status(app, &b, buy["id"].as_i64().unwrap(), "filled").await;
        }
    };
    // The last price: 50000.
    trade_at("50000").await;

    // A stop buy: works once the price rises to 51000, then bids 40000.
    let mut ws_t = connect(&app, &t).await;
    let (status, placed) = app
        .place(
            &t,
            &json!({"market":"BTC-USDT","side":"buy","type":"stop_limit","price":"40000",
                    "stop_price":"51000","quantity":"0.01"}),
        )
        .await;
    assert_eq!(status, 201, "{placed}");
    let id = placed["id"].as_i64().unwrap();
    let waiting = until(&mut ws_t, "order").await;
    let waiting = waiting.last().unwrap();
    assert_eq!(waiting["data"]["status"], "new", "{waiting}");
    assert!(waiting["data"].get("triggered_at").is_none(), "{waiting}");
    let (_, rest) = app.get_auth(&format!("/api/v1/orders/{id}"), &t).await;
    assert!(rest.get("triggered_at").is_none(), "{rest}");

    // A trade at 51000 triggers it; its bid at 40000 finds no seller.
    let before_ms = now_ms();
    trade_at("51000").await;
    let pushed = until(&mut ws_t, "order").await;
    let pushed = &pushed.last().unwrap()["data"];
    assert_eq!(pushed["id"].as_i64(), Some(id), "{pushed}");
    assert_eq!(pushed["status"], "new", "{pushed}");
    assert_eq!(pushed["filled_quantity"], "0", "{pushed}");
    let triggered_at = pushed["triggered_at"]
        .as_i64()
        .expect("triggered_at pushed");
    let after_ms = now_ms();
    assert!(
        (before_ms..=after_ms).contains(&triggered_at),
        "triggered at {triggered_at}, not between {before_ms} and {after_ms}"
    );
    let (_, rest) = app.get_auth(&format!("/api/v1/orders/{id}"), &t).await;
    assert_eq!(&rest, pushed, "push equals GET /orders/{{id}}");
    let (_, bal) = app.get_auth("/api/v1/account/balances", &t).await;
    assert_eq!(
        bal,
        json!([{"asset":"USDT","available":"600","locked":"400"}]),
        "the resting bid holds its reserve"
    );
}

fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since_epoch.as_millis()).unwrap()
}
