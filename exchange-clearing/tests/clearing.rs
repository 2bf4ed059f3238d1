//! Clearing against a real Postgres and Redis (DB_URL, REDIS_URL): each
//! test has its own database and key prefix.
//!
//! Orders and balances are set up the way the order service leaves them
//! (order `new`, funds moved available -> locked, a command journaled) and
//! event batches are written by hand the way matching emits them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use exchange_clearing::consumer::store_watermarks;
use exchange_clearing::reconcile::{self, Options as ReconcileOptions};
use exchange_clearing::{Clearing, ClearingHandler};
use exchange_common::Shutdown;
use exchange_common::ready::Heartbeats;
use exchange_common::redis::Redis;
use exchange_common::streams::{ConsumerOptions, StreamEntry, run_consumer};
use exchange_common::testing::{TestEnv, TestMarket, seed_market, test_env};
use exchange_domain::{
    AssetRole, Event, EventBatch, FinalStatus, MarketSymbol, OrderId, ReasonCode, Side, TradeId,
    UserId,
};
use futures_util::StreamExt as _;
use redis::AsyncCommands as _;
use sqlx::{PgPool, Row as _};

const MARKET: &str = "BTC-USDT";
/// 1 BTC and 1 USDT in units (BTC scale 8, USDT scale 6).
const BTC: u128 = 100_000_000;
const USDT: u128 = 1_000_000;

struct Harness {
    env: TestEnv,
    db: PgPool,
    redis: Redis,
    clearing: Arc<Clearing>,
    shutdown: Shutdown,
    heartbeats: Heartbeats,
}

fn no_lag() -> ReconcileOptions {
    ReconcileOptions {
        lag: Duration::ZERO,
        full: true,
    }
}

async fn harness() -> Harness {
    let env = test_env().await;
    let db = PgPool::connect(&env.db_url).await.unwrap();
    let redis = Redis::with_prefix(&env.redis_url, &env.redis_prefix).unwrap();
    for market in [
        TestMarket::new("BTC", scale("BTC"), "USDT", scale("USDT")),
        TestMarket::new("ETH", scale("ETH"), "BTC", scale("BTC")),
    ] {
        seed_market(&db, &market).await;
        sqlx::query("INSERT INTO market_sequences (market, last_seq) VALUES ($1, 0)")
            .bind(market.symbol())
            .execute(&db)
            .await
            .unwrap();
    }
    let shutdown = Shutdown::new();
    let heartbeats = Heartbeats::default();
    let clearing = Arc::new(Clearing::new(
        db.clone(),
        redis.clone(),
        heartbeats.clone(),
        Some(3),
        shutdown.clone(),
    ));
    clearing.refresh_markets().await.unwrap();
    Harness {
        env,
        db,
        redis,
        clearing,
        shutdown,
        heartbeats,
    }
}

fn scale(asset: &str) -> u8 {
    match asset {
        "BTC" => 8,
        "USDT" => 6,
        "ETH" => 18,
        _ => panic!("unknown asset {asset}"),
    }
}

fn dec(units: u128, asset: &str) -> String {
    exchange_domain::money::format_units(units, scale(asset))
}

