//! Custody through Binance's wallet endpoints: the unmodified Python
//! `ccxt` package's `binance` class (the same version as
//! `binance_ccxt.rs`), with `urls.api.sapi` pointed at our gateway, runs
//! `fetch_deposit_address`, `fetch_deposits`, `withdraw` and
//! `fetch_withdrawals` against the real services (separate processes, the
//! wallet among them, with the manual chain adapter) and checks real values
//! (`tests/compat/ccxt_custody_check.py`): the v1 deposit address, the
//! credited and the pending deposit, withdrawals to the address book only,
//! the balance moving by amount + fee, the statuses through an operator's
//! payout and rejection, the second factor, a frozen account.
//!
//! This test sets up ETH on the `ethereum` network (and ETH-USDT, from
//! which ccxt learns the coin without `/sapi/v1/capital/config/getall`),
//! the deposit address pool, a user with a read+trade+withdraw key (with an
//! IP allowlist) and a read-only key, reports the user's deposits as an
//! operator, adds a withdrawal address over v1 and waits for its cooldown;
//! then runs the script and asserts it exits 0, and that reconcile passes.
//!
//! Needs `python3` with `ccxt` (installed when missing; see `support::ccxt`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::ccxt::{ensure_ccxt, python, script};
use support::{Cluster, Options, User};

/// Seconds a new withdrawal address cools down in this cluster (the script
/// withdraws to one at once and expects the refusal: not too short).
const COOLDOWN_SECS: u64 = 3;
/// The user's (checksummed, EIP-55) withdrawal address.
const BOOK_ADDRESS: &str = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";

/// A lowercase (so checksum-free and valid) Ethereum address.
fn eth_address(n: u64) -> String {
    format!("0x{n:040x}")
}

/// An Ethereum transaction hash.
fn tx_hash(n: u64) -> String {
    format!("0x{n:064x}")
}

async fn operator(c: &Cluster, name: &str, role: &str) -> String {
    let v = c
        .admin(
            Method::POST,
            "/admin/v1/operators",
            &json!({"name": name, "role": role}),
        )
        .await;
    v["token"].as_str().unwrap().to_owned()
}

