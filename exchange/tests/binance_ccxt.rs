//! Issue 8 end to end: the unmodified Python `ccxt` package's `binance`
//! class, pointed at our gateway's `/api/v3`, trades against the real
//! services (separate processes) and checks real values
//! (`tests/compat/ccxt_check.py`). This test sets up the market, two users
//! with API keys and their deposits over our own API, runs the script, and
//! asserts it exits 0.
//!
//! Needs `python3` with `ccxt` (`python3 -m pip install 'ccxt>=4.5,<5'`);
//! when it is missing the test installs it, and fails if that is impossible
//! (a compatibility claim that was not checked is not a pass).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::process::Command;

use reqwest::Method;
use serde_json::json;
use support::ccxt::{ensure_ccxt, python};
use support::{Cluster, User};

async fn api_key(c: &Cluster, u: &User, perms: &[&str]) -> (String, String) {
    let (status, v) = c
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&u.token),
            Some(&json!({"label": "ccxt", "permissions": perms})),
        )
        .await;
    assert_eq!(status, 201, "api key: {v}");
    (
        v["api_key"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmodified_ccxt_binance_trades_here() {
    ensure_ccxt("ccxt");
    let c = Cluster::start().await;
    c.setup_btc_usdt("0.001", "0.002").await;
    let maker = c.user("maker@example.com").await;
    let taker = c.user("taker@example.com").await;
    for u in [&maker, &taker] {
        c.deposit(u, "USDT", "10000").await;
        c.deposit(u, "BTC", "1").await;
    }
    let (maker_key, maker_secret) = api_key(&c, &maker, &["read", "trade"]).await;
    let (taker_key, taker_secret) = api_key(&c, &taker, &["read", "trade"]).await;
    let (ro_key, ro_secret) = api_key(&c, &taker, &["read"]).await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests/compat/ccxt_check.py");
    if let Ok(secs) = std::env::var("BINANCE_CCXT_HOLD_SECS") {
        // For developing the script: keep the cluster up and print its settings.
        eprintln!(
            "EXCHANGE_URL={} MAKER_KEY={maker_key} MAKER_SECRET={maker_secret} TAKER_KEY={taker_key} \
             TAKER_SECRET={taker_secret} RO_KEY={ro_key} RO_SECRET={ro_secret}",
            c.url
        );
        tokio::time::sleep(std::time::Duration::from_secs(secs.parse().unwrap_or(600))).await;
    }
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .env("EXCHANGE_URL", &c.url)
            .env("MAKER_KEY", maker_key)
            .env("MAKER_SECRET", maker_secret)
            .env("TAKER_KEY", taker_key)
            .env("TAKER_SECRET", taker_secret)
            .env("RO_KEY", ro_key)
            .env("RO_SECRET", ro_secret)
            .output()
            .map(|o| (o, c))
    })
    .await
    .unwrap()
    .expect("run python3");
    let (out, cluster) = out;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if !out.status.success() {
        for path in cluster.log_paths() {
            eprintln!("service log: {}", path.display());
        }
    }
    assert!(
        out.status.success(),
        "ccxt_check.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("ALL CCXT CHECKS PASSED"), "{stdout}");
}
