//! Shared test harness: a running order service on a fresh database and
//! Redis prefix, with BTC (8) / USDT (6) and the BTC-USDT market.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use exchange_common::Shutdown;
use exchange_common::redis::Redis;
use exchange_common::testing::{TestEnv, TestMarket, seed_market, test_env};
use serde_json::Value;
use sqlx::PgPool;
use tokio::net::TcpListener;

pub struct App {
    pub env: TestEnv,
    pub url: String,
    pub http: reqwest::Client,
    pub db: PgPool,
    pub redis: Redis,
    pub token: String,
    pub shutdown: Shutdown,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A user with `usdt` and `btc` available (decimal text).
pub async fn user_with(db: &PgPool, usdt: &str, btc: &str) -> i64 {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO users (email, password_hash) VALUES (gen_random_uuid()::text || '@x.test', 'x') RETURNING id",
    )
    .fetch_one(db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO balances (user_id, asset, available) VALUES ($1, 'USDT', $2::numeric), ($1, 'BTC', $3::numeric)",
    )
    .bind(id)
    .bind(usdt)
    .bind(btc)
    .execute(db)
    .await
    .unwrap();
    id
}

pub async fn balance(db: &PgPool, user: i64, asset: &str) -> (String, String) {
    sqlx::query_as(
        "SELECT trim_scale(available)::text, trim_scale(locked)::text FROM balances WHERE user_id = $1 AND asset = $2",
    )
    .bind(user)
    .bind(asset)
    .fetch_one(db)
    .await
    .unwrap()
}

pub async fn spawn() -> App {
    spawn_with(exchange_order::batch::BatchOptions::default()).await
}

pub async fn spawn_with(options: exchange_order::batch::BatchOptions) -> App {
    let env = test_env().await;
    let db = PgPool::connect(&env.db_url).await.unwrap();
    seed_market(&db, &TestMarket::default()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let config = Arc::new(env.config.clone());
    let token = config.internal_token.expose().to_owned();
    tokio::spawn(exchange_order::run_with(
        config,
        exchange_order::Listeners { http: listener },
        shutdown.clone(),
        options,
    ));
    let redis = Redis::with_prefix(&env.redis_url, &env.redis_prefix).unwrap();
    App {
        env,
        url,
        http: reqwest::Client::new(),
        db,
        redis,
        token,
        shutdown,
    }
}

impl App {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn place(&self, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, "/internal/v1/orders", Some(body))
            .await
    }

    /// The journal of a market: (seq, command type).
    pub async fn journal(&self, market: &str) -> Vec<(i64, String)> {
        sqlx::query_as(
            "SELECT seq, command->>'type' FROM order_commands WHERE market = $1 ORDER BY seq",
        )
        .bind(market)
        .fetch_all(&self.db)
        .await
        .unwrap()
    }

    /// The commands on a market's order stream, in stream order.
    pub async fn stream(&self, market: &str) -> Vec<Value> {
        let mut conn = self.redis.conn();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.redis.orders_stream(market))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        reply
            .ids
            .iter()
            .map(|e| {
                let body: String = e.get("command").unwrap();
                serde_json::from_str(&body).unwrap()
            })
            .collect()
    }
}
