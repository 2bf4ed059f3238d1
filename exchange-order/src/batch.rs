//! The write path: every state-changing request (place, cancel,
//! cancel-all, amend, market status) goes through one bounded queue to a
//! batcher that applies up to [`BatchOptions::batch_len_max`] waiting
//! requests in **one** Postgres transaction, then publishes their commands
//! with one pipelined `XADD` per batch, then answers each request.
//!
//! Inside the transaction, in this order (locks are taken as late as
//! possible and always in the same order — amended orders by id, balances
//! sorted by `(user_id, asset)`, then `market_sequences`, as clearing takes
//! orders before balances — so batches never deadlock each other or
//! clearing):
//! 1. existing orders for `client_order_id`s (idempotency) and for the
//!    ids that cancels and amends name;
//! 2. the balance rows the batch may spend, read **without** locks;
//! 3. per request, in arrival order: check and move `available → locked`
//!    in memory (a rejection affects only that request); new order ids;
//! 4. under the batch's per-market [`Sequencer`] lock: one `UPDATE
//!    balances` with the netted amounts (rows locked in key order, the
//!    funds check `available >= amount` in its WHERE — if a row no longer
//!    covers its amount the batch rolls back and is decided again with the
//!    rows locked `FOR UPDATE` first), preceded by the amends' extra
//!    reserve on their order rows; market statuses, the sequence numbers
//!    (`market_sequences`, gapless), one `INSERT` of the new orders and one
//!    into the journal `order_commands`;
//! 5. commit, then `XADD` — still under the sequencer, so each market's
//!    stream receives its commands in sequence order.
//!
//! The reads and the balance write that look rows up by arrays of keys are
//! planned at each execution (`persistent(false)`), not once per
//! connection: a plan cached while the tables were nearly empty (a new
//! deployment, the first seconds of a bench) scans the whole table and
//! stays cached, growing with the table until statistics change. That
//! costs a plan and a round trip more per such statement (sqlx describes
//! an unnamed statement before binding it): tens of microseconds a batch.
//! Each such join against `unnest(...)` also names its keys with `= ANY`
//! (redundant for the result): the planner then looks the rows up in the
//! index whatever the batch's size, where a join alone switches to reading
//! the whole table once a batch is a few hundred keys long.
//!
//! Any database error before `COMMIT` fails the whole batch with a
//! retryable 503 `UNAVAILABLE`: nothing of it was applied. A `COMMIT` whose
//! connection is lost (or a batch that does not answer within the reply
//! timeout) leaves the outcome unknown: 503 `OUTCOME_UNKNOWN`, also
//! retryable — a placement retried with the same `client_order_id` finds
//! the order if the batch did commit. A failed `XADD` after the
//! commit is not an error for the client: the command is in the journal
//! and [`crate::republish`] puts it on the stream.
//!
//! A concurrent replica inserting the same `client_order_id` between our
//! check and our insert makes our insert violate the unique index: the
//! batch fails with 503 and the retry finds the existing order (200).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use exchange_common::ApiError;
use exchange_common::redis::Redis;
use exchange_domain::{
    AmendOrder, Command, MarketStatus, MarketSymbol, OrderId, OrderType, PlaceOrder,
    SequencedCommand, Side, UserId,
};
use exchange_store::{MarketInfo, Markets, ORDER_COLUMNS, OrderRow, db_text, db_units, wire_name};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::rules::{self, AmendTarget, Reject, ValidPlace};

/// Limits of the write path.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Requests waiting for the batcher; when full, requests get 503 `OVERLOADED`.
    pub queue_len_max: usize,
    /// Requests applied in one transaction.
    pub batch_len_max: usize,
    /// How long a handler waits for its batch before answering 503.
    pub reply_timeout: Duration,
    /// Batches in flight at once. With more than one, a batch prepares
    /// (reads, decisions) while another of the same market writes, commits
    /// and publishes; batches of different markets run fully in parallel.
    pub workers: usize,
    /// While another batch is in flight, a worker that took fewer than
    /// `batch_len_max` requests waits this long for more before it starts:
    /// one batch then carries what would have been several (its balance
    /// rows netted, one transaction, one `XADD`), and its commit would
    /// have queued behind the other anyway. An idle service (no batch in
    /// flight) never waits.
    pub linger: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            queue_len_max: 20_000,
            batch_len_max: 512,
            reply_timeout: Duration::from_secs(10),
            workers: 2,
            linger: Duration::from_millis(2),
        }
    }
}

/// A state-changing request, already validated against the market where
/// that needs no database.
#[derive(Debug, Clone)]
pub enum Request {
    Place {
        user_id: i64,
        market: MarketInfo,
        order: ValidPlace,
    },
    Cancel {
        user_id: i64,
        order_id: i64,
    },
    CancelAll {
        user_id: i64,
        market: MarketInfo,
    },
    Amend {
        user_id: i64,
        order_id: i64,
        price: Option<String>,
        quantity: Option<String>,
    },
    SetStatus {
        market: MarketInfo,
        status: MarketStatus,
    },
}

#[derive(Debug, Clone)]
pub enum Reply {
    /// A placement: the order, and whether this request created it.
    Placed { order: Box<OrderRow>, created: bool },
    /// The order a cancel or amend was about, as it is now.
    Order(Box<OrderRow>),
    /// Cancel-all or status change journaled.
    Accepted { seq: u64 },
}

pub type Outcome = Result<Reply, ApiError>;

