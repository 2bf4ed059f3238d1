//! Orders through the gateway to the real order service, rate limits, and
//! the private WebSocket, against real PostgreSQL and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::Method;
use serde_json::{Value, json};
use support::{App, Ws, dead_addr, error_code, next_json, read, spawn, spawn_with};
use tokio_tungstenite::tungstenite::Message;

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap()
}

fn buy(price: &str, qty: &str) -> Value {
    json!({"market":"BTC-USDT","side":"buy","type":"limit","price":price,"quantity":qty})
}

async fn user(app: &App, email: &str) -> (i64, String) {
    let id = app.register(email).await;
    (id, app.login(email).await)
}

async fn balances(app: &App, token: &str) -> Value {
    let (status, body) = app.get_auth("/api/v1/account/balances", token).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn order_count(app: &App) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn place_get_list_cancel_and_another_users_order_is_404() {
    let app = spawn().await;
    app.seed_market().await;
    let (alice, a) = user(&app, "alice@example.com").await;
    let (_bob, b) = user(&app, "bob@example.com").await;
    app.deposit(alice, "USDT", "1000").await;

    // user_id is never the client's to choose.
    let mut forged = buy("50000", "0.01");
    forged["user_id"] = json!(alice);
    let (status, body) = app.place(&b, &forged).await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "INVALID_REQUEST"),
        "{body}"
    );
    assert_eq!(order_count(&app).await, 0);

    let mut order = buy("50000", "0.01");
    order["client_order_id"] = json!("my-1");
    let (status, placed) = app.place(&a, &order).await;
    assert_eq!(status, 201, "{placed}");
    assert_eq!(placed["status"], "new");
    assert_eq!(placed["market"], "BTC-USDT");
    assert_eq!(placed["price"], "50000");
    assert_eq!(placed["quantity"], "0.01");
    assert_eq!(placed["filled_quantity"], "0");
    let id = placed["id"].as_i64().unwrap();
    // The same client_order_id again: the same order, not a second one.
    let (status, again) = app.place(&a, &order).await;
    assert_eq!((status, again["id"].as_i64()), (200, Some(id)), "{again}");
    assert_eq!(order_count(&app).await, 1);
    assert_eq!(
        balances(&app, &a).await,
        json!([{"asset":"USDT","available":"500","locked":"500"}])
    );

    let (status, got) = app.get_auth(&format!("/api/v1/orders/{id}"), &a).await;
    assert_eq!((status, got["id"].as_i64()), (200, Some(id)), "{got}");
    let (status, list) = app
        .get_auth("/api/v1/orders?market=BTC-USDT&status=open&limit=10", &a)
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"].as_i64(), Some(id));
    let (status, list) = app.get_auth("/api/v1/orders?status=closed", &a).await;
    assert_eq!((status, list), (200, json!([])));
    let (status, body) = app.get_auth("/api/v1/orders?status=nope", &a).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app.get_auth("/api/v1/orders?owner=1", &a).await;
    assert_eq!((status, error_code(&body)), (400, "INVALID_QUERY"));

    // Bob sees nothing of Alice's: 404 to read, to cancel, to amend.
    let (status, body) = app.get_auth(&format!("/api/v1/orders/{id}"), &b).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app
        .send(Method::DELETE, &format!("/api/v1/orders/{id}"), &b, None)
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app
        .send(
            Method::PATCH,
            &format!("/api/v1/orders/{id}"),
            &b,
            Some(&json!({"price":"40000"})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, list) = app.get_auth("/api/v1/orders", &b).await;
    assert_eq!((status, list), (200, json!([])));
    let (status, body) = app.get_auth("/api/v1/orders/abc", &a).await;
    assert_eq!((status, error_code(&body)), (400, "INVALID_PATH"));

    // Bob has no money: the order service's rejection passes through.
    let (status, body) = app.place(&b, &buy("50000", "0.01")).await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "INSUFFICIENT_BALANCE"),
        "{body}"
    );

    // Cancel is asynchronous: the order comes back, the command is journaled.
    let (status, body) = app
        .send(Method::DELETE, &format!("/api/v1/orders/{id}"), &a, None)
        .await;
    assert_eq!((status, body["id"].as_i64()), (200, Some(id)), "{body}");
    let (status, body) = app
        .send(Method::DELETE, "/api/v1/orders?market=BTC-USDT", &a, None)
        .await;
    assert_eq!((status, &body["accepted"]), (200, &json!(true)), "{body}");
    let (status, body) = app.send(Method::DELETE, "/api/v1/orders", &a, None).await;
    assert_eq!(status, 400, "cancel-all needs a market: {body}");
    let commands: i64 = sqlx::query_scalar("SELECT count(*) FROM order_commands")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(
        commands >= 3,
        "place, cancel, cancel-all journaled: {commands}"
    );

    let (status, trades) = app
        .get_auth("/api/v1/account/trades?market=BTC-USDT&limit=10", &a)
        .await;
    assert_eq!((status, trades), (200, json!([])));
    let (status, _) = app.get_auth("/api/v1/orders", "not-a-token").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn admin_market_status_goes_through_the_order_service_journal() {
    let app = spawn().await;
    app.seed_market().await;
    let (alice, a) = user(&app, "alice@example.com").await;
    app.deposit(alice, "USDT", "1000").await;
    let (status, body) = app
        .admin(
            Method::PATCH,
            "/admin/v1/markets/BTC-USDT",
            &json!({"status":"cancel_only"}),
        )
        .await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("cancel_only")),
        "{body}"
    );
    let journaled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM order_commands WHERE market = 'BTC-USDT'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(journaled, 1, "the status change is a journaled command");
    let (status, body) = app.place(&a, &buy("50000", "0.01")).await;
    assert_eq!(status, 400, "no new orders while cancel_only: {body}");
    let (status, body) = app
        .admin(
            Method::PATCH,
            "/admin/v1/markets/BTC-USDT",
            &json!({"status":"closed"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (400, "INVALID_STATUS"));
}

#[tokio::test]
async fn internal_services_down_is_503_not_500() {
    let dead = dead_addr().await;
    let app = spawn_with(|c| c.gateway.order_service_url = format!("http://{dead}")).await;
    let (_, a) = user(&app, "alice@example.com").await;
    for (method, path, body) in [
        (Method::POST, "/api/v1/orders", Some(buy("1", "1"))),
        (Method::GET, "/api/v1/orders/1", None),
        (Method::GET, "/api/v1/orders", None),
        (Method::DELETE, "/api/v1/orders/1", None),
        (Method::GET, "/api/v1/account/trades", None),
    ] {
        let (status, body) = app.send(method, path, &a, body.as_ref()).await;
        assert_eq!(
            (status, error_code(&body)),
            (503, "UNAVAILABLE"),
            "{path}: {body}"
        );
    }
    for what in ["depth", "trades", "klines?interval=1m", "ticker"] {
        let (status, body) = read(
            app.client
                .get(format!("{}/api/v1/markets/BTC-USDT/{what}", app.url))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, error_code(&body)),
            (503, "UNAVAILABLE"),
            "{what}: {body}"
        );
    }
}