async fn api_key(c: &Cluster, u: &User, body: &Value) -> (String, String) {
    let (status, v) = c
        .call(Method::POST, "/api/v1/api-keys", Some(&u.token), Some(body))
        .await;
    assert_eq!(status, 201, "api key: {v}");
    (
        v["api_key"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

async fn report(c: &Cluster, token: &str, body: &Value) -> Value {
    let (s, v) = c
        .call(
            Method::POST,
            "/admin/v1/custody/deposits",
            Some(token),
            Some(body),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmodified_ccxt_binance_deposits_and_withdraws_here() {
    ensure_ccxt("ccxt");
    let c = Cluster::start_with(Options {
        env: vec![(
            "WITHDRAWAL_ADDRESS_COOLDOWN_SECS".into(),
            COOLDOWN_SECS.to_string(),
        )],
        ..Options::default()
    })
    .await;
    c.admin(
        Method::POST,
        "/admin/v1/assets",
        &json!({"symbol": "ETH", "scale": 8, "network": "ethereum", "confirmations": 3,
                "withdraw_fee": "0.001", "withdraw_min": "0.01", "auto_approve_limit": "1"}),
    )
    .await;
    c.admin(
        Method::POST,
        "/admin/v1/assets",
        &json!({"symbol": "USDT", "scale": 8}),
    )
    .await;
    c.admin(
        Method::POST,
        "/admin/v1/markets",
        &json!({"symbol": "ETH-USDT", "base": "ETH", "quote": "USDT", "price_tick": "0.01",
                "qty_step": "0.0001", "min_notional": "1", "maker_fee": "0.001", "taker_fee": "0.001"}),
    )
    .await;
    let finance = operator(&c, "fiona", "finance").await;
    let support_op = operator(&c, "sam", "support").await;
    c.admin(
        Method::POST,
        "/admin/v1/custody/deposit-addresses",
        &json!({"network": "ethereum", "addresses": (1..=3).map(eth_address).collect::<Vec<_>>()}),
    )
    .await;

    let alice = c.user("alice@example.com").await;
    let (key, secret) = api_key(
        &c,
        &alice,
        &json!({"label": "ccxt", "permissions": ["read", "trade", "withdraw"],
                "ip_allowlist": ["127.0.0.1"]}),
    )
    .await;
    let (ro_key, ro_secret) = api_key(
        &c,
        &alice,
        &json!({"label": "ccxt-ro", "permissions": ["read"]}),
    )
    .await;

    // The deposit address over v1, and two chain transfers to it: one
    // credited (3 of 3 confirmations), one still pending (1 of 3).
    let (s, v) = c
        .call(
            Method::GET,
            "/api/v1/account/deposit-address?asset=ETH",
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let deposit_address = v["address"].as_str().unwrap().to_owned();
    let transfer = |tx: &str, amount: &str, confirmations: i64| {
        json!({"network": "ethereum", "tx_hash": tx, "log_index": 0, "address": deposit_address,
               "asset": "ETH", "amount": amount, "confirmations": confirmations, "removed": false})
    };
    let (credited_tx, pending_tx) = (tx_hash(0xd1), tx_hash(0xd2));
    let d = report(&c, &finance, &transfer(&credited_tx, "2.5", 3)).await;
    assert_eq!(d["status"], "credited", "{d}");
    let d = report(&c, &finance, &transfer(&pending_tx, "1", 1)).await;
    assert_eq!(d["status"], "pending", "{d}");

    // The address book (a login session only), past its cooldown.
    let (s, v) = c
        .call(
            Method::POST,
            "/api/v1/account/withdrawal-addresses",
            Some(&alice.token),
            Some(&json!({"asset": "ETH", "address": BOOK_ADDRESS, "label": "cold"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    tokio::time::sleep(Duration::from_secs(COOLDOWN_SECS + 1)).await;

    let envs = [
        ("EXCHANGE_URL", c.url.clone()),
        ("KEY", key),
        ("SECRET", secret),
        ("RO_KEY", ro_key),
        ("RO_SECRET", ro_secret),
        ("USER_TOKEN", alice.token.clone()),
        ("FINANCE_TOKEN", finance),
        ("SUPPORT_TOKEN", support_op),
        ("USER_ID", alice.id.to_string()),
        ("DEPOSIT_ADDRESS", deposit_address),
        ("BOOK_ADDRESS", BOOK_ADDRESS.to_owned()),
        ("CREDITED_TX", credited_tx),
        ("PENDING_TX", pending_tx),
    ];
    if let Ok(secs) = std::env::var("BINANCE_CCXT_HOLD_SECS") {
        // For developing the script: keep the cluster up and print its settings.
        let line: Vec<String> = envs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!("{}", line.join(" "));
        tokio::time::sleep(Duration::from_secs(secs.parse().unwrap_or(600))).await;
    }
    let (out, c) = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(python());
        cmd.arg(script("ccxt_custody_check.py"));
        for (k, v) in &envs {
            cmd.env(k, v);
        }
        cmd.output().map(|o| (o, c))
    })
    .await
    .unwrap()
    .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if !out.status.success() {
        for path in c.log_paths() {
            eprintln!("service log: {}", path.display());
        }
    }
    assert!(
        out.status.success(),
        "ccxt_custody_check.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("ALL CCXT CUSTODY CHECKS PASSED"),
        "{stdout}"
    );

    // What ccxt did is what the wallet recorded (read from the database:
    // the script froze the user, which ended their sessions), and the books
    // balance.
    let db = sqlx::PgPool::connect(&c.db_url).await.unwrap();
    let rows: Vec<(String, Option<String>, String, String)> = sqlx::query_as(
        "SELECT status, client_withdrawal_id, trim_scale(amount)::text, trim_scale(fee)::text
         FROM withdrawals WHERE user_id = $1 ORDER BY id",
    )
    .bind(alice.id)
    .fetch_all(&db)
    .await
    .unwrap();
    let expected = [
        ("confirmed", Some("ccxt-w-1"), "0.5", "0.001"),
        ("rejected", None, "1.2", "0.001"),
    ];
    assert_eq!(
        rows.iter()
            .map(|(s, c, a, f)| (s.as_str(), c.as_deref(), a.as_str(), f.as_str()))
            .collect::<Vec<_>>(),
        expected,
        "{rows:?}"
    );
    let reconcile = c.reconcile();
    assert!(
        reconcile.status.success(),
        "reconcile failed:\n{}{}",
        String::from_utf8_lossy(&reconcile.stdout),
        String::from_utf8_lossy(&reconcile.stderr)
    );
}
