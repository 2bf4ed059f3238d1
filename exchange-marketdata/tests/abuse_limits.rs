//! marketdata's public port under abuse, on real sockets: WebSockets per
//! client IP, messages per second on a WebSocket, depth snapshots per
//! connection, REST requests per client IP (the gateway's internal token
//! exempt), and the connection-level limits of `exchange_common::listen`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::json;
use tokio::io::AsyncWriteExt as _;
use tokio_tungstenite::tungstenite::{self, Message};

mod support;
use support::*;

/// Another client host: Linux routes all of 127.0.0.0/8 to loopback.
const HOST_B: &str = "127.0.0.2";

async fn svc(tweak: impl FnOnce(&mut exchange_common::Config)) -> Svc {
    let (env, db, redis) = seeded().await;
    start_with(env, db, redis, &[], tweak).await
}

fn refused(e: &tungstenite::Error) -> (u16, String) {
    match e {
        tungstenite::Error::Http(resp) => (
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn websockets_per_client_ip_are_capped() {
    let s = svc(|c| c.marketdata.ws_connections_per_ip_max = 2).await;
    let first = s.ws("/ws", None).await.unwrap();
    let _second = s.ws("/stream?streams=btcusdt@trade", None).await.unwrap();
    let e = s.ws("/ws", None).await.unwrap_err();
    let (status, body) = refused(&e);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("TOO_MANY_CONNECTIONS"), "{body}");
    // One closes: its place is free again.
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(ws) = s.ws("/ws", None).await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a closed WebSocket still counted");
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("exchange_http_connections_refused_total")
                && l.contains("reason=\"ws_per_ip_cap\"")
                && l.contains("service=\"marketdata\"")),
        "{text}"
    );
}

#[tokio::test]
async fn a_client_over_its_message_rate_is_disconnected_with_1008() {
    let s = svc(|c| c.marketdata.ws_messages_per_second = 2).await;
    let mut ws = s.ws("/ws", None).await.unwrap();
    // Four times the rate at once is allowed.
    for _ in 0..8 {
        send(&mut ws, json!({"op": "ping"})).await;
    }
    for _ in 0..8 {
        assert_eq!(recv_json(&mut ws).await["type"], "pong");
    }
    // Then no more than the rate: a burst is cut off.
    for _ in 0..6 {
        // Sends fail once the server has closed.
        let _ = futures_util::SinkExt::send(
            &mut ws,
            Message::Text(json!({"op": "ping"}).to_string().into()),
        )
        .await;
    }
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let frame = close.expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), 1008);
    assert!(frame.reason.starts_with("RATE_LIMITED"), "{}", frame.reason);
}

#[tokio::test]
async fn depth_resubscribes_are_throttled_per_connection() {
    let s = svc(|c| c.marketdata.ws_snapshots_per_10s = 2).await;
    let mut ws = s.ws("/ws", None).await.unwrap();
    let depth = json!({"op": "subscribe", "channels": ["depth:BTC-USDT"]});
    for _ in 0..2 {
        send(&mut ws, depth.clone()).await;
        assert_eq!(recv_json(&mut ws).await["type"], "subscribed");
        assert_eq!(recv_json(&mut ws).await["type"], "snapshot");
    }
    send(&mut ws, depth.clone()).await;
    let refused = recv_json(&mut ws).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["error"]["code"], "RATE_LIMITED", "{refused}");
    // Channels without a snapshot are not throttled; the connection lives.
    send(
        &mut ws,
        json!({"op": "subscribe", "channels": ["trades:BTC-USDT"]}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribed");
}

#[tokio::test]
async fn reconnecting_for_fresh_snapshots_is_throttled_per_client_ip() {
    let s = svc(|c| c.marketdata.rate_limit_ip_per_second = 3).await;
    let depth = json!({"op": "subscribe", "channels": ["depth:BTC-USDT"]});
    let mut refusal = None;
    for _ in 0..10 {
        match s.ws("/ws", None).await {
            Ok(mut ws) => {
                send(&mut ws, depth.clone()).await;
                assert_eq!(recv_json(&mut ws).await["type"], "subscribed");
                assert_eq!(recv_json(&mut ws).await["type"], "snapshot");
            }
            Err(e) => {
                refusal = Some(refused(&e));
                break;
            }
        }
    }
    let (status, body) = refusal.expect("a loop of handshakes is refused");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("RATE_LIMITED"), "{body}");
    // Another client IP is served.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((HOST_B.parse::<IpAddr>().unwrap(), 0).into())
        .unwrap();
    let tcp = sock.connect(s.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{}/ws", s.addr),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
    send(&mut ws, depth).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribed");
}

#[tokio::test]
async fn rest_requests_per_client_ip_are_budgeted_but_not_the_gateways() {
    let s = svc(|c| c.marketdata.rate_limit_ip_per_second = 3).await;
    let path = "/api/v1/markets/BTC-USDT/ticker";
    for _ in 0..3 {
        assert_eq!(s.get(path).await.0, 200);
    }
    let r = s.http.get(s.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMITED", "{body}");
    // The gateway, relaying clients it has already limited, presents the
    // internal token.
    let token = s._env.config.internal_token.expose().to_owned();
    for _ in 0..5 {
        let r = s
            .http
            .get(s.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Another client has its own budget.
    let other = reqwest::Client::builder()
        .local_address(HOST_B.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    assert_eq!(other.get(s.url(path)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn the_public_port_cuts_slow_headers_and_caps_connections_per_peer() {
    let s = svc(|c| {
        c.http.header_read_timeout = Duration::from_millis(500);
        c.http.connections_per_ip_max = 8;
    })
    .await;
    // (The harness's pooled connection from its readiness wait counts too.)
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let _ = c.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n").await;
        slow.push(c);
    }
    let other = reqwest::Client::builder()
        .local_address(HOST_B.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    assert_eq!(
        other.get(s.url("/health")).send().await.unwrap().status(),
        200
    );
    // The first host is over its cap now: refused at once.
    let fresh = reqwest::Client::new();
    assert!(fresh.get(s.url("/health")).send().await.is_err());
    // Its slow connections are cut at the header-read timeout, which frees it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        fresh.get(s.url("/health")).send().await.unwrap().status(),
        200
    );
    drop(slow);
}
