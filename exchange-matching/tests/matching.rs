//! The matching service against real Postgres and Redis: trades stored and
//! published, duplicates skipped, gaps filled from the journal, restart
//! replays to the same state, a replay mismatch halts the market.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use exchange_common::Shutdown;
use exchange_common::redis::Redis;
use exchange_common::testing::{TestEnv, TestMarket, seed_market, test_env};
use exchange_domain::{
    Command, Event, EventBatch, MarketSymbol, OrderId, OrderType, PlaceOrder, SelfTradePrevention,
    SequencedCommand, Side, TimeInForce, UserId,
};
use serde_json::Value;
use sqlx::PgPool;
use tokio::net::TcpListener;

struct Env {
    env: TestEnv,
    db: PgPool,
    redis: Redis,
}

async fn setup() -> Env {
    let env = test_env().await;
    let db = PgPool::connect(&env.db_url).await.unwrap();
    seed_market(&db, &TestMarket::default()).await;
    let redis = Redis::with_prefix(&env.redis_url, &env.redis_prefix).unwrap();
    Env { env, db, redis }
}

struct Service {
    url: String,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Service {
    async fn stop(self) {
        self.shutdown.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
    }
}

async fn start(env: &Env) -> Service {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(exchange_matching::run(
        Arc::new(env.env.config.clone()),
        exchange_matching::Listeners { http: listener },
        shutdown.clone(),
    ));
    Service {
        url,
        shutdown,
        handle,
    }
}

fn market() -> MarketSymbol {
    MarketSymbol::parse("BTC-USDT").unwrap()
}

/// A limit order for 1 BTC at `price` whole USDT, fully reserved.
fn limit(order: u64, user: u64, side: Side, price: u128) -> Command {
    let price_units = price * 1_000_000;
    Command::Place(PlaceOrder {
        order_id: OrderId(order),
        user_id: UserId(user),
        side,
        order_type: OrderType::Limit,
        price: Some(price_units),
        quantity: Some(100_000_000),
        quote_quantity: None,
        stop_price: None,
        time_in_force: TimeInForce::Gtc,
        post_only: false,
        stp: SelfTradePrevention::None,
        reserved: match side {
            Side::Buy => price_units,
            Side::Sell => 100_000_000,
        },
    })
}

/// Writes `command` to the journal as `seq` (and `market_sequences`).
async fn journal(env: &Env, seq: u64, command: &Command) -> SequencedCommand {
    let cmd = SequencedCommand {
        market: market(),
        seq,
        time_ms: 1_700_000_000_000 + seq,
        command: command.clone(),
    };
    sqlx::query("INSERT INTO order_commands (market, seq, time_ms, command) VALUES ('BTC-USDT', $1, $2, $3::jsonb)")
        .bind(i64::try_from(seq).unwrap())
        .bind(i64::try_from(cmd.time_ms).unwrap())
        .bind(serde_json::to_string(command).unwrap())
        .execute(&env.db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO market_sequences (market, last_seq) VALUES ('BTC-USDT', $1)
         ON CONFLICT (market) DO UPDATE SET last_seq = GREATEST(market_sequences.last_seq, EXCLUDED.last_seq)",
    )
    .bind(i64::try_from(seq).unwrap())
    .execute(&env.db)
    .await
    .unwrap();
    cmd
}

async fn xadd(env: &Env, cmd: &SequencedCommand) {
    let mut conn = env.redis.conn();
    let _: String = redis::cmd("XADD")
        .arg(env.redis.orders_stream("BTC-USDT"))
        .arg("*")
        .arg("command")
        .arg(serde_json::to_string(cmd).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
}

async fn stored(env: &Env) -> Vec<(i64, Vec<Event>)> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT seq, events::text FROM event_batches WHERE market = 'BTC-USDT' ORDER BY seq",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(s, e)| (s, serde_json::from_str(&e).unwrap()))
        .collect()
}

async fn published(env: &Env) -> Vec<EventBatch> {
    let mut conn = env.redis.conn();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(env.redis.events_stream())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    reply
        .ids
        .iter()
        .map(|e| serde_json::from_str(&e.get::<String>("batch").unwrap()).unwrap())
        .collect()
}

async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn wait_stored(env: &Env, n: usize) {
    wait_for(&format!("{n} stored batches"), || async {
        stored(env).await.len() >= n
    })
    .await;
}

async fn status(svc: &Service, env: &Env) -> Value {
    reqwest::Client::new()
        .get(format!("{}/internal/v1/markets", svc.url))
        .bearer_auth(env.env.config.internal_token.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn pending(env: &Env) -> u64 {
    let mut conn = env.redis.conn();
    let reply: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(env.redis.orders_stream("BTC-USDT"))
        .arg(&env.env.config.matching.consumer.group)
        .query_async(&mut conn)
        .await
        .unwrap();
    u64::try_from(reply.count()).unwrap()
}

#[tokio::test]
async fn a_crossing_pair_trades_and_duplicates_are_skipped() {
    let env = setup().await;
    let svc = start(&env).await;
    let sell = journal(&env, 1, &limit(1, 10, Side::Sell, 100)).await;
    xadd(&env, &sell).await;
    let buy = journal(&env, 2, &limit(2, 20, Side::Buy, 100)).await;
    xadd(&env, &buy).await;
    wait_stored(&env, 2).await;
    let batches = stored(&env).await;
    let trade = batches[1]
        .1
        .iter()
        .find_map(|e| match e {
            Event::Trade {
                maker_order_id,
                taker_order_id,
                price,
                quantity,
                quote_amount,
                ..
            } => Some((
                *maker_order_id,
                *taker_order_id,
                *price,
                *quantity,
                *quote_amount,
            )),
            _ => None,
        })
        .expect("a trade");
    assert_eq!(
        trade,
        (
            OrderId(1),
            OrderId(2),
            100_000_000,
            100_000_000,
            100_000_000
        )
    );
    wait_for("2 published batches", || async {
        published(&env).await.len() == 2
    })
    .await;
    let on_stream = published(&env).await;
    assert_eq!(on_stream[1].seq, 2);
    assert_eq!(on_stream[1].events, batches[1].1);

    // The same command delivered again: acknowledged, nothing new.
    xadd(&env, &buy).await;
    xadd(&env, &sell).await;
    wait_for("no pending entries", || async { pending(&env).await == 0 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored(&env).await.len(), 2);
    assert_eq!(published(&env).await.len(), 2);
    wait_for("last_seq 2", || async {
        status(&svc, &env).await["BTC-USDT"]["last_seq"] == 2
    })
    .await;
    svc.stop().await;
}

#[tokio::test]
async fn reordered_and_duplicated_deliveries_apply_each_command_once_in_seq_order() {
    let env = setup().await;
    let svc = start(&env).await;
    wait_for("market started", || async {
        status(&svc, &env).await.get("BTC-USDT").is_some()
    })
    .await;
    let one = journal(&env, 1, &limit(1, 10, Side::Sell, 100)).await;
    let two = journal(&env, 2, &limit(2, 11, Side::Sell, 101)).await;
    let three = journal(&env, 3, &limit(3, 20, Side::Buy, 101)).await;
    let four = journal(&env, 4, &limit(4, 21, Side::Buy, 101)).await;
    // Delivered as 3, 1, 3, 2, 1, 4, 4, 2: out of order and each twice.
    for c in [&three, &one, &three, &two, &one, &four, &four, &two] {
        xadd(&env, c).await;
    }
    wait_stored(&env, 4).await;
    wait_for("no pending entries", || async { pending(&env).await == 0 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = stored(&env).await;
    let seqs: Vec<i64> = stored.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1, 2, 3, 4], "each command stored once");
    // In seq order: 3 takes the best ask (1 at 100), 4 takes 2 at 101.
    let makers: Vec<(u64, u128)> = stored
        .iter()
        .flat_map(|(_, events)| events.iter())
        .filter_map(|e| match e {
            Event::Trade {
                maker_order_id,
                price,
                ..
            } => Some((maker_order_id.0, *price)),
            _ => None,
        })
        .collect();
    assert_eq!(makers, [(1, 100_000_000), (2, 101_000_000)]);
    let published_seqs: Vec<u64> = published(&env).await.iter().map(|b| b.seq).collect();
    assert_eq!(published_seqs, [1, 2, 3, 4], "each batch published once");
    println!("deliveries 3,1,3,2,1,4,4,2 → batches {seqs:?}, trades {makers:?}");
    svc.stop().await;
}

#[tokio::test]
async fn a_gap_is_filled_from_the_journal() {
    let env = setup().await;
    let svc = start(&env).await;
    wait_for("market started", || async {
        status(&svc, &env).await.get("BTC-USDT").is_some()
    })
    .await;
    // Seqs 1 and 2 never reach the stream; 3 does.
    journal(&env, 1, &limit(1, 10, Side::Sell, 100)).await;
    journal(&env, 2, &limit(2, 11, Side::Sell, 101)).await;
    let third = journal(&env, 3, &limit(3, 20, Side::Buy, 101)).await;
    xadd(&env, &third).await;
    wait_stored(&env, 3).await;
    let seqs: Vec<i64> = stored(&env).await.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1, 2, 3]);
    // The buy at 101 took the best ask, 100 (order 1).
    let maker = stored(&env).await[2].1.iter().find_map(|e| match e {
        Event::Trade {
            maker_order_id,
            price,
            ..
        } => Some((*maker_order_id, *price)),
        _ => None,
    });
    assert_eq!(maker, Some((OrderId(1), 100_000_000)));
    let published_seqs: Vec<u64> = published(&env).await.iter().map(|b| b.seq).collect();
    assert_eq!(published_seqs, [1, 2, 3]);
    svc.stop().await;
}

/// Redis is only a transport: what matching applies is the journal's
/// command with an entry's seq, never the entry.
#[tokio::test]
async fn forged_and_altered_commands_apply_only_the_journal() {
    let env = setup().await;
    let svc = start(&env).await;
    wait_for("market started", || async {
        status(&svc, &env).await.get("BTC-USDT").is_some()
    })
    .await;
    // An altered copy: the entry says seq 1 is a buy at 500; the journal
    // says a sell at 100. The journal's is applied.
    let first = journal(&env, 1, &limit(1, 10, Side::Sell, 100)).await;
    let mut altered = first.clone();
    altered.command = limit(1, 66, Side::Buy, 500);
    xadd(&env, &altered).await;
    wait_stored(&env, 1).await;
    let accepted = stored(&env).await[0].1.iter().find_map(|e| match e {
        Event::OrderAccepted { user_id, .. } => Some(*user_id),
        _ => None,
    });
    assert_eq!(accepted, Some(UserId(10)));
    // Seq 2 and 3 are journaled but their entries never come; a forged entry
    // far ahead (not journaled) is refused, and the journaled commands read
    // on the way are applied.
    journal(&env, 2, &limit(2, 11, Side::Sell, 101)).await;
    journal(&env, 3, &limit(3, 20, Side::Buy, 101)).await;
    let mut forged = first.clone();
    forged.seq = 1_000;
    xadd(&env, &forged).await;
    wait_stored(&env, 3).await;
    // And a seq at the very end of the range: no overflow, no halt.
    forged.seq = u64::MAX;
    xadd(&env, &forged).await;
    let fourth = journal(&env, 4, &limit(4, 21, Side::Buy, 99)).await;
    xadd(&env, &fourth).await;
    wait_stored(&env, 4).await;
    let seqs: Vec<i64> = stored(&env).await.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    wait_for("every entry acknowledged", || async {
        pending(&env).await == 0
    })
    .await;
    let s = status(&svc, &env).await;
    assert_eq!(s["BTC-USDT"]["last_seq"], 4, "{s}");
    assert!(s["BTC-USDT"]["halted"].is_null(), "{s}");
    svc.stop().await;
}

#[tokio::test]
async fn restart_replays_to_the_same_state_and_a_mismatch_halts() {
    let env = setup().await;
    let svc = start(&env).await;
    for (seq, cmd) in [
        (1, limit(1, 10, Side::Sell, 100)),
        (2, limit(2, 11, Side::Sell, 101)),
        (3, limit(3, 20, Side::Buy, 99)),
        (
            4,
            Command::Cancel {
                order_id: OrderId(3),
                user_id: UserId(20),
            },
        ),
    ] {
        let c = journal(&env, seq, &cmd).await;
        xadd(&env, &c).await;
    }
    wait_stored(&env, 4).await;
    let before = stored(&env).await;
    svc.stop().await;

    // Commands journaled while matching was down, one of them never published.
    journal(&env, 5, &limit(5, 21, Side::Buy, 100)).await;
    let svc = start(&env).await;
    wait_stored(&env, 5).await;
    let after = stored(&env).await;
    assert_eq!(
        &after[..4],
        &before[..],
        "replay left the stored batches as they were"
    );
    // The replayed book still holds order 2 (ask 101): a buy at 101 takes it.
    let c = journal(&env, 6, &limit(6, 22, Side::Buy, 101)).await;
    xadd(&env, &c).await;
    wait_stored(&env, 6).await;
    let trade = stored(&env).await[5].1.iter().find_map(|e| match e {
        Event::Trade { maker_order_id, .. } => Some(*maker_order_id),
        _ => None,
    });
    assert_eq!(trade, Some(OrderId(2)));
    // Seq 5 matched order 1 at 100 during recovery.
    assert!(after[4].1.iter().any(|e| matches!(
        e,
        Event::Trade {
            maker_order_id: OrderId(1),
            ..
        }
    )));
    wait_for("last_seq 6", || async {
        status(&svc, &env).await["BTC-USDT"]["last_seq"] == 6
    })
    .await;
    let st = status(&svc, &env).await;
    assert!(st["BTC-USDT"]["halted"].is_null());
    svc.stop().await;

    // Someone rewrote history, and there is no snapshot to start after it:
    // the full replay disagrees and the market halts.
    sqlx::query("DELETE FROM matching_snapshots")
        .execute(&env.db)
        .await
        .unwrap();
    sqlx::query("UPDATE event_batches SET events = '[]' WHERE market = 'BTC-USDT' AND seq = 3")
        .execute(&env.db)
        .await
        .unwrap();
    let svc = start(&env).await;
    wait_for("the market to halt", || async {
        !status(&svc, &env).await["BTC-USDT"]["halted"].is_null()
    })
    .await;
    let st = status(&svc, &env).await;
    assert_eq!(st["BTC-USDT"]["halted"]["seq"], 3, "{st}");
    let client = reqwest::Client::new();
    wait_for("/ready to turn degraded", || async {
        let r = client
            .get(format!("{}/ready", svc.url))
            .send()
            .await
            .unwrap();
        if r.status() != 503 {
            return false;
        }
        let body: Value = r.json().await.unwrap();
        body["dependencies"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.contains("BTC-USDT halted at seq 3"))
    })
    .await;
    // The contract metric the `ExchangeMarketHalted` alert watches.
    wait_for("exchange_market_halted to be 1", || async {
        let body = client
            .get(format!("{}/metrics", svc.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.contains("exchange_market_halted{market=\"BTC-USDT\"} 1")
    })
    .await;
    svc.stop().await;
}

#[tokio::test]
async fn a_failed_store_is_retried_without_losing_or_repeating_a_batch() {
    let env = setup().await;
    let svc = start(&env).await;
    wait_for("market started", || async {
        status(&svc, &env).await.get("BTC-USDT").is_some()
    })
    .await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'storage unavailable'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON event_batches FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&env.db)
    .await
    .unwrap();
    let sell = journal(&env, 1, &limit(1, 10, Side::Sell, 100)).await;
    xadd(&env, &sell).await;
    wait_for("the command applied", || async {
        status(&svc, &env).await["BTC-USDT"]["last_seq"] == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(stored(&env).await.is_empty());
    assert_eq!(pending(&env).await, 1, "not acknowledged while unstored");
    assert!(published(&env).await.is_empty());

    sqlx::raw_sql("DROP TRIGGER refuse ON event_batches")
        .execute(&env.db)
        .await
        .unwrap();
    // The periodic flush stores it; the redelivered entry is then a duplicate.
    wait_stored(&env, 1).await;
    let buy = journal(&env, 2, &limit(2, 20, Side::Buy, 100)).await;
    xadd(&env, &buy).await;
    wait_stored(&env, 2).await;
    wait_for("no pending entries", || async { pending(&env).await == 0 }).await;
    let seqs: Vec<u64> = published(&env).await.iter().map(|b| b.seq).collect();
    assert_eq!(seqs, [1, 2]);
    assert!(
        stored(&env).await[1]
            .1
            .iter()
            .any(|e| matches!(e, Event::Trade { .. }))
    );
    svc.stop().await;
}

async fn snapshot_seqs(env: &Env) -> Vec<i64> {
    sqlx::query_scalar("SELECT seq FROM matching_snapshots WHERE market = 'BTC-USDT' ORDER BY seq")
        .fetch_all(&env.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn recovery_starts_from_the_newest_good_snapshot() {
    let env = setup().await;
    let svc = start(&env).await;
    for (seq, cmd) in [
        (1, limit(1, 10, Side::Sell, 100)),
        (2, limit(2, 11, Side::Sell, 101)),
        (3, limit(3, 20, Side::Buy, 99)),
    ] {
        let c = journal(&env, seq, &cmd).await;
        xadd(&env, &c).await;
    }
    wait_stored(&env, 3).await;
    svc.stop().await;
    assert_eq!(
        snapshot_seqs(&env).await,
        [3],
        "a snapshot is taken at shutdown"
    );

    // History before the snapshot is gone: only the snapshot can rebuild the book.
    sqlx::query("DELETE FROM order_commands WHERE seq <= 3")
        .execute(&env.db)
        .await
        .unwrap();
    journal(&env, 4, &limit(4, 21, Side::Buy, 100)).await;
    let svc = start(&env).await;
    wait_stored(&env, 4).await;
    let maker = stored(&env).await[3].1.iter().find_map(|e| match e {
        Event::Trade { maker_order_id, .. } => Some(*maker_order_id),
        _ => None,
    });
    assert_eq!(maker, Some(OrderId(1)));
    wait_for("last_seq 4", || async {
        status(&svc, &env).await["BTC-USDT"]["last_seq"] == 4
    })
    .await;
    svc.stop().await;
    assert_eq!(snapshot_seqs(&env).await, [3, 4]);

    // A damaged newest snapshot is skipped: the older one plus the journal
    // give the same state (replay of seq 4 matches its stored batch).
    sqlx::query("UPDATE matching_snapshots SET bytes = '\\x00' WHERE seq = 4")
        .execute(&env.db)
        .await
        .unwrap();
    let svc = start(&env).await;
    let c = journal(&env, 5, &limit(5, 22, Side::Buy, 101)).await;
    xadd(&env, &c).await;
    wait_stored(&env, 5).await;
    let maker = stored(&env).await[4].1.iter().find_map(|e| match e {
        Event::Trade { maker_order_id, .. } => Some(*maker_order_id),
        _ => None,
    });
    assert_eq!(maker, Some(OrderId(2)));
    let st = status(&svc, &env).await;
    assert!(st["BTC-USDT"]["halted"].is_null(), "{st}");
    svc.stop().await;
}

#[tokio::test]
async fn the_order_stream_is_trimmed_below_the_snapshot() {
    let env = setup().await;
    let svc = start(&env).await;
    for seq in 1..=300u64 {
        let side = if seq % 2 == 0 { Side::Buy } else { Side::Sell };
        let price = if side == Side::Buy { 90 } else { 110 };
        let c = journal(&env, seq, &limit(seq, 10 + seq % 5, side, price)).await;
        xadd(&env, &c).await;
    }
    wait_stored(&env, 300).await;
    wait_for("no pending entries", || async { pending(&env).await == 0 }).await;
    svc.stop().await;
    assert_eq!(snapshot_seqs(&env).await, [300]);
    let mut conn = env.redis.conn();
    let len: u64 = redis::cmd("XLEN")
        .arg(env.redis.orders_stream("BTC-USDT"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(len < 300, "stream still holds {len} entries");
    // Nothing was lost: a restart from the snapshot has the whole book.
    let svc = start(&env).await;
    wait_for("last_seq 300", || async {
        status(&svc, &env).await["BTC-USDT"]["last_seq"] == 300
    })
    .await;
    svc.stop().await;
}

/// The trades of stored batch `seq`: `(maker, taker)` order ids.
fn trades_of(batches: &[(i64, Vec<Event>)], seq: i64) -> Vec<(u64, u64)> {
    batches
        .iter()
        .filter(|(s, _)| *s == seq)
        .flat_map(|(_, events)| events.iter())
        .filter_map(|e| match e {
            Event::Trade {
                maker_order_id,
                taker_order_id,
                ..
            } => Some((maker_order_id.0, taker_order_id.0)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_halt_at_recovery_first_stores_and_publishes_the_batches_before_it() {
    let env = setup().await;
    // Matching applied seqs 1..=4 and stored only the batch of 3 before it
    // crashed; since then someone rewrote that batch. Seqs 1 and 2 (a trade)
    // were applied correctly and never stored.
    for (seq, cmd) in [
        (1, limit(1, 10, Side::Sell, 100)),
        (2, limit(2, 20, Side::Buy, 100)),
        (3, limit(3, 11, Side::Sell, 101)),
        (4, limit(4, 21, Side::Buy, 101)),
    ] {
        journal(&env, seq, &cmd).await;
    }
    sqlx::query(
        "INSERT INTO event_batches (market, seq, time_ms, events) VALUES ('BTC-USDT', 3, 0, '[]')",
    )
    .execute(&env.db)
    .await
    .unwrap();
    // First, storing fails: recovery is retried and the market is not yet
    // declared halted with its earlier batches unstored.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'storage unavailable'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON event_batches FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&env.db)
    .await
    .unwrap();
    let svc = start(&env).await;
    wait_for("market registered", || async {
        status(&svc, &env).await.get("BTC-USDT").is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let st = status(&svc, &env).await;
    assert!(
        st["BTC-USDT"]["halted"].is_null(),
        "halted while the batches before the halt were unstored: {st}"
    );
    assert_eq!(stored(&env).await.len(), 1);
    sqlx::raw_sql("DROP TRIGGER refuse ON event_batches")
        .execute(&env.db)
        .await
        .unwrap();

    wait_for("the market to halt", || async {
        !status(&svc, &env).await["BTC-USDT"]["halted"].is_null()
    })
    .await;
    let st = status(&svc, &env).await;
    assert_eq!(st["BTC-USDT"]["halted"]["seq"], 3, "{st}");
    let batches = stored(&env).await;
    let seqs: Vec<i64> = batches.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        [1, 2, 3],
        "the batches before the halt are stored, none after it"
    );
    assert_eq!(trades_of(&batches, 2), [(1, 2)], "seq 2's trade is kept");
    assert_eq!(batches[2].1, [], "the disputed batch is left as it was");
    let published: Vec<u64> = published(&env).await.iter().map(|b| b.seq).collect();
    assert_eq!(
        published,
        [1, 2],
        "the batches before the halt are published (not the disputed one)"
    );
    println!("halt at seq 3 during recovery: stored {seqs:?}, published {published:?}");
    svc.stop().await;
}

#[tokio::test]
async fn a_journal_gap_at_recovery_halts_after_storing_what_precedes_it() {
    let env = setup().await;
    journal(&env, 1, &limit(1, 10, Side::Sell, 100)).await;
    journal(&env, 2, &limit(2, 20, Side::Buy, 100)).await;
    // Seq 3 is missing from the journal.
    journal(&env, 4, &limit(4, 21, Side::Buy, 101)).await;
    let svc = start(&env).await;
    wait_for("the market to halt", || async {
        status(&svc, &env)
            .await
            .get("BTC-USDT")
            .is_some_and(|m| !m["halted"].is_null())
    })
    .await;
    let st = status(&svc, &env).await;
    assert_eq!(st["BTC-USDT"]["halted"]["seq"], 4, "{st}");
    let batches = stored(&env).await;
    let seqs: Vec<i64> = batches.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(trades_of(&batches, 2), [(1, 2)]);
    let published: Vec<u64> = published(&env).await.iter().map(|b| b.seq).collect();
    assert_eq!(published, [1, 2]);
    svc.stop().await;
}

/// Fencing at the store (issue 19): once another replica has taken the
/// lease over, the former owner's writes are refused by the statement that
/// would store them, and its renewal finds the lease gone.
#[tokio::test]
async fn a_write_under_a_lease_taken_over_is_refused_by_the_storing_statement() {
    use exchange_matching::lease::{LeaseLost, Leases};
    use exchange_matching::store;
    let env = setup().await;
    let lease_ms = Duration::from_millis(500);
    let (a, b) = (
        Leases::new(env.db.clone(), "replica-a", lease_ms),
        Leases::new(env.db.clone(), "replica-b", lease_ms),
    );
    let held = a.acquire("BTC-USDT").await.unwrap().expect("a free lease");
    assert!(
        b.acquire("BTC-USDT").await.unwrap().is_none(),
        "a live lease is not taken"
    );
    let batch = |seq: u64| EventBatch {
        market: MarketSymbol::parse("BTC-USDT").unwrap(),
        seq,
        time_ms: 1,
        events: Vec::new(),
    };
    store::insert_batches(&env.db, &held.fence(), &[batch(1)])
        .await
        .unwrap();
    assert_eq!(a.renew(&[&held]).await.unwrap().len(), 1, "renewed");

    // The owner stalls past its lease; the other replica takes over.
    tokio::time::sleep(lease_ms + Duration::from_millis(100)).await;
    assert!(!held.is_valid(), "expired by the owner's own clock too");
    let taken = b
        .acquire("BTC-USDT")
        .await
        .unwrap()
        .expect("an expired lease");
    assert_eq!(taken.epoch, held.epoch + 1);

    let refused = store::insert_batches(&env.db, &held.fence(), &[batch(2), batch(3)])
        .await
        .unwrap_err();
    assert!(refused.is::<LeaseLost>(), "{refused:#}");
    let snapshot = store::Snapshot {
        seq: 1,
        state_hash: 7,
        bytes: vec![1, 2, 3],
    };
    let refused = store::insert_snapshot(&env.db, &held.fence(), &snapshot)
        .await
        .unwrap_err();
    assert!(refused.is::<LeaseLost>(), "{refused:#}");
    assert!(
        a.renew(&[&held]).await.unwrap().is_empty(),
        "the former owner cannot renew"
    );
    let seqs: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT seq, epoch FROM event_batches WHERE market = 'BTC-USDT' ORDER BY seq",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    assert_eq!(seqs, [(1, held.epoch)], "nothing stored after the takeover");
    assert!(snapshot_seqs(&env).await.is_empty());

    // The new owner stores; a release frees the market at once.
    store::insert_batches(&env.db, &taken.fence(), &[batch(2)])
        .await
        .unwrap();
    b.release(&taken).await.unwrap();
    let again = a
        .acquire("BTC-USDT")
        .await
        .unwrap()
        .expect("a released lease");
    assert_eq!(again.epoch, taken.epoch + 1);

    // A process restarted under the owner's name takes the live lease back
    // at once (and so fences its predecessor); another name, or the same
    // name past its start, waits for the expiry.
    assert!(
        Leases::new(env.db.clone(), "replica-c", lease_ms)
            .acquire("BTC-USDT")
            .await
            .unwrap()
            .is_none()
    );
    let restarted = Leases::new(env.db.clone(), "replica-a", lease_ms);
    let back = restarted
        .acquire("BTC-USDT")
        .await
        .unwrap()
        .expect("reclaimed at start");
    assert_eq!(back.epoch, again.epoch + 1);
    assert!(
        a.acquire("BTC-USDT").await.unwrap().is_none(),
        "past its start"
    );
    let refused = store::insert_batches(&env.db, &again.fence(), &[batch(3)])
        .await
        .unwrap_err();
    assert!(refused.is::<LeaseLost>());
}