struct Job {
    request: Request,
    reply: oneshot::Sender<Outcome>,
}

/// The handle handlers submit to (cheap to clone).
#[derive(Clone, Debug)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    reply_timeout: Duration,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.request.fmt(f)
    }
}

impl Batcher {
    /// Starts the batcher task; it stops when every handle is dropped.
    pub fn start(db: PgPool, redis: Redis, markets: Markets, opts: BatchOptions) -> Self {
        let (tx, rx) = mpsc::channel(opts.queue_len_max);
        let intake = std::sync::Arc::new(Intake {
            rx: tokio::sync::Mutex::new(rx),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            batch_len_max: opts.batch_len_max,
            linger: opts.linger,
        });
        let sequencer = Sequencer::default();
        for _ in 0..opts.workers.max(1) {
            tokio::spawn(run(
                db.clone(),
                redis.clone(),
                markets.clone(),
                sequencer.clone(),
                intake.clone(),
            ));
        }
        Self {
            tx,
            reply_timeout: opts.reply_timeout,
        }
    }

    pub async fn submit(&self, request: Request) -> Outcome {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { request, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("exchange_order_overloaded_total").increment(1);
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "OVERLOADED",
                    "too many requests in flight, retry",
                ));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(ApiError::unavailable("the order service is stopping"));
            }
        }
        match tokio::time::timeout(self.reply_timeout, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ApiError::unavailable("the request was dropped, retry")),
            Err(_) => Err(outcome_unknown("timed out waiting for the database")),
        }
    }
}

/// One async mutex per market, held by a batch from its balance writes
/// through sequence assignment, commit and `XADD`: batches of one market
/// take sequence numbers, commit and publish one after another, so the
/// stream receives every market's commands in sequence order and command
/// times never go backwards, while other batches read and plan meanwhile.
/// (Across replicas the `market_sequences` row lock still keeps the
/// sequence gapless; only the publication order is per process.)
#[derive(Clone, Default)]
struct Sequencer {
    markets:
        std::sync::Arc<std::sync::Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>>,
}

impl Sequencer {
    /// Locks the given markets in name order (so batches never deadlock).
    async fn lock(&self, names: &BTreeSet<String>) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let mutexes: Vec<_> = {
            let mut map = self
                .markets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            names
                .iter()
                .map(|n| map.entry(n.clone()).or_default().clone())
                .collect()
        };
        let mut guards = Vec::with_capacity(mutexes.len());
        for m in mutexes {
            guards.push(m.lock_owned().await);
        }
        guards
    }
}

/// The workers' shared queue end.
struct Intake {
    rx: tokio::sync::Mutex<mpsc::Receiver<Job>>,
    /// Batches being applied now.
    in_flight: std::sync::atomic::AtomicUsize,
    batch_len_max: usize,
    linger: Duration,
}

impl Intake {
    /// The next batch: what is queued (waiting for at least one request),
    /// plus, while another batch is in flight, what arrives within
    /// `linger` (see [`BatchOptions::linger`]). Empty when every handle is
    /// gone.
    async fn next_batch(&self) -> Vec<Job> {
        use std::sync::atomic::Ordering;
        let mut jobs = Vec::with_capacity(self.batch_len_max);
        let mut rx = self.rx.lock().await;
        if rx.recv_many(&mut jobs, self.batch_len_max).await == 0 {
            return jobs;
        }
        if !self.linger.is_zero()
            && jobs.len() < self.batch_len_max
            && self.in_flight.load(Ordering::Acquire) > 0
        {
            tokio::time::sleep(self.linger).await;
            while jobs.len() < self.batch_len_max {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        jobs
    }

    fn batch_done(&self) {
        self.in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

async fn run(
    db: PgPool,
    redis: Redis,
    markets: Markets,
    sequencer: Sequencer,
    intake: std::sync::Arc<Intake>,
) {
    loop {
        let batch = intake.next_batch().await;
        if batch.is_empty() {
            return;
        }
        metrics::histogram!("exchange_order_batch_len").record(batch.len() as f64);
        let (requests, replies): (Vec<Request>, Vec<oneshot::Sender<Outcome>>) =
            batch.into_iter().map(|j| (j.request, j.reply)).unzip();
        let started = std::time::Instant::now();
        let mut result = apply_batch(&db, &redis, &markets, &sequencer, &requests, false).await;
        if matches!(result, Ok(None)) {
            // A balance changed between our unlocked read and our write:
            // decide again under row locks.
            metrics::counter!("exchange_order_batch_relocked_total").increment(1);
            result = apply_batch(&db, &redis, &markets, &sequencer, &requests, true).await;
        }
        if result.as_ref().is_err_and(is_unique_violation) {
            // A concurrent batch inserted one of our client_order_ids first;
            // the retry finds that order and answers it (200).
            result = apply_batch(&db, &redis, &markets, &sequencer, &requests, true).await;
        }
        let result = result.and_then(|r| {
            r.ok_or_else(|| anyhow::anyhow!("balance write missed rows under row locks"))
        });
        let outcomes = match result {
            Ok(outcomes) => outcomes,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    count = requests.len(),
                    "order batch failed"
                );
                metrics::counter!("exchange_order_batch_failed_total").increment(1);
                let err = if e.is::<CommitOutcomeUnknown>() {
                    outcome_unknown("the database connection was lost during commit")
                } else {
                    ApiError::unavailable("database unavailable, nothing was applied, retry")
                };
                vec![Err(err); requests.len()]
            }
        };
        metrics::histogram!("exchange_order_batch_seconds").record(started.elapsed().as_secs_f64());
        intake.batch_done();
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            let _ = reply.send(outcome);
        }
    }
}

/// `COMMIT` failed in a way that does not tell whether it took effect:
/// the connection was lost or the server ended the session while the
/// commit was in flight. The batch may be committed (and its commands
/// journaled, so matching will execute them) or not.
#[derive(Debug, thiserror::Error)]
#[error("commit outcome unknown: {0}")]
pub struct CommitOutcomeUnknown(#[source] pub sqlx::Error);

/// Classifies a failed `COMMIT`: Postgres reporting an error for it (a
/// deferred constraint, a serialization failure) means it rolled back —
/// nothing applied, as for any statement; anything else (I/O error,
/// protocol error, the session terminated, connection class `08`) leaves
/// the outcome unknown.
fn commit_failed(e: sqlx::Error) -> anyhow::Error {
    let rolled_back = e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| !c.starts_with("08") && !c.starts_with("57P"));
    if rolled_back {
        anyhow::Error::new(e)
    } else {
        anyhow::Error::new(CommitOutcomeUnknown(e))
    }
}

/// The answer when a request may or may not have been applied (commit
/// outcome unknown, or no answer from the batch in time): retryable, but
/// not "nothing applied". A placement retried with the same
/// `client_order_id` returns the order if it exists and creates it
/// otherwise; without one, the client should look before placing again.
pub fn outcome_unknown(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "OUTCOME_UNKNOWN",
        format!(
            "{why}: the request may or may not have been applied; retry with the same \
             client_order_id (safe), or check the order before placing again"
        ),
    )
}

