//! The order service against real Postgres and Redis: validation codes,
//! funds reservation, idempotency, concurrency, the journal and IDOR.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{balance, spawn, user_with};

fn limit(user: i64, side: &str, price: &str, qty: &str) -> Value {
    json!({"user_id": user, "market": "BTC-USDT", "side": side, "type": "limit", "price": price, "quantity": qty})
}

#[tokio::test]
async fn places_a_limit_order_locks_funds_journals_and_publishes() {
    let app = spawn().await;
    let u = user_with(&app.db, "1000", "2").await;
    let (status, order) = app.place(limit(u, "buy", "50000.01", "0.0002")).await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["market"], "BTC-USDT");
    assert_eq!(order["side"], "buy");
    assert_eq!(order["type"], "limit");
    assert_eq!(order["price"], "50000.01");
    assert_eq!(order["quantity"], "0.0002");
    assert_eq!(order["filled_quantity"], "0");
    assert_eq!(order["status"], "new");
    assert_eq!(order["time_in_force"], "GTC");
    assert_eq!(order["stp"], "none");
    assert!(order["client_order_id"].is_null());
    assert!(order["average_price"].is_null());
    assert!(order["created_at"].as_i64().unwrap() > 1_600_000_000_000);
    // 50000.01 × 0.0002 = 10.000002 USDT locked.
    assert_eq!(
        balance(&app.db, u, "USDT").await,
        ("989.999998".into(), "10.000002".into())
    );
    let id = order["id"].as_i64().unwrap();
    let (locked, seq): (String, i64) =
        sqlx::query_as("SELECT trim_scale(locked_remaining)::text, seq FROM orders WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((locked.as_str(), seq), ("10.000002", 1));
    assert_eq!(app.journal("BTC-USDT").await, vec![(1, "place".to_owned())]);
    let stream = app.stream("BTC-USDT").await;
    assert_eq!(stream.len(), 1);
    assert_eq!(stream[0]["seq"], 1);
    assert_eq!(stream[0]["command"]["order_id"], id);
    assert_eq!(stream[0]["command"]["reserved"], "10000002");
    assert_eq!(stream[0]["command"]["price"], "50000010000");

    // The same order reads back identically.
    let (s, got) = app
        .call(
            Method::GET,
            &format!("/internal/v1/orders/{id}?user_id={u}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(got, order);
    let (s, list) = app
        .call(
            Method::GET,
            &format!("/internal/v1/orders?user_id={u}&status=open"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(list, json!([order]));
    let (s, closed) = app
        .call(
            Method::GET,
            &format!("/internal/v1/orders?user_id={u}&status=closed&market=BTC-USDT"),
            None,
        )
        .await;
    assert_eq!((s, closed), (200, json!([])));
    let (s, fills) = app
        .call(
            Method::GET,
            &format!("/internal/v1/fills?user_id={u}"),
            None,
        )
        .await;
    assert_eq!((s, fills), (200, json!([])));
}

#[tokio::test]
async fn validation_codes_and_nothing_changes() {
    let app = spawn().await;
    let u = user_with(&app.db, "1000", "2").await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (limit(u, "buy", "100.001", "1"), 400, "PRICE_NOT_ON_TICK"),
        (
            limit(u, "buy", "100", "0.00001"),
            400,
            "QUANTITY_NOT_ON_STEP",
        ),
        (limit(u, "buy", "1", "0.5"), 400, "NOTIONAL_TOO_SMALL"),
        (limit(u, "buy", "1e5", "1"), 400, "INVALID_AMOUNT"),
        (limit(u, "buy", "-5", "1"), 400, "INVALID_AMOUNT"),
        (limit(u, "buy", "100.0000001", "1"), 400, "INVALID_AMOUNT"),
        (
            json!({"user_id": u, "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "100"}),
            400,
            "INVALID_ORDER",
        ),
        (
            json!({"user_id": u, "market": "ETH-USDT", "side": "buy", "type": "limit", "price": "1", "quantity": "1"}),
            404,
            "MARKET_NOT_FOUND",
        ),
        (
            json!({"user_id": u, "market": "BTC-USDT", "side": "up", "type": "limit", "price": "1", "quantity": "1"}),
            400,
            "INVALID_REQUEST",
        ),
        (
            json!({"user_id": u, "market": "BTC-USDT", "side": "buy", "type": "limit", "price": 1, "quantity": "1"}),
            400,
            "INVALID_REQUEST",
        ),
        (
            json!({"user_id": u, "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "1", "quantity": "1", "extra": 1}),
            400,
            "INVALID_REQUEST",
        ),
        (
            json!({"user_id": u, "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "100", "quantity": "1", "client_order_id": ""}),
            400,
            "INVALID_ORDER",
        ),
        (limit(u, "buy", "100000", "1"), 400, "INSUFFICIENT_BALANCE"),
        (
            limit(u, "sell", "100", "2.0001"),
            400,
            "INSUFFICIENT_BALANCE",
        ),
    ];
    for (body, status, code) in cases {
        let (s, v) = app.place(body.clone()).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{body} -> {v}"
        );
    }
    // Malformed JSON and a missing token.
    let resp = app
        .http
        .post(format!("{}/internal/v1/orders", app.url))
        .bearer_auth(&app.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = app
        .http
        .post(format!("{}/internal/v1/orders", app.url))
        .json(&limit(u, "buy", "100", "1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = app
        .http
        .get(format!("{}/internal/v1/orders?user_id={u}", app.url))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    assert_eq!(
        balance(&app.db, u, "USDT").await,
        ("1000".into(), "0".into())
    );
    assert_eq!(balance(&app.db, u, "BTC").await, ("2".into(), "0".into()));
    assert!(app.journal("BTC-USDT").await.is_empty());
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(orders, 0);
}

#[tokio::test]
async fn client_order_id_is_idempotent_also_within_one_batch() {
    let app = spawn().await;
    let u = user_with(&app.db, "1000", "0").await;
    let mut body = limit(u, "buy", "100", "1");
    body["client_order_id"] = json!("my-1");
    let (s1, first) = app.place(body.clone()).await;
    let (s2, second) = app.place(body.clone()).await;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(first, second);

    // Ten concurrent copies of a new id land in one or a few batches.
    body["client_order_id"] = json!("my-2");
    let calls = (0..10).map(|_| app.place(body.clone()));
    let results = futures_util::future::join_all(calls).await;
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(created, 1, "{results:?}");
    let ids: std::collections::BTreeSet<i64> = results
        .iter()
        .map(|(_, v)| v["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        balance(&app.db, u, "USDT").await,
        ("800".into(), "200".into())
    );
    assert_eq!(app.journal("BTC-USDT").await.len(), 2);
}

#[tokio::test]
async fn concurrent_placements_never_overspend_and_the_journal_is_gapless() {
    let app = spawn().await;
    let u = user_with(&app.db, "100", "0").await;
    // Each order locks 10 USDT: exactly 10 of 50 fit.
    let calls = (0..50).map(|_| app.place(limit(u, "buy", "10", "1")));
    let results = futures_util::future::join_all(calls).await;
    let accepted = results.iter().filter(|(s, _)| *s == 201).count();
    let refused = results
        .iter()
        .filter(|(s, v)| *s == 400 && v["error"]["code"] == "INSUFFICIENT_BALANCE")
        .count();
    assert_eq!((accepted, refused), (10, 40), "{results:?}");
    assert_eq!(
        balance(&app.db, u, "USDT").await,
        ("0".into(), "100".into())
    );
    let locked: String = sqlx::query_scalar(
        "SELECT trim_scale(sum(locked_remaining))::text FROM orders WHERE user_id = $1",
    )
    .bind(u)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(locked, "100");

    // Many users at once: seqs are 1..=n without a gap, the stream has each once.
    let users: Vec<i64> =
        futures_util::future::join_all((0..20).map(|_| user_with(&app.db, "1000", "1"))).await;
    let calls = users.iter().enumerate().map(|(i, u)| {
        let side = if i % 2 == 0 { "buy" } else { "sell" };
        app.place(limit(*u, side, "100", "0.5"))
    });
    for (s, v) in futures_util::future::join_all(calls).await {
        assert_eq!(s, 201, "{v}");
    }
    let journal = app.journal("BTC-USDT").await;
    let seqs: Vec<i64> = journal.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    let stream_seqs: std::collections::BTreeSet<u64> = app
        .stream("BTC-USDT")
        .await
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(stream_seqs, (1..=30).collect());
    let last: i64 =
        sqlx::query_scalar("SELECT last_seq FROM market_sequences WHERE market = 'BTC-USDT'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(last, 30);
}

#[tokio::test]
async fn cancel_amend_and_reads_are_scoped_to_the_owner() {
    let app = spawn().await;
    let alice = user_with(&app.db, "1000", "0").await;
    let mallory = user_with(&app.db, "1000", "0").await;
    let (_, order) = app.place(limit(alice, "buy", "100", "1")).await;
    let id = order["id"].as_i64().unwrap();

    for (method, path) in [
        (
            Method::GET,
            format!("/internal/v1/orders/{id}?user_id={mallory}"),
        ),
        (
            Method::DELETE,
            format!("/internal/v1/orders/{id}?user_id={mallory}"),
        ),
        (
            Method::GET,
            format!("/internal/v1/orders/999999?user_id={alice}"),
        ),
    ] {
        let (s, v) = app.call(method, &path, None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (404, Some("ORDER_NOT_FOUND")),
            "{path}"
        );
    }
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/internal/v1/orders/{id}"),
            Some(json!({"user_id": mallory, "price": "200"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("ORDER_NOT_FOUND"))
    );
    let (s, list) = app
        .call(
            Method::GET,
            &format!("/internal/v1/orders?user_id={mallory}"),
            None,
        )
        .await;
    assert_eq!((s, list), (200, json!([])));
    // Text PostgreSQL cannot store is the caller's mistake: 400, not 503.
    for path in ["/internal/v1/orders", "/internal/v1/fills"] {
        let (s, v) = app
            .call(
                Method::GET,
                &format!("{path}?user_id={alice}&market=BTC%00USDT"),
                None,
            )
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("INVALID_REQUEST")),
            "{path}"
        );
    }

    // Amend up: 1 BTC at 150. The whole new reserve (150) is locked on
    // top of the order's 100; matching hands the old 100 back.
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/internal/v1/orders/{id}"),
            Some(json!({"user_id": alice, "price": "150"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        balance(&app.db, alice, "USDT").await,
        ("750".into(), "250".into())
    );
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/internal/v1/orders/{id}"),
            Some(json!({"user_id": alice, "price": "100000"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("INSUFFICIENT_BALANCE"))
    );

    // Cancel is journaled; the order is returned as it is until matching confirms.
    let (s, v) = app
        .call(
            Method::DELETE,
            &format!("/internal/v1/orders/{id}?user_id={alice}"),
            None,
        )
        .await;
    assert_eq!(
        (s, v["id"].as_i64(), v["status"].as_str()),
        (200, Some(id), Some("new"))
    );
    let (s, v) = app
        .call(
            Method::POST,
            "/internal/v1/orders/cancel-all",
            Some(json!({"user_id": alice, "market": "BTC-USDT"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let types: Vec<String> = app
        .journal("BTC-USDT")
        .await
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(types, ["place", "amend", "cancel", "cancel_all"]);
    let stream = app.stream("BTC-USDT").await;
    assert_eq!(stream[1]["command"]["additional_reserve"], "150000000");
    assert_eq!(
        stream[2]["command"],
        json!({"type": "cancel", "order_id": id, "user_id": alice})
    );

    // A final order: cancel answers it as it is and journals nothing.
    sqlx::query(
        "UPDATE orders SET status = 'expired', reason = 'IMMEDIATE_REMAINDER' WHERE id = $1",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .unwrap();
    let (s, v) = app
        .call(
            Method::DELETE,
            &format!("/internal/v1/orders/{id}?user_id={alice}"),
            None,
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str(), v["reason"].as_str()),
        (200, Some("canceled"), Some("IMMEDIATE_REMAINDER"))
    );
    assert_eq!(app.journal("BTC-USDT").await.len(), 4);
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/internal/v1/orders/{id}"),
            Some(json!({"user_id": alice, "quantity": "2"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("ORDER_NOT_OPEN"))
    );
}

#[tokio::test]
async fn market_status_is_stored_and_journaled_and_enforced() {
    let app = spawn().await;
    let u = user_with(&app.db, "1000", "0").await;
    let (s, v) = app
        .call(
            Method::PATCH,
            "/internal/v1/markets/BTC-USDT/status",
            Some(json!({"status": "halted", "audit": audit_context()})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "halted");
    // The change's audit row names the operator and request the gateway sent.
    let row: (String, String, String, String, Option<String>) = sqlx::query_as(
        "SELECT actor, action, target, details::text, ip FROM audit_log WHERE request_id = 'req-halt-1'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "alice".to_owned(),
            "market.status".to_owned(),
            "BTC-USDT".to_owned(),
            r#"{"status":"halted"}"#.to_owned(),
            Some("203.0.113.9".to_owned())
        )
    );
    assert!(
        exchange_store::audit::verify(&app.db)
            .await
            .unwrap()
            .is_ok()
    );
    let status: String = sqlx::query_scalar("SELECT status FROM markets WHERE symbol = 'BTC-USDT'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(status, "halted");
    assert_eq!(
        app.journal("BTC-USDT").await,
        vec![(1, "set_status".to_owned())]
    );
    let (s, v) = app.place(limit(u, "buy", "100", "1")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("MARKET_NOT_TRADING"))
    );
    let (s, v) = app
        .call(
            Method::PATCH,
            "/internal/v1/markets/NOPE-USDT/status",
            Some(json!({"status": "trading", "audit": audit_context()})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("MARKET_NOT_FOUND"))
    );
    let (s, _) = app
        .call(
            Method::PATCH,
            "/internal/v1/markets/BTC-USDT/status",
            Some(json!({"status": "closed", "audit": audit_context()})),
        )
        .await;
    assert_eq!(s, 400);
    // A change without its audit context is refused, and changes nothing.
    let (s, _) = app
        .call(
            Method::PATCH,
            "/internal/v1/markets/BTC-USDT/status",
            Some(json!({"status": "trading"})),
        )
        .await;
    assert_eq!(s, 400);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

fn audit_context() -> serde_json::Value {
    json!({"actor": "alice", "request_id": "req-halt-1", "ip": "203.0.113.9"})
}

#[tokio::test]
async fn market_buy_by_quantity_reserves_the_whole_available_quote() {
    let app = spawn().await;
    let u = user_with(&app.db, "123.45", "0").await;
    let (s, v) = app
        .place(json!({"user_id": u, "market": "BTC-USDT", "side": "buy", "type": "market", "quantity": "1"}))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        balance(&app.db, u, "USDT").await,
        ("0".into(), "123.45".into())
    );
    let stream = app.stream("BTC-USDT").await;
    assert_eq!(stream[0]["command"]["reserved"], "123450000");
}

#[tokio::test]
async fn the_republisher_puts_missing_commands_back_on_the_stream() {
    let app = spawn().await;
    let u = user_with(&app.db, "1000", "0").await;
    for _ in 0..3 {
        assert_eq!(app.place(limit(u, "buy", "100", "1")).await.0, 201);
    }
    // Redis loses the stream.
    let mut conn = app.redis.conn();
    let _: i64 = redis::cmd("DEL")
        .arg(app.redis.orders_stream("BTC-USDT"))
        .query_async(&mut conn)
        .await
        .unwrap();
    // Young commands are left alone (they may be in flight)...
    let db = sqlx::PgPool::connect(&app.env.db_url).await.unwrap();
    assert_eq!(
        exchange_order::republish::republish_once(&db, &app.redis)
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(
        exchange_order::republish::REPUBLISH_GRACE + std::time::Duration::from_millis(200),
    )
    .await;
    // A forged tail entry with a high seq (anyone who can write to Redis can
    // add one) does not make them look published...
    let forged = serde_json::json!({"market": "BTC-USDT", "seq": 1000, "time_ms": 1,
                                    "command": {"type": "cancel_all", "user_id": u}});
    let _: String = redis::cmd("XADD")
        .arg(app.redis.orders_stream("BTC-USDT"))
        .arg("*")
        .arg("command")
        .arg(forged.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    // ...older ones come back, in order, once.
    assert_eq!(
        exchange_order::republish::republish_once(&db, &app.redis)
            .await
            .unwrap(),
        3
    );
    let seqs: Vec<u64> = app
        .stream("BTC-USDT")
        .await
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1000, 1, 2, 3]);
    assert_eq!(
        exchange_order::republish::republish_once(&db, &app.redis)
            .await
            .unwrap(),
        0
    );
    // Commands matching has processed are not republished.
    sqlx::query(
        "INSERT INTO event_batches (market, seq, time_ms, events) VALUES ('BTC-USDT', 3, 0, '[]')",
    )
    .execute(&db)
    .await
    .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(app.redis.orders_stream("BTC-USDT"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        exchange_order::republish::republish_once(&db, &app.redis)
            .await
            .unwrap(),
        0
    );
}

/// The batch linger applies only while another batch is in flight: a
/// request to an idle service is applied at once, and requests arriving
/// during a batch are gathered into the next one.
#[tokio::test]
async fn an_idle_service_never_lingers_and_a_busy_one_gathers_requests() {
    let app = support::spawn_with(exchange_order::batch::BatchOptions {
        linger: std::time::Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    let u = user_with(&app.db, "1000000", "0").await;
    let started = std::time::Instant::now();
    let (s, v) = app.place(limit(u, "buy", "10", "1")).await;
    assert_eq!(s, 201, "{v}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1000),
        "an idle service waited {:?}",
        started.elapsed()
    );
    // Many at once: the first batch starts at once, the rest linger behind
    // it and are applied together, so they all answer, and in few batches.
    let calls = (0..40).map(|_| app.place(limit(u, "buy", "10", "1")));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|(s, _)| *s == 201), "{results:?}");
    let batches: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT time_ms) FROM order_commands WHERE seq > 1")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(
        batches <= 3,
        "40 concurrent placements took {batches} batches"
    );
}

#[tokio::test]
async fn a_full_queue_answers_overloaded_and_a_dead_database_unavailable() {
    let app = support::spawn_with(exchange_order::batch::BatchOptions {
        queue_len_max: 1,
        batch_len_max: 1,
        workers: 1,
        ..Default::default()
    })
    .await;
    let u = user_with(&app.db, "1000000", "0").await;
    let calls = (0..100).map(|_| app.place(limit(u, "buy", "10", "1")));
    let results = futures_util::future::join_all(calls).await;
    let overloaded = results
        .iter()
        .filter(|(s, v)| *s == 503 && v["error"]["code"] == "OVERLOADED")
        .count();
    let accepted = results.iter().filter(|(s, _)| *s == 201).count();
    assert!(overloaded > 0, "{results:?}");
    assert_eq!(accepted + overloaded, 100, "{results:?}");
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(usize::try_from(orders).unwrap(), accepted);

    // The service's database goes away: retryable 503s, never a 500.
    let mut config = app.env.config.clone();
    config.db.url = exchange_common::Secret::new("postgres://postgres@127.0.0.1:1/nowhere");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(exchange_order::run(
        std::sync::Arc::new(config),
        exchange_order::Listeners { http: listener },
        app.shutdown.clone(),
    ));
    let http = reqwest::Client::new();
    let requests = [
        (
            Method::POST,
            "/internal/v1/orders".to_owned(),
            Some(limit(u, "buy", "10", "1")),
        ),
        (
            Method::GET,
            format!("/internal/v1/orders?user_id={u}"),
            None,
        ),
        (
            Method::GET,
            format!("/internal/v1/orders/1?user_id={u}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/internal/v1/orders/1?user_id={u}"),
            None,
        ),
        (Method::GET, format!("/internal/v1/fills?user_id={u}"), None),
    ];
    let calls = requests.into_iter().map(|(method, path, body)| {
        let mut req = http
            .request(method, format!("{url}{path}"))
            .bearer_auth(&app.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap();
            (path, status, v)
        }
    });
    for (path, status, v) in futures_util::future::join_all(calls).await {
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (503, Some("UNAVAILABLE")),
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_batch_of_placements_answers_each_like_the_single_route() {
    let app = spawn().await;
    let u = user_with(&app.db, "25", "0").await;
    let mut dup = limit(u, "buy", "10", "1");
    dup["client_order_id"] = json!("b-1");
    let orders = json!({"orders": [
        dup.clone(),
        limit(u, "buy", "10.001", "1"),
        dup.clone(),
        limit(u, "buy", "10", "1"),
        limit(u, "buy", "10", "1"),
    ]});
    let (s, v) = app
        .call(Method::POST, "/internal/v1/orders/batch", Some(orders))
        .await;
    assert_eq!(s, 200, "{v}");
    let statuses: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 400, 200, 201, 400], "{v}");
    assert_eq!(v[1]["error"]["code"], "PRICE_NOT_ON_TICK");
    assert_eq!(v[4]["error"]["code"], "INSUFFICIENT_BALANCE");
    assert_eq!(v[0]["order"]["id"], v[2]["order"]["id"]);
    assert_eq!(balance(&app.db, u, "USDT").await, ("5".into(), "20".into()));
    let (s, v) = app
        .call(
            Method::POST,
            "/internal/v1/orders/batch",
            Some(json!({"orders": []})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("INVALID_REQUEST"))
    );
}

/// A balance in an asset whose scale the service does not know is never
/// read with a guessed scale: the request fails with a stable 503 code and
/// nothing moves. (Here an order row names a reserve asset of no market.)
#[tokio::test]
async fn an_unknown_asset_scale_is_an_error_never_a_guess() {
    let app = spawn().await;
    let u = user_with(&app.db, "1000", "0").await;
    let (s, order) = app.place(limit(u, "buy", "100", "1")).await;
    assert_eq!(s, 201, "{order}");
    let id = order["id"].as_i64().unwrap();
    sqlx::query("INSERT INTO assets (symbol, scale) VALUES ('XYZ', 2)")
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO balances (user_id, asset, available) VALUES ($1, 'XYZ', 1000)")
        .bind(u)
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE orders SET reserve_asset = 'XYZ' WHERE id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/internal/v1/orders/{id}"),
            Some(json!({"user_id": u, "price": "150"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("ASSET_SCALE_UNKNOWN")),
        "{v}"
    );
    assert_eq!(
        balance(&app.db, u, "XYZ").await,
        ("1000".into(), "0".into())
    );
    assert_eq!(
        balance(&app.db, u, "USDT").await,
        ("900".into(), "100".into())
    );
    assert_eq!(app.journal("BTC-USDT").await, vec![(1, "place".to_owned())]);
}

/// The connection dies while `COMMIT` is in flight (a deferred trigger
/// terminates the session at commit): the service cannot know whether the
/// batch committed, so it must not say "nothing applied". It answers a
/// retryable 503 `OUTCOME_UNKNOWN`; the retry with the same
/// `client_order_id` is safe and yields exactly one order.
#[tokio::test]
async fn a_connection_lost_during_commit_answers_outcome_unknown() {
    let app = spawn().await;
    let u = user_with(&app.db, "1000", "0").await;
    sqlx::raw_sql(
        "CREATE FUNCTION die_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.client_order_id = 'die-at-commit' THEN
                 PERFORM pg_terminate_backend(pg_backend_pid());
             END IF;
             RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER die_at_commit AFTER INSERT ON orders
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION die_at_commit();",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let mut body = limit(u, "buy", "100", "1");
    body["client_order_id"] = json!("die-at-commit");
    let (s, v) = app.place(body.clone()).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("OUTCOME_UNKNOWN")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may or may not have been applied"),
        "{v}"
    );
    sqlx::raw_sql("DROP TRIGGER die_at_commit ON orders")
        .execute(&app.db)
        .await
        .unwrap();
    let (s, first) = app.place(body.clone()).await;
    assert_eq!(s, 201, "{first}");
    let (s, again) = app.place(body).await;
    assert_eq!((s, &again["id"]), (200, &first["id"]), "{again}");
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE user_id = $1")
        .bind(u)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(orders, 1);
    assert_eq!(
        balance(&app.db, u, "USDT").await,
        ("900".into(), "100".into())
    );
}

/// A market order by base quantity has no price; its minimum notional is
/// checked at the last trade price (none yet: nothing to compare, it
/// passes), and a stop-market order's at its stop price. A refusal locks
/// and journals nothing.
#[tokio::test]
async fn market_orders_by_quantity_meet_the_min_notional_at_the_last_price() {
    let app = spawn().await;
    let u = user_with(&app.db, "1000", "1").await;
    let market = |side: &str, qty: &str| json!({"user_id": u, "market": "BTC-USDT", "side": side, "type": "market", "quantity": qty});
    // Never traded: no reference price.
    let (s, v) = app.place(market("sell", "0.0001")).await;
    assert_eq!(s, 201, "{v}");
    sqlx::query(
        "INSERT INTO trades (market, id, seq, price, quantity, quote_amount, taker_side,
            maker_order_id, taker_order_id, maker_user_id, taker_user_id, maker_fee, taker_fee, time_ms)
         VALUES ('BTC-USDT', 1, 1, 100, 0.01, 1, 'buy', 1, 2, 1, 2, 0, 0, 1700000000000)",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let before = (
        balance(&app.db, u, "BTC").await,
        balance(&app.db, u, "USDT").await,
    );
    // 0.0001 × 100 = 0.01 USDT < 1.
    for body in [market("sell", "0.0001"), market("buy", "0.0099")] {
        let (s, v) = app.place(body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("NOTIONAL_TOO_SMALL")),
            "{v}"
        );
    }
    let mut stop = market("sell", "0.0001");
    stop["type"] = json!("stop_market");
    stop["stop_price"] = json!("90");
    let (s, v) = app.place(stop).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("NOTIONAL_TOO_SMALL")),
        "{v}"
    );
    assert_eq!(
        (
            balance(&app.db, u, "BTC").await,
            balance(&app.db, u, "USDT").await
        ),
        before
    );
    assert_eq!(app.journal("BTC-USDT").await.len(), 1);
    // 0.01 × 100 = 1: enough.
    let (s, v) = app.place(market("sell", "0.01")).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(app.journal("BTC-USDT").await.len(), 2);
}

/// The seeded BTC-USDT market as the engine sees it.
fn engine_spec() -> exchange_domain::MarketSpec {
    use exchange_domain::{Asset, AssetSymbol, FeeRate, MarketSpecFields, MarketSymbol};
    exchange_domain::MarketSpec::new(MarketSpecFields {
        symbol: MarketSymbol::parse("BTC-USDT").unwrap(),
        base: Asset {
            symbol: AssetSymbol::parse("BTC").unwrap(),
            scale: 8,
        },
        quote: Asset {
            symbol: AssetSymbol::parse("USDT").unwrap(),
            scale: 6,
        },
        price_tick: 10_000,
        qty_step: 10_000,
        min_qty: 10_000,
        min_notional: 1_000_000,
        maker_fee: FeeRate::from_ppm(1_000).unwrap(),
        taker_fee: FeeRate::from_ppm(2_000).unwrap(),
    })
    .unwrap()
}

/// Amends answered 200 while clearing has settled nothing (the worst lag):
/// the second amend raises the price again after the first lowered it, so
/// the order holds less in the engine than `locked_remaining` says. The
/// journal replayed through the real engine applies every amend — none is
/// refused for its reserve — and the funds add up once the engine's
/// releases are counted.
#[tokio::test]
async fn amends_are_funded_however_far_clearing_lags() {
    let app = spawn().await;
    let u = user_with(&app.db, "1000", "0").await;
    let (_, order) = app.place(limit(u, "buy", "100", "1")).await;
    let id = order["id"].as_i64().unwrap();
    for (price, qty) in [(Some("60"), None), (Some("90"), None), (None, Some("2"))] {
        let mut body = json!({"user_id": u});
        if let Some(p) = price {
            body["price"] = json!(p);
        }
        if let Some(q) = qty {
            body["quantity"] = json!(q);
        }
        let (s, v) = app
            .call(
                Method::PATCH,
                &format!("/internal/v1/orders/{id}"),
                Some(body),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let mut book = exchange_engine::OrderBook::new(engine_spec());
    let mut released = 0u128;
    for entry in app.stream("BTC-USDT").await {
        let c: exchange_domain::SequencedCommand = serde_json::from_value(entry).unwrap();
        for e in book.apply(c.seq, c.time_ms, &c.command).unwrap() {
            match e {
                exchange_domain::Event::CommandRejected { reason, .. } => {
                    panic!("seq {}: the engine refused {reason:?}", c.seq)
                }
                exchange_domain::Event::Amended { released: r, .. } => released += r,
                _ => {}
            }
        }
    }
    let o = book
        .order(exchange_domain::OrderId(id.unsigned_abs()))
        .unwrap();
    assert_eq!(
        (o.price, o.open_quantity, o.reserve),
        (Some(90_000_000), 200_000_000, 180_000_000),
        "{o:?}"
    );
    // Locked by the order service minus what the engine released = what
    // the order holds: 2 BTC × 90 = 180 USDT.
    let (_, locked) = balance(&app.db, u, "USDT").await;
    let locked = exchange_domain::money::parse_units(&locked, 6).unwrap();
    assert_eq!(locked - released, 180_000_000);
}
