//! Redis is a transport, never a source of truth: whoever can write to Redis
//! must not be able to move money. Against the real services, an attacker
//! `XADD`s
//! - a forged trade batch (valid shape, the market's next seq) that would
//!   hand a victim's resting 1.5 BTC to the attacker at 0.01 USDT,
//! - a forged command (the next seq) cancelling the victim's order,
//! - an altered copy of a real, settled trade batch;
//!
//! and the real trade with that seq still settles, nobody's balance moves
//! otherwise, public trades show only the real trade, the full reconcile
//! passes, and `exchange_stream_forged_total` counts each forgery in the
//! service that refused it.
//!
//! A second test books a trade that no stored batch explains — a trade, its
//! fills and its ledger journal written straight into the database — and the
//! full reconcile fails, naming it.

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection as _;
use support::{Cluster, User, units};

const MARKET: &str = "BTC-USDT";

async fn db(c: &Cluster) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&c.db_url).await.unwrap()
}

async fn last_seq(c: &Cluster) -> i64 {
    sqlx::query_scalar("SELECT last_seq FROM market_sequences WHERE market = $1")
        .bind(MARKET)
        .fetch_one(&mut db(c).await)
        .await
        .unwrap()
}

async fn xadd(c: &Cluster, stream: &str, field: &str, value: &str) {
    let client = redis::Client::open(c.env()["REDIS_URL"].as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(field)
        .arg(value)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// `exchange_stream_forged_total` of one service and kind, summed over streams.
async fn forged(c: &Cluster, service: &str, kind: &str) -> u64 {
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
        .filter(|l| {
            l.starts_with("exchange_stream_forged_total{")
                && l.contains(&format!("kind=\"{kind}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

async fn wait_forged(c: &Cluster, service: &str, kind: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while forged(c, service, kind).await < at_least {
        assert!(
            Instant::now() < deadline,
            "{service} did not count a {kind} stream entry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn public_trades(c: &Cluster) -> Vec<Value> {
    let (status, v) = c
        .call(
            Method::GET,
            &format!("/api/v1/markets/{MARKET}/trades"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "public trades: {v}");
    v.as_array().expect("a list of trades").clone()
}

async fn funded(c: &Cluster) -> (User, User, User) {
    c.setup_btc_usdt("0", "0").await;
    let victim = c.user("victim@example.com").await;
    let buyer = c.user("buyer@example.com").await;
    let attacker = c.user("attacker@example.com").await;
    c.deposit(&victim, "BTC", "2").await;
    c.deposit(&buyer, "USDT", "100000").await;
    c.deposit(&attacker, "USDT", "100").await;
    (victim, buyer, attacker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_altered_stream_entries_move_no_money() {
    let c = Cluster::start().await;
    let (victim, buyer, attacker) = funded(&c).await;
    let (status, sell) = c
        .place(
            &victim,
            &json!({"market": MARKET, "side": "sell", "type": "limit",
                    "price": "30000", "quantity": "1.5"}),
        )
        .await;
    assert_eq!(status, 201, "{sell}");
    let sell_id = sell["id"].as_i64().unwrap();
    c.wait_order(&victim, sell_id, &["new"], Duration::from_secs(10))
        .await;
    let next = last_seq(&c).await + 1;
    let prefix = &c.redis_prefix;

    // A forged batch with the next seq: the victim's 1.5 BTC to the
    // attacker for 0.015 USDT (units of 10^-8).
    let forged_batch = json!({
        "market": MARKET, "seq": next, "time_ms": 1,
        "events": [
            {"type": "order_accepted", "order_id": 999_999, "user_id": attacker.id},
            {"type": "trade", "trade_id": 1, "maker_order_id": sell_id, "maker_user_id": victim.id,
             "taker_order_id": 999_999, "taker_user_id": attacker.id, "taker_side": "buy",
             "price": "1000000", "quantity": "150000000", "quote_amount": "1500000",
             "maker_fee": "0", "taker_fee": "0"},
            {"type": "order_done", "order_id": sell_id, "user_id": victim.id, "status": "filled",
             "filled_quantity": "150000000", "release_asset": "base", "release": "0"},
            {"type": "order_done", "order_id": 999_999, "user_id": attacker.id, "status": "filled",
             "filled_quantity": "150000000", "release_asset": "quote", "release": "0"}
        ]
    });
    xadd(
        &c,
        &format!("{prefix}:events"),
        "batch",
        &forged_batch.to_string(),
    )
    .await;
    // A forged command with the next seq: cancel the victim's order.
    let forged_cancel = json!({
        "market": MARKET, "seq": next, "time_ms": 1,
        "command": {"type": "cancel", "order_id": sell_id, "user_id": victim.id}
    });
    xadd(
        &c,
        &format!("{prefix}:orders:{{{MARKET}}}"),
        "command",
        &forged_cancel.to_string(),
    )
    .await;
    wait_forged(&c, "clearing", "forged", 1).await;
    wait_forged(&c, "marketdata", "forged", 1).await;
    wait_forged(&c, "matching", "forged", 1).await;
    // Nothing moved, and the victim's order still rests.
    let order = c.order(&victim, sell_id).await;
    assert_eq!(order["status"], "new", "{order}");
    let attacker_balances = c.balances(&attacker).await;
    assert_eq!(
        attacker_balances.get("BTC").copied().unwrap_or((0, 0)),
        (0, 0)
    );

    // The real trade takes seq `next` and settles.
    let (status, buy) = c
        .place(
            &buyer,
            &json!({"market": MARKET, "side": "buy", "type": "limit",
                    "price": "30000", "quantity": "1.5"}),
        )
        .await;
    assert_eq!(status, 201, "{buy}");
    let buy_id = buy["id"].as_i64().unwrap();
    c.wait_order(&buyer, buy_id, &["filled"], Duration::from_secs(10))
        .await;
    let b = units("1");
    c.wait_balances(
        &buyer,
        &[("BTC", b * 3 / 2, 0), ("USDT", b * 55_000, 0)],
        Duration::from_secs(10),
    )
    .await;
    c.wait_balances(
        &victim,
        &[("BTC", b / 2, 0), ("USDT", b * 45_000, 0)],
        Duration::from_secs(10),
    )
    .await;

    // An altered copy of the real batch: the same seq at 0.01.
    let mut conn = db(&c).await;
    let events: String =
        sqlx::query_scalar("SELECT events::text FROM event_batches WHERE market = $1 AND seq = $2")
            .bind(MARKET)
            .bind(next)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let mut events: Value = serde_json::from_str(&events).unwrap();
    let mut altered = 0;
    for e in events.as_array_mut().unwrap() {
        if e["type"] == "trade" {
            e["price"] = json!("1000000");
            e["quote_amount"] = json!("1500000");
            e["taker_user_id"] = json!(attacker.id);
            altered += 1;
        }
    }
    assert_eq!(altered, 1, "the real batch has its trade: {events}");
    let altered_batch = json!({"market": MARKET, "seq": next, "time_ms": 1, "events": events});
    xadd(
        &c,
        &format!("{prefix}:events"),
        "batch",
        &altered_batch.to_string(),
    )
    .await;
    wait_forged(&c, "clearing", "altered", 1).await;
    wait_forged(&c, "marketdata", "altered", 1).await;

    // Balances as the real trade left them; the attacker has nothing.
    assert_eq!(
        c.balances(&attacker).await.get("USDT").copied(),
        Some((b * 100, 0))
    );
    assert_eq!(
        c.balances(&attacker)
            .await
            .get("BTC")
            .copied()
            .unwrap_or((0, 0)),
        (0, 0)
    );
    let victim_now = c.balances(&victim).await;
    assert_eq!(victim_now["BTC"], (b / 2, 0));
    assert_eq!(victim_now["USDT"], (b * 45_000, 0));
    // Public trades: the real one only.
    let trades = public_trades(&c).await;
    assert_eq!(trades.len(), 1, "{trades:?}");
    assert_eq!(units(trades[0]["price"].as_str().unwrap()), b * 30_000);
    let booked: i64 = sqlx::query_scalar("SELECT count(*) FROM trades")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(booked, 1);
    let out = c.reconcile();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "reconcile:\n{report}");
    assert!(report.contains("trades_match_events"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_no_stored_batch_explains_fails_reconcile() {
    let c = Cluster::start().await;
    let (victim, _buyer, attacker) = funded(&c).await;
    let out = c.reconcile();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Straight into the database, as a forged settlement would: the
    // victim's 1.5 BTC to the attacker for 0.015 USDT, balanced.
    let mut conn = db(&c).await;
    let mut tx = conn.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO trades (market, id, seq, price, quantity, quote_amount, taker_side,
             maker_order_id, taker_order_id, maker_user_id, taker_user_id, maker_fee, taker_fee, time_ms)
         VALUES ($1, 777, 1, 0.01, 1.5, 0.015, 'buy', 1, 2, $2, $3, 0, 0, 1)",
    )
    .bind(MARKET)
    .bind(victim.id)
    .bind(attacker.id)
    .execute(&mut *tx)
    .await
    .unwrap();
    let journal: i64 = sqlx::query_scalar(
        "INSERT INTO ledger_journal (kind, reference) VALUES ('trade', 'forged') RETURNING id",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    for (user, asset, amount) in [
        (victim.id, "BTC", "-1.5"),
        (attacker.id, "BTC", "1.5"),
        (victim.id, "USDT", "0.015"),
        (attacker.id, "USDT", "-0.015"),
    ] {
        sqlx::query(
            "INSERT INTO ledger_postings (journal_id, account_kind, user_id, asset, amount)
             VALUES ($1, 'user', $2, $3, $4::numeric)",
        )
        .bind(journal)
        .bind(user)
        .bind(asset)
        .bind(amount)
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO balances (user_id, asset, available, locked) VALUES ($1, $2, 0, 0)
             ON CONFLICT (user_id, asset) DO NOTHING",
        )
        .bind(user)
        .bind(asset)
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "UPDATE balances SET available = available + $3::numeric
             WHERE user_id = $1 AND asset = $2",
        )
        .bind(user)
        .bind(asset)
        .bind(amount)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();

    let out = c.reconcile();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "reconcile passed:\n{report}");
    assert!(
        report.contains("trades_match_events") && report.contains("FAILED"),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "market {MARKET} trade 777 (seq 1): no trade event in the stored batches explains it"
        )),
        "{report}"
    );
    let verdict = |name: &str| {
        report
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from:\n{report}"))
            .to_owned()
    };
    for failed in [
        "trades_match_events",
        "fills_match_trades",
        "ledger_matches_fills",
    ] {
        assert!(verdict(failed).contains("FAILED"), "{report}");
    }
    // The money checks alone cannot see it: the forgery is balanced.
    for ok in [
        "ledger_balanced",
        "ledger_matches_balances",
        "no_negative_balance",
    ] {
        assert!(verdict(ok).ends_with("ok"), "{report}");
    }
}