/// A plain market order given by base quantity (no price, no stop price):
/// its minimum notional is checked against the last trade price.
fn is_market_by_quantity(order: &ValidPlace) -> bool {
    order.order_type == OrderType::Market && order.quantity.is_some()
}

fn is_unique_violation(e: &anyhow::Error) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .is_some_and(|d| d.code().as_deref() == Some("23505"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn reject(r: Reject) -> ApiError {
    ApiError::bad_request(r.code, r.message)
}

fn order_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "ORDER_NOT_FOUND", "no such order")
}

/// A balance in an asset whose scale this service has not loaded: its
/// amount cannot be read, so nothing is decided on it (never a guessed
/// scale, which would lock a wrong amount). Retryable: a market reload
/// brings the scale.
fn scale_unknown() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ASSET_SCALE_UNKNOWN",
        "the asset's scale is not known to the order service; nothing was applied, retry",
    )
}

fn insufficient() -> ApiError {
    ApiError::bad_request(
        "INSUFFICIENT_BALANCE",
        "the available balance does not cover the order",
    )
}

/// What the batch decided for one request before the database writes.
enum Plan {
    Done(Outcome),
    /// Same `client_order_id` as an earlier request of this batch.
    SameAs(usize),
    Place {
        order: Box<OrderRow>,
        command: PlaceOrder,
        market: MarketSymbol,
    },
    Command {
        market: MarketSymbol,
        command: Command,
        reply_order: Option<Box<OrderRow>>,
    },
}

