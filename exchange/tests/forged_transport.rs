//! Redis is a transport, never a source of truth: whoever can write to Redis
//! must not be able to move money. Against the real services, an attacker
//! `XADD`s
//! - a forged trade batch (valid shape, the market's next seq) that would
//!   hand a victim's resting 1.5 BTC to the attacker's resting bid at 1 USDT,
//! - a forged command (the next seq) cancelling the victim's order,
//! - an altered copy of a real trade batch, swapped in for the real entry
//!   while clearing is down;
//!
//! and the real trade with that seq still settles, nobody's balance moves
//! otherwise, public trades show only the real trade, the full reconcile
//! passes, and `exchange_stream_forged_total` counts each forgery in the
//! service that refused it.
//!
//! A second test books a trade that no stored batch explains — a trade and
//! its balanced ledger journal written straight into the database — and the
//! full reconcile fails, naming it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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

async fn redis_conn(c: &Cluster) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(c.env()["REDIS_URL"].as_str()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

async fn xadd(c: &Cluster, stream: &str, field: &str, value: &str) {
    let mut conn = redis_conn(c).await;
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
        // Counters print as integers (`3`), never with a fraction.
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
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

/// Places a limit order for 1.5 BTC; its id.
async fn limit(c: &Cluster, user: &User, side: &str, price: &str) -> i64 {
    let (status, order) = c
        .place(
            user,
            &json!({"market": MARKET, "side": side, "type": "limit",
                    "price": price, "quantity": "1.5"}),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    order["id"].as_i64().unwrap()
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

/// Every refusal counter of the services that read streams.
async fn all_forgeries(c: &Cluster) -> u64 {
    let mut n = 0;
    for service in ["matching", "clearing", "marketdata"] {
        for kind in ["forged", "altered"] {
            n += forged(c, service, kind).await;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_altered_stream_entries_move_no_money() {
    let mut c = Cluster::start().await;
    let (victim, buyer, attacker) = funded(&c).await;
    // Two real resting orders that do not cross: the victim sells 1.5 BTC at
    // 30000, the attacker bids for 1.5 BTC at 1.
    let sell_id = limit(&c, &victim, "sell", "30000").await;
    let bid_id = limit(&c, &attacker, "buy", "1").await;
    c.wait_order(&victim, sell_id, &["new"], Duration::from_secs(10))
        .await;
    c.wait_order(&attacker, bid_id, &["new"], Duration::from_secs(10))
        .await;
    assert_eq!(all_forgeries(&c).await, 0, "genuine entries were flagged");
    let next = last_seq(&c).await + 1;
    let prefix = c.redis_prefix.clone();

    // A forged batch with the next seq, well formed and between the two
    // real orders: the victim's 1.5 BTC to the attacker for 1.5 USDT
    // (units of 10^-8). Applied, it would settle.
    let forged_batch = json!({
        "market": MARKET, "seq": next, "time_ms": 1,
        "events": [
            {"type": "trade", "trade_id": 1, "maker_order_id": sell_id, "maker_user_id": victim.id,
             "taker_order_id": bid_id, "taker_user_id": attacker.id, "taker_side": "buy",
             "price": "100000000", "quantity": "150000000", "quote_amount": "150000000",
             "maker_fee": "0", "taker_fee": "0"},
            {"type": "order_done", "order_id": sell_id, "user_id": victim.id, "status": "filled",
             "filled_quantity": "150000000", "release_asset": "base", "release": "0"},
            {"type": "order_done", "order_id": bid_id, "user_id": attacker.id, "status": "filled",
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
    // Nothing moved, and both orders still rest.
    assert_eq!(c.order(&victim, sell_id).await["status"], "new");
    assert_eq!(c.order(&attacker, bid_id).await["status"], "new");
    let b = units("1");
    assert_eq!(c.balances(&victim).await["BTC"], (b / 2, b * 3 / 2));
    assert_eq!(
        c.balances(&attacker)
            .await
            .get("BTC")
            .copied()
            .unwrap_or((0, 0)),
        (0, 0)
    );

    // The real trade takes seq `next`. Clearing is down while it happens;
    // its stream entry is swapped for an altered copy (the buyer gets the
    // 1.5 BTC for 1.5 USDT) before clearing comes back.
    c.kill("clearing");
    let buy_id = limit(&c, &buyer, "buy", "30000").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    // The newest entry is the real batch (the forged one, also seq `next`,
    // came earlier and has time 1).
    let real_entry = loop {
        let mut conn = redis_conn(&c).await;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(format!("{prefix}:events"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
        let newest = reply.ids.into_iter().next().and_then(|e| {
            let body: String = e.get("batch")?;
            let batch: Value = serde_json::from_str(&body).ok()?;
            (batch["seq"].as_i64() == Some(next) && batch["time_ms"].as_i64() != Some(1))
                .then_some((e.id, batch))
        });
        if let Some(found) = newest {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "matching did not publish seq {next}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (real_id, mut altered) = real_entry;
    let mut trades_altered = 0;
    for e in altered["events"].as_array_mut().unwrap() {
        if e["type"] == "trade" {
            e["price"] = json!("100000000");
            e["quote_amount"] = json!("150000000");
            trades_altered += 1;
        }
    }
    assert_eq!(trades_altered, 1, "the real batch has its trade: {altered}");
    {
        let mut conn = redis_conn(&c).await;
        let deleted: i64 = redis::cmd("XDEL")
            .arg(format!("{prefix}:events"))
            .arg(&real_id)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(deleted, 1);
    }
    xadd(
        &c,
        &format!("{prefix}:events"),
        "batch",
        &altered.to_string(),
    )
    .await;
    c.restart("clearing").await;
    wait_forged(&c, "clearing", "altered", 1).await;
    wait_forged(&c, "marketdata", "altered", 1).await;

    // The real trade settled at 30000; the attacker has nothing more.
    c.wait_order(&buyer, buy_id, &["filled"], Duration::from_secs(10))
        .await;
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
    let attacker_now = c.balances(&attacker).await;
    assert_eq!(attacker_now["USDT"], (b * 100 - b * 3 / 2, b * 3 / 2));
    assert_eq!(attacker_now.get("BTC").copied().unwrap_or((0, 0)), (0, 0));
    // Public trades: the real one only.
    let trades = public_trades(&c).await;
    assert_eq!(trades.len(), 1, "{trades:?}");
    assert_eq!(units(trades[0]["price"].as_str().unwrap()), b * 30_000);
    let booked: i64 = sqlx::query_scalar("SELECT count(*) FROM trades")
        .fetch_one(&mut db(&c).await)
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
