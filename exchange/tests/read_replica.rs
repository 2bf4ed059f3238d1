//! The PostgreSQL read replica (`DB_READ_URL`), against a real streaming
//! replica of the test PostgreSQL (scripts/lib/replica-services.sh makes it
//! with `pg_basebackup -R`) and the real services:
//!
//! - order history is served by the replica while it is within
//!   `DB_READ_MAX_LAG_MS`: with its replay paused, an order placed since is
//!   missing from the list (the replica's view) while the order itself is
//!   read from the primary; once the lag passes the bound the list comes
//!   from the primary and shows it, while the replica still lacks it;
//! - with the replica stopped, the list comes from the primary, `/ready`
//!   stays 200 and shows the replica down (not critical);
//! - `exchange_db_reads_total{target}` and `exchange_db_read_replica_in_use`
//!   say which served.
//!
//! Needs REPLICA_DB_URL (a superuser URL of a streaming replica of DB_URL's
//! server: the test pauses its replay), which scripts/test.sh provides when
//! it starts its own PostgreSQL; stopping the replica also needs
//! EXCHANGE_REPLICA_PG_DATA (a replica scripts/test.sh started). Skipped,
//! saying so, only when REPLICA_DB_URL is unset outside scripts/test.sh
//! (EXCHANGE_REPLICA_SERVICES unset), e.g. with an external DB_URL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::{Cluster, Options, User};

/// The bound the services get: short, so that the fallback shows quickly,
/// yet long enough for a loaded machine to place and list an order within
/// it (the lag is measured every second at this bound).
const MAX_LAG: Duration = Duration::from_millis(4_000);
/// How long a state change (replica in use or not) may take to show.
const SETTLE: Duration = Duration::from_secs(20);

/// The tests pause or stop the one replica: one at a time.
static REPLICA: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn skipped(test: &str, why: &str) {
    // Straight to stderr: the harness swallows eprintln! of a passing test.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED read_replica::{test}: {why}");
}

/// REPLICA_DB_URL, or `None` after saying why the test is skipped.
fn replica_url(test: &str) -> Option<String> {
    let url = var("REPLICA_DB_URL");
    if url.is_none() {
        assert!(
            var("EXCHANGE_REPLICA_SERVICES").is_none(),
            "EXCHANGE_REPLICA_SERVICES is set (the test harness provided a replica) but \
             REPLICA_DB_URL is not: scripts/lib/replica-services.sh did not export it"
        );
        skipped(
            test,
            "REPLICA_DB_URL is not set. These tests need a streaming replica of DB_URL's server: \
             run scripts/test.sh without DB_URL (it then starts PostgreSQL and a replica of it), \
             or set REPLICA_DB_URL to a replica of your DB_URL.",
        );
    }
    url
}

async fn replica_sql(url: &str, sql: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql} on the replica: {e}"));
}

use sqlx::Connection as _;

/// A cluster whose order service reads history from the replica.
async fn start(replica: &str) -> Cluster {
    let db_url = exchange_common::testing::empty_database().await;
    let db = db_url.rsplit('/').next().unwrap().to_owned();
    let read_url = exchange_common::testing::with_database(replica, &db);
    Cluster::start_with(Options {
        db_url: Some(db_url),
        env: vec![
            ("DB_READ_URL".into(), read_url),
            ("DB_READ_MAX_LAG_MS".into(), MAX_LAG.as_millis().to_string()),
        ],
        ..Options::default()
    })
    .await
}

/// A user with USDT and BTC-USDT to place resting buys in.
async fn trader(c: &Cluster) -> User {
    c.setup_btc_usdt("0", "0").await;
    let u = c.user("reader@example.com").await;
    c.deposit(&u, "USDT", "100000").await;
    u
}

async fn place(c: &Cluster, u: &User, price: &str) -> i64 {
    let (s, v) = c
        .place(
            u,
            &json!({"market":"BTC-USDT","side":"buy","type":"limit","price":price,"quantity":"1"}),
        )
        .await;
    assert_eq!(s, 201, "place: {v}");
    v["id"].as_i64().unwrap()
}