/// Applies one batch; `Err` means nothing was applied, except
/// [`CommitOutcomeUnknown`] (the commit may have taken effect).
///
/// Optimistic (`locked == false`): balances are read without row locks and
/// the batch is decided on that read; the balance write at the end checks
/// `available >= amount` per row and, if any row no longer covers its
/// amount (another batch or a withdrawal got there first), rolls back and
/// returns `Ok(None)`: the caller retries with `locked == true`, which
/// takes the market sequencer first and the balance rows `FOR UPDATE`
/// before deciding (the previous, always-correct path).
async fn apply_batch(
    db: &PgPool,
    redis: &Redis,
    markets: &Markets,
    sequencer: &Sequencer,
    requests: &[Request],
    locked: bool,
) -> anyhow::Result<Option<Vec<Outcome>>> {
    // Provisional; the commands' time is taken again once the sequence
    // numbers are ours (below), so time never goes backwards along a
    // market's sequence, even with several batches in flight.
    let mut time_ms = now_ms();
    let t0 = std::time::Instant::now();
    let mut tx = db.begin().await?;

    // 1. Orders this batch refers to.
    let mut coid_users = Vec::new();
    let mut coids = Vec::new();
    let mut ids = Vec::new();
    for r in requests {
        match r {
            Request::Place { user_id, order, .. } => {
                if let Some(c) = &order.client_order_id {
                    coid_users.push(*user_id);
                    coids.push(c.clone());
                }
            }
            Request::Cancel { order_id, .. } | Request::Amend { order_id, .. } => {
                ids.push(*order_id);
            }
            _ => {}
        }
    }
    let mut by_coid: HashMap<(i64, String), OrderRow> = HashMap::new();
    if !coids.is_empty() {
        let sql = format!(
            "SELECT {ORDER_COLUMNS} FROM orders \
             WHERE user_id = ANY($1) \
               AND (user_id, client_order_id) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))"
        );
        let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .bind(&coid_users)
            .bind(&coids)
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            if let Some(c) = row.client_order_id.clone() {
                by_coid.insert((row.user_id, c), row);
            }
        }
    }
    // The last trade price of markets with market orders by base
    // quantity: their minimum-notional reference (rules::check_market_notional).
    let mut last_price: HashMap<String, u128> = HashMap::new();
    let need_price: BTreeSet<String> = requests
        .iter()
        .filter_map(|r| match r {
            Request::Place { market, order, .. } if is_market_by_quantity(order) => {
                Some(market.spec.symbol().to_string())
            }
            _ => None,
        })
        .collect();
    if !need_price.is_empty() {
        let names: Vec<String> = need_price.into_iter().collect();
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT m, (SELECT trim_scale(t.price)::text FROM trades t WHERE t.market = m
                        ORDER BY t.time_ms DESC, t.seq DESC LIMIT 1)
             FROM unnest($1::text[]) AS m",
        )
        .persistent(false)
        .bind(&names)
        .fetch_all(&mut *tx)
        .await?;
        for (m, price) in rows {
            let scale = requests.iter().find_map(|r| match r {
                Request::Place { market, .. } if market.spec.symbol().to_string() == m => {
                    Some(market.spec.quote().scale)
                }
                _ => None,
            });
            if let (Some(p), Some(scale)) = (price, scale) {
                last_price.insert(m, db_units(&p, scale)?);
            }
        }
    }
    let mut by_id: HashMap<i64, OrderRow> = HashMap::new();
    if !ids.is_empty() {
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ANY($1)");
        let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
        by_id = rows.into_iter().map(|r| (r.id, r)).collect();
    }

    // The markets this batch will append to (cancels and amends of
    // unknown orders append nothing; an extra market here only costs a
    // lock).
    let mut batch_markets: BTreeSet<String> = BTreeSet::new();
    for r in requests {
        match r {
            Request::Place { market, .. }
            | Request::CancelAll { market, .. }
            | Request::SetStatus { market, .. } => {
                batch_markets.insert(market.spec.symbol().to_string());
            }
            Request::Cancel { order_id, .. } | Request::Amend { order_id, .. } => {
                if let Some(o) = by_id.get(order_id) {
                    batch_markets.insert(o.market.clone());
                }
            }
        }
    }
    let mut guards = if locked {
        sequencer.lock(&batch_markets).await
    } else {
        Vec::new()
    };

    // 2. Read every balance row the batch may spend (locked, in a fixed
    //    order, on the retry path).
    let mut keys: BTreeSet<(i64, String)> = BTreeSet::new();
    for r in requests {
        match r {
            Request::Place {
                user_id,
                market,
                order,
            } => {
                keys.insert((*user_id, market.spend_asset(order.side).symbol.to_string()));
            }
            Request::Amend {
                user_id, order_id, ..
            } => {
                if let Some(o) = by_id.get(order_id).filter(|o| o.user_id == *user_id) {
                    keys.insert((*user_id, o.reserve_asset.clone()));
                }
            }
            _ => {}
        }
    }
    let mut available: BTreeMap<(i64, String), u128> = BTreeMap::new();
    // Asset scales: every loaded market's, and those of the markets the
    // requests carry (a market created since the last cache load). A
    // balance in an asset of no known scale is never parsed with a guess:
    // the requests spending it fail with `ASSET_SCALE_UNKNOWN` (below).
    let mut scales: HashMap<String, u8> = HashMap::new();
    let loaded = markets.all();
    let carried = requests.iter().filter_map(|r| match r {
        Request::Place { market, .. }
        | Request::CancelAll { market, .. }
        | Request::SetStatus { market, .. } => Some(market),
        _ => None,
    });
    for m in loaded.values().chain(carried) {
        scales.insert(m.spec.base().symbol.to_string(), m.spec.base().scale);
        scales.insert(m.spec.quote().symbol.to_string(), m.spec.quote().scale);
    }
    let mut unknown_scale: BTreeSet<String> = BTreeSet::new();
    let amended: Vec<i64> = requests
        .iter()
        .filter_map(|r| match r {
            Request::Amend { order_id, .. } => Some(*order_id),
            _ => None,
        })
        .collect();
    if locked && !amended.is_empty() {
        // Amended order rows before balances, as clearing and step 4 take them.
        sqlx::query("SELECT id FROM orders WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .persistent(false)
            .bind(&amended)
            .execute(&mut *tx)
            .await?;
    }
    if !keys.is_empty() {
        let (users, assets): (Vec<i64>, Vec<String>) = keys.iter().cloned().unzip();
        let sql = if locked {
            "SELECT b.user_id, b.asset, b.available::text FROM balances b
             JOIN unnest($1::bigint[], $2::text[]) AS k(user_id, asset)
               ON b.user_id = k.user_id AND b.asset = k.asset
             WHERE b.user_id = ANY($1)
             ORDER BY b.user_id, b.asset
             FOR UPDATE OF b"
        } else {
            "SELECT b.user_id, b.asset, b.available::text FROM balances b
             JOIN unnest($1::bigint[], $2::text[]) AS k(user_id, asset)
               ON b.user_id = k.user_id AND b.asset = k.asset
             WHERE b.user_id = ANY($1)"
        };
        let rows: Vec<(i64, String, String)> = sqlx::query_as(sql)
            .persistent(false)
            .bind(&users)
            .bind(&assets)
            .fetch_all(&mut *tx)
            .await?;
        for (user, asset, text) in rows {
            match scales.get(&asset) {
                Some(&scale) => {
                    available.insert((user, asset), db_units(&text, scale)?);
                }
                None => {
                    unknown_scale.insert(asset);
                }
            }
        }
    }
    let mut locked_delta: BTreeMap<(i64, String), u128> = BTreeMap::new();
    let t_locked = t0.elapsed();

    // 3. Decide each request in arrival order.
    let mut seen_coid: HashMap<(i64, String), usize> = HashMap::new();
    let mut plans: Vec<Plan> = Vec::with_capacity(requests.len());
    let mut new_orders = 0usize;
    for (i, r) in requests.iter().enumerate() {
        let plan = match r {
            Request::Place {
                user_id,
                market,
                order,
            } => {
                let key_coid = order.client_order_id.clone().map(|c| (*user_id, c));
                if let Some(k) = &key_coid
                    && let Some(existing) = by_coid.get(k)
                {
                    Plan::Done(Ok(Reply::Placed {
                        order: Box::new(existing.clone()),
                        created: false,
                    }))
                } else if let Some(k) = &key_coid
                    && let Some(first) = seen_coid.get(k)
                {
                    Plan::SameAs(*first)
                } else {
                    if let Some(k) = key_coid {
                        seen_coid.insert(k, i);
                    }
                    let reference = last_price.get(&market.spec.symbol().to_string()).copied();
                    let notional = match order.quantity {
                        Some(q) if is_market_by_quantity(order) => {
                            rules::check_market_notional(&market.spec, q, reference)
                        }
                        _ => Ok(()),
                    };
                    let asset = market.spend_asset(order.side);
                    let key = (*user_id, asset.symbol.to_string());
                    let avail = available.get(&key).copied().unwrap_or(0);
                    match (notional, rules::reserve_amount(order.reserve, avail)) {
                        (Err(r), _) => Plan::Done(Err(reject(r))),
                        (Ok(()), None) => Plan::Done(Err(insufficient())),
                        (Ok(()), Some(amount)) => {
                            available.insert(key.clone(), avail - amount);
                            *locked_delta.entry(key).or_default() += amount;
                            new_orders += 1;
                            let row = new_order_row(*user_id, market, order, amount, time_ms);
                            let command = PlaceOrder {
                                order_id: OrderId(0),
                                user_id: UserId(user_id.unsigned_abs()),
                                side: order.side,
                                order_type: order.order_type,
                                price: order.price,
                                quantity: order.quantity,
                                quote_quantity: order.quote_quantity,
                                stop_price: order.stop_price,
                                time_in_force: order.time_in_force,
                                post_only: order.post_only,
                                stp: order.stp,
                                reserved: amount,
                            };
                            Plan::Place {
                                order: Box::new(row),
                                command,
                                market: market.spec.symbol(),
                            }
                        }
                    }
                }
            }
            Request::Cancel { user_id, order_id } => match by_id.get(order_id) {
                Some(o) if o.user_id == *user_id => {
                    if o.is_open() {
                        match MarketSymbol::parse(&o.market) {
                            Ok(market) => Plan::Command {
                                market,
                                command: Command::Cancel {
                                    order_id: OrderId(order_id.unsigned_abs()),
                                    user_id: UserId(user_id.unsigned_abs()),
                                },
                                reply_order: Some(Box::new(o.clone())),
                            },
                            Err(_) => Plan::Done(Err(order_not_found())),
                        }
                    } else {
                        // Already final: nothing to cancel, answer as it is.
                        Plan::Done(Ok(Reply::Order(Box::new(o.clone()))))
                    }
                }
                _ => Plan::Done(Err(order_not_found())),
            },
            Request::CancelAll { user_id, market } => Plan::Command {
                market: market.spec.symbol(),
                command: Command::CancelAll {
                    user_id: UserId(user_id.unsigned_abs()),
                },
                reply_order: None,
            },
            Request::SetStatus { market, status } => Plan::Command {
                market: market.spec.symbol(),
                command: Command::SetStatus { status: *status },
                reply_order: None,
            },
            Request::Amend {
                user_id, order_id, ..
            } if by_id.get(order_id).is_some_and(|o| {
                o.user_id == *user_id && unknown_scale.contains(&o.reserve_asset)
            }) =>
            {
                Plan::Done(Err(scale_unknown()))
            }
            Request::Amend {
                user_id,
                order_id,
                price,
                quantity,
            } => plan_amend(
                markets,
                by_id.get(order_id).filter(|o| o.user_id == *user_id),
                *user_id,
                price.as_deref(),
                quantity.as_deref(),
                &mut available,
                &mut locked_delta,
            ),
        };
        plans.push(plan);
    }

    // 4. Order ids (no locks), then, under the market sequencer, the
    //    writes that take row locks, kept to the end of the transaction:
    //    amends' extra reserve (order rows in id order), balances (one
    //    statement, rows locked in key order, the funds check in its
    //    WHERE), statuses, sequence numbers, the orders and the journal,
    //    commit, XADD.
    let mut order_ids: Vec<i64> = Vec::new();
    if new_orders > 0 {
        order_ids = sqlx::query_scalar("SELECT nextval('order_ids') FROM generate_series(1, $1)")
            .bind(i64::try_from(new_orders)?)
            .fetch_all(&mut *tx)
            .await?;
    }
    if guards.is_empty() {
        guards = sequencer.lock(&batch_markets).await;
    }
    // The amends' extra reserve on their order rows, in id order, before
    // the balances: clearing locks an order's row before its owners'
    // balances, so taking them the other way round could deadlock with a
    // settlement of the amended order.
    let mut extra_reserves: Vec<(i64, String)> = Vec::new();
    for (plan, request) in plans.iter().zip(requests) {
        if let (
            Plan::Command {
                command: Command::Amend(a),
                ..
            },
            Request::Amend { .. },
        ) = (plan, request)
            && a.additional_reserve > 0
        {
            // plan_amend found the market; it cannot have gone since.
            let scale = markets
                .peek(&plan_market(plan))
                .map(|m| m.spend_asset(a.side).scale)
                .ok_or_else(|| anyhow::anyhow!("no market for amend of {}", a.order_id.0))?;
            extra_reserves.push((
                i64::try_from(a.order_id.0)?,
                db_text(a.additional_reserve, scale),
            ));
        }
    }
    extra_reserves.sort();
    for (order_id, amount) in &extra_reserves {
        sqlx::query(
            "UPDATE orders SET reserved = reserved + $2::numeric,
                    locked_remaining = locked_remaining + $2::numeric, updated_at = now()
             WHERE id = $1",
        )
        .bind(order_id)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    }
    let deltas: Vec<((i64, String), u128)> =
        locked_delta.into_iter().filter(|(_, v)| *v > 0).collect();
    if !deltas.is_empty() {
        let mut users = Vec::with_capacity(deltas.len());
        let mut assets = Vec::with_capacity(deltas.len());
        let mut amounts = Vec::with_capacity(deltas.len());
        for ((u, a), v) in &deltas {
            // Only keys whose balance was parsed get a delta.
            let scale = scales
                .get(a)
                .copied()
                .ok_or_else(|| anyhow::anyhow!("no scale for asset {a}"))?;
            users.push(*u);
            assets.push(a.clone());
            amounts.push(db_text(*v, scale));
        }
        let updated = sqlx::query(
            "WITH d AS (
                 SELECT user_id, asset, amount::numeric AS amount
                 FROM unnest($1::bigint[], $2::text[], $3::text[]) AS d(user_id, asset, amount)
             ), l AS (
                 SELECT b.user_id, b.asset FROM balances b
                 JOIN d ON b.user_id = d.user_id AND b.asset = d.asset
                 WHERE b.user_id = ANY($1)
                 ORDER BY b.user_id, b.asset
                 FOR UPDATE OF b
             )
             UPDATE balances b
             SET available = b.available - d.amount,
                 locked = b.locked + d.amount,
                 updated_at = now()
             FROM d JOIN l ON l.user_id = d.user_id AND l.asset = d.asset
             WHERE b.user_id = d.user_id AND b.asset = d.asset AND b.user_id = ANY($1)
               AND b.available >= d.amount",
        )
        .persistent(false)
        .bind(&users)
        .bind(&assets)
        .bind(&amounts)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != deltas.len() as u64 {
            tx.rollback().await?;
            return Ok(None);
        }
    }
    for request in requests {
        if let Request::SetStatus { market, status } = request {
            sqlx::query("UPDATE markets SET status = $2, updated_at = now() WHERE symbol = $1")
                .bind(market.spec.symbol().to_string())
                .bind(status.as_str())
                .execute(&mut *tx)
                .await?;
        }
    }

    // 5. Sequence numbers, in arrival order per market.
    let mut per_market: BTreeMap<String, i64> = BTreeMap::new();
    for p in &plans {
        if matches!(p, Plan::Place { .. } | Plan::Command { .. }) {
            *per_market.entry(plan_market(p)).or_default() += 1;
        }
    }
    let mut next_seq: HashMap<String, i64> = HashMap::new();
    if !per_market.is_empty() {
        let (mk, counts): (Vec<String>, Vec<i64>) =
            per_market.iter().map(|(m, c)| (m.clone(), *c)).unzip();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "INSERT INTO market_sequences (market, last_seq)
             SELECT * FROM unnest($1::text[], $2::bigint[])
             ON CONFLICT (market) DO UPDATE SET last_seq = market_sequences.last_seq + EXCLUDED.last_seq
             RETURNING market, last_seq",
        )
        .bind(&mk)
        .bind(&counts)
        .fetch_all(&mut *tx)
        .await?;
        for (m, last) in rows {
            let count = per_market.get(&m).copied().unwrap_or(0);
            next_seq.insert(m, last - count + 1);
        }
    }

    time_ms = now_ms().max(time_ms);
    let time_ms_i64 = i64::try_from(time_ms)?;
    let mut commands: Vec<SequencedCommand> = Vec::new();
    let mut ord = order_ids.into_iter();
    let mut ins = OrderInsert::default();
    for plan in &mut plans {
        let market_name = plan_market(plan);
        let (market, command) = match plan {
            Plan::Place {
                order,
                command,
                market,
            } => {
                let id = ord
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("order id sequence returned too few ids"))?;
                order.id = id;
                order.created_ms = time_ms_i64;
                order.updated_ms = time_ms_i64;
                command.order_id = OrderId(id.unsigned_abs());
                (*market, Command::Place(command.clone()))
            }
            Plan::Command {
                market, command, ..
            } => (*market, command.clone()),
            _ => continue,
        };
        let slot = next_seq
            .get_mut(&market_name)
            .ok_or_else(|| anyhow::anyhow!("no sequence for {market_name}"))?;
        let seq = *slot;
        *slot += 1;
        if let Plan::Place { order, .. } = plan {
            order.seq = seq;
            ins.push(order);
        }
        commands.push(SequencedCommand {
            market,
            seq: seq.unsigned_abs(),
            time_ms,
            command,
        });
    }
    ins.execute(&mut tx, time_ms).await?;
    if !commands.is_empty() {
        let mut mk = Vec::with_capacity(commands.len());
        let mut seqs = Vec::with_capacity(commands.len());
        let mut bodies = Vec::with_capacity(commands.len());
        for c in &commands {
            mk.push(c.market.to_string());
            seqs.push(i64::try_from(c.seq)?);
            bodies.push(serde_json::to_string(&c.command)?);
        }
        sqlx::query(
            "INSERT INTO order_commands (market, seq, time_ms, command)
             SELECT market, seq, $3, command::jsonb
             FROM unnest($1::text[], $2::bigint[], $4::text[]) AS u(market, seq, command)",
        )
        .bind(&mk)
        .bind(&seqs)
        .bind(i64::try_from(time_ms)?)
        .bind(&bodies)
        .execute(&mut *tx)
        .await?;
    }
    let t_written = t0.elapsed();
    if let Err(e) = tx.commit().await {
        return Err(commit_failed(e));
    }
    let t_commit = t0.elapsed();
    for r in requests {
        if let Request::SetStatus { market, status } = r {
            markets.set_status(&market.spec.symbol().to_string(), *status);
        }
    }

    // 6. Publish; a failure here is repaired by the republisher.
    if let Err(e) = publish(redis, &commands).await {
        metrics::counter!("exchange_order_publish_failed_total").increment(1);
        tracing::warn!(error = %e, count = commands.len(), "xadd failed after commit; the republisher will retry");
    }
    drop(guards);
    metrics::counter!("exchange_order_commands_total").increment(commands.len() as u64);
    tracing::debug!(
        len = requests.len(),
        locked_us = u64::try_from(t_locked.as_micros()).unwrap_or(u64::MAX),
        written_us = u64::try_from(t_written.as_micros()).unwrap_or(u64::MAX),
        committed_us = u64::try_from(t_commit.as_micros()).unwrap_or(u64::MAX),
        published_us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX),
        "order batch"
    );

    // 7. Answers.
    let mut seq_iter = commands.iter().map(|c| c.seq);
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(plans.len());
    for plan in plans {
        let outcome = match plan {
            Plan::Done(o) => o,
            Plan::SameAs(first) => match outcomes.get(first) {
                Some(Ok(Reply::Placed { order, .. })) => Ok(Reply::Placed {
                    order: order.clone(),
                    created: false,
                }),
                Some(other) => other.clone(),
                None => Err(ApiError::unavailable("retry")),
            },
            Plan::Place { order, .. } => {
                seq_iter.next();
                Ok(Reply::Placed {
                    order,
                    created: true,
                })
            }
            Plan::Command { reply_order, .. } => {
                let seq = seq_iter.next().unwrap_or(0);
                match reply_order {
                    Some(o) => Ok(Reply::Order(o)),
                    None => Ok(Reply::Accepted { seq }),
                }
            }
        };
        outcomes.push(outcome);
    }
    Ok(Some(outcomes))
}

