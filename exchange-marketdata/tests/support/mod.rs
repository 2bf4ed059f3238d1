//! The marketdata service started on port 0 against a fresh database (BTC-USDT
//! seeded) and Redis prefix, its clients, and event batches published the way
//! matching does: shared by the service and Binance-stream tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use exchange_common::Shutdown;
use exchange_common::redis::Redis;
use exchange_common::testing::{TestEnv, TestMarket, seed_market, test_env};
use exchange_domain::event::{Event, EventBatch};
use exchange_domain::money::parse_units;
use exchange_domain::order::{OrderId, Side, TradeId, UserId};
use exchange_domain::symbol::MarketSymbol;
use exchange_marketdata::{Listeners, run};
use futures_util::{SinkExt as _, StreamExt as _};
use redis::AsyncCommands as _;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const MARKET: &str = "BTC-USDT";
pub const BASE_SCALE: u8 = 8;
pub const QUOTE_SCALE: u8 = 6;

pub struct Svc {
    pub addr: std::net::SocketAddr,
    pub db: PgPool,
    pub redis: Redis,
    pub http: reqwest::Client,
    pub shutdown: Shutdown,
    pub _env: TestEnv,
}

impl Drop for Svc {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub fn sym() -> MarketSymbol {
    MarketSymbol::parse(MARKET).unwrap()
}

/// A fresh database with BTC (8) / USDT (6) and the BTC-USDT market.
pub async fn seeded() -> (TestEnv, PgPool, Redis) {
    let env = test_env().await;
    let db = PgPool::connect(&env.db_url).await.unwrap();
    seed_market(&db, &TestMarket::default()).await;
    let redis = Redis::with_prefix(&env.redis_url, &env.redis_prefix).unwrap();
    (env, db, redis)
}

pub async fn start(env: TestEnv, db: PgPool, redis: Redis, origins: &[&str]) -> Svc {
    start_with(env, db, redis, origins, |_| {}).await
}

/// [`start`] with the configuration changed by `tweak` first.
pub async fn start_with(
    env: TestEnv,
    db: PgPool,
    redis: Redis,
    origins: &[&str],
    tweak: impl FnOnce(&mut exchange_common::Config),
) -> Svc {
    let mut config = env.config.clone();
    config.marketdata.ws_allow_origins = origins.iter().map(|s| (*s).to_owned()).collect();
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    tokio::spawn(run(
        Arc::new(config),
        Listeners { http: listener },
        shutdown.clone(),
    ));
    let http = reqwest::Client::new();
    let svc = Svc {
        addr,
        db,
        redis,
        http,
        shutdown,
        _env: env,
    };
    // Ready once the consumer loop beats (markets rebuilt, group in place).
    for _ in 0..200 {
        if let Ok(r) = svc.http.get(svc.url("/ready")).send().await
            && r.status() == 200
        {
            return svc;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("marketdata did not become ready");
}

impl Svc {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    pub async fn store(&self, batch: &EventBatch) {
        store_batch(&self.db, batch).await;
    }

    pub async fn xadd(&self, batch: &EventBatch) {
        xadd_batch(&self.redis, batch).await;
    }

    /// As matching does: store, then publish.
    pub async fn publish(&self, batch: &EventBatch) {
        publish_batch(&self.db, &self.redis, batch).await;
    }

    pub async fn ws(&self, path: &str, origin: Option<&str>) -> Result<Ws, tungstenite::Error> {
        let mut req = format!("ws://{}{path}", self.addr)
            .into_client_request()
            .unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
            .await
            .map(|(ws, _)| ws)
    }
}

pub fn level(side: Side, price: &str, qty: &str) -> Event {
    Event::BookLevel {
        side,
        price: parse_units(price, QUOTE_SCALE).unwrap(),
        quantity: parse_units(qty, BASE_SCALE).unwrap(),
    }
}

pub fn trade(id: u64, side: Side, price: &str, qty: &str) -> Event {
    let price = parse_units(price, QUOTE_SCALE).unwrap();
    let quantity = parse_units(qty, BASE_SCALE).unwrap();
    Event::Trade {
        trade_id: TradeId(id),
        maker_order_id: OrderId(1),
        maker_user_id: UserId(1),
        taker_order_id: OrderId(2),
        taker_user_id: UserId(2),
        taker_side: side,
        price,
        quantity,
        quote_amount: price * quantity / 10u128.pow(u32::from(BASE_SCALE)),
        maker_fee: 0,
        taker_fee: 0,
    }
}

pub fn batch(seq: u64, time_ms: u64, events: Vec<Event>) -> EventBatch {
    EventBatch {
        market: sym(),
        seq,
        time_ms,
        events,
    }
}

pub async fn recv_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("stream open")
            .expect("valid frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Stores `batch` in `event_batches`, as matching does first.
pub async fn store_batch(db: &PgPool, batch: &EventBatch) {
    sqlx::query(
        "INSERT INTO event_batches (market, seq, time_ms, events) VALUES ($1, $2, $3, $4::text::jsonb)",
    )
    .bind(batch.market.to_string())
    .bind(i64::try_from(batch.seq).unwrap())
    .bind(i64::try_from(batch.time_ms).unwrap())
    .bind(serde_json::to_string(&batch.events).unwrap())
    .execute(db)
    .await
    .unwrap();
}

/// Stores many batches in one statement (the service applies only stored
/// batches: a stream entry is just a claim).
pub async fn store_batches(db: &PgPool, batches: &[EventBatch]) {
    let markets: Vec<String> = batches.iter().map(|b| b.market.to_string()).collect();
    let seqs: Vec<i64> = batches
        .iter()
        .map(|b| i64::try_from(b.seq).unwrap())
        .collect();
    let times: Vec<i64> = batches
        .iter()
        .map(|b| i64::try_from(b.time_ms).unwrap())
        .collect();
    let events: Vec<String> = batches
        .iter()
        .map(|b| serde_json::to_string(&b.events).unwrap())
        .collect();
    sqlx::query(
        "INSERT INTO event_batches (market, seq, time_ms, events)
         SELECT m, s, t, e::jsonb FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[]) AS u(m, s, t, e)",
    )
    .bind(&markets)
    .bind(&seqs)
    .bind(&times)
    .bind(&events)
    .execute(db)
    .await
    .unwrap();
}

/// Adds `batch` to `<prefix>:events`, as matching does after storing it.
pub async fn xadd_batch(redis: &Redis, batch: &EventBatch) {
    let _: String = redis
        .conn()
        .xadd(
            redis.events_stream(),
            "*",
            &[("batch", serde_json::to_string(batch).unwrap())],
        )
        .await
        .unwrap();
}

/// As matching does: store, then publish.
pub async fn publish_batch(db: &PgPool, redis: &Redis, batch: &EventBatch) {
    store_batch(db, batch).await;
    xadd_batch(redis, batch).await;
}
