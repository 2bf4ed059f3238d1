//! The write path: every state-changing request (place, cancel,
//! cancel-all, amend, market status) goes through one bounded queue to a
//! batcher that applies up to [`BatchOptions::batch_len_max`] waiting
//! requests in **one** Postgres transaction, then publishes their commands
//! with one pipelined `XADD` per batch, then answers each request.
//!
//! Where each part lives (the shape of `exchange-clearing`'s plan, store
//! and consumer):
//! - `queue.rs`: the bounded queue, the [`Batcher`] handle handlers submit
//!   to, and how a worker gathers its next batch;
//! - `worker.rs`: the batch workers, each applying a batch as load → plan
//!   → store → commit → publish;
//! - `plan.rs`: the decisions, computed without I/O (unit-tested there);
//! - `store.rs`: one function per SQL step, the commit and the `XADD`;
//! - `sequencer.rs`: per market, one batch at a time from its balance
//!   writes to its `XADD`.
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
//! 4. under the batch's per-market sequencer lock: one `UPDATE
//!    balances` with the netted amounts (rows locked in key order, the
//!    funds check `available >= amount` in its WHERE — if a row no longer
//!    covers its amount the batch rolls back and is decided again with the
//!    rows locked `FOR UPDATE` first), preceded by the amends' extra
//!    reserve on their order rows; market statuses, the sequence numbers
//!    (`market_sequences`, gapless), one `INSERT` of the new orders and one
//!    into the journal `order_commands`; last, the audit rows of market
//!    status changes (the audit log's lock is always taken last);
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

mod plan;
mod queue;
mod sequencer;
mod store;
mod worker;

use std::time::Duration;

use axum::http::StatusCode;
use exchange_common::ApiError;
use exchange_common::ErrorCode;
use exchange_domain::MarketStatus;

use exchange_common::redis::Redis;
use exchange_store::audit::AuditContext;
use exchange_store::{MarketInfo, Markets, OrderRow};
use sqlx::PgPool;

use crate::rules::ValidPlace;

pub use queue::Batcher;
pub use store::{CommitOutcomeUnknown, publish};

impl Batcher {
    /// Opens the queue and starts `opts.workers` batch workers behind it,
    /// sharing one per-market sequencer; they stop when every handle is
    /// dropped.
    pub fn start(db: PgPool, redis: Redis, markets: Markets, opts: BatchOptions) -> Self {
        let (batcher, intake) = queue::open(&opts);
        let sequencer = sequencer::Sequencer::default();
        for _ in 0..opts.workers.max(1) {
            let worker = worker::Worker {
                db: db.clone(),
                redis: redis.clone(),
                markets: markets.clone(),
                sequencer: sequencer.clone(),
            };
            tokio::spawn(worker::run(worker, intake.clone()));
        }
        batcher
    }
}

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
        /// Who asked (an operator through the gateway): the change's audit
        /// row, appended in the batch's transaction.
        audit: AuditContext,
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

/// The answer when a request may or may not have been applied (commit
/// outcome unknown, or no answer from the batch in time): retryable, but
/// not "nothing applied". A placement retried with the same
/// `client_order_id` returns the order if it exists and creates it
/// otherwise; without one, the client should look before placing again.
pub fn outcome_unknown(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::OutcomeUnknown,
        format!(
            "{why}: the request may or may not have been applied; retry with the same \
             client_order_id (safe), or check the order before placing again"
        ),
    )
}