fn plan_market(p: &Plan) -> String {
    match p {
        Plan::Place { market, .. } | Plan::Command { market, .. } => market.to_string(),
        _ => String::new(),
    }
}

fn plan_amend(
    markets: &Markets,
    order: Option<&OrderRow>,
    user_id: i64,
    price: Option<&str>,
    quantity: Option<&str>,
    available: &mut BTreeMap<(i64, String), u128>,
    locked_delta: &mut BTreeMap<(i64, String), u128>,
) -> Plan {
    let Some(o) = order else {
        return Plan::Done(Err(order_not_found()));
    };
    if !o.is_open() {
        return Plan::Done(Err(ApiError::bad_request(
            "ORDER_NOT_OPEN",
            "the order is no longer open",
        )));
    }
    let (Some(info), Ok(symbol), Some(side), Some(order_type)) = (
        markets.peek(&o.market),
        MarketSymbol::parse(&o.market),
        Side::parse(&o.side),
        OrderType::parse(&o.order_type),
    ) else {
        return Plan::Done(Err(order_not_found()));
    };
    let (bs, qs) = (info.spec.base().scale, info.spec.quote().scale);
    let spend_scale = info.spend_asset(side).scale;
    let num = |t: &str, s: u8| db_units(t, s).ok();
    let (Some(qty), Some(filled), Some(locked)) = (
        o.quantity.as_deref().and_then(|t| num(t, bs)),
        num(&o.filled_quantity, bs),
        num(&o.locked_remaining, spend_scale),
    ) else {
        return Plan::Done(Err(ApiError::bad_request(
            "ORDER_NOT_AMENDABLE",
            "only resting limit orders can be amended",
        )));
    };
    let target = AmendTarget {
        side,
        order_type,
        price: o.price.as_deref().and_then(|t| num(t, qs)),
        open_quantity: qty.saturating_sub(filled),
        locked_remaining: locked,
    };
    let valid = match rules::validate_amend(&info.spec, info.status, &target, price, quantity) {
        Ok(v) => v,
        Err(r) => return Plan::Done(Err(reject(r))),
    };
    // The whole new reserve if affordable (correct however far clearing
    // lags; the engine releases the old reserve): rules::amend_top_up.
    let key = (user_id, o.reserve_asset.clone());
    let avail = available.get(&key).copied().unwrap_or(0);
    let Some(top_up) = rules::amend_top_up(&valid, avail) else {
        return Plan::Done(Err(insufficient()));
    };
    if top_up > 0 {
        available.insert(key.clone(), avail - top_up);
        *locked_delta.entry(key).or_default() += top_up;
    }
    Plan::Command {
        market: symbol,
        command: Command::Amend(AmendOrder {
            order_id: OrderId(o.id.unsigned_abs()),
            user_id: UserId(user_id.unsigned_abs()),
            side,
            new_price: valid.new_price,
            new_quantity: valid.new_quantity,
            additional_reserve: top_up,
        }),
        reply_order: Some(Box::new(o.clone())),
    }
}