/// A signed request as Binance clients make it.
async fn signed(
    app: &App,
    method: Method,
    path: &str,
    key: &str,
    secret: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let query = format!("timestamp={}", now_ms());
    let body_text = body.map(Value::to_string).unwrap_or_default();
    let payload = format!("{query}{body_text}");
    let signature = exchange_gateway::auth::keys::sign(secret, payload.as_bytes());
    let mut req = app
        .client
        .request(
            method,
            format!("{}{path}?{query}&signature={signature}", app.url),
        )
        .header("X-MBX-APIKEY", key);
    if body.is_some() {
        req = req
            .header("content-type", "application/json")
            .body(body_text);
    }
    read(req.send().await.unwrap()).await
}

#[tokio::test]
async fn api_key_needs_trade_to_place_and_read_to_list() {
    let app = spawn().await;
    app.seed_market().await;
    let (alice, a) = user(&app, "alice@example.com").await;
    app.deposit(alice, "USDT", "1000").await;
    let mut keys = Vec::new();
    for perms in [json!(["read"]), json!(["trade"])] {
        let (status, key) = app
            .send(
                Method::POST,
                "/api/v1/api-keys",
                &a,
                Some(&json!({"permissions": perms})),
            )
            .await;
        assert_eq!(status, 201, "{key}");
        keys.push((
            key["api_key"].as_str().unwrap().to_owned(),
            key["secret"].as_str().unwrap().to_owned(),
        ));
    }
    let (read_key, read_secret) = &keys[0];
    let (trade_key, trade_secret) = &keys[1];
    let order = buy("50000", "0.01");
    let (status, body) = signed(
        &app,
        Method::POST,
        "/api/v1/orders",
        read_key,
        read_secret,
        Some(&order),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "PERMISSION_DENIED"),
        "{body}"
    );
    assert_eq!(order_count(&app).await, 0, "a refused order places nothing");
    let (status, body) = signed(
        &app,
        Method::GET,
        "/api/v1/orders",
        trade_key,
        trade_secret,
        None,
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "PERMISSION_DENIED"),
        "{body}"
    );

    // Retry past the order service's market cache with the session token
    // first, then the trade key places for Alice.
    let (status, _) = app.place(&a, &buy("1", "1")).await;
    assert_eq!(status, 201);
    let (status, placed) = signed(
        &app,
        Method::POST,
        "/api/v1/orders",
        trade_key,
        trade_secret,
        Some(&order),
    )
    .await;
    assert_eq!(status, 201, "{placed}");
    let (status, list) = signed(
        &app,
        Method::GET,
        "/api/v1/orders",
        read_key,
        read_secret,
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 2);
}

