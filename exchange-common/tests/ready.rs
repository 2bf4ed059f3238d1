//! `/ready` names the dependency that is down and answers 503 `degraded`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use exchange_common::ready::Readiness;
use exchange_common::redis::Redis;
use tower::ServiceExt as _;

async fn get_ready(readiness: Readiness) -> (u16, serde_json::Value) {
    let router =
        exchange_common::http::finish(exchange_common::http::skeleton(readiness, None), "test");
    let response = router
        .oneshot(Request::get("/ready").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn ready_reports_each_dependency_and_stale_consumers() {
    let env = exchange_common::testing::test_env().await;
    let db = sqlx::PgPool::connect(&env.db_url).await.unwrap();
    let good_redis = Redis::with_prefix(&env.redis_url, &env.redis_prefix).unwrap();
    // Nothing listens on port 1: Redis is "down".
    let dead_redis = Redis::with_prefix("redis://127.0.0.1:1", "x").unwrap();

    let ok = Readiness::new("test", Some(db.clone()), Some(good_redis));
    let beat = ok
        .heartbeats
        .register("eventStreamConsumer", "s", Duration::from_secs(5));
    let (status, body) = get_ready(ok.clone()).await;
    assert_eq!(status, 503, "a consumer that never beat is down: {body}");
    assert_eq!(body["dependencies"]["eventStreamConsumer"], "down");
    beat.beat();
    let (status, body) = get_ready(ok).await;
    assert_eq!(
        (status, body),
        (
            200,
            serde_json::json!({"status":"ok","dependencies":{"postgres":"up","redis":"up","eventStreamConsumer":"up"}})
        )
    );

    let started = std::time::Instant::now();
    let (status, body) = get_ready(Readiness::new("test", Some(db), Some(dead_redis))).await;
    assert_eq!(
        (status, &body["status"], &body["dependencies"]),
        (
            503,
            &serde_json::json!("degraded"),
            &serde_json::json!({"postgres":"up","redis":"down"})
        )
    );
    // Why it is down, naming the server.
    let why = body["errors"]["redis"].as_str().unwrap();
    assert!(why.starts_with("redis at 127.0.0.1:1: "), "{body}");
    assert!(body["errors"].get("postgres").is_none(), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "probes are bounded by a timeout"
    );

    let options =
        sqlx::postgres::PgConnectOptions::from_str("postgres://postgres@127.0.0.1:1/none").unwrap();
    let dead_db = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(options);
    let (status, body) = get_ready(Readiness::new("test", Some(dead_db), None)).await;
    assert_eq!(
        (status, &body["dependencies"]["postgres"]),
        (503, &serde_json::json!("down"))
    );
    let why = body["errors"]["postgres"].as_str().unwrap();
    assert!(why.starts_with("postgres at 127.0.0.1:1: "), "{body}");
}
