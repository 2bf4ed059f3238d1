//! Cancels take from the order budget as placements do (native and
//! `/api/v3`), and a cancel-all with no open order in the market answers
//! the same success without journaling a command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{Value, json};
use support::{App, Key, error_code, read, user_with_key};

async fn journal_len(app: &App) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM order_commands")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

async fn bn_cancel_open_orders(app: &App, key: &Key) -> (u16, Value) {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let payload = format!("symbol=BTCUSDT&timestamp={ts}");
    let sig = exchange_gateway::auth::keys::sign(&key.secret, payload.as_bytes());
    let r = app
        .client
        .delete(format!(
            "{}/api/v3/openOrders?{payload}&signature={sig}",
            app.url
        ))
        .header("X-MBX-APIKEY", &key.api_key)
        .send()
        .await
        .unwrap();
    read(r).await
}

#[tokio::test]
async fn cancels_and_cancel_alls_spend_the_order_budget_and_empty_ones_journal_nothing() {
    // Two orders' worth at once, one more every half second.
    let app = support::spawn_with(|c| c.gateway.rate_limit_orders_per_second = 2).await;
    app.seed_market().await;
    let (alice, key) = user_with_key(&app, "alice@example.com", &["read", "trade"]).await;
    let token = app.login("alice@example.com").await;
    let cancel_all = || {
        app.send(
            Method::DELETE,
            "/api/v1/orders?market=BTC-USDT",
            &token,
            None,
        )
    };

    // Empty cancel-alls: the same success, nothing journaled; the third at
    // once is over the budget.
    for _ in 0..2 {
        let (s, v) = cancel_all().await;
        assert_eq!((s, &v["accepted"]), (200, &json!(true)), "{v}");
        assert_eq!(v["market"], "BTC-USDT");
    }
    assert_eq!(
        journal_len(&app).await,
        0,
        "no command for an empty cancel-all"
    );
    let (s, v) = cancel_all().await;
    assert_eq!((s, error_code(&v)), (429, "RATE_LIMITED"), "{v}");

    // Single cancels too (even of an order that does not exist).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for _ in 0..2 {
        let (s, v) = app
            .send(Method::DELETE, "/api/v1/orders/424242", &token, None)
            .await;
        assert_eq!((s, error_code(&v)), (404, "ORDER_NOT_FOUND"), "{v}");
    }
    let (s, v) = app
        .send(Method::DELETE, "/api/v1/orders/424242", &token, None)
        .await;
    assert_eq!((s, error_code(&v)), (429, "RATE_LIMITED"), "{v}");

    // And /api/v3's cancels, from the same per-user budget.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for _ in 0..2 {
        let (s, v) = bn_cancel_open_orders(&app, &key).await;
        assert_eq!((s, v["code"].as_i64()), (400, Some(-2011)), "{v}");
    }
    let (s, v) = bn_cancel_open_orders(&app, &key).await;
    assert_eq!((s, v["code"].as_i64()), (429, Some(-1015)), "{v}");
    assert_eq!(journal_len(&app).await, 0);

    // With an open order, cancel-all is journaled as before.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    app.deposit(alice, "USDT", "1000").await;
    let (s, v) = app
        .place(
            &token,
            &json!({"market": "BTC-USDT", "side": "buy", "type": "limit", "price": "100", "quantity": "1"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = cancel_all().await;
    assert_eq!((s, &v["accepted"]), (200, &json!(true)), "{v}");
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT command->>'type' FROM order_commands ORDER BY seq")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(kinds, ["place", "cancel_all"]);
    assert_eq!(v["seq"], 2);
}
