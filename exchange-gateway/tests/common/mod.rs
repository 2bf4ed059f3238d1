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
    let mut config = env.config.clone();
    tweak(&mut config);
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", http.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let listeners = exchange_gateway::Listeners { http, ws };
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
