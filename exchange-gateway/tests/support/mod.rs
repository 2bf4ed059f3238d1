//! Spawns a real gateway on port 0 against a fresh database and Redis prefix.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use exchange_common::testing::{TestEnv, test_env};
use exchange_common::{Config, Shutdown};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const ADMIN: &str = "dev-admin-token-change-me-please-00000";
pub const PASSWORD: &str = "correct horse battery";

pub struct App {
    pub url: String,
    /// The admin listener's URL when the test set `ADMIN_HTTP_ADDR`.
    pub admin_url: Option<String>,
    pub ws_url: String,
    pub env: TestEnv,
    pub client: reqwest::Client,
    pub db: sqlx::PgPool,
    shutdown: Shutdown,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub async fn spawn() -> App {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> App {
    let env = test_env().await;
    // The real order service, in-process, on its own port and the same
    // database and Redis prefix.
    let order_http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let order_url = format!("http://{}", order_http.local_addr().unwrap());
    let shutdown = Shutdown::new();
    tokio::spawn(exchange_order::run(
        Arc::new(env.config.clone()),
        exchange_order::Listeners { http: order_http },
        shutdown.clone(),
    ));
    let mut config = env.config.clone();
    config.gateway.order_service_url = order_url;
    // Nothing listens there unless a test says otherwise.
    config.gateway.marketdata_url = format!("http://{}", dead_addr().await);
    // Every client of a test is 127.0.0.1: the per-address connection cap
    // would otherwise refuse a test's concurrent requests (tests of the
    // cap set their own).
    config.http.connections_per_ip_max = 100_000;
    tweak(&mut config);
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", http.local_addr().unwrap());
    let ws_url = format!("ws://{}", ws.local_addr().unwrap());
    // A test that sets ADMIN_HTTP_ADDR gets the admin listener on a free port.
    let admin = match config.gateway.admin_http_addr {
        Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        None => None,
    };
    let admin_url = admin
        .as_ref()
        .map(|l| format!("http://{}", l.local_addr().unwrap()));
    let listeners = exchange_gateway::Listeners { http, ws, admin };
    tokio::spawn(exchange_gateway::run(
        Arc::new(config),
        listeners,
        shutdown.clone(),
    ));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    for _ in 0..200 {
        if client.get(format!("{url}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let db = sqlx::PgPool::connect(&env.db_url).await.unwrap();
    App {
        url,
        admin_url,
        ws_url,
        env,
        client,
        db,
        shutdown,
    }
}

impl App {
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        read(r).await
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        read(r).await
    }

    /// The gateway's `/metrics` text (no metrics token configured).
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(ADMIN)
            .json(body)
            .send()
            .await
            .unwrap();
        read(r).await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        read(req.send().await.unwrap()).await
    }

    /// Credits `amount` of `asset` to `user_id` through the admin API,
    /// under a reference of its own.
    pub async fn deposit(&self, user_id: i64, asset: &str, amount: &str) {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/admin/v1/deposits",
                &json!({"user_id": user_id, "asset": asset, "amount": amount,
                        "reference": unique_reference("deposit")}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// Places an order, retrying while the order service has not yet seen
    /// a market created a moment ago (it caches markets briefly).
    pub async fn place(&self, token: &str, order: &Value) -> (u16, Value) {
        let mut last = (0, Value::Null);
        for _ in 0..50 {
            last = self
                .send(reqwest::Method::POST, "/api/v1/orders", token, Some(order))
                .await;
            if error_code(&last.1) != "MARKET_NOT_FOUND" {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }

    /// Waits until `/ready` reports the private events subscriber up.
    pub async fn wait_subscriber_up(&self) {
        for _ in 0..100 {
            let r = self.client.get(format!("{}/ready", self.url)).send().await;
            if let Ok(r) = r {
                let (_, body) = read(r).await;
                if body["dependencies"]["privateEventsConsumer"] == "up" {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("privateEventsConsumer never came up");
    }

    pub async fn register(&self, email: &str) -> i64 {
        let (status, body) = self
            .post(
                "/api/v1/auth/register",
                &json!({"email": email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["user_id"].as_i64().unwrap()
    }

    pub async fn login(&self, email: &str) -> String {
        let (status, body) = self
            .post(
                "/api/v1/auth/login",
                &json!({"email": email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// BTC (8) and USDT (6) assets and the BTC-USDT market.
    pub async fn seed_market(&self) {
        use reqwest::Method;
        assert_eq!(
            self.admin(
                Method::POST,
                "/admin/v1/assets",
                &json!({"symbol":"BTC","scale":8})
            )
            .await
            .0,
            201
        );
        assert_eq!(
            self.admin(
                Method::POST,
                "/admin/v1/assets",
                &json!({"symbol":"USDT","scale":6})
            )
            .await
            .0,
            201
        );
        let (status, body) = self
            .admin(
                Method::POST,
                "/admin/v1/markets",
                &json!({"symbol":"BTC-USDT","base":"BTC","quote":"USDT","price_tick":"0.01","qty_step":"0.0001",
                        "min_notional":"1","maker_fee":"0.001","taker_fee":"0.002"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
}

/// Matching and clearing in-process beside `app`'s gateway and order
/// service: the whole pipeline, until the returned shutdown is triggered.
pub async fn start_pipeline(app: &App) -> Shutdown {
    let shutdown = Shutdown::new();
    let config = Arc::new(app.env.config.clone());
    let m = TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(exchange_matching::run(
        config.clone(),
        exchange_matching::Listeners { http: m },
        shutdown.clone(),
    ));
    let c = TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(exchange_clearing::run(
        config,
        exchange_clearing::Listeners { http: c },
        shutdown.clone(),
    ));
    shutdown
}

/// A reference no other deposit of this test process uses.
pub fn unique_reference(what: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("test-{what}-{}-{n}", std::process::id())
}

/// A loopback address where nothing listens.
/// An address that refuses connections: a socket bound without `listen`,
/// kept open for the rest of the test process. (A listener bound and
/// dropped freed its port, and a parallel test's server could get it and
/// answer 404 where this address must be dead.)
pub async fn dead_addr() -> std::net::SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    addr
}

pub async fn read(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// A client WebSocket of the tests.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text message as JSON (pings and pongs skipped); any other
/// frame comes back as `{"other": .., "close": ..}` for the test to judge.
pub async fn next_json(ws: &mut Ws) -> Value {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("stream open")
            .expect("no error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => return json!({"other": other.to_string(), "close": other.is_close()}),
        }
    }
}

/// An API key and its secret.
pub struct Key {
    pub api_key: String,
    pub secret: String,
}

/// A registered user with an API key of `perms`.
pub async fn user_with_key(app: &App, email: &str, perms: &[&str]) -> (i64, Key) {
    let user_id = app.register(email).await;
    let token = app.login(email).await;
    let (status, body) = app
        .send(
            reqwest::Method::POST,
            "/api/v1/api-keys",
            &token,
            Some(&json!({"permissions": perms})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    (
        user_id,
        Key {
            api_key: body["api_key"].as_str().unwrap().to_owned(),
            secret: body["secret"].as_str().unwrap().to_owned(),
        },
    )
}
