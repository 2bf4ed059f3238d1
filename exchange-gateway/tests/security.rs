//! Account security over HTTP and WebSocket against the real gateway and
//! order service: the TOTP second factor, sessions that end, password
//! change, API keys that expire (docs/API.md, "Account security").
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::Method;
use serde_json::{Value, json};
use support::{App, PASSWORD, Ws, error_code, read};
use tokio_tungstenite::tungstenite::Message;

/// A gateway whose login budget per address does not get in the way of a
/// test that logs in a dozen times on purpose.
async fn spawn() -> App {
    support::spawn_with(|c| c.gateway.rate_limit_login_per_minute = 1_000).await
}

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap()
}

/// An authenticator app, computed here from the secret the server returned
/// (independently of the server's code), that never offers a time step it
/// already used, as a real user's codes never repeat.
struct Authenticator {
    totp: totp_rs::TOTP,
    last_step: Option<u64>,
}

impl Authenticator {
    fn new(secret_base32: &str) -> Self {
        let raw = totp_rs::Secret::Encoded(secret_base32.to_owned())
            .to_bytes()
            .unwrap();
        Self {
            totp: totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, raw).unwrap(),
            last_step: None,
        }
    }

    /// The code of the earliest step the server accepts now (one step of
    /// skew either way) after the last one used; waits for the next step
    /// when none is left.
    async fn next_code(&mut self) -> String {
        loop {
            let now_step = now_ms() / 1000 / 30;
            // The current step or the next: both stay acceptable if the
            // server's clock turns over while the request is in flight.
            let first = self.last_step.map_or(now_step, |s| (s + 1).max(now_step));
            if first <= now_step + 1 {
                self.last_step = Some(first);
                return self.totp.generate(first * 30);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A code that is right for none of the steps the server accepts now.
    fn wrong_code(&self) -> String {
        let now = now_ms() / 1000;
        let right: Vec<String> = [now - 30, now, now + 30]
            .iter()
            .map(|t| self.totp.generate(*t))
            .collect();
        (0..)
            .map(|i| format!("{:06}", 123_456 + i))
            .find(|c| !right.contains(c))
            .unwrap()
    }
}

async fn login_with(app: &App, email: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"email": email, "password": PASSWORD});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    app.post("/api/v1/auth/login", &body).await
}