async fn wrong_login(app: &App, xff: Option<&str>) -> reqwest::Response {
    let mut req = app
        .client
        .post(format!("{}/api/v1/auth/login", app.url))
        .json(&json!({"email":"victim@example.com","password":"wrong password!"}));
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn the_eleventh_wrong_password_in_a_minute_is_429() {
    let app = spawn().await;
    app.register("victim@example.com").await;
    for i in 1..=10 {
        let r = wrong_login(&app, None).await;
        assert_eq!(r.status().as_u16(), 401, "attempt {i}");
    }
    let r = wrong_login(&app, None).await;
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let (_, body) = read(r).await;
    assert_eq!(error_code(&body), "RATE_LIMITED");
    // The right password is refused too (it is the budget that is spent),
    // while health checks are never limited.
    let r = app
        .client
        .post(format!("{}/api/v1/auth/login", app.url))
        .json(&json!({"email":"victim@example.com","password":support::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    for _ in 0..3 {
        let r = app
            .client
            .get(format!("{}/health", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_shares_one_budget() {
    // TRUSTED_PROXIES empty: 127.0.0.1 is the client whatever XFF says.
    let app = spawn_with(|c| c.gateway.rate_limit_login_per_minute = 3).await;
    for xff in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        assert_eq!(wrong_login(&app, Some(xff)).await.status().as_u16(), 401);
    }
    let r = wrong_login(&app, Some("4.4.4.4")).await;
    assert_eq!(
        r.status().as_u16(),
        429,
        "a new XFF value is not a new budget"
    );
    assert_eq!(wrong_login(&app, None).await.status().as_u16(), 429);

    // The control: behind a trusted proxy, XFF names the client.
    let app = spawn_with(|c| {
        c.gateway.rate_limit_login_per_minute = 3;
        c.gateway.trusted_proxies = vec!["127.0.0.1".to_owned()];
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            wrong_login(&app, Some("6.6.6.6, 1.1.1.1"))
                .await
                .status()
                .as_u16(),
            401
        );
    }
    assert_eq!(
        wrong_login(&app, Some("1.1.1.1")).await.status().as_u16(),
        429
    );
    assert_eq!(
        wrong_login(&app, Some("1.1.1.1, 2.2.2.2"))
            .await
            .status()
            .as_u16(),
        401,
        "the rightmost untrusted hop is the client"
    );
}

#[tokio::test]
async fn an_order_burst_past_the_user_budget_is_429_and_places_nothing_extra() {
    let app = spawn_with(|c| c.gateway.rate_limit_orders_per_second = 5).await;
    app.seed_market().await;
    let (alice, a) = user(&app, "alice@example.com").await;
    app.deposit(alice, "USDT", "100000").await;
    // Wait for the market to be known, then let the budget refill.
    let (status, _) = app.place(&a, &buy("100", "0.01")).await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let before = order_count(&app).await;
    let attempts = 20;
    let results = futures_util::future::join_all((0..attempts).map(|_| {
        app.client
            .post(format!("{}/api/v1/orders", app.url))
            .bearer_auth(&a)
            .json(&buy("100", "0.01"))
            .send()
    }))
    .await;
    let mut placed = 0;
    let mut limited = 0;
    for r in results {
        let r = r.unwrap();
        match r.status().as_u16() {
            201 => placed += 1,
            429 => {
                assert!(r.headers().contains_key("retry-after"));
                let (_, body) = read(r).await;
                assert_eq!(error_code(&body), "RATE_LIMITED");
                limited += 1;
            }
            other => panic!("unexpected {other}: {:?}", read(r).await),
        }
    }
    assert!(
        limited >= attempts - 7,
        "{placed} placed, {limited} limited"
    );
    assert!(placed >= 5, "the burst budget is usable: {placed}");
    assert_eq!(
        order_count(&app).await - before,
        placed,
        "exactly the accepted requests placed orders"
    );
    // Another user has a budget of their own.
    let (bob, b) = user(&app, "bob@example.com").await;
    app.deposit(bob, "USDT", "1000").await;
    let (status, body) = app.place(&b, &buy("100", "0.01")).await;
    assert_eq!(status, 201, "{body}");
}

async fn nothing_more(ws: &mut Ws) {
    if let Ok(Some(Ok(Message::Text(t)))) =
        tokio::time::timeout(Duration::from_millis(300), ws.next()).await
    {
        panic!("unexpected message {t}");
    }
}

async fn publish(app: &App, user_id: i64, payload: &Value) {
    let client = redis::Client::open(app.env.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("{}:private:{user_id}", app.env.redis_prefix);
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn private_ws_routes_each_users_events_to_them_only_with_consecutive_seq() {
    let app = spawn().await;
    let (alice, a) = user(&app, "alice@example.com").await;
    let (bob, b) = user(&app, "bob@example.com").await;
    app.wait_subscriber_up().await;

    // Alice by ?token, Bob by the auth message.
    let (mut wa, _) =
        tokio_tungstenite::connect_async(format!("{}/ws/private?token={a}", app.ws_url))
            .await
            .unwrap();
    assert_eq!(
        next_json(&mut wa).await,
        json!({"type":"authenticated","user_id":alice})
    );
    let (mut wb, _) = tokio_tungstenite::connect_async(format!("{}/ws/private", app.ws_url))
        .await
        .unwrap();
    wb.send(Message::text(json!({"op":"auth","token":b}).to_string()))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut wb).await,
        json!({"type":"authenticated","user_id":bob})
    );

    let events = [
        json!({"type":"order","data":{"id":1,"status":"new"}}),
        json!({"type":"trade","data":{"id":9,"order_id":1,"price":"100"}}),
        json!({"type":"balance","data":{"asset":"USDT","available":"1","locked":"0"}}),
    ];
    for e in &events {
        publish(&app, alice, e).await;
    }
    publish(
        &app,
        bob,
        &json!({"type":"balance","data":{"asset":"BTC","available":"2","locked":"0"}}),
    )
    .await;
    for (i, e) in events.iter().enumerate() {
        let got = next_json(&mut wa).await;
        assert_eq!(got["seq"], json!(i + 1), "{got}");
        assert_eq!(got["type"], e["type"]);
        assert_eq!(got["data"], e["data"]);
    }
    let got = next_json(&mut wb).await;
    assert_eq!(
        got,
        json!({"type":"balance","seq":1,"data":{"asset":"BTC","available":"2","locked":"0"}})
    );
    // Clearing's shape: one message holding a settlement's events, in order.
    publish(
        &app,
        alice,
        &json!([
            {"type":"order","data":{"id":2,"status":"filled"}},
            {"type":"balance","data":{"asset":"BTC","available":"3","locked":"0"}},
        ]),
    )
    .await;
    assert_eq!(
        next_json(&mut wa).await,
        json!({"type":"order","seq":4,"data":{"id":2,"status":"filled"}})
    );
    assert_eq!(
        next_json(&mut wa).await,
        json!({"type":"balance","seq":5,"data":{"asset":"BTC","available":"3","locked":"0"}})
    );
    // A message the gateway cannot read is a gap the client cannot see in
    // `seq`: it is told to resync instead.
    publish(&app, alice, &json!({"no":"type"})).await;
    assert_eq!(next_json(&mut wa).await, json!({"type":"resync","seq":6}));
    nothing_more(&mut wb).await;
    nothing_more(&mut wa).await;

    // Application-level ping.
    wa.send(Message::text(r#"{"op":"ping"}"#)).await.unwrap();
    assert_eq!(next_json(&mut wa).await, json!({"type":"pong"}));

    // The connection gauge counts both.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"exchange_ws_connections{service="gateway",kind="private"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn private_ws_refuses_bad_and_expired_tokens_and_accepts_a_signed_api_key() {
    let app = spawn().await;
    let (alice, a) = user(&app, "alice@example.com").await;
    // Handshake with a bad token: 401 before the upgrade.
    let expired = {
        let now = chrono::Utc::now().timestamp();
        let key = jsonwebtoken::EncodingKey::from_secret(
            app.env.config.gateway.auth_token_secret.expose().as_bytes(),
        );
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": alice.to_string(), "iat": now - 7200, "exp": now - 3600, "typ": "access"}),
            &key,
        )
        .unwrap()
    };
    for bad in ["garbage", expired.as_str()] {
        let err =
            tokio_tungstenite::connect_async(format!("{}/ws/private?token={bad}", app.ws_url))
                .await
                .unwrap_err();
        match err {
            tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status().as_u16(), 401),
            other => panic!("expected HTTP 401, got {other}"),
        }
    }
    // A bad auth message: an error, then the close.
    for msg in [
        json!({"op":"auth","token":expired}),
        json!({"op":"auth","token":"garbage"}),
        json!({"op":"subscribe"}),
        json!({"op":"auth","api_key":"nope","timestamp":now_ms(),"signature":"00"}),
    ] {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/ws/private", app.ws_url))
            .await
            .unwrap();
        ws.send(Message::text(msg.to_string())).await.unwrap();
        let got = next_json(&mut ws).await;
        assert_eq!(got["type"], "error", "{msg}: {got}");
        assert!(got["error"]["code"].is_string());
        let closed = next_json(&mut ws).await;
        assert_eq!(closed["close"], true, "{closed}");
    }
    // An API key signing the WebSocket auth payload; the bare query-string
    // form (what a REST request would sign) is refused.
    let (_, key) = app
        .send(
            Method::POST,
            "/api/v1/api-keys",
            &a,
            Some(&json!({"permissions":["read"]})),
        )
        .await;
    let api_key = key["api_key"].as_str().unwrap();
    let secret = key["secret"].as_str().unwrap();
    let ts = now_ms();
    let auth_with = |payload: String| {
        let signature = exchange_gateway::auth::keys::sign(secret, payload.as_bytes());
        json!({"op":"auth","api_key":api_key,"timestamp":ts,"signature":signature}).to_string()
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/ws/private", app.ws_url))
        .await
        .unwrap();
    ws.send(Message::text(auth_with(format!(
        "api_key={api_key}&timestamp={ts}"
    ))))
    .await
    .unwrap();
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["type"], "error", "{refused}");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/ws/private", app.ws_url))
        .await
        .unwrap();
    ws.send(Message::text(auth_with(
        exchange_gateway::ws::ws_auth_payload(api_key, ts),
    )))
    .await
    .unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type":"authenticated","user_id":alice})
    );
}

/// A TCP proxy in front of Redis whose connections can be cut and refused,
/// to take Redis away from one gateway only.
struct CutProxy {
    url: String,
    down: tokio::sync::watch::Sender<bool>,
}

impl CutProxy {
    async fn start(redis_url: &str) -> Self {
        let target = redis_url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let (down, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *rx.borrow() {
                    continue;
                }
                let mut rx = rx.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|d| *d) => {}
                    }
                });
            }
        });
        Self { url, down }
    }

    fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

#[tokio::test]
async fn after_a_pubsub_outage_each_connection_is_told_to_resync() {
    let env_redis = std::env::var("REDIS_URL").unwrap();
    let proxy = CutProxy::start(&env_redis).await;
    let proxy_url = proxy.url.clone();
    let app = spawn_with(move |c| c.redis.url = exchange_common::Secret::new(proxy_url)).await;
    let (alice, a) = user(&app, "alice@example.com").await;
    app.wait_subscriber_up().await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/ws/private?token={a}", app.ws_url))
            .await
            .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "authenticated");
    publish(&app, alice, &json!({"type":"order","data":{"id":1}})).await;
    assert_eq!(next_json(&mut ws).await["seq"], 1);

    proxy.set_down(true);
    let mut degraded = Value::Null;
    for _ in 0..100 {
        let (status, body) = read(
            app.client
                .get(format!("{}/ready", app.url))
                .send()
                .await
                .unwrap(),
        )
        .await;
        if status == 503 && body["dependencies"]["privateEventsConsumer"] == "down" {
            degraded = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        degraded["status"], "degraded",
        "/ready never showed the subscriber down"
    );
    // Published while nobody is subscribed: lost, hence the resync.
    publish(&app, alice, &json!({"type":"order","data":{"id":2}})).await;
    proxy.set_down(false);
    let resync = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let m = next_json(&mut ws).await;
            if m["type"] == "resync" {
                return m;
            }
        }
    })
    .await
    .expect("a resync after the subscriber came back");
    assert_eq!(resync, json!({"type":"resync","seq":2}));
    app.wait_subscriber_up().await;
    publish(&app, alice, &json!({"type":"order","data":{"id":3}})).await;
    let m = next_json(&mut ws).await;
    assert_eq!(
        (m["seq"].clone(), m["data"]["id"].clone()),
        (json!(3), json!(3))
    );
}

