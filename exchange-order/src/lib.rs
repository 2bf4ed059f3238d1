//! The order service: order validation, funds reservation, per-market
//! sequencing and the order table.
//!
//! What it owns and guarantees:
//! - Every accepted command (place, cancel, cancel-all, amend, market
//!   status) is in the journal `order_commands` under a gapless per-market
//!   sequence number, committed in the same transaction as the funds it
//!   locks and the order row it creates ([`batch`]). Then it goes on
//!   `<prefix>:orders:{MARKET}`; what misses the stream is put there again
//!   by the [`republish`]er.
//! - Funds: an order's reserve moves `available → locked` in that
//!   transaction (never below zero: the balance rows are locked and checked
//!   first); `orders.reserved` / `orders.locked_remaining` record it, so per
//!   user and asset `sum(locked_remaining)` over open orders equals
//!   `balances.locked`. An amend that needs more locks the difference and
//!   adds it to the order's `reserved` and `locked_remaining`.
//! - Placement is idempotent on `(user_id, client_order_id)`, also within
//!   one batch.
//! - Business rules are pure functions in [`rules`]; handlers translate.
//!
//! Departure from DESIGN.md: this service does **not** consume
//! `exchange:events`. Clearing updates `orders` (status, filled quantity,
//! filled quote, `locked_remaining`) in the same transaction as the
//! balances it moves, so an order's status and the user's balances can
//! never disagree, and there is one consumer fewer to keep in step.

pub mod api;
pub mod batch;
pub mod republish;
pub mod rules;

use std::sync::Arc;

use exchange_common::service::ServiceBase;
use exchange_common::{Config, Shutdown};
use tokio::net::TcpListener;

pub const SERVICE: &str = "order";

/// The sockets this service serves on (bound by the caller; tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        Ok(Self {
            http: TcpListener::bind(config.order.http_addr).await?,
        })
    }
}

/// Runs the service until `shutdown` is triggered.
pub async fn run(
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let options = batch::BatchOptions {
        linger: config.order.batch_linger,
        ..batch::BatchOptions::default()
    };
    run_with(config, listeners, shutdown, options).await
}

/// [`run`] with explicit write-path limits (tests and benchmarks).
pub async fn run_with(
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: Shutdown,
    options: batch::BatchOptions,
) -> anyhow::Result<()> {
    // Order and fill history may come from DB_READ_URL's replica.
    let base = ServiceBase::new(config.clone(), SERVICE)?.with_read_replica(&shutdown)?;
    describe_metrics();
    let markets = exchange_store::Markets::new(base.db.clone());
    if let Err(e) = markets.reload().await {
        tracing::warn!(error = %e, "markets not loaded at start; loading on first use");
    }
    markets.follow_changes(shutdown.clone());
    let batcher = batch::Batcher::start(
        base.db.clone(),
        base.redis.clone(),
        markets.clone(),
        options,
    );
    tokio::spawn(republish::run(
        base.db.clone(),
        base.redis.clone(),
        shutdown.clone(),
    ));
    let state = api::AppState::new(api::StateInner {
        config,
        db: base.db.clone(),
        reads: base.reads.clone(),
        markets,
        batcher,
    });
    base.serve(listeners.http, api::routes(state), shutdown)
        .await
}

/// Describes this service's metrics (help text for `/metrics`).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        "exchange_order_commands_total",
        "Commands journaled (place, cancel, cancel-all, amend, status)"
    );
    describe_counter!(
        "exchange_order_overloaded_total",
        "Requests refused with OVERLOADED because the write queue was full"
    );
    describe_counter!(
        "exchange_order_batch_failed_total",
        "Write batches that failed in Postgres (every request in them got UNAVAILABLE)"
    );
    describe_counter!(
        "exchange_order_publish_failed_total",
        "Batches whose XADD failed after commit (the republisher repairs them)"
    );
    describe_counter!(
        "exchange_order_republished_total",
        "Journaled commands put on the order stream again by the republisher"
    );
    describe_histogram!("exchange_order_batch_len", "Requests per write batch");
    describe_histogram!(
        "exchange_order_batch_seconds",
        Unit::Seconds,
        "Time to apply one write batch (transaction and XADD)"
    );
}