fn new_order_row(
    user_id: i64,
    market: &MarketInfo,
    order: &ValidPlace,
    reserved: u128,
    time_ms: u64,
) -> OrderRow {
    let (bs, qs) = (market.spec.base().scale, market.spec.quote().scale);
    let spend = market.spend_asset(order.side);
    let ms = i64::try_from(time_ms).unwrap_or(i64::MAX);
    OrderRow {
        id: 0,
        user_id,
        client_order_id: order.client_order_id.clone(),
        market: market.spec.symbol().to_string(),
        side: order.side.as_str().to_owned(),
        order_type: order.order_type.as_str().to_owned(),
        time_in_force: wire_name(&order.time_in_force),
        post_only: order.post_only,
        stp: wire_name(&order.stp),
        price: order.price.map(|p| db_text(p, qs)),
        stop_price: order.stop_price.map(|p| db_text(p, qs)),
        quantity: order.quantity.map(|q| db_text(q, bs)),
        quote_quantity: order.quote_quantity.map(|q| db_text(q, qs)),
        filled_quantity: "0".to_owned(),
        filled_quote: "0".to_owned(),
        reserve_asset: spend.symbol.to_string(),
        reserved: db_text(reserved, spend.scale),
        locked_remaining: db_text(reserved, spend.scale),
        status: "new".to_owned(),
        reason: None,
        seq: 0,
        created_ms: ms,
        updated_ms: ms,
        triggered_ms: None,
    }
}