#[tokio::test]
async fn market_data_is_relayed_from_the_marketdata_service_unchanged() {
    let md = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let md_url = format!("http://{}", md.local_addr().unwrap());
    let md_url2 = md_url.clone();
    let app = spawn_with(move |c| c.gateway.marketdata_url = md_url2).await;
    let shutdown = exchange_common::Shutdown::new();
    tokio::spawn(exchange_marketdata::run(
        std::sync::Arc::new(app.env.config.clone()),
        exchange_marketdata::Listeners { http: md },
        shutdown.clone(),
    ));
    app.seed_market().await;
    for path in [
        "BTC-USDT/depth?limit=5",
        "BTC-USDT/trades",
        "BTC-USDT/klines?interval=1m&limit=10",
        "BTC-USDT/ticker",
        "NOPE-USDT/depth",
        "BTC-USDT/depth?limit=oops",
    ] {
        let mut direct = (0, Value::Null);
        for _ in 0..50 {
            match app
                .client
                .get(format!("{md_url}/api/v1/markets/{path}"))
                .send()
                .await
            {
                Ok(r) => {
                    direct = read(r).await;
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let via = read(
            app.client
                .get(format!("{}/api/v1/markets/{path}", app.url))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!(
            (200..500).contains(&direct.0),
            "marketdata answered {direct:?} for {path}"
        );
        assert_eq!(via, direct, "{path}");
    }
    shutdown.trigger();
}

#[tokio::test]
async fn a_client_that_does_not_read_is_cut_off_without_delaying_another() {
    let app = spawn().await;
    let (alice, a) = user(&app, "alice@example.com").await;
    app.wait_subscriber_up().await;
    let url = format!("{}/ws/private?token={a}", app.ws_url);
    let (mut slow, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut fast, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next_json(&mut slow).await["type"], "authenticated");
    assert_eq!(next_json(&mut fast).await["type"], "authenticated");
    // ~30 MB for a client that reads nothing: more than the socket buffers
    // and the send queue hold.
    let total: u64 = 1_500;
    let filler = "x".repeat(20_000);
    let reader = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut worst = Duration::ZERO;
        for expected in 1..=total {
            let m = next_json(&mut fast).await;
            assert_eq!(m["seq"], expected, "consecutive for the fast client");
            let sent = m["data"]["sent_ms"].as_u64().unwrap();
            worst = worst.max(Duration::from_millis(now_ms().saturating_sub(sent)));
        }
        (started.elapsed(), worst)
    });
    let client = redis::Client::open(app.env.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("{}:private:{alice}", app.env.redis_prefix);
    for i in 0..total {
        let payload = json!({"type":"order","data":{"i":i,"sent_ms":now_ms(),"filler":filler}});
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(payload.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (took, worst) = reader.await.unwrap();
    assert!(
        worst < Duration::from_secs(2),
        "the fast client's worst delivery latency was {worst:?} (all in {took:?})"
    );
    // The slow client gets what was buffered, then the close.
    let mut received = 0;
    let mut closed = false;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), slow.next()).await {
        match msg {
            Ok(Message::Text(_)) => received += 1,
            Ok(Message::Close(frame)) => {
                closed = true;
                if let Some(f) = frame {
                    assert_eq!(u16::from(f.code), 1008, "{f:?}");
                }
                break;
            }
            Ok(_) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the slow client was disconnected");
    assert!(
        received < total,
        "it was cut off before the end: {received}"
    );
}

#[tokio::test]
async fn header_limits_and_no_cors_by_default() {
    let app = spawn().await;
    let mut req = app.client.get(format!("{}/api/v1/assets", app.url));
    for i in 0..80 {
        req = req.header(format!("x-filler-{i}"), "1");
    }
    let (status, body) = read(req.send().await.unwrap()).await;
    assert_eq!((status, error_code(&body)), (431, "HEADERS_TOO_LARGE"));
    let r = app
        .client
        .request(Method::OPTIONS, format!("{}/api/v1/orders", app.url))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(
        !r.headers().contains_key("access-control-allow-origin"),
        "no CORS grant: {:?}",
        r.headers()
    );
    let r = app
        .client
        .get(format!("{}/api/v1/assets", app.url))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn a_private_session_ends_when_its_token_expires() {
    let app = spawn().await;
    let (alice, login) = user(&app, "alice@example.com").await;
    // The same open session as a real login, but a token that expired 3 s
    // ago: still inside the 5 s leeway, so accepted, for ~2 s.
    let claims = login.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims).unwrap(),
    )
    .unwrap();
    let now = chrono::Utc::now().timestamp();
    let key = jsonwebtoken::EncodingKey::from_secret(
        app.env.config.gateway.auth_token_secret.expose().as_bytes(),
    );
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": alice.to_string(), "sid": claims["sid"], "iat": now - 3600, "exp": now - 3, "typ": "access"}),
        &key,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/ws/private?token={token}", app.ws_url))
            .await
            .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "authenticated");
    let err = next_json(&mut ws).await;
    assert_eq!(err["error"]["code"], "TOKEN_EXPIRED", "{err}");
    assert_eq!(next_json(&mut ws).await["close"], true);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// Concurrent placements are coalesced into batch calls to the order
/// service; every client still gets exactly what the single route answers:
/// its own order, its own rejection code, idempotency on client_order_id.
#[tokio::test]
async fn concurrent_placements_each_get_their_own_answer() {
    let app = spawn_with(|c| {
        c.gateway.rate_limit_orders_per_second = 100_000;
        c.gateway.rate_limit_ip_per_second = 100_000;
    })
    .await;
    app.seed_market().await;
    let (alice, a) = user(&app, "alice@example.com").await;
    app.deposit(alice, "USDT", "1000").await;
    let (status, _) = app.place(&a, &buy("100", "0.01")).await;
    assert_eq!(status, 201);
    let n = 80;
    let bodies: Vec<Value> = (0..n)
        .map(|i| match i % 4 {
            0 => buy("100", "0.01"),
            1 => buy("100.001", "0.01"),
            2 => buy("100000", "1"),
            _ => {
                let mut b = buy("100", "0.01");
                b["client_order_id"] = json!("same");
                b
            }
        })
        .collect();
    let results = futures_util::future::join_all(bodies.iter().map(|b| app.place(&a, b))).await;
    let mut same_ids = std::collections::BTreeSet::new();
    let mut created_same = 0;
    for (i, (status, body)) in results.iter().enumerate() {
        match i % 4 {
            0 => assert_eq!((*status, &body["price"]), (201, &json!("100")), "{body}"),
            1 => assert_eq!(
                (*status, error_code(body)),
                (400, "PRICE_NOT_ON_TICK"),
                "{body}"
            ),
            2 => assert_eq!(
                (*status, error_code(body)),
                (400, "INSUFFICIENT_BALANCE"),
                "{body}"
            ),
            _ => {
                assert!(*status == 201 || *status == 200, "{status} {body}");
                assert_eq!(body["client_order_id"], "same", "{body}");
                created_same += usize::from(*status == 201);
                same_ids.insert(body["id"].as_i64().unwrap());
            }
        }
    }
    assert_eq!((created_same, same_ids.len()), (1, 1));
    // 1 + 20 + 1 orders of 1 USDT each.
    assert_eq!(order_count(&app).await, 22);
    assert_eq!(
        balances(&app, &a).await,
        json!([{"asset":"USDT","available":"978","locked":"22"}])
    );
}