impl Harness {
    async fn user(&self, email: &str) -> u64 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id",
        )
        .bind(email)
        .fetch_one(&self.db)
        .await
        .unwrap();
        u64::try_from(id).unwrap()
    }

    /// A deposit through the ledger, as the admin API books it.
    async fn deposit(&self, user: u64, asset: &str, units: u128) {
        let amount = dec(units, asset);
        let mut tx = self.db.begin().await.unwrap();
        let journal: i64 =
            sqlx::query_scalar("INSERT INTO ledger_journal (kind) VALUES ('deposit') RETURNING id")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        sqlx::query(
            "INSERT INTO ledger_postings (journal_id, account_kind, user_id, asset, amount)
             VALUES ($1, 'user', $2, $3, $4::numeric), ($1, 'deposits', NULL, $3, -$4::numeric)",
        )
        .bind(journal)
        .bind(i64::try_from(user).unwrap())
        .bind(asset)
        .bind(&amount)
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO balances (user_id, asset, available) VALUES ($1, $2, $3::numeric)
             ON CONFLICT (user_id, asset) DO UPDATE SET available = balances.available + excluded.available",
        )
        .bind(i64::try_from(user).unwrap())
        .bind(asset)
        .bind(&amount)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    /// Journals a command for `market` and returns its seq (gapless).
    async fn journal(&self, market: &str, tx: &mut sqlx::PgConnection) -> u64 {
        let seq: i64 = sqlx::query_scalar(
            "UPDATE market_sequences SET last_seq = last_seq + 1 WHERE market = $1 RETURNING last_seq",
        )
        .bind(market)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO order_commands (market, seq, time_ms, command) VALUES ($1, $2, 0, '{}')",
        )
        .bind(market)
        .bind(seq)
        .execute(&mut *tx)
        .await
        .unwrap();
        u64::try_from(seq).unwrap()
    }

    /// Places an order as the order service does: locks `reserve` of the
    /// asset it spends, inserts the order `new`, journals the command.
    /// Returns the command's seq.
    #[allow(clippy::too_many_arguments)]
    async fn place(
        &self,
        market: &str,
        order_id: u64,
        user: u64,
        side: Side,
        price: u128,
        qty: u128,
        reserve: u128,
    ) -> u64 {
        let (base, quote) = market.split_once('-').unwrap();
        let reserve_asset = match side {
            Side::Buy => quote,
            Side::Sell => base,
        };
        let mut tx = self.db.begin().await.unwrap();
        let seq = self.journal(market, &mut tx).await;
        let r = dec(reserve, reserve_asset);
        let moved = sqlx::query(
            "UPDATE balances SET available = available - $3::numeric, locked = locked + $3::numeric
             WHERE user_id = $1 AND asset = $2",
        )
        .bind(i64::try_from(user).unwrap())
        .bind(reserve_asset)
        .bind(&r)
        .execute(&mut *tx)
        .await
        .unwrap();
        assert_eq!(
            moved.rows_affected(),
            1,
            "user {user} has a {reserve_asset} balance"
        );
        sqlx::query(
            "INSERT INTO orders (id, user_id, market, side, type, time_in_force, price, quantity,
                reserve_asset, reserved, locked_remaining, seq)
             VALUES ($1, $2, $3, $4, 'limit', 'GTC', $5::numeric, $6::numeric, $7, $8::numeric, $8::numeric, $9)",
        )
        .bind(i64::try_from(order_id).unwrap())
        .bind(i64::try_from(user).unwrap())
        .bind(market)
        .bind(if side == Side::Buy { "buy" } else { "sell" })
        .bind(dec(price, quote))
        .bind(dec(qty, base))
        .bind(reserve_asset)
        .bind(&r)
        .bind(i64::try_from(seq).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        seq
    }

    /// A cancel command journaled (no money moves until matching answers).
    async fn journal_command(&self, market: &str) -> u64 {
        let mut tx = self.db.begin().await.unwrap();
        let seq = self.journal(market, &mut tx).await;
        tx.commit().await.unwrap();
        seq
    }

    /// Stores the batch as matching does (`event_batches`) and returns it
    /// as a stream entry.
    async fn emit(&self, batch: &EventBatch) -> StreamEntry {
        let events = serde_json::to_value(&batch.events).unwrap();
        sqlx::query(
            "INSERT INTO event_batches (market, seq, time_ms, events) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(batch.market.to_string())
        .bind(i64::try_from(batch.seq).unwrap())
        .bind(i64::try_from(batch.time_ms).unwrap())
        .bind(events)
        .execute(&self.db)
        .await
        .unwrap();
        entry(batch)
    }

    /// Two users: A holding 1 BTC, B holding 1,000 USDT.
    async fn funded_pair(&self) -> (u64, u64) {
        let a = self.user("a@x.io").await;
        let b = self.user("b@x.io").await;
        self.deposit(a, "BTC", BTC).await;
        self.deposit(b, "USDT", 1_000 * USDT).await;
        (a, b)
    }

    /// [`Self::emit`] of each batch, in order.
    async fn emit_all(&self, batches: &[EventBatch]) -> Vec<StreamEntry> {
        let mut entries = Vec::with_capacity(batches.len());
        for b in batches {
            entries.push(self.emit(b).await);
        }
        entries
    }

    async fn balance(&self, user: u64, asset: &str) -> (String, String) {
        let row = sqlx::query(
            "SELECT trim_scale(available)::text, trim_scale(locked)::text FROM balances
             WHERE user_id = $1 AND asset = $2",
        )
        .bind(i64::try_from(user).unwrap())
        .bind(asset)
        .fetch_optional(&self.db)
        .await
        .unwrap();
        row.map_or(("0".into(), "0".into()), |r| (r.get(0), r.get(1)))
    }

    async fn order(&self, id: u64) -> (String, String, String, String, Option<String>) {
        let r = sqlx::query(
            "SELECT status, trim_scale(filled_quantity)::text, trim_scale(filled_quote)::text,
                    trim_scale(locked_remaining)::text, reason FROM orders WHERE id = $1",
        )
        .bind(i64::try_from(id).unwrap())
        .fetch_one(&self.db)
        .await
        .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
    }

    async fn fees(&self, asset: &str) -> String {
        sqlx::query_scalar(
            "SELECT coalesce(trim_scale(sum(amount)), 0)::text FROM ledger_postings
             WHERE account_kind = 'fees' AND asset = $1",
        )
        .bind(asset)
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    async fn reconcile(&self) -> reconcile::Report {
        reconcile::reconcile(&self.db, no_lag()).await.unwrap()
    }
}

fn entry(batch: &EventBatch) -> StreamEntry {
    StreamEntry {
        id: format!("0-{}", batch.seq),
        fields: [("batch".to_owned(), serde_json::to_vec(batch).unwrap())]
            .into_iter()
            .collect(),
        deliveries: 1,
    }
}

fn batch(market: &str, seq: u64, events: Vec<Event>) -> EventBatch {
    EventBatch {
        market: MarketSymbol::parse(market).unwrap(),
        seq,
        time_ms: 1_700_000_000_000 + seq,
        events,
    }
}

fn accepted(order: u64, user: u64) -> Event {
    Event::OrderAccepted {
        order_id: OrderId(order),
        user_id: UserId(user),
    }
}

fn done(
    order: u64,
    user: u64,
    status: FinalStatus,
    filled: u128,
    role: AssetRole,
    release: u128,
) -> Event {
    Event::OrderDone {
        order_id: OrderId(order),
        user_id: UserId(user),
        status,
        reason: None,
        filled_quantity: filled,
        release_asset: role,
        release,
    }
}

#[allow(clippy::too_many_arguments)]
fn trade(
    id: u64,
    maker: (u64, u64),
    taker: (u64, u64),
    taker_side: Side,
    price: u128,
    qty: u128,
    maker_fee: u128,
    taker_fee: u128,
) -> Event {
    Event::Trade {
        trade_id: TradeId(id),
        maker_order_id: OrderId(maker.0),
        maker_user_id: UserId(maker.1),
        taker_order_id: OrderId(taker.0),
        taker_user_id: UserId(taker.1),
        taker_side,
        price,
        quantity: qty,
        quote_amount: price * qty / BTC,
        maker_fee,
        taker_fee,
    }
}

async fn ok(h: &Harness, entries: &[StreamEntry]) -> exchange_clearing::consumer::HandleOutcome {
    let out = h.clearing.handle_entries(entries).await;
    for r in &out.results {
        assert_eq!(r, &Ok(()), "every entry settles");
    }
    out
}

/// The README scenario: A sells 0.015 BTC at 30000 (maker), B buys at a
/// limit of 30100 (taker). Fees: maker 0.1 % of what A receives, taker 0.2 %
/// of what B receives, rounded up to the unit.
async fn trade_scenario(h: &Harness) -> (u64, u64, Vec<EventBatch>) {
    let (a, b) = h.funded_pair().await;
    let qty = 1_500_000; // 0.015 BTC
    let price = 30_000 * USDT;
    let s1 = h.place(MARKET, 1, a, Side::Sell, price, qty, qty).await;
    // B reserves at its limit: 30100 × 0.015 = 451.5 USDT.
    let reserve_b = 30_100 * USDT * qty / BTC;
    assert_eq!(reserve_b, 451_500_000);
    let s2 = h
        .place(MARKET, 2, b, Side::Buy, 30_100 * USDT, qty, reserve_b)
        .await;
    let quote = price * qty / BTC; // 450 USDT
    let maker_fee = 450_000; // 0.45 USDT: 0.1 % of 450
    let taker_fee = 3_000; // 0.00003 BTC: 0.2 % of 0.015
    let batches = vec![
        batch(MARKET, s1, vec![accepted(1, a)]),
        batch(
            MARKET,
            s2,
            vec![
                accepted(2, b),
                trade(
                    1,
                    (1, a),
                    (2, b),
                    Side::Buy,
                    price,
                    qty,
                    maker_fee,
                    taker_fee,
                ),
                done(1, a, FinalStatus::Filled, qty, AssetRole::Base, 0),
                done(
                    2,
                    b,
                    FinalStatus::Filled,
                    qty,
                    AssetRole::Quote,
                    reserve_b - quote,
                ),
            ],
        ),
    ];
    (a, b, batches)
}

async fn assert_trade_settled(h: &Harness, a: u64, b: u64) {
    assert_eq!(h.balance(a, "BTC").await, ("0.985".into(), "0".into()));
    assert_eq!(h.balance(a, "USDT").await, ("449.55".into(), "0".into()));
    assert_eq!(h.balance(b, "BTC").await, ("0.01497".into(), "0".into()));
    assert_eq!(h.balance(b, "USDT").await, ("550".into(), "0".into()));
    assert_eq!(h.fees("USDT").await, "0.45");
    assert_eq!(h.fees("BTC").await, "0.00003");
    assert_eq!(
        h.order(1).await,
        (
            "filled".into(),
            "0.015".into(),
            "450".into(),
            "0".into(),
            None
        )
    );
    assert_eq!(
        h.order(2).await,
        (
            "filled".into(),
            "0.015".into(),
            "450".into(),
            "0".into(),
            None
        )
    );
}

#[tokio::test]
async fn a_trade_settles_exactly_with_maker_and_taker_fees() {
    let h = harness().await;
    let (a, b, batches) = trade_scenario(&h).await;
    let entries = h.emit_all(&batches).await;
    let out = ok(&h, &entries).await;
    assert_eq!(out.settled.applied.len(), 2);
    assert_trade_settled(&h, a, b).await;

    let fills = sqlx::query(
        "SELECT user_id, order_id, side, trim_scale(price)::text, trim_scale(quantity)::text,
                trim_scale(quote_amount)::text, trim_scale(fee)::text, fee_asset, liquidity
         FROM fills ORDER BY liquidity",
    )
    .fetch_all(&h.db)
    .await
    .unwrap();
    let fills: Vec<(
        i64,
        i64,
        String,
        String,
        String,
        String,
        String,
        String,
        String,
    )> = fills
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
                r.get(8),
            )
        })
        .collect();
    let (ai, bi) = (i64::try_from(a).unwrap(), i64::try_from(b).unwrap());
    assert_eq!(
        fills,
        vec![
            (
                ai,
                1,
                "sell".into(),
                "30000".into(),
                "0.015".into(),
                "450".into(),
                "0.45".into(),
                "USDT".into(),
                "maker".into()
            ),
            (
                bi,
                2,
                "buy".into(),
                "30000".into(),
                "0.015".into(),
                "450".into(),
                "0.00003".into(),
                "BTC".into(),
                "taker".into()
            ),
        ]
    );
    let trades: i64 =
        sqlx::query_scalar("SELECT count(*) FROM trades WHERE market = $1 AND id = 1")
            .bind(MARKET)
            .fetch_one(&h.db)
            .await
            .unwrap();
    assert_eq!(trades, 1);
    let report = h.reconcile().await;
    assert!(report.ok(), "{report}");
}

