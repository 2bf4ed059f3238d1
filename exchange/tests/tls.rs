//! The backends over TLS, against real servers that speak nothing else
//! (scripts/lib/tls-services.sh: a PostgreSQL with `ssl=on` and hostssl-only
//! password logins, a Redis with only a TLS port, an ACL user and client
//! certificates required, both with a CA made on the fly):
//!
//! - `exchange migrate` applies the migrations over `sslmode=verify-full`;
//! - `exchange all` runs over it and `rediss://user:password@…` with
//!   `REDIS_CA_FILE` and a client certificate, and two users trade through
//!   the gateway's REST API: the trade settles (balances move, the trade is
//!   listed);
//! - a CA that did not sign the servers' certificates is refused: `exchange
//!   migrate` fails and `/ready` answers 503, each with an error naming the
//!   host, never the password; no log holds a password.
//!
//! Needs TLS_DB_URL, TLS_REDIS_URL, TLS_CA_FILE, TLS_WRONG_CA_FILE (and
//! TLS_CLIENT_CERT_FILE / TLS_CLIENT_KEY_FILE when the Redis wants a client
//! certificate), which scripts/test.sh provides; besides DB_URL and
//! REDIS_URL as every end-to-end test. Skipped, saying so, only when
//! TLS_DB_URL is unset outside scripts/test.sh (EXCHANGE_TLS_SERVICES unset).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use sqlx::Connection as _;
use support::{BIN, Cluster, Options, READY_TIMEOUT, SERVICES, UNIT, mul, units};

const SETTLE: Duration = Duration::from_secs(20);

struct TlsEnv {
    db_url: String,
    redis_url: String,
    ca_file: String,
    wrong_ca_file: String,
    client_cert: Option<(String, String)>,
}

fn var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn tls_env() -> Option<TlsEnv> {
    let Some(db_url) = var("TLS_DB_URL") else {
        assert!(
            var("EXCHANGE_TLS_SERVICES").is_none(),
            "EXCHANGE_TLS_SERVICES is set (the test harness started TLS servers) but TLS_DB_URL \
             is not: scripts/lib/tls-services.sh did not export it"
        );
        // Straight to stderr: the test harness would swallow eprintln! of a passing test.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED tls: TLS_DB_URL is not set. These tests need the TLS servers of \
             scripts/lib/tls-services.sh: run scripts/test.sh, or `. scripts/lib/local-services.sh; \
             . scripts/lib/tls-services.sh; tls_services_up $PWD` and export what it sets."
        );
        return None;
    };
    let need = |key: &str| var(key).unwrap_or_else(|| panic!("TLS_DB_URL is set but {key} is not"));
    Some(TlsEnv {
        db_url,
        redis_url: need("TLS_REDIS_URL"),
        ca_file: need("TLS_CA_FILE"),
        wrong_ca_file: need("TLS_WRONG_CA_FILE"),
        client_cert: var("TLS_CLIENT_CERT_FILE").zip(var("TLS_CLIENT_KEY_FILE")),
    })
}

/// The password of a `scheme://user:password@host…` URL.
fn password(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let userinfo = rest.split_once('@').expect("a URL with credentials").0;
    userinfo.split_once(':').expect("a password").1.to_owned()
}

/// `host:port` of a URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap().to_owned()
}

