//! Order service and matching together: what the order service journals
//! and publishes is what the engine accepts (reserves, units), and the
//! resulting batches land in `event_batches` and on the events stream.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use exchange_common::Shutdown;
use exchange_common::testing::{TestMarket, seed_market, test_env};
use exchange_domain::{Event, FinalStatus, OrderId};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;

struct Stack {
    db: PgPool,
    redis: exchange_common::redis::Redis,
    order_url: String,
    token: String,
    http: reqwest::Client,
    shutdown: Shutdown,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn stack() -> Stack {
    let env = test_env().await;
    let db = PgPool::connect(&env.db_url).await.unwrap();
    seed_market(&db, &TestMarket::default()).await;
    let config = Arc::new(env.config.clone());
    let shutdown = Shutdown::new();
    let order = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let order_url = format!("http://{}", order.local_addr().unwrap());
    tokio::spawn(exchange_order::run(
        config.clone(),
        exchange_order::Listeners { http: order },
        shutdown.clone(),
    ));
    let matching = TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(exchange_matching::run(
        config.clone(),
        exchange_matching::Listeners { http: matching },
        shutdown.clone(),
    ));
    let redis =
        exchange_common::redis::Redis::with_prefix(&env.redis_url, &env.redis_prefix).unwrap();
    Stack {
        db,
        redis,
        order_url,
        token: config.internal_token.expose().to_owned(),
        http: reqwest::Client::new(),
        shutdown,
    }
}

impl Stack {
    async fn user(&self, usdt: &str, btc: &str) -> i64 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (email, password_hash) VALUES (gen_random_uuid()::text || '@x.test', 'x') RETURNING id",
        )
        .fetch_one(&self.db)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO balances (user_id, asset, available) VALUES ($1, 'USDT', $2::numeric), ($1, 'BTC', $3::numeric)",
        )
        .bind(id)
        .bind(usdt)
        .bind(btc)
        .execute(&self.db)
        .await
        .unwrap();
        id
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.order_url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    async fn batches(&self) -> Vec<Vec<Event>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT events::text FROM event_batches WHERE market = 'BTC-USDT' ORDER BY seq",
        )
        .fetch_all(&self.db)
        .await
        .unwrap();
        rows.iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    }

    async fn wait_batches(&self, n: usize) -> Vec<Vec<Event>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let b = self.batches().await;
            if b.len() >= n {
                return b;
            }
            assert!(Instant::now() < deadline, "only {} of {n} batches", b.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn orders_placed_over_http_match_in_the_engine() {
    let s = stack().await;
    let seller = s.user("0", "1").await;
    let buyer = s.user("1000", "0").await;
    let (st, sell) = s
        .send(
            reqwest::Method::POST,
            "/internal/v1/orders",
            Some(json!({"user_id": seller, "market": "BTC-USDT", "side": "sell", "type": "limit", "price": "500", "quantity": "0.5"})),
        )
        .await;
    assert_eq!(st, 201, "{sell}");
    let (st, buy) = s
        .send(
            reqwest::Method::POST,
            "/internal/v1/orders",
            Some(json!({"user_id": buyer, "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "510", "quantity": "0.2", "time_in_force": "IOC"})),
        )
        .await;
    assert_eq!(st, 201, "{buy}");
    let batches = s.wait_batches(2).await;
    let sell_id = OrderId(sell["id"].as_u64().unwrap());
    let buy_id = OrderId(buy["id"].as_u64().unwrap());
    assert_eq!(
        batches[0][0],
        Event::OrderAccepted {
            order_id: sell_id,
            user_id: exchange_domain::UserId(seller.unsigned_abs())
        }
    );
    let trade = batches[1]
        .iter()
        .find_map(|e| match e {
            Event::Trade {
                maker_order_id,
                taker_order_id,
                price,
                quantity,
                quote_amount,
                ..
            } => Some((
                *maker_order_id,
                *taker_order_id,
                *price,
                *quantity,
                *quote_amount,
            )),
            _ => None,
        })
        .expect("a trade");
    // 0.2 BTC at the maker's 500 = 100 USDT.
    assert_eq!(
        trade,
        (sell_id, buy_id, 500_000_000, 20_000_000, 100_000_000)
    );
    // The IOC buy reserved 510 × 0.2 = 102 USDT; it is done and releases 2.
    let done = batches[1].iter().find_map(|e| match e {
        Event::OrderDone {
            order_id,
            status,
            release,
            ..
        } if *order_id == buy_id => Some((*status, *release)),
        _ => None,
    });
    assert_eq!(done, Some((FinalStatus::Filled, 2_000_000)));

    // Cancel the rest of the sell: the engine releases 0.3 BTC.
    let (st, _) = s
        .send(
            reqwest::Method::DELETE,
            &format!("/internal/v1/orders/{}?user_id={seller}", sell_id.0),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let batches = s.wait_batches(3).await;
    let done = batches[2].iter().find_map(|e| match e {
        Event::OrderDone {
            order_id,
            status,
            release,
            ..
        } if *order_id == sell_id => Some((*status, *release)),
        _ => None,
    });
    assert_eq!(done, Some((FinalStatus::Canceled, 30_000_000)));
}

/// Placements accepted per second and how fast matching keeps up (prints
/// figures). `cargo test -p exchange-matching --test pipeline -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures"]
async fn pipeline_throughput() {
    let s = Arc::new(stack().await);
    let n_users = 200;
    let total: usize = std::env::var("BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut users = Vec::new();
    for _ in 0..n_users {
        users.push(s.user("100000000", "100000").await);
    }
    let users = Arc::new(users);
    // Orders per HTTP request: 1 uses the single route, more the batch route.
    let per_request: usize = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let started = Instant::now();
    let concurrency = if per_request > 1 { 16 } else { 256 };
    let requests = total.div_ceil(per_request);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (s, users) = (s.clone(), users.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = w;
            while r < requests {
                let orders: Vec<Value> = (r * per_request..((r + 1) * per_request).min(total))
                    .map(|i| {
                        let side = if i % 2 == 0 { "buy" } else { "sell" };
                        // Prices overlap so that about half the orders trade.
                        let price = 100 + (i % 7);
                        json!({"user_id": users[i % users.len()], "market": "BTC-USDT", "side": side,
                               "type": "limit", "price": price.to_string(), "quantity": "0.1"})
                    })
                    .collect();
                if per_request == 1 {
                    let (st, v) = s.send(reqwest::Method::POST, "/internal/v1/orders", orders.into_iter().next()).await;
                    assert_eq!(st, 201, "{v}");
                } else {
                    let (st, v) = s
                        .send(reqwest::Method::POST, "/internal/v1/orders/batch", Some(json!({"orders": orders})))
                        .await;
                    assert_eq!(st, 200, "{v}");
                    assert!(v.as_array().unwrap().iter().all(|r| r["status"] == 201), "{v}");
                }
                r += concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM event_batches")
            .fetch_one(&s.db)
            .await
            .unwrap();
        if usize::try_from(n).unwrap() >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "matching did not catch up: {n} of {total}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let matched = started.elapsed();
    println!(
        "{total} orders ({per_request} per request): accepted in {:.2}s ({:.0}/s), matched and stored in {:.2}s ({:.0}/s)",
        accepted.as_secs_f64(),
        total as f64 / accepted.as_secs_f64(),
        matched.as_secs_f64(),
        total as f64 / matched.as_secs_f64(),
    );
}

#[tokio::test]
async fn losing_the_redis_streams_loses_no_command() {
    let s = stack().await;
    let seller = s.user("0", "10").await;
    let buyer = s.user("100000", "0").await;
    let place = |user: i64, side: &str, price: &str| json!({"user_id": user, "market": "BTC-USDT", "side": side, "type": "limit", "price": price, "quantity": "1"});
    let (st, _) = s
        .send(
            reqwest::Method::POST,
            "/internal/v1/orders",
            Some(place(seller, "sell", "500")),
        )
        .await;
    assert_eq!(st, 201);
    s.wait_batches(1).await;
    // Redis loses both streams (and matching's consumer group with them).
    let mut conn = s.redis.conn();
    let _: i64 = redis::cmd("DEL")
        .arg(s.redis.orders_stream("BTC-USDT"))
        .arg(s.redis.events_stream())
        .query_async(&mut conn)
        .await
        .unwrap();
    let (st, _) = s
        .send(
            reqwest::Method::POST,
            "/internal/v1/orders",
            Some(place(seller, "sell", "501")),
        )
        .await;
    assert_eq!(st, 201);
    let (st, _) = s
        .send(
            reqwest::Method::POST,
            "/internal/v1/orders",
            Some(place(buyer, "buy", "501")),
        )
        .await;
    assert_eq!(st, 201);
    let batches = s.wait_batches(3).await;
    assert!(batches[2].iter().any(|e| matches!(
        e,
        Event::Trade {
            price: 500_000_000,
            ..
        }
    )));
}