/// The ids `GET /api/v1/orders` (history) lists.
async fn listed(c: &Cluster, u: &User) -> Vec<i64> {
    let (s, v) = c
        .call(Method::GET, "/api/v1/orders", Some(&u.token), None)
        .await;
    assert_eq!(s, 200, "list orders: {v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_i64().unwrap())
        .collect()
}

/// One sample of the order service's metrics, by exact series name, as
/// rendered ("absent" before it is first recorded).
async fn metric(c: &Cluster, series: &str) -> String {
    metric_of(c, "order", series).await
}

/// [`metric`] of another service.
async fn metric_of(c: &Cluster, service: &str, series: &str) -> String {
    let url = c.ready_url(service).replace("/ready", "/metrics");
    let text = c
        .client
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or_else(|| "absent".to_owned(), |v| v.trim().to_owned())
}

/// A counter's value (0 before its first increment).
async fn count(c: &Cluster, series: &str) -> u64 {
    match metric(c, series).await.as_str() {
        "absent" => 0,
        v => v.parse().unwrap(),
    }
}

const IN_USE: &str = r#"exchange_db_read_replica_in_use{service="order"}"#;
const UP: &str = r#"exchange_db_read_replica_up{service="order"}"#;
const LAG: &str = r#"exchange_db_read_replica_lag_seconds{service="order"}"#;
const FROM_REPLICA: &str = r#"exchange_db_reads_total{service="order",target="replica"}"#;
const FROM_PRIMARY: &str = r#"exchange_db_reads_total{service="order",target="primary"}"#;

/// Waits until a 0/1 gauge reads `want` (bounded).
async fn wait_metric(c: &Cluster, series: &str, want: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let got = metric(c, series).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {got}, not {want}, after {SETTLE:?}; order's /ready: {}",
            ready(c).await.1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the history list shows `id` (bounded); returns the list.
async fn wait_listed(c: &Cluster, u: &User, id: i64) -> Vec<i64> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let ids = listed(c, u).await;
        if ids.contains(&id) {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "order {id} never listed: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ready(c: &Cluster) -> (u16, Value) {
    let r = c.client.get(c.ready_url("order")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_served_by_the_replica_and_falls_back_when_it_lags() {
    let Some(replica) = replica_url("history_is_served_by_the_replica_and_falls_back_when_it_lags")
    else {
        return;
    };
    let _one = REPLICA.lock().await;
    replica_sql(&replica, "SELECT pg_wal_replay_resume()").await;
    let c = start(&replica).await;
    let u = trader(&c).await;
    let a = place(&c, &u, "100").await;
    wait_metric(&c, IN_USE, "1").await;
    wait_listed(&c, &u, a).await;
    let (s, r) = ready(&c).await;
    assert_eq!(
        (s, &r["dependencies"]["postgres_replica"]),
        (200, &json!("up")),
        "{r}"
    );

    // The replica stops replaying: B is on the primary only.
    replica_sql(&replica, "SELECT pg_wal_replay_pause()").await;
    let paused_at = Instant::now();
    let from_replica = count(&c, FROM_REPLICA).await;
    let b = place(&c, &u, "101").await;
    // Within the bound, the history is the replica's: without B.
    let first = listed(&c, &u).await;
    assert!(
        paused_at.elapsed() < MAX_LAG,
        "the machine took longer than the bound to place and list: nothing shown"
    );
    // The order just placed is read from the primary at once.
    assert_eq!(c.order(&u, b).await["id"], json!(b));
    assert!(
        first.contains(&a) && !first.contains(&b),
        "the replica's view: {first:?}"
    );
    assert!(
        count(&c, FROM_REPLICA).await > from_replica,
        "served by the replica"
    );

    // Past the bound: the lag shows it, and the primary serves B.
    let deadline = Instant::now() + SETTLE;
    loop {
        let lag: f64 = metric(&c, LAG).await.parse().unwrap();
        // MAX_LAG in seconds.
        if lag > 4.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag {lag} s never passed the bound: {}",
            ready(&c).await.1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The lag counts from the last position the replica replayed, taken
    // at most one check (1 s) before the pause.
    assert!(
        paused_at.elapsed() >= MAX_LAG / 2,
        "the bound passed sooner than the pause allows"
    );
    assert_eq!(metric(&c, IN_USE).await, "0");
    let from_primary = count(&c, FROM_PRIMARY).await;
    assert!(listed(&c, &u).await.contains(&b));
    assert!(
        count(&c, FROM_PRIMARY).await > from_primary,
        "served by the primary"
    );
    let (s, r) = ready(&c).await;
    assert_eq!(
        (s, &r["dependencies"]["postgres_replica"]),
        (200, &json!("lagging")),
        "{r}"
    );
    assert_eq!(r["non_critical"], json!(["postgres_replica"]));
    // ... while the replica still lacks B: the list came from the primary.
    let db = c.db_url.rsplit('/').next().unwrap().to_owned();
    let replica_db = exchange_common::testing::with_database(&replica, &db);
    let mut conn = sqlx::PgConnection::connect(&replica_db).await.unwrap();
    let on_replica: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE id = $1")
        .bind(b)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(on_replica, 0, "replay was paused: B is not on the replica");
    drop(conn);

    // Replay resumes: the replica catches up and is used again.
    replica_sql(&replica, "SELECT pg_wal_replay_resume()").await;
    wait_metric(&c, IN_USE, "1").await;
    let from_replica = count(&c, FROM_REPLICA).await;
    assert!(listed(&c, &u).await.contains(&b));
    assert!(count(&c, FROM_REPLICA).await > from_replica);

    // Klines (marketdata) and the audit log (gateway) are history too.
    for (service, path, token) in [
        (
            "marketdata",
            "/api/v1/markets/BTC-USDT/klines?interval=1m",
            u.token.as_str(),
        ),
        ("gateway", "/admin/v1/audit", support::ADMIN_TOKEN),
    ] {
        let in_use = format!(r#"exchange_db_read_replica_in_use{{service="{service}"}}"#);
        let deadline = Instant::now() + SETTLE;
        while metric_of(&c, service, &in_use).await != "1" {
            assert!(
                Instant::now() < deadline,
                "{service} never used the replica"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (s, v) = c.call(Method::GET, path, Some(token), None).await;
        assert_eq!(s, 200, "{path}: {v}");
        let served = format!(r#"exchange_db_reads_total{{service="{service}",target="replica"}}"#);
        assert_eq!(metric_of(&c, service, &served).await, "1", "{path}");
    }
}

/// Starts the replica again when dropped (also while unwinding).
struct Restart;

fn replica_script(function: &str) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new("bash")
        .current_dir(root)
        .arg("-c")
        .arg(format!(
            ". scripts/lib/local-services.sh && . scripts/lib/replica-services.sh && {function}"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success() || std::thread::panicking(),
        "{function}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Restart {
    fn drop(&mut self) {
        replica_script("replica_pg_start");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_falls_back_to_the_primary_while_the_replica_is_stopped() {
    const TEST: &str = "history_falls_back_to_the_primary_while_the_replica_is_stopped";
    let Some(replica) = replica_url(TEST) else {
        return;
    };
    if var("EXCHANGE_REPLICA_PG_DATA").is_none() {
        skipped(
            TEST,
            "REPLICA_DB_URL names a replica scripts/test.sh did not start \
             (EXCHANGE_REPLICA_PG_DATA unset): it cannot stop it",
        );
        return;
    }
    let _one = REPLICA.lock().await;
    replica_sql(&replica, "SELECT pg_wal_replay_resume()").await;
    let c = start(&replica).await;
    let u = trader(&c).await;
    let a = place(&c, &u, "100").await;
    wait_metric(&c, IN_USE, "1").await;
    wait_listed(&c, &u, a).await;

    replica_script("replica_pg_stop");
    let restart = Restart;
    // Every list answers, from the primary, the new order included.
    let from_primary = count(&c, FROM_PRIMARY).await;
    let b = place(&c, &u, "101").await;
    let ids = listed(&c, &u).await;
    assert!(ids.contains(&a) && ids.contains(&b), "{ids:?}");
    assert!(count(&c, FROM_PRIMARY).await > from_primary);
    wait_metric(&c, IN_USE, "0").await;
    wait_metric(&c, UP, "0").await;
    let (s, r) = ready(&c).await;
    assert_eq!(
        (s, &r["dependencies"]["postgres_replica"]),
        (200, &json!("down")),
        "{r}"
    );
    assert_eq!(r["dependencies"]["postgres"], json!("up"), "{r}");
    let from_replica = count(&c, FROM_REPLICA).await;
    assert_eq!(listed(&c, &u).await.len(), 2);
    assert_eq!(
        count(&c, FROM_REPLICA).await,
        from_replica,
        "no read tried the replica"
    );

    // Started again, it catches up and serves again.
    drop(restart);
    wait_metric(&c, IN_USE, "1").await;
    let from_replica = count(&c, FROM_REPLICA).await;
    assert!(listed(&c, &u).await.contains(&b));
    assert!(count(&c, FROM_REPLICA).await > from_replica);
}