#[tokio::test]
async fn the_same_batch_delivered_twice_moves_balances_once() {
    let h = harness().await;
    let (a, b, batches) = trade_scenario(&h).await;
    let entries = h.emit_all(&batches).await;
    ok(&h, &entries).await;
    // Again, separately, and duplicated inside one read.
    let again = ok(&h, &entries).await;
    assert!(again.settled.applied.is_empty());
    assert_eq!(again.settled.duplicates, 2);
    let doubled = [entries.clone(), entries.clone()].concat();
    let again = ok(&h, &doubled).await;
    assert!(again.settled.applied.is_empty());
    assert_trade_settled(&h, a, b).await;
    let fills: i64 = sqlx::query_scalar("SELECT count(*) FROM fills")
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(fills, 2);
    let report = h.reconcile().await;
    assert!(report.ok(), "{report}");
}

#[tokio::test]
async fn a_duplicate_inside_one_read_is_applied_once() {
    let h = harness().await;
    let (a, b, batches) = trade_scenario(&h).await;
    let entries = h.emit_all(&batches).await;
    let doubled = [entries.clone(), entries.clone()].concat();
    let out = ok(&h, &doubled).await;
    assert_eq!(out.settled.applied.len(), 2);
    assert_eq!(out.settled.duplicates, 2);
    assert_trade_settled(&h, a, b).await;
}

async fn pending(redis: &Redis, stream: &str, group: &str) -> usize {
    let reply: redis::streams::StreamPendingReply =
        redis.conn().xpending(stream, group).await.unwrap();
    reply.count()
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn fast(stream: &str, consumer: &str) -> ConsumerOptions {
    let mut o = ConsumerOptions::new("eventStreamConsumer", stream, "clearing", consumer);
    o.block = Duration::from_millis(100);
    o.claim_idle = Duration::from_millis(300);
    o.claim_interval = Duration::from_millis(100);
    o.deliveries_max = Some(3);
    o.retry_delay = Duration::from_millis(50);
    o
}

#[tokio::test]
async fn a_crash_between_commit_and_ack_is_harmless() {
    let h = harness().await;
    let (a, b, batches) = trade_scenario(&h).await;
    let stream = h.redis.events_stream();
    let mut conn = h.redis.conn();
    for bt in &batches {
        h.emit(bt).await;
        let json = serde_json::to_string(bt).unwrap();
        let _: String = conn.xadd(&stream, "*", &[("batch", json)]).await.unwrap();
    }
    exchange_common::streams::ensure_group(&h.redis, &stream, "clearing", "0")
        .await
        .unwrap();
    // Consumer "crashy" reads, settles and commits, then dies before XACK.
    let reply: redis::streams::StreamReadReply = conn
        .xread_options(
            &[&stream],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group("clearing", "crashy")
                .count(10),
        )
        .await
        .unwrap();
    let entries: Vec<StreamEntry> = reply
        .keys
        .into_iter()
        .flat_map(|k| k.ids)
        .map(|id| StreamEntry {
            id: id.id.clone(),
            fields: id
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<Vec<u8>>(v).unwrap()))
                .collect(),
            deliveries: 1,
        })
        .collect();
    assert_eq!(entries.len(), 2);
    ok(&h, &entries).await;
    assert_trade_settled(&h, a, b).await;
    assert_eq!(pending(&h.redis, &stream, "clearing").await, 2, "not acked");

    // A second replica reclaims the idle entries and redelivers them.
    let task = tokio::spawn(run_consumer(
        h.redis.clone(),
        h.heartbeats.clone(),
        fast(&stream, "survivor"),
        ClearingHandler(Arc::clone(&h.clearing)),
        h.shutdown.clone(),
    ));
    eventually("the reclaimed entries are acked", async || {
        pending(&h.redis, &stream, "clearing").await == 0
    })
    .await;
    h.shutdown.trigger();
    task.await.unwrap();
    assert_trade_settled(&h, a, b).await;
    let dlq: u64 = conn.xlen(format!("{stream}:dlq")).await.unwrap();
    assert_eq!(dlq, 0);
    let report = h.reconcile().await;
    assert!(report.ok(), "{report}");
}

#[tokio::test]
async fn a_cancel_releases_the_reserve_and_a_partial_fill_keeps_the_rest_locked() {
    let h = harness().await;
    let (a, b) = h.funded_pair().await;
    let price = 20_000 * USDT;
    // A sells 0.02, B buys 0.005 of it: A is partially filled, then cancels.
    let s1 = h
        .place(MARKET, 10, a, Side::Sell, price, 2_000_000, 2_000_000)
        .await;
    let s2 = h
        .place(MARKET, 11, b, Side::Buy, price, 500_000, 100 * USDT)
        .await;
    let e1 = h.emit(&batch(MARKET, s1, vec![accepted(10, a)])).await;
    let e2 = h
        .emit(&batch(
            MARKET,
            s2,
            vec![
                accepted(11, b),
                trade(1, (10, a), (11, b), Side::Buy, price, 500_000, 0, 0),
                done(11, b, FinalStatus::Filled, 500_000, AssetRole::Quote, 0),
            ],
        ))
        .await;
    ok(&h, &[e1, e2]).await;
    assert_eq!(
        h.order(10).await,
        (
            "partially_filled".into(),
            "0.005".into(),
            "100".into(),
            "0.015".into(),
            None
        )
    );
    assert_eq!(h.balance(a, "BTC").await, ("0.98".into(), "0.015".into()));
    let report = h.reconcile().await;
    assert!(report.ok(), "{report}");

    let s3 = h.journal_command(MARKET).await;
    let e3 = h
        .emit(&batch(
            MARKET,
            s3,
            vec![done(
                10,
                a,
                FinalStatus::Canceled,
                500_000,
                AssetRole::Base,
                1_500_000,
            )],
        ))
        .await;
    ok(&h, &[e3]).await;
    assert_eq!(
        h.order(10).await,
        (
            "canceled".into(),
            "0.005".into(),
            "100".into(),
            "0".into(),
            None
        )
    );
    assert_eq!(h.balance(a, "BTC").await, ("0.995".into(), "0".into()));
    assert_eq!(h.balance(a, "USDT").await, ("100".into(), "0".into()));
    let report = h.reconcile().await;
    assert!(report.ok(), "{report}");
}

