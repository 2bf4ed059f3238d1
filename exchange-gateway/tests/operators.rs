//! Operators, roles and the audit log, over HTTP against the real gateway
//! and order service: who may call which admin route, the audit row every
//! allowed change leaves (with its actor and request id), the hash chain
//! as a client recomputes it, tampering, deposit references, and the
//! separate admin listener.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{ADMIN, App, error_code, read, spawn, spawn_with};

/// Sends an admin call as `token` (none: no Authorization header) with
/// `x-request-id: request_id`.
async fn call(
    app: &App,
    base_url: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    request_id: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = app
        .client
        .request(method, format!("{base_url}{path}"))
        .header("x-request-id", request_id);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    read(req.send().await.unwrap()).await
}

/// Creates an operator as root; returns `(id, token)`.
async fn operator(app: &App, name: &str, role: &str) -> (i64, String) {
    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/operators",
            &json!({"name": name, "role": role}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["name"].as_str(), body["role"].as_str()),
        (Some(name), Some(role))
    );
    (
        body["id"].as_i64().unwrap(),
        body["token"].as_str().unwrap().to_owned(),
    )
}

/// The audit rows of one request: `(actor, action, target)`.
async fn audit_rows(app: &App, request_id: &str) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT actor, action, target FROM audit_log WHERE request_id = $1 ORDER BY id")
        .bind(request_id)
        .fetch_all(&app.db)
        .await
        .unwrap()
}