/// Enrols and confirms 2FA; returns the authenticator and the recovery codes.
async fn enable_2fa(app: &App, token: &str) -> (Authenticator, Vec<String>) {
    let (status, enrol) = app
        .send(Method::POST, "/api/v1/account/2fa/totp", token, None)
        .await;
    assert_eq!(status, 200, "{enrol}");
    let secret = enrol["secret"].as_str().unwrap();
    let uri = enrol["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    let codes: Vec<String> = enrol["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    let mut app_code = Authenticator::new(secret);
    let (status, body) = app
        .send(
            Method::POST,
            "/api/v1/account/2fa/totp/confirm",
            token,
            Some(&json!({"totp": app_code.wrong_code()})),
        )
        .await;
    assert_eq!((status, error_code(&body)), (400, "INVALID_TOTP"));
    let (status, body) = app
        .send(
            Method::POST,
            "/api/v1/account/2fa/totp/confirm",
            token,
            Some(&json!({"totp": app_code.next_code().await})),
        )
        .await;
    assert_eq!((status, &body), (200, &json!({"enabled": true})));
    (app_code, codes)
}

#[tokio::test]
async fn totp_login_replay_recovery_codes_api_keys_and_disable() {
    let app = spawn().await;
    let email = "totp@example.com";
    app.register(email).await;
    let token = app.login(email).await;

    // Enrolled but not confirmed: login needs no code yet.
    let (status, _) = app
        .send(Method::POST, "/api/v1/account/2fa/totp", &token, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(login_with(&app, email, json!({})).await.0, 200);

    let (mut authenticator, recovery) = enable_2fa(&app, &token).await;
    let (status, body) = app
        .send(Method::POST, "/api/v1/account/2fa/totp", &token, None)
        .await;
    assert_eq!((status, error_code(&body)), (409, "TOTP_ALREADY_ENABLED"));

    // Login: no code, a wrong one, the right one, the same one again.
    let (status, body) = login_with(&app, email, json!({})).await;
    assert_eq!((status, error_code(&body)), (401, "TOTP_REQUIRED"));
    let (status, body) = login_with(&app, email, json!({"totp": authenticator.wrong_code()})).await;
    assert_eq!((status, error_code(&body)), (401, "INVALID_TOTP"));
    let code = authenticator.next_code().await;
    let (status, body) = login_with(&app, email, json!({"totp": code})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = login_with(&app, email, json!({"totp": code})).await;
    assert_eq!(
        (status, error_code(&body)),
        (401, "INVALID_TOTP"),
        "a code is accepted once"
    );
    // A wrong password says so, whatever the code.
    let (status, body) = app
        .post(
            "/api/v1/auth/login",
            &json!({"email": email, "password": "wrong password!", "totp": authenticator.wrong_code()}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (401, "INVALID_CREDENTIALS"));

    // A recovery code works once, in any case and spacing.
    let typed = recovery[0].to_lowercase().replace('-', " ");
    let (status, body) = login_with(&app, email, json!({"recovery_code": typed})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = login_with(&app, email, json!({"recovery_code": recovery[0]})).await;
    assert_eq!((status, error_code(&body)), (401, "INVALID_TOTP"));

    // Creating an API key needs the code.
    let (status, body) = app
        .send(Method::POST, "/api/v1/api-keys", &token, Some(&json!({})))
        .await;
    assert_eq!((status, error_code(&body)), (401, "TOTP_REQUIRED"));
    let (status, body) = app
        .send(
            Method::POST,
            "/api/v1/api-keys",
            &token,
            Some(&json!({"totp": authenticator.next_code().await})),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // So does changing the password.
    let change = json!({"current_password": PASSWORD, "new_password": "another long password"});
    let (status, body) = app
        .send(
            Method::POST,
            "/api/v1/account/password",
            &token,
            Some(&change),
        )
        .await;
    assert_eq!((status, error_code(&body)), (401, "TOTP_REQUIRED"));

    // The secret is stored encrypted, the recovery codes hashed.
    let secret_in_db: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT totp_secret_ciphertext FROM users WHERE lower(email) = $1")
            .bind(email)
            .fetch_one(&app.db)
            .await
            .unwrap();
    let secret_in_db = secret_in_db.unwrap();
    assert!(!String::from_utf8_lossy(&secret_in_db).contains(&recovery[1]));
    let stored: Vec<String> = sqlx::query_scalar("SELECT code_hash FROM totp_recovery_codes")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(stored.len(), 10);
    assert!(recovery.iter().all(|c| !stored.contains(c)));

    // Disabling needs a code or a recovery code; then login needs neither.
    let (status, body) = app
        .send(
            Method::DELETE,
            "/api/v1/account/2fa/totp",
            &token,
            Some(&json!({})),
        )
        .await;
    assert_eq!((status, error_code(&body)), (401, "TOTP_REQUIRED"));
    let (status, body) = app
        .send(
            Method::DELETE,
            "/api/v1/account/2fa/totp",
            &token,
            Some(&json!({"recovery_code": recovery[1]})),
        )
        .await;
    assert_eq!((status, &body), (200, &json!({"enabled": false})));
    assert_eq!(login_with(&app, email, json!({})).await.0, 200);
    // The 2FA change ended every other session; this one stays.
    assert_eq!(
        app.get_auth("/api/v1/account/balances", &token).await.0,
        200
    );
}

#[tokio::test]
async fn wrong_codes_lock_the_second_factor_for_a_while() {
    let app = spawn().await;
    let email = "guess@example.com";
    app.register(email).await;
    let token = app.login(email).await;
    let (mut authenticator, _) = enable_2fa(&app, &token).await;
    // Sent all at once, twelve wrong codes still get only five tries.
    let wrong = authenticator.wrong_code();
    let tries = (0..12).map(|_| login_with(&app, email, json!({"totp": wrong})));
    let answers = futures_util::future::join_all(tries).await;
    let mut codes: Vec<&str> = answers.iter().map(|(_, body)| error_code(body)).collect();
    codes.sort_unstable();
    assert_eq!(
        codes,
        [["INVALID_TOTP"; 5].as_slice(), &["TOO_MANY_ATTEMPTS"; 7]].concat(),
        "{answers:?}"
    );
    let (status, body) = login_with(
        &app,
        email,
        json!({"totp": authenticator.next_code().await}),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (429, "TOO_MANY_ATTEMPTS"),
        "even the right code waits"
    );
}

async fn ws_with_token(app: &App, token: &str) -> Ws {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/ws/private?token={token}", app.ws_url))
            .await
            .unwrap();
    let hello = support::next_json(&mut ws).await;
    assert_eq!(hello["type"], "authenticated", "{hello}");
    ws
}

async fn ws_with_key(app: &App, key: &support::Key) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/ws/private", app.ws_url))
        .await
        .unwrap();
    let ts = now_ms();
    let payload = exchange_gateway::ws::ws_auth_payload(&key.api_key, ts);
    let signature = exchange_gateway::auth::keys::sign(&key.secret, payload.as_bytes());
    ws.send(Message::text(
        json!({"op":"auth","api_key":key.api_key,"timestamp":ts,"signature":signature}).to_string(),
    ))
    .await
    .unwrap();
    let hello = support::next_json(&mut ws).await;
    assert_eq!(hello["type"], "authenticated", "{hello}");
    ws
}

/// Waits (at most `within`) for the server to end the session: an error
/// message with `code`, then a close frame. Returns how long it took.
async fn ended_with(ws: &mut Ws, code: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let mut saw_error = false;
    loop {
        let left = within.saturating_sub(started.elapsed());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("session not ended with {code} within {within:?}"));
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "error" {
                    assert_eq!(v["error"]["code"], code, "{v}");
                    saw_error = true;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                assert!(saw_error, "closed without saying why");
                let frame = frame.expect("a close frame with a reason");
                assert_eq!(frame.reason.as_str(), code);
                return started.elapsed();
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => panic!("connection dropped without a close frame"),
        }
    }
}

/// The session stays open: a ping is answered.
async fn still_open(ws: &mut Ws) {
    ws.send(Message::text(r#"{"op":"ping"}"#)).await.unwrap();
    assert_eq!(support::next_json(ws).await, json!({"type":"pong"}));
}

#[tokio::test]
async fn logout_ends_one_token_and_logout_all_every_session_on_rest_and_ws() {
    let app = spawn().await;
    app.wait_subscriber_up().await;
    let (_, key) = support::user_with_key(&app, "leave@example.com", &["read"]).await;
    let a = app.login("leave@example.com").await;
    let b = app.login("leave@example.com").await;
    let mut ws_a = ws_with_token(&app, &a).await;
    let mut ws_b = ws_with_token(&app, &b).await;
    let mut ws_key = ws_with_key(&app, &key).await;

    let (status, _) = app
        .send(Method::POST, "/api/v1/auth/logout", &a, None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = app.get_auth("/api/v1/account/balances", &a).await;
    assert_eq!((status, error_code(&body)), (401, "SESSION_ENDED"));
    ended_with(&mut ws_a, "SESSION_ENDED", Duration::from_secs(5)).await;
    // The other token and its socket are untouched.
    assert_eq!(app.get_auth("/api/v1/account/balances", &b).await.0, 200);
    still_open(&mut ws_b).await;
    still_open(&mut ws_key).await;
    // A new socket with the ended token is refused at the handshake.
    let refused =
        tokio_tungstenite::connect_async(format!("{}/ws/private?token={a}", app.ws_url)).await;
    assert!(refused.is_err());

    let (status, _) = app
        .send(Method::POST, "/api/v1/auth/logout-all", &b, None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = app.get_auth("/api/v1/account/balances", &b).await;
    assert_eq!((status, error_code(&body)), (401, "SESSION_ENDED"));
    ended_with(&mut ws_b, "SESSION_ENDED", Duration::from_secs(5)).await;
    ended_with(&mut ws_key, "SESSION_ENDED", Duration::from_secs(5)).await;
    // The API key itself still works, and so does a new login.
    let mut ws_key = ws_with_key(&app, &key).await;
    still_open(&mut ws_key).await;
    let c = app.login("leave@example.com").await;
    assert_eq!(app.get_auth("/api/v1/account/balances", &c).await.0, 200);
}

#[tokio::test]
async fn password_change_ends_every_other_session() {
    let app = spawn().await;
    app.wait_subscriber_up().await;
    let email = "change@example.com";
    app.register(email).await;
    let mine = app.login(email).await;
    let other = app.login(email).await;
    let mut ws_other = ws_with_token(&app, &other).await;
    let change =
        |current: &str, new: &str| json!({"current_password": current, "new_password": new});

    let (status, body) = app
        .send(
            Method::POST,
            "/api/v1/account/password",
            &mine,
            Some(&change("not my password", "a brand new password")),
        )
        .await;
    assert_eq!((status, error_code(&body)), (401, "INVALID_CREDENTIALS"));
    let (status, body) = app
        .send(
            Method::POST,
            "/api/v1/account/password",
            &mine,
            Some(&change(PASSWORD, "short")),
        )
        .await;
    assert_eq!((status, error_code(&body)), (400, "WEAK_PASSWORD"));
    // Nothing changed so far.
    assert_eq!(
        app.get_auth("/api/v1/account/balances", &other).await.0,
        200
    );

    let (status, body) = app
        .send(
            Method::POST,
            "/api/v1/account/password",
            &mine,
            Some(&change(PASSWORD, "a brand new password")),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(app.get_auth("/api/v1/account/balances", &mine).await.0, 200);
    let (status, body) = app.get_auth("/api/v1/account/balances", &other).await;
    assert_eq!((status, error_code(&body)), (401, "SESSION_ENDED"));
    ended_with(&mut ws_other, "SESSION_ENDED", Duration::from_secs(5)).await;
    let (status, _) = login_with(&app, email, json!({})).await;
    assert_eq!(status, 401, "the old password no longer works");
    let (status, _) = app
        .post(
            "/api/v1/auth/login",
            &json!({"email": email, "password": "a brand new password"}),
        )
        .await;
    assert_eq!(status, 200);
}

async fn signed_balances(app: &App, key: &support::Key) -> (u16, Value) {
    let query = format!("timestamp={}", now_ms());
    let signature = exchange_gateway::auth::keys::sign(&key.secret, query.as_bytes());
    read(
        app.client
            .get(format!(
                "{}/api/v1/account/balances?{query}&signature={signature}",
                app.url
            ))
            .header("X-MBX-APIKEY", &key.api_key)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn api_keys_expire_and_deleted_or_expired_keys_end_their_sessions() {
    let app = spawn().await;
    app.wait_subscriber_up().await;
    let email = "expiry@example.com";
    app.register(email).await;
    let token = app.login(email).await;
    let create = |body: Value| {
        let token = token.clone();
        let app = &app;
        async move {
            app.send(Method::POST, "/api/v1/api-keys", &token, Some(&body))
                .await
        }
    };
    let key_of = |body: &Value| support::Key {
        api_key: body["api_key"].as_str().unwrap().to_owned(),
        secret: body["secret"].as_str().unwrap().to_owned(),
    };

    let (status, body) = create(json!({"expires_at": now_ms() - 1})).await;
    assert_eq!((status, error_code(&body)), (400, "INVALID_EXPIRY"));

    let expires_at = now_ms() + 3_000;
    let (status, body) = create(json!({"expires_at": expires_at})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["expires_at"], expires_at);
    let short = key_of(&body);
    let (status, body) = create(json!({})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["expires_at"], Value::Null);
    let lasting = key_of(&body);
    let lasting_id = body["id"].as_i64().unwrap();

    assert_eq!(signed_balances(&app, &short).await.0, 200);
    let mut ws_short = ws_with_key(&app, &short).await;
    let mut ws_lasting = ws_with_key(&app, &lasting).await;

    // Deleting a key ends its sessions at once.
    let (status, _) = app
        .send(
            Method::DELETE,
            &format!("/api/v1/api-keys/{lasting_id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    ended_with(&mut ws_lasting, "SESSION_ENDED", Duration::from_secs(5)).await;

    // An expired key is refused, and its open session ends within 30 s.
    tokio::time::sleep(Duration::from_millis(
        expires_at.saturating_sub(now_ms()) + 100,
    ))
    .await;
    let (status, body) = signed_balances(&app, &short).await;
    assert_eq!((status, error_code(&body)), (401, "API_KEY_EXPIRED"));
    let took = ended_with(&mut ws_short, "API_KEY_EXPIRED", Duration::from_secs(30)).await;
    assert!(took <= Duration::from_secs(30));
    let (status, list) = app.get_auth("/api/v1/api-keys", &token).await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["expires_at"], expires_at, "{list}");
}

/// A request signed with an API key, as Binance clients sign it.
async fn signed(
    app: &App,
    key: &support::Key,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let query = format!("timestamp={}", now_ms());
    let body_text = body.map(Value::to_string).unwrap_or_default();
    let signature =
        exchange_gateway::auth::keys::sign(&key.secret, format!("{query}{body_text}").as_bytes());
    let mut req = app
        .client
        .request(
            method,
            format!("{}{path}?{query}&signature={signature}", app.url),
        )
        .header("X-MBX-APIKEY", &key.api_key);
    if body.is_some() {
        req = req
            .header("content-type", "application/json")
            .body(body_text);
    }
    read(req.send().await.unwrap()).await
}

/// `asset → (available, locked)` as the user reads them with `key`.
async fn balances(app: &App, key: &support::Key) -> Vec<(String, String, String)> {
    let (status, body) = signed(app, key, Method::GET, "/api/v1/account/balances", None).await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let text = |f: &str| b[f].as_str().unwrap().to_owned();
            (text("asset"), text("available"), text("locked"))
        })
        .collect()
}

#[tokio::test]
async fn freezing_ends_sessions_cancels_open_orders_keeps_balances_and_unfreezing_restores() {
    let app = spawn().await;
    let _pipeline = support::start_pipeline(&app).await;
    app.wait_subscriber_up().await;
    app.seed_market().await;
    let email = "frozen@example.com";
    let (user_id, key) = support::user_with_key(&app, email, &["read", "trade"]).await;
    app.deposit(user_id, "USDT", "1000").await;
    let token = app.login(email).await;
    let order = |price: &str| json!({"market":"BTC-USDT","side":"buy","type":"limit","price":price,"quantity":"0.01"});
    let mut ids = Vec::new();
    for price in ["100", "200"] {
        let (status, placed) = app.place(&token, &order(price)).await;
        assert_eq!(status, 201, "{placed}");
        ids.push(placed["id"].as_i64().unwrap());
    }
    let before = balances(&app, &key).await;
    assert_eq!(before, [("USDT".into(), "997".into(), "3".into())]);
    let mut ws_token = ws_with_token(&app, &token).await;
    let mut ws_key = ws_with_key(&app, &key).await;
    // And a Binance user data stream.
    let user_data_stream = || {
        app.client
            .post(format!("{}/api/v3/userDataStream", app.url))
            .header("X-MBX-APIKEY", &key.api_key)
            .send()
    };
    let (status, body) = read(user_data_stream().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let listen_key = body["listenKey"].as_str().unwrap().to_owned();
    let (mut ws_stream, _) =
        tokio_tungstenite::connect_async(format!("{}/ws/{listen_key}", app.ws_url))
            .await
            .unwrap();
    // Its session is registered once the hub counts three connections.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !app
        .metrics()
        .await
        .contains(r#"exchange_ws_connections{service="gateway",kind="private"} 3"#)
    {
        assert!(Instant::now() < deadline, "the stream never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/admin/v1/users/{user_id}/freeze"),
            &json!({"reason": "suspected account takeover"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["frozen"], true);
    assert_eq!(body["canceled_in"], json!(["BTC-USDT"]));
    let (status, audit) = app
        .admin(Method::GET, "/admin/v1/audit?limit=1000", &json!({}))
        .await;
    assert_eq!(status, 200, "{audit}");
    let freeze = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "user.freeze")
        .expect("the freeze is in the audit log");
    assert_eq!(freeze["actor"], "root");
    assert_eq!(freeze["target"], format!("user:{user_id}"));
    assert_eq!(freeze["details"]["reason"], "suspected account takeover");

    // Sessions end at once; the API key still reads but cannot trade.
    let (status, body) = app.get_auth("/api/v1/account/balances", &token).await;
    assert_eq!((status, error_code(&body)), (401, "SESSION_ENDED"));
    ended_with(&mut ws_token, "SESSION_ENDED", Duration::from_secs(5)).await;
    ended_with(&mut ws_key, "ACCOUNT_FROZEN", Duration::from_secs(5)).await;
    let expired = support::next_json(&mut ws_stream).await;
    assert_eq!(expired["e"], "listenKeyExpired", "{expired}");
    let (status, body) = read(user_data_stream().await.unwrap()).await;
    assert_eq!(
        (status, body["code"].as_i64()),
        (401, Some(-2015)),
        "{body}"
    );
    let (status, body) = login_with(&app, email, json!({})).await;
    assert_eq!((status, error_code(&body)), (403, "ACCOUNT_FROZEN"));
    let (status, body) = signed(
        &app,
        &key,
        Method::POST,
        "/api/v1/orders",
        Some(&order("150")),
    )
    .await;
    assert_eq!((status, error_code(&body)), (403, "ACCOUNT_FROZEN"));

    // The open orders are canceled through the pipeline; nothing is lost.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, list) = signed(&app, &key, Method::GET, "/api/v1/orders", None).await;
        assert_eq!(status, 200, "{list}");
        let statuses: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["status"].as_str().unwrap())
            .collect();
        if statuses.len() == 2 && statuses.iter().all(|s| *s == "canceled") {
            break;
        }
        assert!(Instant::now() < deadline, "orders not canceled: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while balances(&app, &key).await != [("USDT".into(), "1000".into(), "0".into())] {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            balances(&app, &key).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A frozen account may still cancel (here: an order already canceled).
    let (status, body) = signed(
        &app,
        &key,
        Method::DELETE,
        &format!("/api/v1/orders/{}", ids[0]),
        None,
    )
    .await;
    assert_ne!(error_code(&body), "ACCOUNT_FROZEN", "{status} {body}");

    // Unfreezing restores login and trading.
    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/admin/v1/users/{user_id}/unfreeze"),
            &json!({}),
        )
        .await;
    assert_eq!((status, &body["frozen"]), (200, &json!(false)), "{body}");
    let (status, body) = login_with(&app, email, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = signed(
        &app,
        &key,
        Method::POST,
        "/api/v1/orders",
        Some(&order("150")),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let (status, body) = app
        .admin(
            Method::POST,
            "/admin/v1/users/999999/freeze",
            &json!({"reason": "x"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (404, "USER_NOT_FOUND"));
    let (status, body) = app
        .admin(
            Method::POST,
            &format!("/admin/v1/users/{user_id}/freeze"),
            &json!({"reason": "  "}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (400, "INVALID_REASON"));
}

#[tokio::test]
async fn an_operator_resets_a_lost_second_factor_and_every_session_ends() {
    let app = spawn().await;
    let email = "lost-phone@example.com";
    let user_id = app.register(email).await;
    let token = app.login(email).await;
    enable_2fa(&app, &token).await;
    let (status, body) = login_with(&app, email, json!({})).await;
    assert_eq!((status, error_code(&body)), (401, "TOTP_REQUIRED"));

    let path = format!("/admin/v1/users/{user_id}/2fa/reset");
    let (status, body) = app.admin(Method::POST, &path, &json!({})).await;
    assert_eq!(status, 400, "a reason is required: {body}");
    let (status, body) = app
        .admin(
            Method::POST,
            &path,
            &json!({"reason": "ticket 7: identity verified"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["was_enabled"], true);
    let (status, body) = app.get_auth("/api/v1/account/balances", &token).await;
    assert_eq!((status, error_code(&body)), (401, "SESSION_ENDED"));
    let (status, body) = login_with(&app, email, json!({})).await;
    assert_eq!(status, 200, "no code needed any more: {body}");
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'user.2fa_reset' AND target = $1",
    )
    .bind(format!("user:{user_id}"))
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn a_login_checked_before_its_sessions_were_ended_opens_none() {
    use exchange_gateway::auth::sessions;
    let app = spawn().await;
    let email = "racing@example.com";
    let user_id = app.register(email).await;
    let token = app.login(email).await;
    let epoch_of = || {
        sqlx::query_scalar::<_, i64>("SELECT session_epoch FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(&app.db)
    };
    let read_at_login = epoch_of().await.unwrap();
    let ttl = Duration::from_secs(60);
    // What a login does once the password checked out, with the epoch it
    // read alongside the password: opens a session while nothing changed...
    let opened = sessions::start(&app.db, user_id, read_at_login, ttl, None)
        .await
        .unwrap();
    assert!(opened.is_some());
    // ...and none once every session was ended in between.
    let (status, _) = app
        .send(Method::POST, "/api/v1/auth/logout-all", &token, None)
        .await;
    assert_eq!(status, 204);
    let late = sessions::start(&app.db, user_id, read_at_login, ttl, None)
        .await
        .unwrap();
    assert_eq!(late, None);
    assert_ne!(epoch_of().await.unwrap(), read_at_login);
    // Nor for a frozen account, whatever the epoch.
    let (status, _) = app
        .admin(
            Method::POST,
            &format!("/admin/v1/users/{user_id}/freeze"),
            &json!({"reason": "test"}),
        )
        .await;
    assert_eq!(status, 200);
    let epoch = epoch_of().await.unwrap();
    let frozen = sessions::start(&app.db, user_id, epoch, ttl, None)
        .await
        .unwrap();
    assert_eq!(frozen, None);
}
