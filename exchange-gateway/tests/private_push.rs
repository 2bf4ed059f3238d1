//! Private push for orders that never trade, through the gateway with the
//! real pipeline in-process (order service, matching, clearing): a resting
//! limit order reaches its owner's `/ws/private` as `new`, its cancel as
//! `canceled` with the released balance, each with the next per-user `seq`;
//! another user's connection receives nothing of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{App, spawn};
use exchange_common::Shutdown;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn start_pipeline(app: &App) -> Shutdown {
    let shutdown = Shutdown::new();
    let config = Arc::new(app.env.config.clone());
    let m = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(exchange_matching::run(
        config.clone(),
        exchange_matching::Listeners { http: m },
        shutdown.clone(),
    ));
    let c = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(exchange_clearing::run(
        config,
        exchange_clearing::Listeners { http: c },
        shutdown.clone(),
    ));
    shutdown
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