/// `url` with its `sslrootcert=` pointing at `ca`.
fn with_root_cert(url: &str, ca: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .expect("a URL with sslmode and sslrootcert");
    let query: Vec<String> = query
        .split('&')
        .map(|kv| {
            if kv.starts_with("sslrootcert=") {
                format!("sslrootcert={ca}")
            } else {
                kv.to_owned()
            }
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// A process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(c: &Cluster, proc: &mut Proc, service: &str, log: &std::path::Path) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = proc.0.try_wait().unwrap() {
            panic!(
                "`exchange all` exited during start ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let last = match c.client.get(c.ready_url(service)).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{service} not ready within {READY_TIMEOUT:?}: {last}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_all_run_over_tls_and_a_wrong_ca_is_refused() {
    let Some(tls) = tls_env() else { return };
    let secrets = [password(&tls.db_url), password(&tls.redis_url)];
    let (db_host, redis_host) = (host_port(&tls.db_url), host_port(&tls.redis_url));

    // A fresh database on the TLS server; the connection is TLS indeed.
    let db_name = exchange_common::testing::random_name("test_");
    let mut admin = sqlx::PgConnection::connect(&tls.db_url)
        .await
        .unwrap_or_else(|e| panic!("connect to TLS_DB_URL ({db_host}): {e}"));
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(ssl, "TLS_DB_URL's connection is not encrypted");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let _ = admin.close().await;
    let db_url = exchange_common::testing::with_database(&tls.db_url, &db_name);

    // `exchange migrate` over verify-full (the harness runs it and checks
    // it succeeded); no service started yet.
    let mut env = vec![
        ("REDIS_URL".to_owned(), tls.redis_url.clone()),
        ("REDIS_CA_FILE".to_owned(), tls.ca_file.clone()),
    ];
    if let Some((cert, key)) = &tls.client_cert {
        env.push(("REDIS_CLIENT_CERT_FILE".to_owned(), cert.clone()));
        env.push(("REDIS_CLIENT_KEY_FILE".to_owned(), key.clone()));
    }
    let c = Cluster::start_with(Options {
        env,
        db_url: Some(db_url.clone()),
        services: Some(Vec::new()),
    })
    .await;
    let log_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&c.redis_prefix);
    std::fs::create_dir_all(&log_dir).unwrap();

    // Every service in one process, over TLS to both backends.
    let log = log_dir.join("all.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut all = Proc(
        Command::new(&*BIN)
            .arg("all")
            .env_remove("ENV_FILE")
            .envs(c.env())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start `exchange all`"),
    );
    for service in SERVICES {
        wait_ready(&c, &mut all, service, &log).await;
    }

    // Two users trade through the gateway's REST API.
    c.setup_btc_usdt("0.001", "0.002").await;
    let a = c.user("alice@example.com").await;
    let b = c.user("bob@example.com").await;
    c.deposit(&a, "BTC", "1").await;
    c.deposit(&b, "USDT", "10000").await;
    c.wait_balances(&a, &[("BTC", UNIT, 0)], SETTLE).await;
    let (status, sell) = c
        .place(
            &a,
            &json!({"market":"BTC-USDT","side":"sell","type":"limit","price":"20000","quantity":"0.5"}),
        )
        .await;
    assert_eq!(status, 201, "A's sell: {sell}");
    let (status, buy) = c
        .place(
            &b,
            &json!({"market":"BTC-USDT","side":"buy","type":"limit","price":"20000","quantity":"0.5"}),
        )
        .await;
    assert_eq!(status, 201, "B's buy: {buy}");
    let qty = UNIT / 2;
    let notional = mul(qty, 20_000 * UNIT);
    c.wait_balances(
        &a,
        &[
            ("BTC", UNIT - qty, 0),
            ("USDT", notional - mul(notional, units("0.001")), 0),
        ],
        SETTLE,
    )
    .await;
    c.wait_balances(
        &b,
        &[
            ("BTC", qty - mul(qty, units("0.002")), 0),
            ("USDT", 10_000 * UNIT - notional, 0),
        ],
        SETTLE,
    )
    .await;
    let (status, trades) = c
        .call(
            Method::GET,
            "/api/v1/account/trades?market=BTC-USDT",
            Some(&b.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "B's trades: {trades}");
    let trades = trades.as_array().expect("a list of trades");
    assert_eq!(trades.len(), 1, "{trades:?}");
    assert_eq!(
        units(trades[0]["quantity"].as_str().unwrap()),
        qty,
        "{trades:?}"
    );
    assert_eq!(c.reconcile().status.code(), Some(0), "reconcile over TLS");
    drop(all);

    // A CA that did not sign the server's certificate: `exchange migrate`
    // refuses, naming the host, not the password.
    let wrong_db_url = with_root_cert(&db_url, &tls.wrong_ca_file);
    let migrate = Command::new(&*BIN)
        .arg("migrate")
        .env_remove("ENV_FILE")
        .env("DB_URL", &wrong_db_url)
        .env("LOG_LEVEL", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&migrate.stderr);
    assert!(
        !migrate.status.success(),
        "migrate trusted a wrong CA: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "cannot connect to the database: postgres at {db_host}"
        )),
        "{stderr}"
    );
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");

    // The same for `/ready` of a service whose CA files are wrong for both.
    let log = log_dir.join("order-wrong-ca.log");
    let out = std::fs::File::create(&log).unwrap();
    let _order = Proc(
        Command::new(&*BIN)
            .arg("order")
            .env_remove("ENV_FILE")
            .envs(c.env())
            .env("DB_URL", &wrong_db_url)
            .env("REDIS_CA_FILE", &tls.wrong_ca_file)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + READY_TIMEOUT;
    let body = loop {
        if let Ok(r) = c.client.get(c.ready_url("order")).send().await {
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            if body["errors"]["postgres"].is_string() && body["errors"]["redis"].is_string() {
                assert_eq!(status, 503, "{body}");
                break body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "order's /ready never named both backends' errors:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (pg, redis) = (
        body["errors"]["postgres"].as_str().unwrap(),
        body["errors"]["redis"].as_str().unwrap(),
    );
    assert!(
        pg.starts_with(&format!("postgres at {db_host}: ")),
        "{body}"
    );
    assert!(
        redis.starts_with(&format!("redis at {redis_host}: ")),
        "{body}"
    );
    assert!(
        pg.to_lowercase().contains("certificate") && redis.to_lowercase().contains("certificate"),
        "{body}"
    );

    // No password anywhere: the answers, the errors, the logs.
    let mut texts = vec![stderr.into_owned(), body.to_string()];
    for entry in std::fs::read_dir(&log_dir).unwrap() {
        texts.push(std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
    }
    for text in &texts {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a password leaked: {text}");
        }
    }
}
