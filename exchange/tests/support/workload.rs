//! The seeded, deterministic workload of the fault tests (chaos, Redis loss,
//! Postgres restart), a fault-free reference model of its outcome, the
//! driver that submits it, and the checks every fault test ends with.
//!
//! The driver submits one placement per request, serially: the order
//! service's batch route journals the placements of one request in no fixed
//! order (they are applied concurrently), which would make the journal, and
//! so the trades, differ between runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Cluster, INTERNAL_TOKEN, UNIT, User, units};

pub const MARKET: &str = "BTC-USDT";

/// xorshift64*: a tiny seeded generator (no dependency, same on every machine).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// An index below `n`.
    pub fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).unwrap()
    }
}

#[derive(Debug, Clone)]
pub struct Order {
    pub cid: String,
    pub user: usize,
    pub buy: bool,
    pub ioc: bool,
    /// Scale-8 units.
    pub price: i128,
    pub qty: i128,
}

/// The seeded workload: prices drift around 20,000 so both sides cross
/// often; 15% IOC.
pub fn workload(seed: u64, n: usize, users: usize) -> Vec<Order> {
    let mut rng = Rng::new(seed);
    let mut mid: i128 = 20_000;
    (0..n)
        .map(|i| {
            if rng.below(10) == 0 {
                mid += rng.below(21) as i128 - 10;
                mid = mid.clamp(19_000, 21_000);
            }
            let buy = rng.below(2) == 0;
            let offset = rng.below(41) as i128 - 20;
            Order {
                cid: format!("c{i:06}"),
                user: rng.index(users),
                buy,
                ioc: rng.below(100) < 15,
                price: (mid + offset) * UNIT,
                // 0.001 .. 0.1 BTC in steps of 0.00001
                qty: (100 + rng.below(9_901) as i128) * 1_000,
            }
        })
        .collect()
}

/// `(trade index from 1, maker cid, taker cid, price, qty)`.
pub type Trade = (u64, String, String, i128, i128);

/// The fault-free outcome: trades, and each order's filled quantity and
/// whether it rests at the end.
pub struct Model {
    pub trades: Vec<Trade>,
    pub filled: BTreeMap<String, i128>,
    pub resting: BTreeMap<String, i128>,
}

/// Price-time priority for plain limit orders (GTC rests, IOC expires),
/// trades at the maker's price, self-trades allowed (stp none).
pub fn reference(orders: &[Order]) -> Model {
    // price -> FIFO of (cid, open qty)
    let mut bids: BTreeMap<i128, VecDeque<(String, i128)>> = BTreeMap::new();
    let mut asks: BTreeMap<i128, VecDeque<(String, i128)>> = BTreeMap::new();
    let mut trades = Vec::new();
    let mut filled: BTreeMap<String, i128> = BTreeMap::new();
    for o in orders {
        let mut left = o.qty;
        while left > 0 {
            let best = if o.buy {
                asks.first_key_value()
                    .map(|(p, _)| *p)
                    .filter(|p| *p <= o.price)
            } else {
                bids.last_key_value()
                    .map(|(p, _)| *p)
                    .filter(|p| *p >= o.price)
            };
            let Some(price) = best else { break };
            let book = if o.buy { &mut asks } else { &mut bids };
            let level = book.get_mut(&price).unwrap();
            let (maker, open) = level.front_mut().unwrap();
            let q = left.min(*open);
            *open -= q;
            left -= q;
            trades.push((
                trades.len() as u64 + 1,
                maker.clone(),
                o.cid.clone(),
                price,
                q,
            ));
            *filled.entry(maker.clone()).or_default() += q;
            *filled.entry(o.cid.clone()).or_default() += q;
            if *open == 0 {
                level.pop_front();
                if level.is_empty() {
                    book.remove(&price);
                }
            }
        }
        if left > 0 && !o.ioc {
            let book = if o.buy { &mut bids } else { &mut asks };
            book.entry(o.price)
                .or_default()
                .push_back((o.cid.clone(), left));
        }
    }
    let resting = bids
        .values()
        .chain(asks.values())
        .flatten()
        .map(|(c, q)| (c.clone(), *q))
        .collect();
    Model {
        trades,
        filled,
        resting,
    }
}

