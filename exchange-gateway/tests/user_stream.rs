//! Binance's user data stream against a real gateway (real Postgres and
//! Redis): a listenKey from `POST /api/v3/userDataStream`, the WebSocket
//! `/ws/<listenKey>`, and a burst of private events published at once
//! arriving translated, complete and in order (the session writes what its
//! queue holds in bursts).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{next_json, read, spawn, user_with_key};

#[tokio::test]
async fn a_burst_of_events_arrives_translated_complete_and_in_order() {
    let app = spawn().await;
    let (alice, key) = user_with_key(&app, "alice@example.com", &["read"]).await;
    app.wait_subscriber_up().await;
    let (status, body) = read(
        app.client
            .post(format!("{}/api/v3/userDataStream", app.url))
            .header("X-MBX-APIKEY", &key.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let listen_key = body["listenKey"].as_str().unwrap().to_owned();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/ws/{listen_key}", app.ws_url))
        .await
        .unwrap();
    // The stream sends nothing on open: wait until the session is
    // registered with the hub before publishing.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = app.metrics().await;
        if metrics.contains(r#"exchange_ws_connections{service="gateway",kind="private"} 1"#) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // More than one burst's worth, published back to back on one
    // connection so that most are queued before the session writes.
    let total: u64 = 150;
    let client = redis::Client::open(app.env.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("{}:private:{alice}", app.env.redis_prefix);
    let mut pipe = redis::pipe();
    for id in 1..=total {
        let order = json!({"id": id, "client_order_id": format!("c{id}"), "market": "BTC-USDT",
                           "side": "buy", "type": "limit", "price": "100", "quantity": "1",
                           "filled_quantity": "0", "status": "new", "created_at": 1, "updated_at": 1});
        pipe.cmd("PUBLISH")
            .arg(&channel)
            .arg(json!({"type": "order", "data": order}).to_string())
            .ignore();
        if id % 3 == 0 {
            // A balance between the orders: its own event, in its place.
            pipe.cmd("PUBLISH")
                .arg(&channel)
                .arg(json!({"type": "balance", "data": {"asset": "USDT", "available": format!("{id}"), "locked": "0"}}).to_string())
                .ignore();
        }
    }
    let () = pipe.query_async(&mut conn).await.unwrap();
    for id in 1..=total {
        let m = next_json(&mut ws).await;
        assert_eq!(
            (
                m["e"].as_str(),
                m["i"].as_u64(),
                m["c"].as_str(),
                m["x"].as_str()
            ),
            (
                Some("executionReport"),
                Some(id),
                Some(format!("c{id}").as_str()),
                Some("NEW")
            ),
            "{m}"
        );
        if id % 3 == 0 {
            let b = next_json(&mut ws).await;
            assert_eq!(b["e"], "outboundAccountPosition", "{b}");
            assert_eq!(b["B"][0]["f"], format!("{id}.00000000"), "{b}");
        }
    }
}
