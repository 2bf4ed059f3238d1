//! The gateway over HTTP against real PostgreSQL and Redis (DB_URL, REDIS_URL).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::Method;
use serde_json::json;
use support::{ADMIN, PASSWORD, error_code, read, spawn, spawn_with};

#[tokio::test]
async fn register_login_and_duplicate_email() {
    let app = spawn().await;
    let id = app.register("Alice@Example.com").await;
    assert!(id > 0);
    let (status, body) = app
        .post(
            "/api/v1/auth/register",
            &json!({"email":"alice@example.com","password":PASSWORD}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (409, "EMAIL_TAKEN"),
        "emails are case-insensitive"
    );
    let (status, body) = app
        .post(
            "/api/v1/auth/register",
            &json!({"email":"bob@example.com","password":"short"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (400, "WEAK_PASSWORD"));
    let (status, body) = app
        .post(
            "/api/v1/auth/register",
            &json!({"email":"nul\u{0}@example.com","password":PASSWORD}),
        )
        .await;
    assert_eq!(
        status, 400,
        "a control character in an email is refused: {body}"
    );
    let (status, body) = app
        .post(
            "/api/v1/auth/register",
            &json!({"email":"not-an-email","password":PASSWORD}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (400, "INVALID_EMAIL"));

    let (status, body) = app
        .post(
            "/api/v1/auth/login",
            &json!({"email":"alice@example.com","password":PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_u64().unwrap() > 0);
    let token = body["access_token"].as_str().unwrap();
    let (status, body) = app.get_auth("/api/v1/account/balances", token).await;
    assert_eq!((status, body), (200, json!([])));
}

#[tokio::test]
async fn wrong_password_and_unknown_email_look_the_same() {
    let app = spawn().await;
    app.register("carol@example.com").await;
    // The cost floor: one Argon2 verification on this machine, right now.
    let passwords = exchange_gateway::auth::password::Passwords::new(8)
        .await
        .unwrap();
    let hash = passwords.hash("whatever-password").await.unwrap();
    let mut floor = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        passwords
            .verify("other-password", Some(&hash))
            .await
            .unwrap();
        floor = floor.min(t.elapsed());
    }
    for (email, password) in [
        ("carol@example.com", "wrong password!"),
        ("nobody@example.com", PASSWORD),
    ] {
        let t = Instant::now();
        let (status, body) = app
            .post(
                "/api/v1/auth/login",
                &json!({"email": email, "password": password}),
            )
            .await;
        let took = t.elapsed();
        assert_eq!(status, 401, "{body}");
        assert_eq!(
            body,
            json!({"error":{"code":"INVALID_CREDENTIALS","message":"email or password is wrong"}})
        );
        assert!(
            took >= floor / 2,
            "{email}: {took:?} is below the Argon2 floor {floor:?}: a shortcut leaks which emails exist"
        );
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn expired_tampered_and_unsigned_tokens_are_refused() {
    let app = spawn().await;
    let id = app.register("dave@example.com").await;
    let token = app.login("dave@example.com").await;
    let now = chrono::Utc::now().timestamp();
    let secret = app.env.config.gateway.auth_token_secret.expose().to_owned();
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": id.to_string(), "iat": now - 7200, "exp": now - 3600, "typ": "access"}),
        &key,
    )
    .unwrap();
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": id.to_string(), "typ": "access"}),
        &key,
    )
    .unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let other_user = b64(&format!(
        r#"{{"sub":"{}","iat":{now},"exp":{},"typ":"access"}}"#,
        id + 1,
        now + 3600
    ));
    let tampered = format!("{}.{other_user}.{}", parts[0], parts[2]);
    let alg_none = format!("{}.{other_user}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
    for (what, bad) in [
        ("expired", expired),
        ("no exp", no_exp),
        ("tampered", tampered),
        ("alg none", alg_none),
        ("garbage", "abc".into()),
    ] {
        let (status, body) = app.get_auth("/api/v1/account/balances", &bad).await;
        assert_eq!(
            (status, error_code(&body)),
            (401, "INVALID_TOKEN"),
            "{what}"
        );
    }
    let (status, body) = read(
        app.client
            .get(format!("{}/api/v1/account/balances", app.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, error_code(&body)), (401, "UNAUTHORIZED"));
    assert_eq!(
        app.get_auth("/api/v1/account/balances", &token).await.0,
        200
    );
}

#[tokio::test]
async fn admin_needs_the_admin_token() {
    let app = spawn().await;
    let url = format!("{}/admin/v1/assets", app.url);
    let body = json!({"symbol":"BTC","scale":8});
    let (status, err) = read(app.client.post(&url).json(&body).send().await.unwrap()).await;
    assert_eq!((status, error_code(&err)), (401, "UNAUTHORIZED"));
    let (status, err) = read(
        app.client
            .post(&url)
            .bearer_auth("dev-admin-token-wrong-wrong-wrong-00000")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, error_code(&err)), (403, "FORBIDDEN"));
    let user_token = {
        app.register("eve@example.com").await;
        app.login("eve@example.com").await
    };
    assert_eq!(
        read(
            app.client
                .post(&url)
                .bearer_auth(&user_token)
                .json(&body)
                .send()
                .await
                .unwrap()
        )
        .await
        .0,
        403
    );
    let assets: i64 = sqlx::query_scalar("SELECT count(*) FROM assets")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(assets, 0, "refused calls change nothing");
    assert_eq!(
        read(
            app.client
                .post(&url)
                .bearer_auth(ADMIN)
                .json(&body)
                .send()
                .await
                .unwrap()
        )
        .await
        .0,
        201
    );
}

#[tokio::test]
async fn metrics_need_the_token_when_one_is_set() {
    let app = spawn_with(|c| {
        c.metrics_token = Some(exchange_common::Secret::new(
            "metrics-token-for-tests-0123456789ab",
        ))
    })
    .await;
    let url = format!("{}/metrics", app.url);
    let (status, body) = read(app.client.get(&url).send().await.unwrap()).await;
    assert_eq!((status, error_code(&body)), (401, "UNAUTHORIZED"));
    assert_eq!(
        read(
            app.client
                .get(&url)
                .bearer_auth("wrong")
                .send()
                .await
                .unwrap()
        )
        .await
        .0,
        401
    );
    let _ = app
        .client
        .get(format!("{}/ready", app.url))
        .send()
        .await
        .unwrap();
    let text = app
        .client
        .get(&url)
        .bearer_auth("metrics-token-for-tests-0123456789ab")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("http_requests_total{service=\"gateway\",method=\"GET\",route=\"/ready\""),
        "{text}"
    );
    assert!(
        text.contains("# HELP http_request_duration_seconds"),
        "described"
    );
    assert!(
        text.contains("exchange_ready{service=\"gateway\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn health_ready_and_json_errors_for_unknown_routes() {
    let app = spawn().await;
    app.wait_subscriber_up().await;
    let (status, body) = read(
        app.client
            .get(format!("{}/health", app.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!({"status":"ok"})));
    let (status, body) = read(
        app.client
            .get(format!("{}/ready", app.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["dependencies"],
        json!({"postgres":"up","redis":"up","privateEventsConsumer":"up"})
    );
    let (status, body) = read(
        app.client
            .get(format!("{}/nope", app.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, error_code(&body)), (404, "NOT_FOUND"));
    let (status, body) = read(
        app.client
            .delete(format!("{}/api/v1/assets", app.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, error_code(&body)), (405, "METHOD_NOT_ALLOWED"));
    let r = app
        .client
        .get(format!("{}/health", app.url))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers().contains_key("x-request-id"),
        "request ids are returned"
    );
}

#[tokio::test]
async fn docs_are_off_by_default_and_on_when_enabled() {
    let app = spawn().await;
    assert_eq!(
        app.client
            .get(format!("{}/docs/", app.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        app.client
            .get(format!("{}/docs/openapi.json", app.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let app = spawn_with(|c| c.gateway.enable_docs = true).await;
    let (status, spec) = read(
        app.client
            .get(format!("{}/docs/openapi.json", app.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(spec["paths"]["/api/v1/auth/login"].is_object(), "{spec}");
}

#[tokio::test]
async fn deposit_shows_in_balances_and_the_ledger_balances() {
    let app = spawn().await;
    app.seed_market().await;
    let user = app.register("frank@example.com").await;
    let token = app.login("frank@example.com").await;
    let deposit = json!({"user_id": user, "asset": "BTC", "amount": "1.5", "reference": "tx-1"});
    let (status, body) = app
        .admin(Method::POST, "/admin/v1/deposits", &deposit)
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["amount"], "1.5");
    let (status, again) = app
        .admin(Method::POST, "/admin/v1/deposits", &deposit)
        .await;
    assert_eq!(
        (status, &again["id"]),
        (200, &body["id"]),
        "same reference credits once"
    );
    let (status, _) = app
        .admin(
            Method::POST,
            "/admin/v1/deposits",
            &json!({"user_id": user, "asset": "USDT", "amount": "100.25", "reference": "tx-2"}),
        )
        .await;
    assert_eq!(status, 201);

    let (status, balances) = app.get_auth("/api/v1/account/balances", &token).await;
    assert_eq!(status, 200);
    assert_eq!(
        balances,
        json!([{"asset":"BTC","available":"1.5","locked":"0"},{"asset":"USDT","available":"100.25","locked":"0"}])
    );
    // The ledger: per asset everything sums to zero, and the user's postings equal the balance.
    let sums: Vec<(String, String)> =
        sqlx::query_as("SELECT asset, trim_scale(sum(amount))::text FROM ledger_postings GROUP BY asset ORDER BY asset").fetch_all(&app.db).await.unwrap();
    assert_eq!(
        sums,
        vec![("BTC".into(), "0".into()), ("USDT".into(), "0".into())]
    );
    let held: Vec<(String, String)> = sqlx::query_as(
        "SELECT asset, trim_scale(sum(amount))::text FROM ledger_postings WHERE account_kind = 'user' AND user_id = $1 GROUP BY asset ORDER BY asset",
    )
    .bind(user)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        held,
        vec![
            ("BTC".into(), "1.5".into()),
            ("USDT".into(), "100.25".into())
        ]
    );

    // Refused deposits change nothing.
    for (bad, code) in [
        (
            json!({"user_id": user, "asset": "BTC", "amount": "1e5", "reference": "tx-bad"}),
            "INVALID_AMOUNT",
        ),
        (
            json!({"user_id": user, "asset": "BTC", "amount": "-1", "reference": "tx-bad"}),
            "INVALID_AMOUNT",
        ),
        (
            json!({"user_id": user, "asset": "BTC", "amount": "0.000000001", "reference": "tx-bad"}),
            "INVALID_AMOUNT",
        ),
        (
            json!({"user_id": user, "asset": "DOGE", "amount": "1", "reference": "tx-bad"}),
            "UNKNOWN_ASSET",
        ),
        (
            json!({"user_id": user, "asset": "BTC", "amount": "1", "reference": "tx-bad", "memo": "x"}),
            "INVALID_REQUEST",
        ),
    ] {
        let (status, body) = app.admin(Method::POST, "/admin/v1/deposits", &bad).await;
        assert_eq!((status, error_code(&body)), (400, code), "{bad}");
    }
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/deposits",
            &json!({"user_id": 999_999, "asset": "BTC", "amount": "1", "reference": "tx-bad"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (404, "USER_NOT_FOUND"));
    assert_eq!(
        app.get_auth("/api/v1/account/balances", &token).await.1,
        balances
    );
}

#[tokio::test]
async fn malformed_json_and_unknown_fields_are_400_and_change_nothing() {
    let app = spawn().await;
    let url = format!("{}/api/v1/auth/register", app.url);
    let send = |body: &'static str, content_type: &'static str| {
        app.client
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let (status, body) = read(
        send(
            r#"{"email":"g@example.com","password":"#,
            "application/json",
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, error_code(&body)), (400, "INVALID_JSON"));
    let (status, body) = read(
        send(
            r#"{"email":"g@example.com","password":"correct horse battery","is_admin":true}"#,
            "application/json",
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, error_code(&body)), (400, "INVALID_REQUEST"));
    let (status, body) = read(
        send(r#"{"email":"g@example.com"}"#, "application/json")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, error_code(&body)), (400, "INVALID_REQUEST"));
    let (status, body) = read(
        send(
            r#"{"email":"g@example.com","password":"correct horse battery"}"#,
            "text/plain",
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, error_code(&body)), (415, "UNSUPPORTED_MEDIA_TYPE"));
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(users, 0);
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/assets",
            &json!({"symbol":"btc","scale":8}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (400, "INVALID_SYMBOL"));
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/assets",
            &json!({"symbol":"BTC","scale":"8"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (400, "INVALID_REQUEST"));
}

#[tokio::test]
async fn markets_are_validated_listed_and_halted() {
    let app = spawn().await;
    app.seed_market().await;
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/assets",
            &json!({"symbol":"BTC","scale":8}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (409, "ASSET_EXISTS"));
    // 0.001 × 0.000001 BTC is not a whole number of USDT units (scale 6).
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/markets",
            &json!({"symbol":"USDT-BTC","base":"USDT","quote":"BTC","price_tick":"0.00000001","qty_step":"0.000001",
                    "min_notional":"0","maker_fee":"0.001","taker_fee":"0.002"}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "INVALID_MARKET"),
        "{body}"
    );
    let (status, markets) = read(
        app.client
            .get(format!("{}/api/v1/markets", app.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        markets,
        json!([{"symbol":"BTC-USDT","base":"BTC","quote":"USDT","price_tick":"0.01","qty_step":"0.0001","min_qty":"0.0001",
                "min_notional":"1","maker_fee":"0.001","taker_fee":"0.002","status":"trading"}])
    );
    let (status, body) = app
        .admin(
            Method::PATCH,
            "/admin/v1/markets/BTC-USDT",
            &json!({"status":"halted"}),
        )
        .await;
    assert_eq!((status, &body["status"]), (200, &json!("halted")));
    let (status, _) = app
        .admin(
            Method::PATCH,
            "/admin/v1/markets/ETH-USDT",
            &json!({"status":"halted"}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, assets) = read(
        app.client
            .get(format!("{}/api/v1/assets", app.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, assets),
        (
            200,
            json!([
                {"symbol":"BTC","scale":8,"network":null,"contract":null,"confirmations":1,
                 "withdraw_fee":"0","withdraw_min":"0","daily_withdraw_limit":null,"withdrawals_enabled":true},
                {"symbol":"USDT","scale":6,"network":null,"contract":null,"confirmations":1,
                 "withdraw_fee":"0","withdraw_min":"0","daily_withdraw_limit":null,"withdrawals_enabled":true}
            ])
        ),
        "the assets with their custody settings (off-chain by default)"
    );
}

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap()
}

#[tokio::test]
async fn api_key_signed_requests() {
    let app = spawn().await;
    app.register("henry@example.com").await;
    let token = app.login("henry@example.com").await;
    let create = |body: serde_json::Value| {
        app.client
            .post(format!("{}/api/v1/api-keys", app.url))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let (status, key) = read(
        create(json!({"label":"bot","permissions":["read","trade"]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    // Text Postgres cannot store is bad input: 400, never a 500.
    let (status, refused) = read(
        create(json!({"label":"bot\u{0}","permissions":["read"]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error_code(&refused)),
        (400, "INVALID_REQUEST"),
        "{refused}"
    );
    let api_key = key["api_key"].as_str().unwrap().to_owned();
    let secret = key["secret"].as_str().unwrap().to_owned();
    assert_eq!(key["permissions"], json!(["read", "trade"]));

    let signed_get = |api_key: &str, secret: &str, query: String| {
        let signature = exchange_gateway::auth::keys::sign(secret, query.as_bytes());
        app.client
            .get(format!(
                "{}/api/v1/account/balances?{query}&signature={signature}",
                app.url
            ))
            .header("X-MBX-APIKEY", api_key)
            .send()
    };
    let (status, body) = read(
        signed_get(&api_key, &secret, format!("timestamp={}", now_ms()))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!([])));
    let (status, body) = read(
        signed_get(
            &api_key,
            &secret,
            format!("recvWindow=60000&timestamp={}", now_ms()),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // A wrong secret, a stale timestamp, one from the future, a bad window.
    let (status, body) = read(
        signed_get(
            &api_key,
            "not-the-secret",
            format!("timestamp={}", now_ms()),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, error_code(&body)), (401, "INVALID_SIGNATURE"));
    let (status, body) = read(
        signed_get(&api_key, &secret, format!("timestamp={}", now_ms() - 6_000))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (401, "TIMESTAMP_OUT_OF_WINDOW")
    );
    let (status, body) = read(
        signed_get(&api_key, &secret, format!("timestamp={}", now_ms() + 5_000))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (401, "TIMESTAMP_OUT_OF_WINDOW")
    );
    let (status, body) = read(
        signed_get(
            &api_key,
            &secret,
            format!("recvWindow=60001&timestamp={}", now_ms()),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, error_code(&body)), (400, "INVALID_RECV_WINDOW"));
    // The signature covers the parameters: changing one after signing fails.
    let query = format!("timestamp={}", now_ms());
    let signature = exchange_gateway::auth::keys::sign(&secret, query.as_bytes());
    let r = app
        .client
        .get(format!(
            "{}/api/v1/account/balances?{query}&recvWindow=10000&signature={signature}",
            app.url
        ))
        .header("X-MBX-APIKEY", &api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(read(r).await.0, 401);
    // An API key cannot mint more keys.
    let query = format!("timestamp={}", now_ms());
    let signature = exchange_gateway::auth::keys::sign(&secret, query.as_bytes());
    let r = app
        .client
        .post(format!(
            "{}/api/v1/api-keys?{query}&signature={signature}",
            app.url
        ))
        .header("X-MBX-APIKEY", &api_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        read(r).await.0,
        401,
        "the body is part of the signed payload"
    );

    // IP allow-list: a key only for 10.0.0.1 is refused from loopback.
    let (status, restricted) =
        read(create(json!({"ip_allowlist":["10.0.0.1"]})).await.unwrap()).await;
    assert_eq!(status, 201);
    assert_eq!(restricted["permissions"], json!(["read"]));
    let (status, body) = read(
        signed_get(
            restricted["api_key"].as_str().unwrap(),
            restricted["secret"].as_str().unwrap(),
            format!("timestamp={}", now_ms()),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, error_code(&body)), (403, "IP_NOT_ALLOWED"));

    // Listing never shows secrets; deleting revokes.
    let (status, list) = app.get_auth("/api/v1/api-keys", &token).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains(&secret));
    let id = key["id"].as_i64().unwrap();
    let r = app
        .client
        .delete(format!("{}/api/v1/api-keys/{id}", app.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, _) = read(
        signed_get(&api_key, &secret, format!("timestamp={}", now_ms()))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    // Another user cannot delete someone else's key.
    app.register("ivy@example.com").await;
    let ivy = app.login("ivy@example.com").await;
    let other = restricted["id"].as_i64().unwrap();
    let r = app
        .client
        .delete(format!("{}/api/v1/api-keys/{other}", app.url))
        .bearer_auth(&ivy)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_ciphertext FROM api_keys LIMIT 1")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&stored).contains(restricted["secret"].as_str().unwrap()),
        "encrypted at rest"
    );
}