fn dec(v: i128) -> String {
    super::fmt_units(v)
}

/// Submits the workload serially, retrying each request until answered.
/// With several order services, requests go to each in turn (and a retry
/// to the next one): still one at a time, so the journal keeps the order.
pub async fn drive(
    client: reqwest::Client,
    order_urls: Vec<String>,
    user_ids: Vec<i64>,
    orders: Vec<Order>,
    done: Arc<AtomicUsize>,
) -> (usize, usize) {
    let mut retries = 0;
    let mut requests = 0;
    // One placement per request (see the module comment); the batch route
    // is used for its per-placement answers, so a retry after a partial
    // failure is handled the same way for any request size.
    for chunk in orders.chunks(1) {
        let body = json!({"orders": chunk.iter().map(|o| json!({
            "user_id": user_ids[o.user],
            "market": MARKET,
            "side": if o.buy { "buy" } else { "sell" },
            "type": "limit",
            "time_in_force": if o.ioc { "IOC" } else { "GTC" },
            "price": dec(o.price),
            "quantity": dec(o.qty),
            "client_order_id": o.cid,
        })).collect::<Vec<_>>()});
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let order_url = &order_urls[requests % order_urls.len()];
            requests += 1;
            let r = client
                .post(format!("{order_url}/internal/v1/orders/batch"))
                .bearer_auth(INTERNAL_TOKEN)
                .timeout(Duration::from_secs(5))
                .json(&body)
                .send()
                .await;
            let outcome = match r {
                Ok(r) if r.status() == 200 => {
                    let v: Value = r.json().await.unwrap();
                    let results = v.as_array().expect("one result per placement");
                    assert_eq!(results.len(), chunk.len());
                    let mut retry = None;
                    for (res, o) in results.iter().zip(chunk) {
                        let st = res["status"].as_u64().unwrap_or(0);
                        if st == 503 {
                            // Retryable (e.g. the database is down): nothing applied.
                            retry = Some(res.to_string());
                            continue;
                        }
                        assert!(
                            st == 200 || st == 201,
                            "{} was refused (the workload never should be): {res}",
                            o.cid
                        );
                    }
                    retry
                }
                Ok(r) if r.status().is_server_error() => {
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    assert_ne!(status, 500, "a 500 from the order service: {text}");
                    Some(format!("{status} {text}"))
                }
                Ok(r) => panic!("batch answered {}: {}", r.status(), r.text().await.unwrap()),
                Err(e) => Some(e.to_string()),
            };
            match outcome {
                None => break,
                Some(why) => {
                    retries += 1;
                    assert!(
                        Instant::now() < deadline,
                        "a batch was not accepted within 120 s: {why}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        done.fetch_add(chunk.len(), Ordering::Relaxed);
    }
    (requests, retries)
}

/// Every stream under the prefix: `(key, total pending over its groups)`, and
/// every dead-letter stream with its length.
pub async fn stream_state(
    redis_url: &str,
    prefix: &str,
) -> (Vec<(String, u64)>, Vec<(String, u64)>) {
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("TYPE")
            .arg("stream")
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.sort();
    keys.dedup();
    let mut pending = Vec::new();
    let mut dlq = Vec::new();
    for key in keys {
        if key.ends_with(":dlq") {
            let n: u64 = redis::cmd("XLEN")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            dlq.push((key, n));
            continue;
        }
        let groups: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut total = 0u64;
        for g in groups {
            let map: BTreeMap<String, redis::Value> = redis::from_redis_value(g).unwrap();
            if let Some(v) = map.get("pending") {
                total += redis::from_redis_value::<u64>(v.clone()).unwrap();
            }
        }
        pending.push((key, total));
    }
    (pending, dlq)
}

/// The checks every fault test ends with; returns a one-line summary.
/// Orders whose `client_order_id` starts with `probe` (a test's own probes,
/// far from the market so they never trade) are left out.
pub async fn verify(c: &Cluster, redis_url: &str, orders: &[Order], model: &Model) -> String {
    let db = sqlx::PgPool::connect(&c.db_url).await.unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);

    // 1. The journal is the workload, in order.
    let journal: Vec<String> = sqlx::query_scalar(
        "SELECT o.client_order_id FROM order_commands c
           JOIN orders o ON o.id = (c.command->>'order_id')::bigint
          WHERE c.market = $1 AND c.command->>'type' = 'place' AND o.client_order_id NOT LIKE 'probe%'
          ORDER BY c.seq",
    )
    .bind(MARKET)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(journal.len(), orders.len(), "each order journaled once");
    for (j, o) in journal.iter().zip(orders) {
        assert_eq!(j, &o.cid, "journal order differs from the workload order");
    }

    // 2. Everything journaled is matched and cleared; orders reach the model's state.
    let last_seq: i64 =
        sqlx::query_scalar("SELECT last_seq FROM market_sequences WHERE market = $1")
            .bind(MARKET)
            .fetch_one(&db)
            .await
            .unwrap();
    let want_open: i64 = model.resting.len() as i64;
    loop {
        let (batches, cleared, open): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM event_batches WHERE market = $1),
                    (SELECT count(*) FROM cleared_batches WHERE market = $1),
                    (SELECT count(*) FROM orders WHERE market = $1 AND status IN ('new','partially_filled')
                                                  AND client_order_id NOT LIKE 'probe%')",
        )
        .bind(MARKET)
        .fetch_one(&db)
        .await
        .unwrap();
        if batches == last_seq && cleared == last_seq && open == want_open {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: last_seq {last_seq}, event batches {batches}, cleared {cleared}, open orders {open} (model {want_open})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let settled_after = started.elapsed();

    // 3. Trades: clearing's table = matching's batches = the fault-free model.
    let cleared: Vec<(i64, String, String, String, String)> = sqlx::query_as(
        "SELECT t.id, m.client_order_id, k.client_order_id, t.price::text, t.quantity::text
           FROM trades t JOIN orders m ON m.id = t.maker_order_id JOIN orders k ON k.id = t.taker_order_id
          WHERE t.market = $1 ORDER BY t.id",
    )
    .bind(MARKET)
    .fetch_all(&db)
    .await
    .unwrap();
    let cleared: Vec<Trade> = cleared
        .into_iter()
        .map(|(id, m, k, p, q)| (id as u64, m, k, units(&p), units(&q)))
        .collect();
    let matched: Vec<(i64, String, String, String, String)> = sqlx::query_as(
        "SELECT (e->>'trade_id')::bigint AS id, m.client_order_id, k.client_order_id, e->>'price', e->>'quantity'
           FROM event_batches b CROSS JOIN LATERAL jsonb_array_elements(b.events) e
           JOIN orders m ON m.id = (e->>'maker_order_id')::bigint
           JOIN orders k ON k.id = (e->>'taker_order_id')::bigint
          WHERE b.market = $1 AND e->>'type' = 'trade' ORDER BY id",
    )
    .bind(MARKET)
    .fetch_all(&db)
    .await
    .unwrap();
    let matched: Vec<Trade> = matched
        .into_iter()
        .map(|(id, m, k, p, q)| {
            (
                id as u64,
                m,
                k,
                p.parse::<i128>().unwrap(),
                q.parse::<i128>().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cleared.len(),
        model.trades.len(),
        "trade count: cleared vs fault-free model"
    );
    for (i, ((c1, m1), want)) in cleared.iter().zip(&matched).zip(&model.trades).enumerate() {
        assert_eq!(c1, want, "trade #{i}: cleared vs fault-free model");
        assert_eq!(m1, want, "trade #{i}: matching's batch vs fault-free model");
    }
    assert_eq!(matched.len(), model.trades.len());

    // 4. Each order's filled quantity and open set match the model.
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT client_order_id, status, filled_quantity::text FROM orders
          WHERE market = $1 AND client_order_id NOT LIKE 'probe%'",
    )
    .bind(MARKET)
    .fetch_all(&db)
    .await
    .unwrap();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for (cid, status, filled) in &rows {
        *statuses.entry(status.clone()).or_default() += 1;
        let want = model.filled.get(cid).copied().unwrap_or(0);
        assert_eq!(units(filled), want, "{cid} filled quantity ({status})");
        let open = status == "new" || status == "partially_filled";
        assert_eq!(
            open,
            model.resting.contains_key(cid),
            "{cid} is {status}; the model says resting = {}",
            model.resting.contains_key(cid)
        );
    }

    // 5. Pending entries drain to zero; no dead letters.
    let (pending, dlq) = loop {
        let (pending, dlq) = stream_state(redis_url, &c.redis_prefix).await;
        if pending.iter().all(|(_, n)| *n == 0) {
            break (pending, dlq);
        }
        assert!(
            Instant::now() < deadline,
            "pending entries did not drain: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(dlq.iter().all(|(_, n)| *n == 0), "dead letters: {dlq:?}");

    let drained_after = started.elapsed();

    // 6. Reconcile passes on every invariant.
    let out = c.reconcile();
    assert!(
        out.status.success(),
        "reconcile failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "journal = workload ({} orders, seq 1..{last_seq}); {} trades equal the fault-free model; \
         order statuses {statuses:?}; pending {pending:?}; dead-letter streams {dlq:?}; reconcile ok \
         (settled after {settled_after:.1?}, pending drained after {drained_after:.1?}, all checked after {:.1?})",
        journal.len(),
        cleared.len(),
        started.elapsed()
    )
}

/// One trade clearing stored, with both ways of naming its orders: the
/// order ids (the order service's `order_ids` sequence) and the
/// `client_order_id`s (the workload's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTrade {
    /// The engine's trade id (per market, from 1).
    pub id: i64,
    pub maker_order_id: i64,
    pub taker_order_id: i64,
    pub maker_cid: String,
    pub taker_cid: String,
    pub maker_user_id: i64,
    pub taker_user_id: i64,
    /// Scale-8 units.
    pub price: i128,
    pub quantity: i128,
}

/// Every trade of the workload market in `db_url`'s `trades`, by trade id.
pub async fn stored_trades(db_url: &str) -> Vec<StoredTrade> {
    let sql = "SELECT t.id, t.maker_order_id, t.taker_order_id, m.client_order_id, k.client_order_id,
                t.maker_user_id, t.taker_user_id, t.price::text, t.quantity::text
           FROM trades t JOIN orders m ON m.id = t.maker_order_id JOIN orders k ON k.id = t.taker_order_id
          WHERE t.market = $1 ORDER BY t.id";
    // Decimal columns: scale-8 units.
    query_trades(db_url, sql, units).await
}

/// Every trade of the workload market in matching's stored event batches
/// (`event_batches`), by trade id: the engine's output, before clearing.
pub async fn matched_trades(db_url: &str) -> Vec<StoredTrade> {
    let sql = "SELECT (e->>'trade_id')::bigint AS trade_id, m.id, k.id, m.client_order_id, k.client_order_id,
                (e->>'maker_user_id')::bigint, (e->>'taker_user_id')::bigint, e->>'price', e->>'quantity'
           FROM event_batches b CROSS JOIN LATERAL jsonb_array_elements(b.events) e
           JOIN orders m ON m.id = (e->>'maker_order_id')::bigint
           JOIN orders k ON k.id = (e->>'taker_order_id')::bigint
          WHERE b.market = $1 AND e->>'type' = 'trade' ORDER BY trade_id";
    // Events carry amounts as integer units already.
    query_trades(db_url, sql, |t| t.parse().unwrap()).await
}

/// Runs `sql` (bound to the workload market; columns: trade id, maker and
/// taker order id, client order id and user id, price, quantity) and reads
/// the amounts with `amount`.
async fn query_trades(
    db_url: &str,
    sql: &'static str,
    amount: fn(&str) -> i128,
) -> Vec<StoredTrade> {
    let db = sqlx::PgPool::connect(db_url).await.unwrap();
    #[allow(clippy::type_complexity)]
    let rows: Vec<(i64, i64, i64, String, String, i64, i64, String, String)> = sqlx::query_as(sql)
        .bind(MARKET)
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    rows.into_iter()
        .map(|(id, mo, to, mc, tc, mu, tu, p, q)| StoredTrade {
            id,
            maker_order_id: mo,
            taker_order_id: to,
            maker_cid: mc,
            taker_cid: tc,
            maker_user_id: mu,
            taker_user_id: tu,
            price: amount(&p),
            quantity: amount(&q),
        })
        .collect()
}

/// Waits (bounded) until matching has stored a batch for every journaled
/// command of the workload market; returns the last seq.
pub async fn wait_matched(db_url: &str, timeout: Duration) -> i64 {
    let db = sqlx::PgPool::connect(db_url).await.unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        let (last_seq, batches): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT coalesce(max(last_seq), 0) FROM market_sequences WHERE market = $1),
                    (SELECT count(*) FROM event_batches WHERE market = $1)",
        )
        .bind(MARKET)
        .fetch_one(&db)
        .await
        .unwrap();
        if batches == last_seq {
            db.close().await;
            return last_seq;
        }
        assert!(
            Instant::now() < deadline,
            "not matched: last_seq {last_seq}, event batches {batches}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers and funds the users; returns their ids.
pub async fn funded_users(c: &Cluster, n: usize) -> Vec<User> {
    let mut users = Vec::new();
    for i in 0..n {
        let u = c.user(&format!("chaos{i}@example.com")).await;
        c.deposit(&u, "BTC", "100000").await;
        c.deposit(&u, "USDT", "2000000000").await;
        users.push(u);
    }
    users
}

/// Waits until the driver has had `n` orders accepted.
pub async fn wait_done(done: &AtomicUsize, n: usize) {
    while done.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A seeded workload being submitted to a cluster.
pub struct Run {
    pub orders: Vec<Order>,
    pub model: Model,
    pub users: Vec<User>,
    /// Orders accepted so far.
    pub done: Arc<AtomicUsize>,
    /// `(requests, retried requests)` when all are accepted.
    pub driver: tokio::task::JoinHandle<(usize, usize)>,
}

/// Sets up BTC-USDT, funds `users` users, computes the fault-free model of
/// `n` seeded orders, prints it, and starts the driver.
pub async fn start_run(c: &Cluster, seed: u64, n: usize, users: usize) -> Run {
    start_run_on(
        c,
        seed,
        n,
        users,
        vec![c.env()["ORDER_SERVICE_URL"].clone()],
    )
    .await
}

/// [`start_run`], placing through each of `order_urls` in turn.
pub async fn start_run_on(
    c: &Cluster,
    seed: u64,
    n: usize,
    users: usize,
    order_urls: Vec<String>,
) -> Run {
    c.setup_btc_usdt("0.001", "0.002").await;
    let users_ = funded_users(c, users).await;
    let orders = workload(seed, n, users);
    let model = reference(&orders);
    println!(
        "workload: {n} orders from {users} users (seed {seed:#x}); fault-free model: {} trades, {} resting",
        model.trades.len(),
        model.resting.len()
    );
    let done = Arc::new(AtomicUsize::new(0));
    let driver = tokio::spawn(drive(
        c.client.clone(),
        order_urls,
        users_.iter().map(|u| u.id).collect(),
        orders.clone(),
        done.clone(),
    ));
    Run {
        orders,
        model,
        users: users_,
        done,
        driver,
    }
}
