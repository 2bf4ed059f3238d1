//! History users can walk (API.md "History and statements"), over HTTP
//! against the real services: a user with 5,000 fills walks `next_cursor`
//! from the first page and gets every fill exactly once, newest first,
//! while new fills arrive from real trades; time ranges are inclusive at
//! the start and exclusive at the end; a malformed, foreign or other list's
//! cursor is 400 and never shows another user's rows; orders, withdrawals
//! and the audit log page the same way, and clients that do not ask for
//! pages keep their bare array.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Cluster, User};

const SEEDED_FILLS: i64 = 5_000;
/// The seeded fills' times: `BASE_MS + n` for n in 1..=5000.
const BASE_MS: i64 = 1_600_000_000_000;

async fn get(c: &Cluster, token: &str, path: &str) -> (u16, Value) {
    c.call(Method::GET, path, Some(token), None).await
}

/// Walks `path` (which carries its own query) page by page: every item.
async fn walk(c: &Cluster, token: &str, path: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(k) => format!("{path}&cursor={k}"),
            None => format!("{path}&paginate=true"),
        };
        let (s, page) = get(c, token, &url).await;
        assert_eq!(s, 200, "{url}: {page}");
        let batch = page["items"].as_array().unwrap_or_else(|| panic!("{page}"));
        items.extend(batch.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(k) => cursor = Some(k.to_owned()),
            None => return items,
        }
    }
}

fn ids(items: &[Value]) -> Vec<i64> {
    items.iter().map(|i| i["id"].as_i64().unwrap()).collect()
}

async fn trade(c: &Cluster, seller: &User, buyer: &User) {
    let order = |side: &str| json!({"market": "BTC-USDT", "side": side, "type": "limit", "price": "100", "quantity": "0.01"});
    let (s, v) = c.place(seller, &order("sell")).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = c.place(buyer, &order("buy")).await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fill_once_newest_first_while_new_ones_arrive_and_cursors_stay_their_owners() {
    let c = Cluster::start().await;
    c.setup_btc_usdt("0.001", "0.002").await;
    let a = c.user("walker@example.com").await;
    let b = c.user("counterparty@example.com").await;
    c.deposit(&a, "BTC", "10").await;
    c.deposit(&b, "USDT", "100000").await;
    // Old history (fills are clearing's rows; 5,000 trades through the
    // pipeline would only slow the test down).
    let db = sqlx::PgPool::connect(&c.db_url).await.unwrap();
    sqlx::query(
        "INSERT INTO fills (user_id, order_id, market, trade_id, side, price, quantity, quote_amount,
                            fee, fee_asset, liquidity, time_ms)
         SELECT $1, 0, 'BTC-USDT', 1000000 + g, 'sell', 100, 0.01, 1, 0.001, 'USDT', 'maker', $2 + g
         FROM generate_series(1, $3::int8) AS g",
    )
    .bind(a.id)
    .bind(BASE_MS)
    .bind(SEEDED_FILLS)
    .execute(&db)
    .await
    .unwrap();
    let seeded: BTreeSet<i64> =
        sqlx::query_scalar::<_, i64>("SELECT id FROM fills WHERE user_id = $1")
            .bind(a.id)
            .fetch_all(&db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(seeded.len() as i64, SEEDED_FILLS);

    // Walk while real trades add fills.
    let trading = async {
        for _ in 0..10 {
            trade(&c, &a, &b).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (walked, ()) = tokio::join!(
        walk(&c, &a.token, "/api/v1/account/trades?limit=500"),
        trading
    );
    let got = ids(&walked);
    assert!(
        got.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats"
    );
    let got: BTreeSet<i64> = got.into_iter().collect();
    assert!(
        seeded.is_subset(&got),
        "every old fill: {} of {}",
        seeded.intersection(&got).count(),
        seeded.len()
    );
    let fresh = got.difference(&seeded).count();
    assert!(fresh <= 10, "at most the new fills besides: {fresh}");
    assert!(walked.iter().all(|f| f["market"] == "BTC-USDT"));

    // A time range: [start, end).
    let range = walk(
        &c,
        &a.token,
        &format!(
            "/api/v1/account/trades?limit=1000&start_time={}&end_time={}",
            BASE_MS + 1_001,
            BASE_MS + 2_001
        ),
    )
    .await;
    let times: Vec<i64> = range.iter().map(|f| f["time"].as_i64().unwrap()).collect();
    assert_eq!(times.len(), 1_000, "one page, exactly the range");
    assert_eq!(
        (times[0], times[999]),
        (BASE_MS + 2_000, BASE_MS + 1_001),
        "end exclusive, start inclusive"
    );

    // Cursors: a malformed one, the other user's, another list's.
    let (s, first) = get(
        &c,
        &a.token,
        "/api/v1/account/trades?limit=10&paginate=true",
    )
    .await;
    assert_eq!(s, 200);
    let a_cursor = first["next_cursor"].as_str().unwrap().to_owned();
    for (who, path) in [
        (
            &a,
            "/api/v1/account/trades?cursor=bm90LWEtY3Vyc29y".to_owned(),
        ),
        (&b, format!("/api/v1/account/trades?cursor={a_cursor}")),
        (&a, format!("/api/v1/orders?cursor={a_cursor}")),
    ] {
        let (s, v) = get(&c, &who.token, &path).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("INVALID_CURSOR")),
            "{path}: {v}"
        );
    }
    let (s, v) = get(
        &c,
        &a.token,
        "/api/v1/account/trades?start_time=5&end_time=5",
    )
    .await;
    assert_eq!(s, 400, "{v}");

    // No paging asked for: the bare array of v1.
    let (s, bare) = get(&c, &a.token, "/api/v1/account/trades?limit=3").await;
    assert_eq!(s, 200);
    assert_eq!(bare.as_array().map(Vec::len), Some(3), "{bare}");

    // Orders page the same way: every order once, newest first.
    let orders = walk(&c, &a.token, "/api/v1/orders?limit=3").await;
    let order_ids = ids(&orders);
    assert_eq!(order_ids.len(), 10, "{orders:?}");
    assert_eq!(order_ids.iter().collect::<BTreeSet<_>>().len(), 10);
    let created: Vec<i64> = orders
        .iter()
        .map(|o| o["created_at"].as_i64().unwrap())
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {created:?}"
    );

    // Operators page too, newest first.
    for name in ["ops-one", "ops-two", "ops-three"] {
        c.admin(
            Method::POST,
            "/admin/v1/operators",
            &json!({"name": name, "role": "viewer"}),
        )
        .await;
    }
    let operators = walk(&c, support::ADMIN_TOKEN, "/admin/v1/operators?limit=1").await;
    let names: Vec<&str> = operators
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ops-three", "ops-two", "ops-one"]);

    // The audit log, newest first from the operators' side.
    let audit = walk(&c, support::ADMIN_TOKEN, "/admin/v1/audit?limit=1").await;
    let audit_ids = ids(&audit);
    assert!(
        audit_ids.len() >= 4,
        "assets, market and deposits: {audit_ids:?}"
    );
    assert!(audit_ids.windows(2).all(|w| w[0] > w[1]));
}