#[tokio::test]
async fn a_rejected_placement_releases_everything_with_its_reason() {
    let h = harness().await;
    let a = h.user("a@x.io").await;
    h.deposit(a, "USDT", 100 * USDT).await;
    let s = h
        .place(MARKET, 5, a, Side::Buy, 10 * USDT, BTC, 10 * USDT)
        .await;
    let e = h
        .emit(&batch(
            MARKET,
            s,
            vec![Event::OrderDone {
                order_id: OrderId(5),
                user_id: UserId(a),
                status: FinalStatus::Rejected,
                reason: Some(ReasonCode::PostOnlyWouldTake),
                filled_quantity: 0,
                release_asset: AssetRole::Quote,
                release: 10 * USDT,
            }],
        ))
        .await;
    ok(&h, &[e]).await;
    assert_eq!(
        h.order(5).await,
        (
            "rejected".into(),
            "0".into(),
            "0".into(),
            "0".into(),
            Some("POST_ONLY_WOULD_TAKE".into())
        )
    );
    assert_eq!(h.balance(a, "USDT").await, ("100".into(), "0".into()));
    assert!(h.reconcile().await.ok());
}

#[tokio::test]
async fn reconcile_names_the_invariant_a_corruption_breaks() {
    let h = harness().await;
    let (a, _b, batches) = trade_scenario(&h).await;
    let entries = h.emit_all(&batches).await;
    ok(&h, &entries).await;
    let report = h.reconcile().await;
    assert!(report.ok(), "{report}");
    assert!(report.to_string().contains("reconcile: ok"));

    // One unit of USDT appears from nowhere.
    sqlx::query("UPDATE balances SET available = available + 0.000001 WHERE user_id = $1 AND asset = 'USDT'")
        .bind(i64::try_from(a).unwrap())
        .execute(&h.db)
        .await
        .unwrap();
    let report = h.reconcile().await;
    assert!(!report.ok());
    assert_eq!(report.failed(), vec!["ledger_matches_balances"], "{report}");
    let text = report.to_string();
    assert!(
        text.contains("ledger_matches_balances      FAILED (1 violations)"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "user {a} USDT: ledger 449.55, balances 449.550001"
        )),
        "{text}"
    );
    assert!(
        text.contains("reconcile: FAILED: ledger_matches_balances"),
        "{text}"
    );

    // Locked that no open order reserves.
    sqlx::query("UPDATE balances SET available = available - 0.000002, locked = locked + 0.000001 WHERE user_id = $1 AND asset = 'USDT'")
        .bind(i64::try_from(a).unwrap())
        .execute(&h.db)
        .await
        .unwrap();
    let report = h.reconcile().await;
    assert_eq!(
        report.failed(),
        vec!["locked_matches_open_orders"],
        "{report}"
    );

    // An event batch never cleared, and a gap in the command journal.
    sqlx::query("UPDATE balances SET available = available + 0.000001, locked = locked - 0.000001 WHERE user_id = $1 AND asset = 'USDT'")
        .bind(i64::try_from(a).unwrap())
        .execute(&h.db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO event_batches (market, seq, time_ms, events) VALUES ($1, 99, 0, '[]')",
    )
    .bind(MARKET)
    .execute(&h.db)
    .await
    .unwrap();
    sqlx::query("UPDATE market_sequences SET last_seq = last_seq + 1 WHERE market = $1")
        .bind(MARKET)
        .execute(&h.db)
        .await
        .unwrap();
    let report = h.reconcile().await;
    assert_eq!(
        report.failed(),
        vec!["no_journal_gap", "batches_cleared"],
        "{report}"
    );
    // Within the lag window the uncleared batch is in flight, not a failure.
    let live = reconcile::reconcile(
        &h.db,
        ReconcileOptions {
            lag: Duration::from_secs(600),
            full: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(live.failed(), vec!["no_journal_gap"], "{live}");
}

/// Several users trade in two markets; settling all batches in one
/// transaction equals settling them one by one.
#[tokio::test]
async fn many_batches_in_one_transaction_equal_one_by_one() {
    let one = harness().await;
    let many = harness().await;
    let mut entries_per_env = Vec::new();
    for h in [&one, &many] {
        let mut users = Vec::new();
        for i in 0..4 {
            let u = h.user(&format!("u{i}@x.io")).await;
            h.deposit(u, "BTC", 10 * BTC).await;
            h.deposit(u, "USDT", 100_000 * USDT).await;
            h.deposit(u, "ETH", 10 * 1_000_000_000_000_000_000).await;
            users.push(u);
        }
        let mut entries = Vec::new();
        let mut order_id = 100;
        // A deterministic sequence: maker sells, taker buys (and the reverse),
        // partial fills, cancels; fees at 0.1 % / 0.2 % rounded up.
        for round in 0..12u64 {
            let (market, base_scale) = if round % 3 == 2 {
                ("ETH-BTC", 18u32)
            } else {
                (MARKET, 8u32)
            };
            let one_base = 10u128.pow(base_scale);
            let maker = users[usize::try_from(round % 4).unwrap()];
            let taker = users[usize::try_from((round + 1) % 4).unwrap()];
            let price: u128 = if market == MARKET {
                (20_000 + u128::from(round)) * USDT
            } else {
                5_000_000
            }; // 0.05 BTC
            let qty = one_base / 100 * u128::from(round % 5 + 1); // 0.01..0.05 base
            let quote = price * qty / one_base;
            let maker_sells = round % 2 == 0;
            let (maker_side, taker_side) = if maker_sells {
                (Side::Sell, Side::Buy)
            } else {
                (Side::Buy, Side::Sell)
            };
            let maker_reserve = if maker_sells { qty * 2 } else { quote * 2 };
            let taker_reserve = if maker_sells { quote + quote / 10 } else { qty };
            let mo = order_id;
            let to = order_id + 1;
            order_id += 2;
            let s1 = h
                .place(market, mo, maker, maker_side, price, qty * 2, maker_reserve)
                .await;
            let s2 = h
                .place(market, to, taker, taker_side, price, qty, taker_reserve)
                .await;
            let fee = |gross: u128, ppm: u128| (gross * ppm).div_ceil(1_000_000);
            let (maker_fee, taker_fee) = if maker_sells {
                (fee(quote, 1_000), fee(qty, 2_000))
            } else {
                (fee(qty, 1_000), fee(quote, 2_000))
            };
            entries.push(h.emit(&batch(market, s1, vec![accepted(mo, maker)])).await);
            let taker_release = taker_reserve - if maker_sells { quote } else { qty };
            let taker_role = if maker_sells {
                AssetRole::Quote
            } else {
                AssetRole::Base
            };
            let mut ev = vec![
                accepted(to, taker),
                Event::Trade {
                    trade_id: TradeId(round + 1),
                    maker_order_id: OrderId(mo),
                    maker_user_id: UserId(maker),
                    taker_order_id: OrderId(to),
                    taker_user_id: UserId(taker),
                    taker_side,
                    price,
                    quantity: qty,
                    quote_amount: quote,
                    maker_fee,
                    taker_fee,
                },
                done(
                    to,
                    taker,
                    FinalStatus::Filled,
                    qty,
                    taker_role,
                    taker_release,
                ),
            ];
            if round % 4 == 3 {
                // The maker cancels its remainder in the same batch.
                let spent = if maker_sells { qty } else { quote };
                ev.push(done(
                    mo,
                    maker,
                    FinalStatus::Canceled,
                    qty,
                    maker_side.spends(),
                    maker_reserve - spent,
                ));
            }
            entries.push(h.emit(&batch(market, s2, ev)).await);
        }
        entries_per_env.push(entries);
    }
    for e in &entries_per_env[0] {
        ok(&one, std::slice::from_ref(e)).await;
    }
    let out = ok(&many, &entries_per_env[1]).await;
    assert_eq!(out.settled.applied.len(), 24);

    async fn state(h: &Harness) -> Vec<String> {
        let q = [
            "SELECT user_id::text || ' ' || asset || ' ' || trim_scale(available)::text || ' ' || trim_scale(locked)::text FROM balances ORDER BY user_id, asset",
            "SELECT id::text || ' ' || status || ' ' || trim_scale(filled_quantity)::text || ' ' || trim_scale(filled_quote)::text || ' ' || trim_scale(locked_remaining)::text FROM orders ORDER BY id",
            "SELECT market || ' ' || trade_id::text || ' ' || user_id::text || ' ' || liquidity || ' ' || trim_scale(fee)::text || ' ' || fee_asset FROM fills ORDER BY market, trade_id, liquidity",
            "SELECT account_kind || ' ' || coalesce(user_id::text, '-') || ' ' || asset || ' ' || trim_scale(sum(amount))::text FROM ledger_postings GROUP BY account_kind, user_id, asset ORDER BY 1",
        ];
        let mut out = Vec::new();
        for sql in q {
            let rows: Vec<String> = sqlx::query_scalar(sql).fetch_all(&h.db).await.unwrap();
            out.extend(rows);
        }
        out
    }
    let (s1, s2) = (state(&one).await, state(&many).await);
    assert!(s1.len() > 40, "the scenario produced state: {s1:?}");
    assert_eq!(s1, s2);
    for h in [&one, &many] {
        let report = h.reconcile().await;
        assert!(report.ok(), "{report}");
    }
    // One ledger journal per market for the whole read, against 16 one by one.
    let journals = |h: &Harness| {
        let db = h.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ledger_journal WHERE kind = 'trade'")
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    assert_eq!(journals(&many).await, 2);
    assert_eq!(journals(&one).await, 12);
}

#[tokio::test]
async fn a_users_many_events_go_out_in_order_in_arrays_of_at_most_64() {
    let h = harness().await;
    let mut pubsub = h.redis.pubsub().await.unwrap();
    pubsub
        .subscribe(exchange_clearing::private::channel(&h.env.redis_prefix, 7))
        .await
        .unwrap();
    let balance = |i: usize| exchange_store::BalanceJson {
        asset: format!("A{i}"),
        available: i.to_string(),
        locked: "0".into(),
    };
    let settled = exchange_clearing::store::Settled {
        // Another user's event in between must not split user 7's order.
        balances: (0..150)
            .map(|i| (if i == 70 { 8 } else { 7 }, balance(i)))
            .collect(),
        ..Default::default()
    };
    h.clearing.publish(&settled).await;
    let mut stream = pubsub.on_message();
    let mut sizes = Vec::new();
    let mut assets = Vec::new();
    while assets.len() < 149 {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("private events within 5 s")
            .unwrap();
        let payload: String = msg.get_payload().unwrap();
        let events: Vec<serde_json::Value> = serde_json::from_str(&payload).unwrap();
        sizes.push(events.len());
        for e in events {
            assert_eq!(e["type"], "balance");
            assets.push(e["data"]["asset"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(sizes, [64, 64, 21]);
    let want: Vec<String> = (0..150)
        .filter(|&i| i != 70)
        .map(|i| format!("A{i}"))
        .collect();
    assert_eq!(assets, want);
}

#[tokio::test]
async fn private_events_are_published_after_commit() {
    let h = harness().await;
    let (a, b, batches) = trade_scenario(&h).await;
    let mut pubsub = h.redis.pubsub().await.unwrap();
    let channel_b = exchange_clearing::private::channel(&h.env.redis_prefix, b);
    pubsub.subscribe(&channel_b).await.unwrap();
    let entries = h.emit_all(&batches).await;
    ok(&h, &entries).await;
    let mut stream = pubsub.on_message();
    // One message per user per settlement: the user's events as an array,
    // orders before fills before balances.
    let mut got: Vec<serde_json::Value> = Vec::new();
    while got.len() < 4 {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a private event within 5 s")
            .unwrap();
        let payload: String = msg.get_payload().unwrap();
        let events = serde_json::from_str::<serde_json::Value>(&payload).unwrap();
        let events = events.as_array().expect("an array of events").clone();
        let rank = |v: &serde_json::Value| match v["type"].as_str().unwrap() {
            "order" => 0,
            "trade" => 1,
            _ => 2,
        };
        assert!(
            events.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
            "in order: {payload}"
        );
        got.extend(events);
    }
    let by_type: BTreeMap<String, Vec<serde_json::Value>> =
        got.into_iter().fold(BTreeMap::new(), |mut m, v| {
            m.entry(v["type"].as_str().unwrap().to_owned())
                .or_default()
                .push(v["data"].clone());
            m
        });
    let order = &by_type["order"][0];
    assert_eq!(order["id"], 2);
    assert_eq!(order["status"], "filled");
    assert_eq!(order["filled_quantity"], "0.015");
    assert_eq!(order["price"], "30100");
    assert_eq!(order["average_price"], "30000");
    assert!(order.get("user_id").is_none());
    let fill = &by_type["trade"][0];
    assert_eq!(fill["fee"], "0.00003");
    assert_eq!(fill["fee_asset"], "BTC");
    assert_eq!(fill["liquidity"], "taker");
    assert_eq!(fill["quantity"], "0.015");
    let balances: BTreeMap<String, (String, String)> = by_type["balance"]
        .iter()
        .map(|v| {
            (
                v["asset"].as_str().unwrap().to_owned(),
                (
                    v["available"].as_str().unwrap().to_owned(),
                    v["locked"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    assert_eq!(balances["BTC"], ("0.01497".into(), "0".into()));
    assert_eq!(balances["USDT"], ("550".into(), "0".into()));
    let _ = a;
}

/// A batch that cannot be applied (it releases more than is locked) is
/// retried, dead-lettered on its last delivery, and halts its market; the
/// other market keeps settling.
#[tokio::test]
async fn a_batch_that_cannot_settle_halts_its_market_and_goes_to_the_dlq() {
    let h = harness().await;
    let a = h.user("a@x.io").await;
    h.deposit(a, "USDT", 100 * USDT).await;
    h.deposit(a, "BTC", BTC).await;
    let s = h
        .place(MARKET, 7, a, Side::Buy, 10 * USDT, BTC, 10 * USDT)
        .await;
    let bad = batch(
        MARKET,
        s,
        vec![done(
            7,
            a,
            FinalStatus::Canceled,
            0,
            AssetRole::Quote,
            11 * USDT,
        )],
    );
    let s_eth = h
        .place(
            "ETH-BTC",
            8,
            a,
            Side::Buy,
            5_000_000,
            1_000_000_000_000_000_000,
            5_000_000,
        )
        .await;
    let good = batch(
        "ETH-BTC",
        s_eth,
        vec![done(
            8,
            a,
            FinalStatus::Canceled,
            0,
            AssetRole::Quote,
            5_000_000,
        )],
    );
    let stream = h.redis.events_stream();
    let mut conn = h.redis.conn();
    for bt in [&bad, &good] {
        h.emit(bt).await;
        let _: String = conn
            .xadd(
                &stream,
                "*",
                &[("batch", serde_json::to_string(bt).unwrap())],
            )
            .await
            .unwrap();
    }
    let task = tokio::spawn(run_consumer(
        h.redis.clone(),
        h.heartbeats.clone(),
        fast(&stream, "c1"),
        ClearingHandler(Arc::clone(&h.clearing)),
        h.shutdown.clone(),
    ));
    let dlq = format!("{stream}:dlq");
    eventually("the bad batch is dead-lettered", async || {
        let n: u64 = h.redis.conn().xlen(&dlq).await.unwrap();
        n == 1
    })
    .await;
    assert!(h.clearing.is_halted(MARKET));
    assert!(!h.clearing.is_halted("ETH-BTC"));
    assert_eq!(
        h.heartbeats.snapshot().get(&format!("market:{MARKET}")),
        Some(&false)
    );
    let halt: (String, i64) = sqlx::query_as("SELECT market, seq FROM clearing_halts")
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(halt, (MARKET.to_owned(), i64::try_from(s).unwrap()));
    // Nothing of the bad batch was applied; the good one was.
    assert_eq!(h.balance(a, "USDT").await, ("90".into(), "10".into()));
    assert_eq!(h.balance(a, "BTC").await, ("1".into(), "0".into()));
    assert_eq!(h.order(8).await.0, "canceled");

    // A later batch of the halted market is refused, not applied.
    let later = entry(&batch(MARKET, s + 1, vec![]));
    let out = h.clearing.handle_entries(&[later]).await;
    assert!(out.results[0].as_ref().is_err_and(|e| e.contains("halted")));

    let report = h.reconcile().await;
    assert!(report.failed().contains(&"no_halted_market"), "{report}");
    assert!(report.failed().contains(&"batches_cleared"), "{report}");

    // An operator deletes the halt row: the market resumes.
    sqlx::query("DELETE FROM clearing_halts")
        .execute(&h.db)
        .await
        .unwrap();
    h.clearing.refresh_halts().await.unwrap();
    assert!(!h.clearing.is_halted(MARKET));
    assert_eq!(
        h.heartbeats.snapshot().get(&format!("market:{MARKET}")),
        Some(&true)
    );
    h.shutdown.trigger();
    task.await.unwrap();
}

/// A batch matching stored but whose stream entry was lost (Redis flushed)
/// is settled from `event_batches`; a second catch-up finds nothing.
#[tokio::test]
async fn a_batch_lost_from_the_stream_is_settled_from_postgres() {
    let h = harness().await;
    let (a, b, batches) = trade_scenario(&h).await;
    for bt in &batches {
        h.emit(bt).await;
    }
    let applied = h.clearing.catch_up(Duration::ZERO, 1_000).await.unwrap();
    assert_eq!(applied, 2);
    assert_trade_settled(&h, a, b).await;
    assert_eq!(h.clearing.catch_up(Duration::ZERO, 1_000).await.unwrap(), 0);
    // Too young to be considered lost: left to the stream.
    let c = h.user("c@x.io").await;
    h.deposit(c, "USDT", 10 * USDT).await;
    let s = h
        .place(MARKET, 50, c, Side::Buy, 10 * USDT, BTC / 10, USDT)
        .await;
    h.emit(&batch(
        MARKET,
        s,
        vec![done(
            50,
            c,
            FinalStatus::Canceled,
            0,
            AssetRole::Quote,
            USDT,
        )],
    ))
    .await;
    assert_eq!(
        h.clearing
            .catch_up(Duration::from_secs(600), 1_000)
            .await
            .unwrap(),
        0
    );
    assert_eq!(h.reconcile().await.failed(), vec!["batches_cleared"]);
    assert_eq!(h.clearing.catch_up(Duration::ZERO, 1_000).await.unwrap(), 1);
    assert_eq!(h.balance(c, "USDT").await, ("10".into(), "0".into()));
    let report = h.reconcile().await;
    assert!(report.ok(), "{report}");
}

/// Catch-up keeps its watermark in Postgres: a restarted clearing resumes
/// the walk of `event_batches` there instead of at the start of history.
#[tokio::test]
async fn a_restarted_clearing_resumes_catch_up_at_the_stored_watermark() {
    let h = harness().await;
    let (a, b, batches) = trade_scenario(&h).await;
    for bt in &batches {
        h.emit(bt).await;
    }
    assert_eq!(h.clearing.catch_up(Duration::ZERO, 1_000).await.unwrap(), 2);
    assert_trade_settled(&h, a, b).await;
    // The next round sees both cleared and stores the watermark.
    assert_eq!(h.clearing.catch_up(Duration::ZERO, 1_000).await.unwrap(), 0);
    let last: i64 = sqlx::query_scalar("SELECT max(seq) FROM event_batches WHERE market = $1")
        .bind(MARKET)
        .fetch_one(&h.db)
        .await
        .unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT seq FROM clearing_watermarks WHERE market = $1")
        .bind(MARKET)
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(stored, last);
    // A lower value from another replica never lowers it.
    store_watermarks(&h.db, &[MARKET.to_owned()], &[0])
        .await
        .unwrap();
    // Proof that a new instance starts at the stored watermark, not at 0:
    // a batch below it made to look uncleared (impossible in practice) is
    // not walked, while a new one above it is settled.
    sqlx::query("DELETE FROM cleared_batches WHERE market = $1 AND seq = 1")
        .bind(MARKET)
        .execute(&h.db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO event_batches (market, seq, time_ms, events) VALUES ($1, $2, 0, '[]')",
    )
    .bind(MARKET)
    .bind(last + 1)
    .execute(&h.db)
    .await
    .unwrap();
    let restarted = Clearing::new(
        h.db.clone(),
        h.redis.clone(),
        Heartbeats::default(),
        Some(5),
        h.shutdown.clone(),
    );
    restarted.refresh_markets().await.unwrap();
    assert_eq!(restarted.catch_up(Duration::ZERO, 1_000).await.unwrap(), 1);
    let cleared: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM cleared_batches WHERE market = $1 AND seq IN (1, $2) ORDER BY seq",
    )
    .bind(MARKET)
    .bind(last + 1)
    .fetch_all(&h.db)
    .await
    .unwrap();
    assert_eq!(cleared, vec![last + 1]);
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf[9..12].parse().unwrap();
    (status, buf)
}

/// The whole service: settles from the stream, reports a halt in `/ready`
/// and `/metrics`, and exports the reconcile gauges on its schedule.
#[tokio::test]
async fn the_service_settles_and_reports_a_halted_market() {
    let h = harness().await;
    let (a, b, batches) = trade_scenario(&h).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = exchange_clearing::Options {
        deliveries_max: 2,
        claim_idle: Duration::from_millis(300),
        claim_interval: Duration::from_millis(100),
        halts_refresh_interval: Duration::from_millis(200),
        reconcile_interval: Duration::from_millis(300),
        reconcile: ReconcileOptions {
            lag: Duration::from_secs(60),
            full: true,
        },
        ..exchange_clearing::Options::default()
    };
    let shutdown = Shutdown::new();
    let service = tokio::spawn(exchange_clearing::run_with(
        Arc::new(h.env.config.clone()),
        exchange_clearing::Listeners { http: listener },
        shutdown.clone(),
        opts,
    ));
    let stream = h.redis.events_stream();
    let mut conn = h.redis.conn();
    for bt in &batches {
        h.emit(bt).await;
        let _: String = conn
            .xadd(
                &stream,
                "*",
                &[("batch", serde_json::to_string(bt).unwrap())],
            )
            .await
            .unwrap();
    }
    eventually("the trade settles", async || h.order(2).await.0 == "filled").await;
    assert_trade_settled(&h, a, b).await;
    eventually("the service is ready", async || {
        http_get(addr, "/ready").await.0 == 200
    })
    .await;

    // A batch that releases more than the order holds.
    let s = h.journal_command(MARKET).await;
    let bad = batch(
        MARKET,
        s,
        vec![done(1, a, FinalStatus::Canceled, 0, AssetRole::Base, 1)],
    );
    h.emit(&bad).await;
    let _: String = conn
        .xadd(
            &stream,
            "*",
            &[("batch", serde_json::to_string(&bad).unwrap())],
        )
        .await
        .unwrap();
    eventually("/ready reports the halted market", async || {
        let (status, body) = http_get(addr, "/ready").await;
        status == 503 && body.contains(&format!("\"market:{MARKET}\":\"down\""))
    })
    .await;
    eventually(
        "metrics show the halt and the failed invariant",
        async || {
            let (_, body) = http_get(addr, "/metrics").await;
            body.contains(&format!("exchange_market_halted{{market=\"{MARKET}\"}} 1"))
                && body.contains("exchange_reconcile_ok{invariant=\"no_halted_market\"} 0")
                && body.contains("exchange_reconcile_ok{invariant=\"ledger_matches_balances\"} 1")
                && body.contains("exchange_reconcile_last_run_timestamp_seconds")
                && body.contains("# HELP exchange_market_halted")
        },
    )
    .await;
    assert_trade_settled(&h, a, b).await;
    shutdown.trigger();
    service.await.unwrap().unwrap();
}

/// Batches of one market delivered out of order (a cancel's release before
/// the fill that preceded it) converge to the in-order state.
#[tokio::test]
async fn batches_delivered_out_of_order_converge() {
    let h = harness().await;
    let (a, b) = h.funded_pair().await;
    let price = 20_000 * USDT;
    let s1 = h
        .place(MARKET, 10, a, Side::Sell, price, 2_000_000, 2_000_000)
        .await;
    let s2 = h
        .place(MARKET, 11, b, Side::Buy, price, 500_000, 100 * USDT)
        .await;
    let s3 = h.journal_command(MARKET).await;
    let e1 = h.emit(&batch(MARKET, s1, vec![accepted(10, a)])).await;
    let e2 = h
        .emit(&batch(
            MARKET,
            s2,
            vec![
                accepted(11, b),
                trade(
                    1,
                    (10, a),
                    (11, b),
                    Side::Buy,
                    price,
                    500_000,
                    100_000,
                    1_000,
                ),
                done(11, b, FinalStatus::Filled, 500_000, AssetRole::Quote, 0),
            ],
        ))
        .await;
    let e3 = h
        .emit(&batch(
            MARKET,
            s3,
            vec![done(
                10,
                a,
                FinalStatus::Canceled,
                500_000,
                AssetRole::Base,
                1_500_000,
            )],
        ))
        .await;
    for e in [&e3, &e2, &e1] {
        ok(&h, std::slice::from_ref(e)).await;
    }
    assert_eq!(
        h.order(10).await,
        (
            "canceled".into(),
            "0.005".into(),
            "100".into(),
            "0".into(),
            None
        )
    );
    assert_eq!(h.order(11).await.0, "filled");
    assert_eq!(h.balance(a, "BTC").await, ("0.995".into(), "0".into()));
    assert_eq!(h.balance(a, "USDT").await, ("99.9".into(), "0".into()));
    assert_eq!(h.balance(b, "BTC").await, ("0.00499".into(), "0".into()));
    assert_eq!(h.balance(b, "USDT").await, ("900".into(), "0".into()));
    let report = h.reconcile().await;
    assert!(report.ok(), "{report}");
}

fn amended(order: u64, user: u64, price: u128, open: u128, released: u128) -> Event {
    Event::Amended {
        order_id: OrderId(order),
        user_id: UserId(user),
        price,
        quantity: open,
        priority_kept: false,
        release_asset: AssetRole::Base,
        released,
    }
}

/// Two amends and two fills of one sell order, settled in several orders
/// (one by one and all at once). Whatever the order, the row ends with
/// the newer amend's price and `quantity` = fills before that amend + the
/// open quantity it set: an older `Amended` applied late never rolls the
/// order back, and a fill older than the amend that arrives after it still
/// counts into the total.
#[tokio::test]
async fn amends_applied_out_of_order_never_roll_the_order_back() {
    let deliveries: [&[&[usize]]; 5] = [
        &[&[1], &[2], &[3], &[4], &[5]],
        &[&[5], &[4], &[3], &[2], &[1]],
        &[&[4], &[3], &[2], &[5], &[1]],
        &[&[3], &[5], &[2], &[4], &[1]],
        &[&[5, 2], &[4, 3, 1]],
    ];
    for (case, delivery) in deliveries.iter().enumerate() {
        let h = harness().await;
        let a = h.user("a@x.io").await;
        let b = h.user("b@x.io").await;
        h.deposit(a, "BTC", BTC).await;
        h.deposit(b, "USDT", 10_000 * USDT).await;
        let (p1, p2) = (21_000 * USDT, 22_000 * USDT);
        // s1: A sells 1 BTC at 20000; s2: amend to 21000; s3: B buys 0.2
        // at 21000; s4: amend to 22000, open 0.5 (0.3 BTC released);
        // s5: B buys 0.1 at 22000.
        let s1 = h
            .place(MARKET, 20, a, Side::Sell, 20_000 * USDT, BTC, BTC)
            .await;
        let s2 = h.journal_command(MARKET).await;
        let s3 = h
            .place(MARKET, 21, b, Side::Buy, p1, 20_000_000, 4_200 * USDT)
            .await;
        let s4 = h.journal_command(MARKET).await;
        let s5 = h
            .place(MARKET, 22, b, Side::Buy, p2, 10_000_000, 2_200 * USDT)
            .await;
        let filled = |o, q| done(o, b, FinalStatus::Filled, q, AssetRole::Quote, 0);
        let batches = [
            batch(MARKET, s1, vec![accepted(20, a)]),
            batch(MARKET, s2, vec![amended(20, a, p1, BTC, 0)]),
            batch(
                MARKET,
                s3,
                vec![
                    accepted(21, b),
                    trade(1, (20, a), (21, b), Side::Buy, p1, 20_000_000, 0, 0),
                    filled(21, 20_000_000),
                ],
            ),
            batch(MARKET, s4, vec![amended(20, a, p2, 50_000_000, 30_000_000)]),
            batch(
                MARKET,
                s5,
                vec![
                    accepted(22, b),
                    trade(2, (20, a), (22, b), Side::Buy, p2, 10_000_000, 0, 0),
                    filled(22, 10_000_000),
                ],
            ),
        ];
        let entries = h.emit_all(&batches).await;
        for read in delivery.iter() {
            let read: Vec<StreamEntry> = read.iter().map(|i| entries[i - 1].clone()).collect();
            ok(&h, &read).await;
        }
        let (price, quantity): (String, String) = sqlx::query_as(
            "SELECT trim_scale(price)::text, trim_scale(quantity)::text FROM orders WHERE id = 20",
        )
        .fetch_one(&h.db)
        .await
        .unwrap();
        assert_eq!(
            (price.as_str(), quantity.as_str()),
            ("22000", "0.7"),
            "case {case}: {delivery:?}"
        );
        assert_eq!(
            h.order(20).await,
            (
                "partially_filled".into(),
                "0.3".into(),
                "6400".into(),
                "0.4".into(),
                None
            ),
            "case {case}"
        );
        assert_eq!(h.balance(a, "BTC").await, ("0.3".into(), "0.4".into()));
        assert_eq!(h.balance(a, "USDT").await, ("6400".into(), "0".into()));
        assert_eq!(h.balance(b, "USDT").await, ("3600".into(), "0".into()));
        let report = h.reconcile().await;
        assert!(report.ok(), "case {case}: {report}");
    }
}

/// A settlement that would create a balance row with a negative amount (a
/// release into a balance the user never had) fails on the row's CHECK,
/// exactly as updating a zero row would, and applies nothing.
#[tokio::test]
async fn a_negative_delta_on_a_missing_balance_row_fails_and_applies_nothing() {
    let h = harness().await;
    let a = h.user("a@x.io").await;
    h.deposit(a, "BTC", BTC).await;
    let s = h
        .place(MARKET, 7, a, Side::Sell, 10 * USDT, BTC / 10, BTC / 10)
        .await;
    // Corrupt: the sell reserved BTC, but the cancel releases USDT, which A
    // has no row for (it would be created with locked -0.001).
    let bad = h
        .emit(&batch(
            MARKET,
            s,
            vec![done(
                7,
                a,
                FinalStatus::Canceled,
                0,
                AssetRole::Quote,
                1_000,
            )],
        ))
        .await;
    let out = h.clearing.handle_entries(&[bad]).await;
    let err = out.results[0].as_ref().unwrap_err();
    assert!(err.contains("balances_locked_check"), "{err}");
    let usdt_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM balances WHERE user_id = $1 AND asset = 'USDT'")
            .bind(i64::try_from(a).unwrap())
            .fetch_one(&h.db)
            .await
            .unwrap();
    assert_eq!(usdt_rows, 0);
    assert_eq!(h.balance(a, "BTC").await, ("0.9".into(), "0.1".into()));
    assert_eq!(h.order(7).await.0, "new");
}

/// An order that only rests is pushed as `new` whether or not the same
/// settlement updates other orders (read with their update, or alone).
#[tokio::test]
async fn accepted_orders_are_read_with_or_without_other_order_updates() {
    let h = harness().await;
    let (a, b) = h.funded_pair().await;
    let price = 20_000 * USDT;
    let s1 = h
        .place(MARKET, 21, a, Side::Sell, price, 1_000_000, 1_000_000)
        .await;
    let s2 = h
        .place(MARKET, 22, b, Side::Buy, price / 2, 1_000_000, 100 * USDT)
        .await;
    let s3 = h.journal_command(MARKET).await;
    let views = |out: &exchange_clearing::consumer::HandleOutcome| {
        out.settled
            .orders
            .iter()
            .map(|(user, o)| {
                let id = u64::try_from(o.id).unwrap();
                (id, *user, o.status.to_owned(), o.filled_quantity.clone())
            })
            .collect::<Vec<_>>()
    };
    // Alone: order 21 rests, nothing else changes.
    let e1 = h.emit(&batch(MARKET, s1, vec![accepted(21, a)])).await;
    let out = ok(&h, &[e1]).await;
    assert_eq!(views(&out), vec![(21, a, "new".into(), "0".into())]);
    // With an update: 22 rests, and 21 is canceled in the same settlement.
    let e2 = h.emit(&batch(MARKET, s2, vec![accepted(22, b)])).await;
    let e3 = h
        .emit(&batch(
            MARKET,
            s3,
            vec![done(
                21,
                a,
                FinalStatus::Canceled,
                0,
                AssetRole::Base,
                1_000_000,
            )],
        ))
        .await;
    let out = ok(&h, &[e2, e3]).await;
    assert_eq!(
        views(&out),
        vec![
            (21, a, "canceled".into(), "0".into()),
            (22, b, "new".into(), "0".into()),
        ]
    );
    assert_eq!(h.balance(a, "BTC").await, ("1".into(), "0".into()));
    let report = h.reconcile().await;
    assert!(report.ok(), "{report}");
}

/// A balance row the settlement creates (B's first BTC) while a deposit
/// creates the same row: the settlement waits for the deposit without
/// holding other balance locks, then retries and adds to the deposited row.
#[tokio::test]
async fn a_first_time_balance_row_created_concurrently_is_retried() {
    let h = harness().await;
    let (a, b, batches) = trade_scenario(&h).await;
    let entries = h.emit_all(&batches).await;
    // The deposit's transaction, held open across the settlement's start.
    let mut deposit = h.db.begin().await.unwrap();
    let journal: i64 =
        sqlx::query_scalar("INSERT INTO ledger_journal (kind) VALUES ('deposit') RETURNING id")
            .fetch_one(&mut *deposit)
            .await
            .unwrap();
    sqlx::query(
        "INSERT INTO ledger_postings (journal_id, account_kind, user_id, asset, amount)
         VALUES ($1, 'user', $2, 'BTC', 0.5), ($1, 'deposits', NULL, 'BTC', -0.5)",
    )
    .bind(journal)
    .bind(i64::try_from(b).unwrap())
    .execute(&mut *deposit)
    .await
    .unwrap();
    sqlx::query("INSERT INTO balances (user_id, asset, available) VALUES ($1, 'BTC', 0.5)")
        .bind(i64::try_from(b).unwrap())
        .execute(&mut *deposit)
        .await
        .unwrap();
    let clearing = Arc::clone(&h.clearing);
    let settle = tokio::spawn(async move { clearing.handle_entries(&entries).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !settle.is_finished(),
        "the settlement waits for the deposit"
    );
    // Meanwhile A's rows are not locked: the order service could reserve.
    let mut other = h.db.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '1s'")
        .execute(&mut *other)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM balances WHERE user_id = $1 FOR UPDATE")
        .bind(i64::try_from(a).unwrap())
        .execute(&mut *other)
        .await
        .unwrap();
    other.rollback().await.unwrap();
    deposit.commit().await.unwrap();
    let out = settle.await.unwrap();
    for r in &out.results {
        assert_eq!(r, &Ok(()), "every entry settles");
    }
    assert_eq!(h.balance(b, "BTC").await, ("0.51497".into(), "0".into()));
    assert_eq!(h.balance(a, "USDT").await, ("449.55".into(), "0".into()));
    let report = h.reconcile().await;
    assert!(report.ok(), "{report}");
}
