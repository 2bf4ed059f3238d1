//! `/api/v3` request weights charged as Binance documents them: the
//! `X-MBX-USED-WEIGHT-1M` header adds each endpoint's weight (depth by
//! limit, tickers by symbol count), an IP over its weight per minute gets
//! 429 `-1003` while cheap calls before that pass, and `symbols=[...]` is
//! de-duplicated and capped (400 `-1101`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::{App, read};

async fn get(app: &App, path: &str) -> (u16, Value, u64) {
    let r = app
        .client
        .get(format!("{}{path}", app.url))
        .send()
        .await
        .unwrap();
    let used = r.headers()["x-mbx-used-weight-1m"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (s, v) = read(r).await;
    (s, v, used)
}

/// Waits out the end of a minute: the weight window is the clock minute.
async fn at_start_of_a_minute() {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let into = u64::try_from(ms % 60_000).unwrap();
    if into > 45_000 {
        tokio::time::sleep(Duration::from_millis(60_100 - into)).await;
    }
}

fn symbols(n: usize) -> String {
    let names: Vec<String> = (0..n).map(|i| format!("%22S{i}USDT%22")).collect();
    format!("symbols=[{}]", names.join(","))
}

#[tokio::test]
async fn weights_add_up_as_documented_and_the_minute_budget_is_enforced() {
    // 5 requests per second per IP: 300 weight per minute.
    let app = support::spawn_with(|c| c.gateway.rate_limit_ip_per_second = 5).await;
    app.seed_market().await;
    at_start_of_a_minute().await;
    let pause = || tokio::time::sleep(Duration::from_millis(250));

    let mut expected = 0;
    for (path, weight) in [
        ("/api/v3/ping", 1),
        ("/api/v3/exchangeInfo", 20),
        ("/api/v3/depth?symbol=BTCUSDT", 5),
        ("/api/v3/depth?symbol=BTCUSDT&limit=500", 25),
        ("/api/v3/ticker/price?symbol=BTCUSDT", 2),
        (
            "/api/v3/ticker/24hr?symbols=[%22BTCUSDT%22,%22BTCUSDT%22]",
            2,
        ),
        ("/api/v3/klines?symbol=BTCUSDT&interval=1m", 2),
    ] {
        let (_, _, used) = get(&app, path).await;
        expected += weight;
        assert_eq!(used, expected, "{path}");
        pause().await;
    }
    // Three calls for every ticker (80 each) use 240 more: 297 of 300.
    for _ in 0..3 {
        let (_, _, used) = get(&app, "/api/v3/ticker/24hr").await;
        expected += 80;
        assert_eq!(used, expected);
        pause().await;
    }
    assert_eq!(expected, 297);
    // A fourth is over the minute's weight: refused, not charged.
    let r = app
        .client
        .get(format!("{}/api/v3/ticker/24hr", app.url))
        .send()
        .await
        .unwrap();
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let used: u64 = r.headers()["x-mbx-used-weight-1m"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (s, v) = read(r).await;
    assert_eq!(
        (s, v["code"].as_i64(), used),
        (429, Some(-1003), 297),
        "{v}"
    );
    // What still fits passes.
    pause().await;
    let (s, _, used) = get(&app, "/api/v3/ping").await;
    assert_eq!((s, used), (200, 298));
    pause().await;
    let (s, v, used) = get(&app, "/api/v3/exchangeInfo").await;
    assert_eq!((s, v["code"].as_i64(), used), (429, Some(-1003), 298));
}

#[tokio::test]
async fn symbol_lists_are_deduplicated_and_capped() {
    let app = support::spawn().await;
    app.seed_market().await;
    let (s, v, _) = get(
        &app,
        "/api/v3/exchangeInfo?symbols=[%22BTCUSDT%22,%22BTCUSDT%22,%22BTCUSDT%22]",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["symbols"].as_array().unwrap().len(), 1);
    // 100 distinct names pass the cap (and then fail as unknown symbols);
    // 101 are refused before anything is looked up.
    let (s, v, _) = get(&app, &format!("/api/v3/ticker/price?{}", symbols(100))).await;
    assert_eq!((s, v["code"].as_i64()), (400, Some(-1121)), "{v}");
    let (s, v, _) = get(&app, &format!("/api/v3/ticker/price?{}", symbols(101))).await;
    assert_eq!((s, v["code"].as_i64()), (400, Some(-1101)), "{v}");
    assert_eq!(
        v["msg"],
        "Too many parameters; expected '100' and received '101'."
    );
    // Duplicates do not count towards the cap.
    let many_dups = format!(
        "/api/v3/exchangeInfo?symbols=[{}]",
        vec!["%22BTCUSDT%22"; 150].join(",")
    );
    let (s, v, used) = get(&app, &many_dups).await;
    assert_eq!(s, 200, "{v}");
    assert!(used >= 20);
}
