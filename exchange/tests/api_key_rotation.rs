//! `API_KEY_ENCRYPTION_KEY` rotation, end to end on a real PostgreSQL: an
//! API key created under key A signs requests; with A moved to
//! `API_KEY_ENCRYPTION_KEY_PREVIOUS` and B current it still does; the real
//! `exchange admin rotate-api-key-encryption` re-encrypts it (and a secret
//! an older version stored under `AUTH_TOKEN_SECRET`); with A dropped and
//! `AUTH_TOKEN_SECRET` itself rotated the key still signs. A secret under a
//! key nobody configured is reported unreadable by id (exit 1), and the
//! command never prints a secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use exchange_common::config::Secret;
use exchange_common::testing::{TestEnv, test_env};
use exchange_common::{Config, Shutdown};
use exchange_gateway::auth::keys::{self, KeyCipher};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const KEY_A: &str = "api-key-encryption-key-A-0123456789abcdef";
const KEY_B: &str = "api-key-encryption-key-B-fedcba9876543210";
const KEY_UNKNOWN: &str = "api-key-encryption-key-C-nobody-has-this-one";
const PASSWORD: &str = "correct horse battery";

struct Gateway {
    url: String,
    shutdown: Shutdown,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn gateway(config: Config) -> Gateway {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", http.local_addr().unwrap());
    let shutdown = Shutdown::new();
    tokio::spawn(exchange_gateway::run(
        Arc::new(config),
        exchange_gateway::Listeners {
            http,
            ws,
            admin: None,
        },
        shutdown.clone(),
    ));
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(format!("{url}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Gateway { url, shutdown }
}

fn with_keys(env: &TestEnv, current: &str, previous: Option<&str>) -> Config {
    let mut c = env.config.clone();
    c.gateway.api_key_encryption_key = Some(Secret::new(current));
    c.gateway.api_key_encryption_key_previous = previous.map(Secret::new);
    c
}

/// `GET /api/v3/account` signed with the key: the status.
async fn signed_account(url: &str, api_key: &str, secret: &str) -> (u16, Value) {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let payload = format!("timestamp={ts}");
    let sig = keys::sign(secret, payload.as_bytes());
    let r = reqwest::Client::new()
        .get(format!("{url}/api/v3/account?{payload}&signature={sig}"))
        .header("X-MBX-APIKEY", api_key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn rotate_cli(env: &TestEnv, current: &str, previous: Option<&str>, auth: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_exchange"));
    cmd.args(["admin", "rotate-api-key-encryption", "--batch", "2"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DB_URL", &env.db_url)
        .env("REDIS_URL", &env.redis_url)
        .env("INTERNAL_TOKEN", "dev-internal-token-change-me-please-000")
        .env("ADMIN_TOKEN", "dev-admin-token-change-me-please-00000")
        .env("AUTH_TOKEN_SECRET", auth)
        .env("LOG_LEVEL", "warn")
        .env("API_KEY_ENCRYPTION_KEY", current);
    if let Some(p) = previous {
        cmd.env("API_KEY_ENCRYPTION_KEY_PREVIOUS", p);
    }
    cmd.output()
        .expect("run exchange admin rotate-api-key-encryption")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Inserts an API key of `user_id` whose secret `cipher` encrypted.
async fn insert_key(db: &sqlx::PgPool, user_id: i64, cipher: &KeyCipher) -> (i64, String, String) {
    let (api_key, secret) = keys::generate();
    let (nonce, ct) = cipher.encrypt(&api_key, &secret).unwrap();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO api_keys (api_key, user_id, secret_nonce, secret_ciphertext) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(&api_key)
    .bind(user_id)
    .bind(&nonce)
    .bind(&ct)
    .fetch_one(db)
    .await
    .unwrap();
    (id, api_key, secret)
}

#[tokio::test]
async fn a_key_signs_before_during_and_after_rotating_the_encryption_key() {
    let env = test_env().await;
    let db = sqlx::PgPool::connect(&env.db_url).await.unwrap();
    let auth = env.config.gateway.auth_token_secret.expose().to_owned();
    let client = reqwest::Client::new();

    // Under key A: register, log in, create a key; it signs.
    let a = gateway(with_keys(&env, KEY_A, None)).await;
    let r = client
        .post(format!("{}/api/v1/auth/register", a.url))
        .json(&json!({"email": "rot@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let user_id = r.json::<Value>().await.unwrap()["user_id"]
        .as_i64()
        .unwrap();
    let login: Value = client
        .post(format!("{}/api/v1/auth/login", a.url))
        .json(&json!({"email": "rot@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap();
    let created: Value = client
        .post(format!("{}/api/v1/api-keys", a.url))
        .bearer_auth(token)
        .json(&json!({"permissions": ["read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let api_key = created["api_key"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_i64().unwrap();
    assert_eq!(signed_account(&a.url, &api_key, &secret).await.0, 200);
    drop(a);

    // A secret an older version stored under AUTH_TOKEN_SECRET's derivation.
    let mut legacy_config = env.config.clone();
    legacy_config.gateway.api_key_encryption_key = Some(Secret::new(auth.clone()));
    let (legacy_id, legacy_key, legacy_secret) =
        insert_key(&db, user_id, &KeyCipher::new(&legacy_config)).await;

    // B current, A previous: both keys still sign.
    let ab = gateway(with_keys(&env, KEY_B, Some(KEY_A))).await;
    assert_eq!(signed_account(&ab.url, &api_key, &secret).await.0, 200);
    assert_eq!(
        signed_account(&ab.url, &legacy_key, &legacy_secret).await.0,
        200
    );
    let before: Vec<u8> =
        sqlx::query_scalar("SELECT secret_ciphertext FROM api_keys WHERE id = $1")
            .bind(key_id)
            .fetch_one(&db)
            .await
            .unwrap();

    // The real command re-encrypts both (batches of 2 rows).
    let out = rotate_cli(&env, KEY_B, Some(KEY_A), &auth);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(
            "2 re-encrypted (1 of them from AUTH_TOKEN_SECRET), 0 already current, 0 unreadable"
        ),
        "{stdout}"
    );
    let after: Vec<u8> = sqlx::query_scalar("SELECT secret_ciphertext FROM api_keys WHERE id = $1")
        .bind(key_id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_ne!(before, after, "stored again under B");
    // Idempotent: a second run finds them current.
    let again = rotate_cli(&env, KEY_B, Some(KEY_A), &auth);
    assert_eq!(again.status.code(), Some(0));
    assert!(
        text(&again.stdout).contains(
            "0 re-encrypted (0 of them from AUTH_TOKEN_SECRET), 2 already current, 0 unreadable"
        ),
        "{}",
        text(&again.stdout)
    );
    assert_eq!(signed_account(&ab.url, &api_key, &secret).await.0, 200);
    drop(ab);

    // A dropped, and AUTH_TOKEN_SECRET rotated too: the keys still sign.
    let mut b_only = with_keys(&env, KEY_B, None);
    b_only.gateway.auth_token_secret = Secret::new("dev-auth-token-secret-rotated-000000000");
    b_only.gateway.auth_token_secret_previous = None;
    let b = gateway(b_only).await;
    assert_eq!(signed_account(&b.url, &api_key, &secret).await.0, 200);
    assert_eq!(
        signed_account(&b.url, &legacy_key, &legacy_secret).await.0,
        200
    );

    // A secret under a key nobody configured: named by id, exit 1, and no
    // secret on either output.
    let (unknown_id, unknown_key, unknown_secret) = insert_key(
        &db,
        user_id,
        &KeyCipher::new(&with_keys(&env, KEY_UNKNOWN, None)),
    )
    .await;
    // Refused as any wrong signature is (Binance's -1022).
    let (status, body) = signed_account(&b.url, &unknown_key, &unknown_secret).await;
    assert_eq!(
        (status, body["code"].as_i64()),
        (400, Some(-1022)),
        "{body}"
    );
    let out = rotate_cli(&env, KEY_B, None, "dev-auth-token-secret-rotated-000000000");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "0 re-encrypted (0 of them from AUTH_TOKEN_SECRET), 2 already current, 1 unreadable"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("unreadable: api key id {unknown_id} ")),
        "{stdout}"
    );
    for s in [&secret, &legacy_secret, &unknown_secret] {
        assert!(!stdout.contains(s.as_str()) && !stderr.contains(s.as_str()));
    }
    assert!(!stdout.contains(&format!("api key id {legacy_id} ")));
}