/// Column arrays for one multi-row `INSERT INTO orders`.
#[derive(Default)]
struct OrderInsert {
    id: Vec<i64>,
    user_id: Vec<i64>,
    coid: Vec<Option<String>>,
    market: Vec<String>,
    side: Vec<String>,
    order_type: Vec<String>,
    tif: Vec<String>,
    post_only: Vec<bool>,
    stp: Vec<String>,
    price: Vec<Option<String>>,
    stop_price: Vec<Option<String>>,
    quantity: Vec<Option<String>>,
    quote_quantity: Vec<Option<String>>,
    reserve_asset: Vec<String>,
    reserved: Vec<String>,
    seq: Vec<i64>,
}

impl OrderInsert {
    fn push(&mut self, o: &OrderRow) {
        self.id.push(o.id);
        self.user_id.push(o.user_id);
        self.coid.push(o.client_order_id.clone());
        self.market.push(o.market.clone());
        self.side.push(o.side.clone());
        self.order_type.push(o.order_type.clone());
        self.tif.push(o.time_in_force.clone());
        self.post_only.push(o.post_only);
        self.stp.push(o.stp.clone());
        self.price.push(o.price.clone());
        self.stop_price.push(o.stop_price.clone());
        self.quantity.push(o.quantity.clone());
        self.quote_quantity.push(o.quote_quantity.clone());
        self.reserve_asset.push(o.reserve_asset.clone());
        self.reserved.push(o.reserved.clone());
        self.seq.push(o.seq);
    }

