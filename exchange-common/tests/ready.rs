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
    // An operator's curl on this machine: the peer every server records.
    let peer = axum::extract::ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 40000)));
    let response = router
        .oneshot(
            Request::get("/ready")
                .extension(peer)
                .body(Body::empty())
                .unwrap(),
        )
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

/// Why a backend is down (its host, the error) is told only to a caller
/// presenting `METRICS_TOKEN` when one is configured (a TCP proxy on this
/// machine makes internet clients look local); without one (dev), to a
/// loopback caller no proxy forwarded.
#[tokio::test]
async fn ready_errors_only_for_the_metrics_token_or_local_callers_in_dev() {
    use axum::extract::ConnectInfo;
    use exchange_common::config::Secret;
    use std::net::SocketAddr;

    let token = "m".repeat(40);
    let router = |metrics_token: Option<Secret>| {
        let dead_redis = Redis::with_prefix("redis://127.0.0.1:1", "x").unwrap();
        exchange_common::http::finish(
            exchange_common::http::skeleton(
                Readiness::new("test", None, Some(dead_redis)),
                metrics_token,
            ),
            "test",
        )
    };
    let ask = |router: axum::Router, peer: [u8; 4], bearer: Option<&str>, forwarded: bool| {
        let mut req =
            Request::get("/ready").extension(ConnectInfo(SocketAddr::from((peer, 40000))));
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if forwarded {
            // A reverse proxy on this machine relaying an internet client.
            req = req.header("x-forwarded-for", "203.0.113.9");
        }
        async move {
            let response = router
                .oneshot(req.body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 503);
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            let body = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap();
            assert_eq!(body["dependencies"]["redis"], "down");
            body.get("errors").map(|e| {
                let why = e["redis"].as_str().unwrap();
                assert!(why.starts_with("redis at 127.0.0.1:1: "), "{body}");
            })
        }
    };
    let prod = router(Some(Secret::new(token.clone())));
    for (peer, bearer, forwarded, shown) in [
        ([203, 0, 113, 9], None, false, false),
        ([203, 0, 113, 9], Some("nope"), false, false),
        // Loopback alone is not enough: a TCP proxy sends no header.
        ([127, 0, 0, 1], None, false, false),
        ([127, 0, 0, 1], None, true, false),
        ([203, 0, 113, 9], Some(token.as_str()), false, true),
        ([127, 0, 0, 1], Some(token.as_str()), true, true),
    ] {
        let seen = ask(prod.clone(), peer, bearer, forwarded).await.is_some();
        assert_eq!(
            seen, shown,
            "token configured: {peer:?} {bearer:?} {forwarded}"
        );
    }
    let dev = router(None);
    for (peer, forwarded, shown) in [
        ([127, 0, 0, 1], false, true),
        ([127, 0, 0, 1], true, false),
        ([203, 0, 113, 9], false, false),
    ] {
        let seen = ask(dev.clone(), peer, None, forwarded).await.is_some();
        assert_eq!(seen, shown, "no token: {peer:?} {forwarded}");
    }
}

/// `/ready` answers from the latest probe: hammering it probes the
/// backends at most once per [`exchange_common::ready::REPORT_MAX_AGE`].
#[tokio::test]
async fn hammering_ready_costs_no_backend_work() {
    let dead_redis = Redis::with_prefix("redis://127.0.0.1:1", "x").unwrap();
    let readiness = Readiness::new("test", None, Some(dead_redis));
    let started = std::time::Instant::now();
    for _ in 0..100 {
        let (status, _) = get_ready(readiness.clone()).await;
        assert_eq!(status, 503);
    }
    let most =
        started.elapsed().as_millis() / exchange_common::ready::REPORT_MAX_AGE.as_millis() + 1;
    assert!(
        u128::from(readiness.probes()) <= most,
        "{} probes in {:?}",
        readiness.probes(),
        started.elapsed()
    );
}
