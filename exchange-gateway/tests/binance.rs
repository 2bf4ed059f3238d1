//! The Binance-compatible `/api/v3` against a real gateway and order
//! service (real Postgres and Redis): symbol mapping, filters, signing,
//! replay outside the window, permissions and Binance's error codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{Value, json};
use support::{App, Key, read, user_with_key};

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// A signed call; `in_body` puts everything (signature too) in a form body
/// like ccxt does for POST.
async fn signed_at(
    app: &App,
    key: &Key,
    method: Method,
    path: &str,
    params: &str,
    timestamp: u128,
    in_body: bool,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let payload = if params.is_empty() {
        format!("timestamp={timestamp}")
    } else {
        format!("{params}&timestamp={timestamp}")
    };
    let sig = exchange_gateway::auth::keys::sign(&key.secret, payload.as_bytes());
    let signed = format!("{payload}&signature={sig}");
    let mut req = if in_body {
        app.client
            .request(method, format!("{}{path}", app.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(signed)
    } else {
        app.client
            .request(method, format!("{}{path}?{signed}", app.url))
    };
    req = req.header("X-MBX-APIKEY", &key.api_key);
    let r = req.send().await.unwrap();
    let headers = r.headers().clone();
    let (s, v) = read(r).await;
    (s, v, headers)
}

async fn signed(app: &App, key: &Key, method: Method, path: &str, params: &str) -> (u16, Value) {
    let (s, v, _) = signed_at(app, key, method, path, params, now_ms(), false).await;
    (s, v)
}

async fn get(app: &App, path: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = app
        .client
        .get(format!("{}{path}", app.url))
        .send()
        .await
        .unwrap();
    let headers = r.headers().clone();
    let (s, v) = read(r).await;
    (s, v, headers)
}

#[tokio::test]
async fn public_endpoints_map_symbols_and_filters() {
    let app = support::spawn().await;
    app.seed_market().await;

    let (s, v, h) = get(&app, "/api/v3/ping").await;
    assert_eq!((s, v), (200, json!({})));
    assert!(h.contains_key("x-mbx-used-weight-1m"));
    let (_, t, _) = get(&app, "/api/v3/time").await;
    let server = u128::from(t["serverTime"].as_u64().unwrap());
    assert!(server.abs_diff(now_ms()) < 5_000);

    let (s, info, h) = get(&app, "/api/v3/exchangeInfo").await;
    assert_eq!(s, 200, "{info}");
    let used: u32 = h["x-mbx-used-weight-1m"].to_str().unwrap().parse().unwrap();
    assert!(used >= 20, "exchangeInfo weighs 20, used {used}");
    let sym = &info["symbols"][0];
    assert_eq!(sym["symbol"], "BTCUSDT");
    assert_eq!(sym["status"], "TRADING");
    assert_eq!(sym["baseAsset"], "BTC");
    assert_eq!(sym["quoteAsset"], "USDT");
    assert_eq!(sym["baseAssetPrecision"], 8);
    assert_eq!(sym["quoteAssetPrecision"], 6);
    assert_eq!(sym["permissions"], json!(["SPOT"]));
    assert_eq!(sym["isSpotTradingAllowed"], true);
    let filter = |name: &str| {
        sym["filters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["filterType"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(filter("PRICE_FILTER")["tickSize"], "0.01000000");
    assert_eq!(filter("LOT_SIZE")["stepSize"], "0.00010000");
    assert_eq!(filter("MARKET_LOT_SIZE")["stepSize"], "0.00010000");
    assert_eq!(filter("NOTIONAL")["minNotional"], "1.00000000");

    let (_, one, _) = get(&app, "/api/v3/exchangeInfo?symbol=BTCUSDT").await;
    assert_eq!(one["symbols"].as_array().unwrap().len(), 1);
    let (_, list, _) = get(&app, "/api/v3/exchangeInfo?symbols=%5B%22BTCUSDT%22%5D").await;
    assert_eq!(list["symbols"][0]["symbol"], "BTCUSDT");
    for bad in [
        "/api/v3/exchangeInfo?symbol=ETHUSDT",
        "/api/v3/depth?symbol=BTC-USDT",
    ] {
        let (s, v, h) = get(&app, bad).await;
        assert_eq!((s, v["code"].as_i64()), (400, Some(-1121)), "{bad}: {v}");
        assert_eq!(v["msg"], "Invalid symbol.");
        assert!(h.contains_key("x-mbx-used-weight-1m"));
    }
    let (s, v, _) = get(&app, "/api/v3/depth").await;
    assert_eq!((s, v["code"].as_i64()), (400, Some(-1102)), "{v}");
    let (s, v, _) = get(&app, "/api/v3/klines?symbol=BTCUSDT&interval=7m").await;
    assert_eq!((s, v["code"].as_i64()), (400, Some(-1120)), "{v}");
    // Marketdata is down in this test: Binance's "overloaded", not a 500.
    let (s, v, _) = get(&app, "/api/v3/depth?symbol=BTCUSDT").await;
    assert_eq!((s, v["code"].as_i64()), (503, Some(-1008)), "{v}");
}

#[tokio::test]
async fn signed_orders_errors_replay_and_permissions() {
    let app = support::spawn().await;
    app.seed_market().await;
    let (uid, key) = user_with_key(&app, "bn@example.com", &["read", "trade"]).await;
    app.deposit(uid, "USDT", "1000").await;

    // The account, with every asset and Binance's decimals.
    let (s, acct) = signed(&app, &key, Method::GET, "/api/v3/account", "").await;
    assert_eq!(s, 200, "{acct}");
    assert_eq!(acct["canTrade"], true);
    let usdt = acct["balances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["asset"] == "USDT")
        .unwrap()
        .clone();
    assert_eq!(
        usdt,
        json!({"asset":"USDT","free":"1000.00000000","locked":"0.00000000"})
    );

    // Place (retrying while the order service has not seen the new market).
    let mut placed = (0, Value::Null);
    for _ in 0..50 {
        placed = signed(
            &app,
            &key,
            Method::POST,
            "/api/v3/order",
            "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.01000000&price=20000&newClientOrderId=bot-1&newOrderRespType=ACK",
        )
        .await;
        if placed.1["code"] != -1121 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (s, ack) = placed;
    assert_eq!(s, 200, "{ack}");
    assert_eq!(ack["symbol"], "BTCUSDT");
    assert_eq!(ack["clientOrderId"], "bot-1");
    let order_id = ack["orderId"].as_i64().unwrap();

    let (s, o) = signed(
        &app,
        &key,
        Method::GET,
        "/api/v3/order",
        "symbol=BTCUSDT&origClientOrderId=bot-1",
    )
    .await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(o["orderId"], order_id);
    assert_eq!(o["price"], "20000.00000000");
    assert_eq!(o["origQty"], "0.01000000");
    assert_eq!(o["status"], "NEW");
    assert_eq!(o["type"], "LIMIT");
    assert_eq!(o["side"], "BUY");
    let (_, open) = signed(
        &app,
        &key,
        Method::GET,
        "/api/v3/openOrders",
        "symbol=BTCUSDT",
    )
    .await;
    assert_eq!(open.as_array().unwrap().len(), 1, "{open}");
    let (_, all) = signed(
        &app,
        &key,
        Method::GET,
        "/api/v3/allOrders",
        "symbol=BTCUSDT",
    )
    .await;
    assert_eq!(all[0]["orderId"], order_id);
    let (_, acct) = signed(
        &app,
        &key,
        Method::GET,
        "/api/v3/account",
        "omitZeroBalances=true",
    )
    .await;
    assert_eq!(
        acct["balances"],
        json!([{"asset":"USDT","free":"800.00000000","locked":"200.00000000"}])
    );

    // Signed entirely in a form body, as ccxt sends POSTs; too big an order.
    let (s, v, _) = signed_at(
        &app,
        &key,
        Method::POST,
        "/api/v3/order",
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=20000",
        now_ms(),
        true,
    )
    .await;
    assert_eq!((s, v["code"].as_i64()), (400, Some(-2010)), "{v}");
    assert_eq!(
        v["msg"],
        "Account has insufficient balance for requested action."
    );
    // Filters.
    let (_, v) = signed(
        &app,
        &key,
        Method::POST,
        "/api/v3/order",
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.01&price=20000.001",
    )
    .await;
    assert_eq!(
        (v["code"].as_i64(), v["msg"].as_str()),
        (Some(-1013), Some("Filter failure: PRICE_FILTER")),
        "{v}"
    );
    let (_, v) = signed(
        &app,
        &key,
        Method::POST,
        "/api/v3/order",
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.00001&price=20000",
    )
    .await;
    assert_eq!(v["code"], -1013, "{v}");
    // order/test validates and places nothing.
    let (s, v) = signed(
        &app,
        &key,
        Method::POST,
        "/api/v3/order/test",
        "symbol=BTCUSDT&side=SELL&type=MARKET&quantity=0.01",
    )
    .await;
    assert_eq!((s, v), (200, json!({})));

    // Unknown orders: -2013 on query, -2011 on cancel.
    let (_, v) = signed(
        &app,
        &key,
        Method::GET,
        "/api/v3/order",
        "symbol=BTCUSDT&orderId=999999",
    )
    .await;
    assert_eq!(
        (v["code"].as_i64(), v["msg"].as_str()),
        (Some(-2013), Some("Order does not exist."))
    );
    let (_, v) = signed(
        &app,
        &key,
        Method::DELETE,
        "/api/v3/order",
        "symbol=BTCUSDT&orderId=999999",
    )
    .await;
    assert_eq!(
        (v["code"].as_i64(), v["msg"].as_str()),
        (Some(-2011), Some("Unknown order sent."))
    );
    let (_, v) = signed(&app, &key, Method::GET, "/api/v3/order", "symbol=BTCUSDT").await;
    assert_eq!(v["code"], -1102);

    // Bad signature, unknown key, missing key.
    let wrong = Key {
        api_key: key.api_key.clone(),
        secret: "not-the-secret".into(),
    };
    let (s, v) = signed(&app, &wrong, Method::GET, "/api/v3/account", "").await;
    assert_eq!((s, v["code"].as_i64()), (400, Some(-1022)), "{v}");
    let unknown = Key {
        api_key: "A".repeat(64),
        secret: key.secret.clone(),
    };
    let (s, v) = signed(&app, &unknown, Method::GET, "/api/v3/account", "").await;
    assert_eq!((s, v["code"].as_i64()), (401, Some(-2015)), "{v}");
    let (s, v, _) = get(&app, "/api/v3/account?timestamp=1&signature=00").await;
    assert_eq!((s, v["code"].as_i64()), (401, Some(-2014)), "{v}");

    // Replay: a correctly signed request, presented after its window.
    let old = now_ms() - 6_000;
    let (s, v, _) = signed_at(&app, &key, Method::GET, "/api/v3/account", "", old, false).await;
    assert_eq!((s, v["code"].as_i64()), (400, Some(-1021)), "{v}");
    let (s, _, _) = signed_at(
        &app,
        &key,
        Method::GET,
        "/api/v3/account",
        "recvWindow=10000",
        old,
        false,
    )
    .await;
    assert_eq!(s, 200, "a wider window admits it");
    let (_, v, _) = signed_at(
        &app,
        &key,
        Method::GET,
        "/api/v3/account",
        "",
        now_ms() + 5_000,
        false,
    )
    .await;
    assert_eq!(v["code"], -1021, "ahead of the server: {v}");

    // A read-only key reads but cannot trade; nothing is placed.
    let (_, ro) = user_with_key(&app, "ro@example.com", &["read"]).await;
    let (s, _) = signed(&app, &ro, Method::GET, "/api/v3/account", "").await;
    assert_eq!(s, 200);
    let (s, v) = signed(
        &app,
        &ro,
        Method::POST,
        "/api/v3/order",
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.01&price=20000",
    )
    .await;
    assert_eq!((s, v["code"].as_i64()), (401, Some(-2015)), "{v}");
    let (_, v) = signed(
        &app,
        &ro,
        Method::DELETE,
        "/api/v3/openOrders",
        "symbol=BTCUSDT",
    )
    .await;
    assert_eq!(v["code"], -2015);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 1, "only the one good order exists");
}

#[tokio::test]
async fn take_profit_orders_are_placed_stored_and_reported() {
    let app = support::spawn().await;
    app.seed_market().await;
    let (uid, key) = user_with_key(&app, "tp@example.com", &["read", "trade"]).await;
    app.deposit(uid, "USDT", "1000").await;

    let (s, info, _) = get(&app, "/api/v3/exchangeInfo?symbol=BTCUSDT").await;
    assert_eq!(s, 200, "{info}");
    let types = &info["symbols"][0]["orderTypes"];
    for t in [
        "TAKE_PROFIT",
        "TAKE_PROFIT_LIMIT",
        "STOP_LOSS",
        "STOP_LOSS_LIMIT",
    ] {
        assert!(
            types.as_array().unwrap().iter().any(|v| v == t),
            "{t} in {types}"
        );
    }

    // A take-profit buy: waits for the price to fall to 19500, then bids 19000.
    let mut placed = (0, Value::Null);
    for _ in 0..50 {
        placed = signed(
            &app,
            &key,
            Method::POST,
            "/api/v3/order",
            "symbol=BTCUSDT&side=BUY&type=TAKE_PROFIT_LIMIT&timeInForce=GTC&quantity=0.01&price=19000&stopPrice=19500&newClientOrderId=tp-1",
        )
        .await;
        if placed.1["code"] != -1121 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (s, ack) = placed;
    assert_eq!(s, 200, "{ack}");
    assert_eq!(ack["clientOrderId"], "tp-1");
    assert!(ack.get("status").is_none(), "ACK by default: {ack}");
    let id = ack["orderId"].as_i64().unwrap();
    let stored: (String, String) =
        sqlx::query_as("SELECT type, trim_scale(stop_price)::text FROM orders WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(stored, ("take_profit_limit".to_owned(), "19500".to_owned()));

    let (s, o) = signed(
        &app,
        &key,
        Method::GET,
        "/api/v3/order",
        "symbol=BTCUSDT&origClientOrderId=tp-1",
    )
    .await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(o["type"], "TAKE_PROFIT_LIMIT");
    assert_eq!(o["side"], "BUY");
    assert_eq!(o["price"], "19000.00000000");
    assert_eq!(o["stopPrice"], "19500.00000000");
    assert_eq!(o["origQty"], "0.01000000");
    assert_eq!(o["timeInForce"], "GTC");
    assert_eq!(o["status"], "NEW");
    assert_eq!(o["isWorking"], false, "not triggered yet");
    let (_, acct) = signed(
        &app,
        &key,
        Method::GET,
        "/api/v3/account",
        "omitZeroBalances=true",
    )
    .await;
    assert_eq!(
        acct["balances"],
        json!([{"asset":"USDT","free":"810.00000000","locked":"190.00000000"}]),
        "the limit's worst case is locked while it waits"
    );

    // TAKE_PROFIT (market on trigger) buys spend a quote amount, as STOP_LOSS buys.
    let (s, v) = signed(
        &app,
        &key,
        Method::POST,
        "/api/v3/order",
        "symbol=BTCUSDT&side=BUY&type=TAKE_PROFIT&quoteOrderQty=100&stopPrice=19000",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, o) = signed(
        &app,
        &key,
        Method::GET,
        "/api/v3/order",
        &format!("symbol=BTCUSDT&orderId={}", v["orderId"]),
    )
    .await;
    assert_eq!(
        (&o["type"], &o["stopPrice"], &o["origQuoteOrderQty"]),
        (
            &json!("TAKE_PROFIT"),
            &json!("19000.00000000"),
            &json!("100.00000000")
        ),
        "{o}"
    );
    let (_, v) = signed(
        &app,
        &key,
        Method::POST,
        "/api/v3/order",
        "symbol=BTCUSDT&side=BUY&type=TAKE_PROFIT&quantity=0.01&stopPrice=19000",
    )
    .await;
    assert_eq!(
        v["code"], -1013,
        "a buy by base quantity would lock everything: {v}"
    );
    // Missing stopPrice, and order/test validating without placing.
    let (_, v) = signed(
        &app,
        &key,
        Method::POST,
        "/api/v3/order",
        "symbol=BTCUSDT&side=SELL&type=TAKE_PROFIT&quantity=0.01",
    )
    .await;
    assert_eq!(v["code"], -1102, "{v}");
    let (s, v) = signed(
        &app,
        &key,
        Method::POST,
        "/api/v3/order/test",
        "symbol=BTCUSDT&side=SELL&type=TAKE_PROFIT_LIMIT&timeInForce=GTC&quantity=0.01&price=21000&stopPrice=21000",
    )
    .await;
    assert_eq!((s, v), (200, json!({})));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 2, "the two good take-profits, nothing else");
}

/// Binance refuses a `LIMIT_MAKER` that would take and a stop that would
/// trigger at once synchronously (`-2010`), whatever `newOrderRespType`
/// says: with `ACK` (the default for stops) too, the placement waits for
/// the engine's decision. Orders it accepts are still only acknowledged.
#[tokio::test]
async fn ack_placements_binance_would_refuse_answer_2010() {
    let app = support::spawn().await;
    let _pipeline = support::start_pipeline(&app).await;
    app.seed_market().await;
    let (maker, mk) = user_with_key(&app, "maker@example.com", &["read", "trade"]).await;
    let (taker, tk) = user_with_key(&app, "taker@example.com", &["read", "trade"]).await;
    app.deposit(maker, "BTC", "1").await;
    app.deposit(taker, "USDT", "100000").await;

    // The maker's ask at 30000 rests (retried while the gateway loads the
    // new market).
    let mut ask = (0, Value::Null);
    for _ in 0..50 {
        ask = place(
            &app,
            &mk,
            "symbol=BTCUSDT&side=SELL&type=LIMIT&timeInForce=GTC&quantity=0.002&price=30000&newOrderRespType=RESULT",
        )
        .await;
        if ask.1["code"] != -1121 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!((ask.0, &ask.1["status"]), (200, &json!("NEW")), "{}", ask.1);
    // Matching picks a new market up within seconds: until then nothing is
    // decided within the placement's bounded wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cleared_batches")
        .fetch_one(&app.db)
        .await
        .unwrap()
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the ask never settled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // A LIMIT_MAKER bid at the ask would take: refused, nothing traded.
    // Below the ask it rests: acknowledged only.
    let maker_bid = |price: &str| {
        format!(
            "symbol=BTCUSDT&side=BUY&type=LIMIT_MAKER&quantity=0.001&price={price}&newOrderRespType=ACK"
        )
    };
    let taken = place(&app, &tk, &maker_bid("30000")).await;
    assert_refused(taken, "Order would immediately match and take.");
    assert_acknowledged(place(&app, &tk, &maker_bid("29000")).await);

    // A trade at 30000 sets the last price.
    let (s, v) = place(
        &app,
        &tk,
        "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.001&price=30000&newOrderRespType=RESULT",
    )
    .await;
    assert_eq!((s, &v["status"]), (200, &json!("FILLED")), "{v}");

    // A stop-loss sell at 31000 is already reached (ACK by default); one at
    // 29500 waits for the price to fall.
    let stop_sell = |stop: &str| {
        format!(
            "symbol=BTCUSDT&side=SELL&type=STOP_LOSS_LIMIT&timeInForce=GTC&quantity=0.001&price={stop}&stopPrice={stop}"
        )
    };
    let reached = place(&app, &mk, &stop_sell("31000")).await;
    assert_refused(reached, "Order would trigger immediately.");
    assert_acknowledged(place(&app, &mk, &stop_sell("29500")).await);

    // The refused ones are on record as rejected, as documented.
    let (_, all) = signed(
        &app,
        &tk,
        Method::GET,
        "/api/v3/allOrders",
        "symbol=BTCUSDT",
    )
    .await;
    let statuses: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["REJECTED", "NEW", "FILLED"], "{all}");
}

async fn place(app: &App, key: &Key, params: &str) -> (u16, Value) {
    signed(app, key, Method::POST, "/api/v3/order", params).await
}

fn assert_refused((status, body): (u16, Value), msg: &str) {
    assert_eq!(
        (status, body["code"].as_i64()),
        (400, Some(-2010)),
        "{body}"
    );
    assert_eq!(body["msg"], msg);
}

/// An `ACK` answer: the order's id, not its state.
fn assert_acknowledged((status, body): (u16, Value)) {
    assert_eq!(status, 200, "{body}");
    assert!(
        body["orderId"].as_i64().is_some() && body.get("status").is_none(),
        "{body}"
    );
}
