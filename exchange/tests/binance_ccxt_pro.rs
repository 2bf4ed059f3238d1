//! Issue 8 end to end, WebSocket part: the unmodified Python `ccxt.pro`
//! `binance` class, with `urls.api.ws.spot` pointed at our marketdata
//! WebSocket and its REST urls at our gateway's `/api/v3`, watches the
//! order book and trades of the real services (separate processes)
//! (`tests/compat/ccxt_pro_check.py`). This test sets up the market, two
//! users with API keys and their deposits over our own API, runs the
//! script, and asserts it exits 0.
//!
//! Also the user data stream (`/api/v3/userDataStream` listenKey and the
//! gateway's `/ws/<listenKey>`), checked from Rust: ccxt 4.5's `binance`
//! subscribes spot user data through Binance's WebSocket API
//! (`userDataStream.subscribe.signature`), which we do not serve.
//!
//! Needs `python3` with `ccxt` (`python3 -m pip install 'ccxt>=4.5,<5'`);
//! when it is missing the test installs it, and fails if that is impossible
//! (a compatibility claim that was not checked is not a pass).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::process::Command;

use futures_util::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};
use support::ccxt::{ensure_ccxt, python};
use support::{Cluster, User};
use tokio_tungstenite::tungstenite::Message;

async fn api_key(c: &Cluster, u: &User, perms: &[&str]) -> (String, String) {
    let (status, v) = c
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&u.token),
            Some(&json!({"label": "ccxt", "permissions": perms})),
        )
        .await;
    assert_eq!(status, 201, "api key: {v}");
    (
        v["api_key"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmodified_ccxt_pro_binance_watches_our_streams() {
    ensure_ccxt("ccxt.pro");
    let c = Cluster::start().await;
    c.setup_btc_usdt("0.001", "0.002").await;
    let maker = c.user("maker@example.com").await;
    let taker = c.user("taker@example.com").await;
    for u in [&maker, &taker] {
        c.deposit(u, "USDT", "10000").await;
        c.deposit(u, "BTC", "1").await;
    }
    let (maker_key, maker_secret) = api_key(&c, &maker, &["read", "trade"]).await;
    let (taker_key, taker_secret) = api_key(&c, &taker, &["read", "trade"]).await;
    let ws_url = format!("ws://{}/ws", c.env()["MARKETDATA_HTTP_ADDR"]);

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests/compat/ccxt_pro_check.py");
    if let Ok(secs) = std::env::var("BINANCE_CCXT_PRO_HOLD_SECS") {
        // For developing the script: keep the cluster up and print its settings.
        eprintln!(
            "EXCHANGE_URL={} MARKETDATA_WS_URL={ws_url} MAKER_KEY={maker_key} MAKER_SECRET={maker_secret} \
             TAKER_KEY={taker_key} TAKER_SECRET={taker_secret}",
            c.url
        );
        tokio::time::sleep(std::time::Duration::from_secs(secs.parse().unwrap_or(600))).await;
    }
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .env("EXCHANGE_URL", &c.url)
            .env("MAKER_KEY", maker_key)
            .env("MAKER_SECRET", maker_secret)
            .env("TAKER_KEY", taker_key)
            .env("TAKER_SECRET", taker_secret)
            .env("MARKETDATA_WS_URL", ws_url)
            .output()
            .map(|o| (o, c))
    })
    .await
    .unwrap()
    .expect("run python3");
    let (out, cluster) = out;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if !out.status.success() {
        for path in cluster.log_paths() {
            eprintln!("service log: {}", path.display());
        }
    }
    assert!(
        out.status.success(),
        "ccxt_pro_check.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("ALL CCXT PRO CHECKS PASSED"), "{stdout}");
}

async fn bn(c: &Cluster, method: Method, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = c.client.request(method, format!("{}{path}", c.url));
    if let Some(k) = key {
        req = req.header("X-MBX-APIKEY", k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What an awaited event must satisfy.
type Matcher = Box<dyn Fn(&Value) -> bool>;

/// Reads events until `want` has matched one of each kind asked for.
async fn events_until(ws: &mut Ws, mut want: Vec<(&str, Matcher)>) -> Vec<Value> {
    let mut seen = Vec::new();
    while !want.is_empty() {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(15), ws.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no event; still waiting for {:?}; saw {seen:#?}",
                    want.iter().map(|w| w.0).collect::<Vec<_>>()
                )
            })
            .expect("open")
            .expect("frame");
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        want.retain(|(_, f)| !f(&v));
        seen.push(v);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binance_user_data_stream_delivers_execution_reports() {
    let c = Cluster::start().await;
    c.setup_btc_usdt("0.001", "0.002").await;
    let maker = c.user("maker@example.com").await;
    let taker = c.user("taker@example.com").await;
    for u in [&maker, &taker] {
        c.deposit(u, "USDT", "10000").await;
        c.deposit(u, "BTC", "1").await;
    }
    // Warm-up: the first order of a new market waits for matching to pick
    // the market up; once it rests, the pipeline is live.
    let (st, warm) = c
        .place(
            &taker,
            &json!({"market": "BTC-USDT", "side": "buy", "type": "limit", "price": "1000",
                               "quantity": "0.01"}),
        )
        .await;
    assert_eq!(st, 201, "{warm}");
    c.wait_order(
        &taker,
        warm["id"].as_i64().unwrap(),
        &["new"],
        std::time::Duration::from_secs(30),
    )
    .await;
    let (maker_key, _) = api_key(&c, &maker, &["read"]).await;
    let (taker_key, _) = api_key(&c, &taker, &["read", "trade"]).await;

    // Key checks as Binance's USER_STREAM endpoints.
    let (st, v) = bn(&c, Method::POST, "/api/v3/userDataStream", None).await;
    assert_eq!((st, v["code"].clone()), (401, json!(-2014)), "{v}");
    let (st, v) = bn(
        &c,
        Method::POST,
        "/api/v3/userDataStream",
        Some("nosuchkey"),
    )
    .await;
    assert_eq!((st, v["code"].clone()), (401, json!(-2015)), "{v}");

    let (st, v) = bn(&c, Method::POST, "/api/v3/userDataStream", Some(&maker_key)).await;
    assert_eq!(st, 200, "{v}");
    let lk = v["listenKey"].as_str().unwrap().to_owned();
    assert_eq!(lk.len(), 60);
    let (_, again) = bn(&c, Method::POST, "/api/v3/userDataStream", Some(&maker_key)).await;
    assert_eq!(again["listenKey"], lk.as_str(), "one key per user, renewed");
    let (_, other) = bn(&c, Method::POST, "/api/v3/userDataStream", Some(&taker_key)).await;
    assert_ne!(other["listenKey"], lk.as_str());

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/ws/{lk}", c.ws_url))
        .await
        .expect("user data stream");
    let bad = "x".repeat(60);
    assert!(
        tokio_tungstenite::connect_async(format!("{}/ws/{bad}", c.ws_url))
            .await
            .is_err()
    );

    let (st, sell) = c
        .place(
            &maker,
            &json!({"market": "BTC-USDT", "side": "sell", "type": "limit", "price": "30000",
                               "quantity": "0.01", "client_order_id": "mm-1"}),
        )
        .await;
    assert_eq!(st, 201, "{sell}");
    let id = sell["id"].as_u64().unwrap();
    // Resting: clearing pushes the accepted order (status new), reported NEW.
    let seen = events_until(
        &mut ws,
        vec![(
            "NEW report",
            Box::new(move |v: &Value| v["x"] == "NEW" && v["i"] == id),
        )],
    )
    .await;
    let new = seen.iter().find(|v| v["x"] == "NEW").unwrap();
    assert_eq!(new["X"], "NEW", "{new}");
    assert_eq!(new["c"], "mm-1", "{new}");
    assert_eq!(new["z"], "0.00000000", "{new}");
    let (st, buy) = c
        .place(
            &taker,
            &json!({"market": "BTC-USDT", "side": "buy", "type": "market", "quantity": "0.004"}),
        )
        .await;
    assert_eq!(st, 201, "{buy}");
    let seen = events_until(
        &mut ws,
        vec![
            (
                "TRADE report",
                Box::new(move |v: &Value| v["x"] == "TRADE" && v["i"] == id),
            ),
            (
                "USDT position",
                Box::new(|v: &Value| {
                    v["e"] == "outboundAccountPosition"
                        && v["B"].as_array().is_some_and(|b| {
                            b.iter()
                                .any(|x| x["a"] == "USDT" && x["f"] == "10119.88000000")
                        })
                }),
            ),
        ],
    )
    .await;
    let tr = seen.iter().find(|v| v["x"] == "TRADE").unwrap();
    assert_eq!(tr["X"], "PARTIALLY_FILLED");
    assert_eq!(tr["l"], "0.00400000");
    assert_eq!(tr["L"], "30000.00000000");
    assert_eq!(tr["z"], "0.00400000");
    assert_eq!(tr["Z"], "120.00000000");
    assert_eq!(tr["Y"], "120.00000000");
    assert_eq!(tr["m"], true, "the resting sell was the maker");
    assert_eq!(tr["N"], "USDT", "a seller's fee is in quote");
    assert_eq!(tr["n"], "0.12000000", "maker fee 0.001 of 120");
    assert!(tr["t"].as_i64().unwrap() > 0);
    assert_eq!(tr["s"], "BTCUSDT");
    assert_eq!(tr["c"], "mm-1");
    assert_eq!(tr["S"], "SELL");
    assert_eq!(tr["o"], "LIMIT");
    assert_eq!(tr["q"], "0.01000000");
    assert_eq!(tr["p"], "30000.00000000");
    assert_eq!(tr["w"], true);

    let (st, v) = c
        .call(
            Method::DELETE,
            &format!("/api/v1/orders/{id}"),
            Some(&maker.token),
            None,
        )
        .await;
    assert!(st == 200 || st == 202, "cancel: {st} {v}");
    let seen = events_until(
        &mut ws,
        vec![(
            "CANCELED report",
            Box::new(move |v: &Value| v["x"] == "CANCELED" && v["i"] == id),
        )],
    )
    .await;
    let cx = seen.iter().find(|v| v["x"] == "CANCELED").unwrap();
    assert_eq!(
        (cx["X"].as_str(), cx["z"].as_str(), cx["w"].as_bool()),
        (Some("CANCELED"), Some("0.00400000"), Some(false))
    );

    // Keep-alive and close.
    let (st, v) = bn(
        &c,
        Method::PUT,
        &format!("/api/v3/userDataStream?listenKey={lk}"),
        Some(&maker_key),
    )
    .await;
    assert_eq!((st, v), (200, json!({})));
    let (st, v) = bn(
        &c,
        Method::PUT,
        &format!("/api/v3/userDataStream?listenKey={lk}"),
        Some(&taker_key),
    )
    .await;
    assert_eq!(
        (st, v["code"].clone()),
        (400, json!(-1125)),
        "another user's key"
    );
    let (st, v) = bn(
        &c,
        Method::DELETE,
        &format!("/api/v3/userDataStream?listenKey={lk}"),
        Some(&maker_key),
    )
    .await;
    assert_eq!((st, v), (200, json!({})));
    let (st, v) = bn(
        &c,
        Method::PUT,
        &format!("/api/v3/userDataStream?listenKey={lk}"),
        Some(&maker_key),
    )
    .await;
    assert_eq!((st, v["code"].clone()), (400, json!(-1125)), "{v}");
    assert!(
        tokio_tungstenite::connect_async(format!("{}/ws/{lk}", c.ws_url))
            .await
            .is_err()
    );

    // Deleting the API key also ends the listenKey it obtained: the holder
    // of a revoked key keeps no stream of the account.
    let (st, v) = bn(&c, Method::POST, "/api/v3/userDataStream", Some(&maker_key)).await;
    assert_eq!(st, 200, "{v}");
    let lk = v["listenKey"].as_str().unwrap().to_owned();
    assert!(
        tokio_tungstenite::connect_async(format!("{}/ws/{lk}", c.ws_url))
            .await
            .is_ok()
    );
    let (st, keys) = c
        .call(Method::GET, "/api/v1/api-keys", Some(&maker.token), None)
        .await;
    assert_eq!(st, 200, "{keys}");
    let key_id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["api_key"] == maker_key.as_str())
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let (st, _) = c
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{key_id}"),
            Some(&maker.token),
            None,
        )
        .await;
    assert_eq!(st, 204);
    assert!(
        tokio_tungstenite::connect_async(format!("{}/ws/{lk}", c.ws_url))
            .await
            .is_err(),
        "the listenKey of a deleted API key no longer opens a stream"
    );
}