    async fn execute(self, tx: &mut Transaction<'_, Postgres>, time_ms: u64) -> anyhow::Result<()> {
        if self.id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO orders (id, user_id, client_order_id, market, side, type, time_in_force,
                post_only, stp, price, stop_price, quantity, quote_quantity, reserve_asset,
                reserved, locked_remaining, seq, created_at, updated_at)
             SELECT id, user_id, coid, market, side, type, tif, post_only, stp,
                price::numeric, stop_price::numeric, quantity::numeric, quote_quantity::numeric,
                reserve_asset, reserved::numeric, reserved::numeric, seq,
                timestamptz 'epoch' + $17 * interval '1 millisecond',
                timestamptz 'epoch' + $17 * interval '1 millisecond'
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::bool[], $9::text[], $10::text[], $11::text[], $12::text[],
                $13::text[], $14::text[], $15::text[], $16::bigint[])
               AS u(id, user_id, coid, market, side, type, tif, post_only, stp, price, stop_price,
                    quantity, quote_quantity, reserve_asset, reserved, seq)",
        )
        .bind(&self.id)
        .bind(&self.user_id)
        .bind(&self.coid)
        .bind(&self.market)
        .bind(&self.side)
        .bind(&self.order_type)
        .bind(&self.tif)
        .bind(&self.post_only)
        .bind(&self.stp)
        .bind(&self.price)
        .bind(&self.stop_price)
        .bind(&self.quantity)
        .bind(&self.quote_quantity)
        .bind(&self.reserve_asset)
        .bind(&self.reserved)
        .bind(&self.seq)
        .bind(i64::try_from(time_ms)?)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// `XADD` every command to its market's stream, pipelined, in seq order.
pub async fn publish(redis: &Redis, commands: &[SequencedCommand]) -> anyhow::Result<()> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for c in commands {
        let body = serde_json::to_string(c)?;
        pipe.cmd("XADD")
            .arg(redis.orders_stream(&c.market.to_string()))
            .arg("*")
            .arg("command")
            .arg(body)
            .ignore();
    }
    let mut conn = redis.conn();
    pipe.query_async::<()>(&mut conn).await?;
    Ok(())
}