/// The whole log as the API pages it, recomputing the chain as a client
/// would: serde_json's `Value` keeps object keys sorted, so its compact
/// text is the canonical JSON (independently of the server's writer).
async fn walk_and_check_chain(app: &App, page_len: usize) -> usize {
    let mut prev = "0".repeat(64);
    let mut after_id = 0;
    let mut seen = 0;
    loop {
        let (status, page) = app
            .get_auth(
                &format!("/admin/v1/audit?after_id={after_id}&limit={page_len}"),
                ADMIN,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let page = page.as_array().unwrap().clone();
        if page.is_empty() {
            return seen;
        }
        assert!(page.len() <= page_len);
        for mut entry in page {
            let map = entry.as_object_mut().unwrap();
            let hash = map.remove("hash").unwrap();
            let prev_hash = map.remove("prev_hash").unwrap();
            assert_eq!(prev_hash, prev.as_str(), "entry {}", map["id"]);
            let canonical = serde_json::to_string(&entry).unwrap();
            let mut h = <sha2::Sha256 as sha2::Digest>::new();
            sha2::Digest::update(&mut h, prev.as_bytes());
            sha2::Digest::update(&mut h, canonical.as_bytes());
            let expected = hex::encode(sha2::Digest::finalize(h));
            assert_eq!(hash, expected.as_str(), "entry {canonical}");
            prev = expected;
            after_id = entry["id"].as_i64().unwrap();
            seen += 1;
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Route {
    GetAudit,
    PostDeposit,
    PostAsset,
    PatchMarket,
    PostOperator,
}

impl Route {
    const ALL: [Route; 5] = [
        Route::GetAudit,
        Route::PostDeposit,
        Route::PostAsset,
        Route::PatchMarket,
        Route::PostOperator,
    ];

    /// Method, path and body of this call by caller number `n` (each
    /// caller creates something of its own), and the audit row an allowed
    /// call leaves: `(action, target)`.
    fn request(
        self,
        n: usize,
        user_id: i64,
    ) -> (Method, String, Option<Value>, Option<(String, String)>) {
        match self {
            Route::GetAudit => (Method::GET, "/admin/v1/audit?limit=5".into(), None, None),
            Route::PostDeposit => (
                Method::POST,
                "/admin/v1/deposits".into(),
                Some(json!({"user_id": user_id, "asset": "USDT", "amount": "1",
                            "reference": format!("role-table-{n}")})),
                Some(("deposit.create".into(), format!("user:{user_id}"))),
            ),
            Route::PostAsset => {
                let symbol = format!("COIN{n}");
                (
                    Method::POST,
                    "/admin/v1/assets".into(),
                    Some(json!({"symbol": symbol, "scale": 8})),
                    Some(("asset.create".into(), symbol)),
                )
            }
            Route::PatchMarket => (
                Method::PATCH,
                "/admin/v1/markets/BTC-USDT".into(),
                Some(json!({"status": "trading"})),
                Some(("market.status".into(), "BTC-USDT".into())),
            ),
            Route::PostOperator => {
                let name = format!("made-by-{n}");
                (
                    Method::POST,
                    "/admin/v1/operators".into(),
                    Some(json!({"name": name, "role": "viewer"})),
                    Some(("operator.create".into(), name)),
                )
            }
        }
    }
}

#[tokio::test]
async fn each_role_is_allowed_and_refused_as_its_permissions_say_and_every_change_is_audited() {
    let app = spawn().await;
    app.seed_market().await;
    let user_id = app.register("role-table@example.com").await;
    let (_, viewer) = operator(&app, "vera", "viewer").await;
    let (_, support) = operator(&app, "sam", "support").await;
    let (_, finance) = operator(&app, "fin", "finance").await;
    let (_, admin) = operator(&app, "ada", "admin").await;
    let (gone_id, gone) = operator(&app, "gone", "admin").await;
    let (status, body) = app
        .admin(
            Method::DELETE,
            &format!("/admin/v1/operators/{gone_id}"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["deleted_at"].is_i64(), "{body}");
    let unknown = format!("exop_{}", "0".repeat(64));

    // (caller, token, actor, expected status per Route::ALL)
    let table: [(&str, Option<&str>, &str, [u16; 5]); 8] = [
        ("root", Some(ADMIN), "root", [200, 201, 201, 200, 201]),
        ("viewer", Some(&viewer), "vera", [200, 403, 403, 403, 403]),
        ("support", Some(&support), "sam", [200, 403, 403, 403, 403]),
        ("finance", Some(&finance), "fin", [200, 201, 403, 403, 403]),
        ("admin", Some(&admin), "ada", [200, 201, 201, 200, 201]),
        ("deleted", Some(&gone), "unknown", [403; 5]),
        ("unknown", Some(&unknown), "unknown", [403; 5]),
        ("none", None, "", [401; 5]),
    ];
    for (n, (caller, token, actor, expected)) in table.iter().enumerate() {
        for (route, want) in Route::ALL.into_iter().zip(expected) {
            let (method, path, body, audited) = route.request(n, user_id);
            let request_id = format!("rt-{caller}-{route:?}");
            let (status, answer) = call(
                &app,
                &app.url,
                method,
                &path,
                *token,
                &request_id,
                body.as_ref(),
            )
            .await;
            assert_eq!(status, *want, "{caller} {route:?}: {answer}");
            let rows = audit_rows(&app, &request_id).await;
            match (status, audited) {
                (200 | 201, Some((action, target))) => assert_eq!(
                    rows,
                    [((*actor).to_owned(), action, target)],
                    "{caller} {route:?}"
                ),
                (200, None) => assert!(rows.is_empty(), "a read is not audited: {rows:?}"),
                // A token nobody owns is logged and counted, never audited
                // (anyone may send one); an operator refused by role is.
                (403, _) if *actor == "unknown" => {
                    assert!(rows.is_empty(), "{caller} {route:?}: {rows:?}");
                    assert_eq!(error_code(&answer), "FORBIDDEN");
                }
                (403, _) => {
                    assert_eq!(rows.len(), 1, "{caller} {route:?}: {rows:?}");
                    assert_eq!(
                        (rows[0].0.as_str(), rows[0].1.as_str()),
                        (*actor, "admin.forbidden")
                    );
                    assert_eq!(error_code(&answer), "FORBIDDEN");
                }
                (401, _) => {
                    assert!(rows.is_empty(), "{rows:?}");
                    assert_eq!(error_code(&answer), "UNAUTHORIZED");
                }
                other => panic!("{caller} {route:?}: unexpected {other:?}"),
            }
        }
    }
    // Refused calls changed nothing: only root's and the admin's assets
    // exist, and the user holds the three deposits allowed.
    let coins: Vec<String> =
        sqlx::query_scalar("SELECT symbol FROM assets WHERE symbol LIKE 'COIN%' ORDER BY symbol")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(coins, ["COIN0", "COIN4"]);
    let usdt: String = sqlx::query_scalar(
        "SELECT trim_scale(available)::text FROM balances WHERE user_id = $1 AND asset = 'USDT'",
    )
    .bind(user_id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(usdt, "3");
    // The status change's row was written by the order service, with the
    // gateway's caller, request id and the client's address.
    let (ip, details): (Option<String>, String) = sqlx::query_as(
        "SELECT ip, details::text FROM audit_log WHERE request_id = 'rt-admin-PatchMarket'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        (ip.as_deref(), details.as_str()),
        (Some("127.0.0.1"), r#"{"status":"trading"}"#)
    );
    // (The recorder is the process's: other tests may have added to it.)
    let metrics = app.metrics().await;
    let unknown_tokens: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("exchange_admin_auth_failures_total{reason=\"unknown_token\"} ")
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(unknown_tokens >= 10, "{metrics}");

    // The chain a client recomputes from the API matches, page by page.
    let entries = walk_and_check_chain(&app, 7).await;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(entries, usize::try_from(total).unwrap());
    assert!(
        exchange_store::audit::verify(&app.db)
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test]
async fn operator_tokens_work_until_rotated_or_deleted_and_names_are_checked() {
    let app = spawn().await;
    let (id, token) = operator(&app, "olga", "viewer").await;
    assert!(token.starts_with("exop_") && token.len() == 69, "{token}");
    let (status, list) = app.get_auth("/admin/v1/operators", &token).await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["name"], "olga");
    assert_eq!(list[0]["created_by"], "root");
    assert!(list[0]["deleted_at"].is_null());
    assert!(
        !list.to_string().contains(&token),
        "the token is shown once only"
    );
    let stored: String = sqlx::query_scalar("SELECT token_hash FROM operators WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_ne!(stored, token);

    // Rotation: the old token stops at once, the new one works.
    let (status, rotated) = app
        .admin(
            Method::POST,
            &format!("/admin/v1/operators/{id}/token"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_token = rotated["token"].as_str().unwrap();
    assert_eq!(app.get_auth("/admin/v1/audit", &token).await.0, 403);
    assert_eq!(app.get_auth("/admin/v1/audit", new_token).await.0, 200);
    // Deletion: refused at the next request; deleting again is 404.
    let path = format!("/admin/v1/operators/{id}");
    assert_eq!(app.admin(Method::DELETE, &path, &json!({})).await.0, 200);
    assert_eq!(app.get_auth("/admin/v1/audit", new_token).await.0, 403);
    let (status, body) = app.admin(Method::DELETE, &path, &json!({})).await;
    assert_eq!((status, error_code(&body)), (404, "OPERATOR_NOT_FOUND"));

    for (body, status, code) in [
        (
            json!({"name": "olga", "role": "admin"}),
            409,
            "OPERATOR_EXISTS",
        ),
        (
            json!({"name": "root", "role": "admin"}),
            400,
            "INVALID_OPERATOR_NAME",
        ),
        (
            json!({"name": "unknown", "role": "admin"}),
            400,
            "INVALID_OPERATOR_NAME",
        ),
        (
            json!({"name": "Olga", "role": "admin"}),
            400,
            "INVALID_OPERATOR_NAME",
        ),
        (
            json!({"name": "cli:x", "role": "admin"}),
            400,
            "INVALID_OPERATOR_NAME",
        ),
        (json!({"name": "x", "role": "owner"}), 400, "INVALID_ROLE"),
    ] {
        let (got, answer) = app.admin(Method::POST, "/admin/v1/operators", &body).await;
        assert_eq!((got, error_code(&answer)), (status, code), "{body}");
    }
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log WHERE actor = 'root' ORDER BY id")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        actions,
        [
            "operator.create",
            "operator.rotate_token",
            "operator.delete"
        ]
    );

    for query in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "after_id=-1",
        "after_id=1.5",
        "from=1",
    ] {
        let (status, body) = app
            .get_auth(&format!("/admin/v1/audit?{query}"), ADMIN)
            .await;
        assert_eq!(status, 400, "{query}: {body}");
    }
}

#[tokio::test]
async fn the_log_cannot_be_rewritten_and_a_tampered_row_is_named() {
    let app = spawn().await;
    app.seed_market().await;
    let (status, _) = app
        .admin(
            Method::PATCH,
            "/admin/v1/markets/BTC-USDT",
            &json!({"status": "halted"}),
        )
        .await;
    assert_eq!(status, 200);
    let chain = exchange_store::audit::verify(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(chain.entries, 4, "two assets, a market, a status change");

    // Through an ordinary session (the application's), the trigger refuses
    // every rewrite.
    for sql in [
        "UPDATE audit_log SET actor = 'someone-else' WHERE id = 2",
        "DELETE FROM audit_log WHERE id = 2",
        "TRUNCATE audit_log",
    ] {
        let e = sqlx::query(sql).execute(&app.db).await.unwrap_err();
        assert!(e.to_string().contains("append-only"), "{sql}: {e}");
    }
    assert_eq!(
        exchange_store::audit::verify(&app.db).await.unwrap(),
        Ok(chain)
    );

    // A superuser who switches triggers off can edit a row; the chain
    // names it.
    let mut conn = app.db.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    let usdt_row: i64 = sqlx::query_scalar(
        "SELECT id FROM audit_log WHERE action = 'asset.create' AND target = 'USDT'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    sqlx::query(r#"UPDATE audit_log SET details = '{"scale":9}' WHERE id = $1"#)
        .bind(usdt_row)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SET session_replication_role = origin")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let broken = exchange_store::audit::verify(&app.db)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(broken.id, usdt_row, "{broken}");
    assert!(broken.why.contains("changed"), "{broken}");
}

#[tokio::test]
async fn a_deposit_reference_credits_once_and_conflicts_with_another_body() {
    let app = spawn().await;
    app.seed_market().await;
    let user = app.register("ref@example.com").await;
    let other = app.register("ref2@example.com").await;
    let body = json!({"user_id": user, "asset": "USDT", "amount": "5", "reference": "chain-tx-1"});
    // Concurrent duplicates: one credit, every answer the same deposit.
    let answers = futures_util::future::join_all(
        (0..8).map(|_| app.admin(Method::POST, "/admin/v1/deposits", &body)),
    )
    .await;
    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(created, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, b)| (*s == 200 || *s == 201) && b["id"] == answers[0].1["id"]),
        "{answers:?}"
    );
    let (status, again) = app
        .admin(
            Method::POST,
            "/admin/v1/deposits",
            &json!({
        "user_id": user, "asset": "USDT", "amount": "5.000", "reference": "chain-tx-1"}),
        )
        .await;
    assert_eq!(
        (status, &again["id"]),
        (200, &answers[0].1["id"]),
        "the same amount written otherwise"
    );
    let balance = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT trim_scale(available)::text FROM balances WHERE user_id = $1 AND asset = 'USDT'",
        )
        .bind(user)
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    assert_eq!(balance().await, "5");

    for conflicting in [
        json!({"user_id": user, "asset": "USDT", "amount": "6", "reference": "chain-tx-1"}),
        json!({"user_id": other, "asset": "USDT", "amount": "5", "reference": "chain-tx-1"}),
        json!({"user_id": user, "asset": "BTC", "amount": "5", "reference": "chain-tx-1"}),
    ] {
        let (status, answer) = app
            .admin(Method::POST, "/admin/v1/deposits", &conflicting)
            .await;
        assert_eq!(
            (status, error_code(&answer)),
            (409, "REFERENCE_CONFLICT"),
            "{conflicting}"
        );
    }
    for (bad, why) in [
        (
            json!({"user_id": user, "asset": "USDT", "amount": "5"}),
            "missing",
        ),
        (
            json!({"user_id": user, "asset": "USDT", "amount": "5", "reference": null}),
            "null",
        ),
        (
            json!({"user_id": user, "asset": "USDT", "amount": "5", "reference": ""}),
            "empty",
        ),
        (
            json!({"user_id": user, "asset": "USDT", "amount": "5", "reference": "x".repeat(129)}),
            "too long",
        ),
        (
            json!({"user_id": user, "asset": "USDT", "amount": "5", "reference": "a\u{0}b"}),
            "NUL",
        ),
    ] {
        let (status, answer) = app.admin(Method::POST, "/admin/v1/deposits", &bad).await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "INVALID_REFERENCE"),
            "{why}"
        );
    }
    let longest =
        json!({"user_id": user, "asset": "USDT", "amount": "1", "reference": "é".repeat(128)});
    assert_eq!(
        app.admin(Method::POST, "/admin/v1/deposits", &longest)
            .await
            .0,
        201
    );
    assert_eq!(balance().await, "6");
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'deposit.create'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(audited, 2, "one row per credit");
}

#[tokio::test]
async fn with_an_admin_listener_the_public_port_has_no_admin_routes() {
    let app = spawn_with(|c| {
        c.gateway.admin_http_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin_url = app.admin_url.clone().unwrap();
    let (status, body) = call(
        &app,
        &app.url,
        Method::GET,
        "/admin/v1/audit",
        Some(ADMIN),
        "p-1",
        None,
    )
    .await;
    assert_eq!((status, error_code(&body)), (404, "NOT_FOUND"));
    let asset = json!({"symbol": "BTC", "scale": 8});
    let (status, _) = call(
        &app,
        &app.url,
        Method::POST,
        "/admin/v1/assets",
        Some(ADMIN),
        "p-2",
        Some(&asset),
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = call(
        &app,
        &admin_url,
        Method::POST,
        "/admin/v1/assets",
        Some(ADMIN),
        "a-1",
        Some(&asset),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        &app,
        &admin_url,
        Method::GET,
        "/admin/v1/audit",
        Some(ADMIN),
        "a-2",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["request_id"], "a-1");
    // The admin listener serves the admin API only.
    let (status, _) = call(
        &app,
        &admin_url,
        Method::GET,
        "/api/v1/assets",
        None,
        "a-3",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &app,
        &app.url,
        Method::GET,
        "/api/v1/assets",
        None,
        "p-3",
        None,
    )
    .await;
    assert_eq!(status, 200);
}
