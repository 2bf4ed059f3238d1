//! The clearing service: settlement of event batches into balances, the
//! double-entry ledger, fees, trades, fills and order state.
//!
//! Owns: `eventStreamConsumer` (group `CLEARING_CONSUMER_GROUP`) on
//! `<prefix>:events`, the private events on `<prefix>:private:<user_id>`,
//! the catch-up that settles stored batches whose stream entry never came
//! (Postgres is the source of truth, Redis may lose entries), and the
//! scheduled reconcile ([`reconcile`]).
//!
//! Invariants:
//! - each `(market, seq)` batch takes effect exactly once, however often it
//!   is delivered: its `cleared_batches` row is inserted in the transaction
//!   that applies it ([`store`]);
//! - every balance change is a balanced ledger movement: per asset the
//!   ledger sums to zero, and per user and asset it equals available +
//!   locked ([`plan`] asserts it before anything is written, the database
//!   trigger at commit);
//! - an order's `locked_remaining` and its user's `locked` move together;
//! - a batch is never skipped silently: one that cannot be applied halts
//!   its market ([`consumer`]).

pub mod consumer;
pub mod plan;
pub mod private;
pub mod reconcile;
pub mod store;
pub mod wal_archive;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use exchange_common::service::ServiceBase;
use exchange_common::streams::{ConsumerOptions, run_consumer};
use exchange_common::{Config, Shutdown};
use tokio::net::TcpListener;

pub use consumer::{Clearing, ClearingHandler};

pub const SERVICE: &str = "clearing";
pub const LOOP_NAME: &str = "eventStreamConsumer";

/// The sockets this service serves on (bound by the caller; tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        Ok(Self {
            http: TcpListener::bind(config.clearing.http_addr).await?,
        })
    }
}

/// Tunables of the clearing loops (every limit named, unit last).
#[derive(Debug, Clone)]
pub struct Options {
    /// Stream entries per read, and so event batches per transaction at most.
    pub batch_len_max: usize,
    /// Deliveries before a failing batch is dead-lettered and its market halted.
    pub deliveries_max: u64,
    pub claim_idle: Duration,
    pub claim_interval: Duration,
    /// How often the halts table is re-read (an operator resumes a market by
    /// deleting its row).
    pub halts_refresh_interval: Duration,
    pub reconcile_interval: Duration,
    pub reconcile: reconcile::Options,
    /// A stored event batch not cleared after this long is settled from
    /// `event_batches` (its stream entry may be lost), on the halts schedule.
    pub catch_up_after: Duration,
    /// Batches per catch-up round.
    pub catch_up_len_max: i64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            batch_len_max: 1_000,
            deliveries_max: 5,
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            halts_refresh_interval: Duration::from_secs(5),
            reconcile_interval: Duration::from_secs(60),
            // The provenance checks read all history: an off-peak job's
            // (`exchange admin reconcile`), not every minute's.
            reconcile: reconcile::Options {
                full: false,
                ..reconcile::Options::default()
            },
            catch_up_after: Duration::from_secs(10),
            catch_up_len_max: 1_000,
        }
    }
}

/// The consumer options clearing runs its stream loop with.
pub fn consumer_options(base: &ServiceBase, opts: &Options) -> ConsumerOptions {
    let id = &base.config.clearing.consumer;
    let mut c = ConsumerOptions::new(LOOP_NAME, &base.redis.events_stream(), &id.group, &id.name);
    c.batch_len_max = opts.batch_len_max;
    c.deliveries_max = Some(opts.deliveries_max);
    c.claim_idle = opts.claim_idle;
    c.claim_interval = opts.claim_interval;
    // Balances and ledger postings are netted per settlement: waiting a
    // little after a small read makes the next settlement cover more
    // orders (at 64 bench users, 10 ms: +15 % orders/s, settled p50 +10 ms).
    c.linger = base.config.clearing.read_linger;
    c
}

/// Runs the service until `shutdown` is triggered.
pub async fn run(
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    run_with(config, listeners, shutdown, Options::default()).await
}

/// [`run`] with explicit tunables (tests shorten the timeouts).
pub async fn run_with(
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: Shutdown,
    opts: Options,
) -> anyhow::Result<()> {
    let base = ServiceBase::new(config, SERVICE)?;
    describe_metrics();
    exchange_store::transport::describe_forgery_metric(SERVICE, &base.redis.events_stream());
    let clearing = Arc::new(Clearing::new(
        base.db.clone(),
        base.redis.clone(),
        base.heartbeats().clone(),
        Some(opts.deliveries_max),
        shutdown.clone(),
    ));
    // Halts first: a halted market must not settle even for one read.
    while let Err(e) = clearing.refresh_halts().await {
        tracing::warn!(error = %e, "cannot read clearing_halts, retrying");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.wait() => return Ok(()),
        }
    }
    if let Err(e) = clearing.refresh_markets().await {
        tracing::warn!(error = %e, "cannot load markets yet");
    }
    let consumer = tokio::spawn(run_consumer(
        base.redis.clone(),
        base.heartbeats().clone(),
        consumer_options(&base, &opts),
        ClearingHandler(Arc::clone(&clearing)),
        shutdown.clone(),
    ));
    let jobs = tokio::spawn(scheduled(Arc::clone(&clearing), opts, shutdown.clone()));
    let served = base.serve(listeners.http, Router::new(), shutdown).await;
    let _ = consumer.await;
    let _ = jobs.await;
    served
}

/// Re-reads halts, runs reconcile and reads the WAL archiver's state on
/// their schedules until shutdown.
async fn scheduled(clearing: Arc<Clearing>, opts: Options, shutdown: Shutdown) {
    let mut halts = tokio::time::interval(opts.halts_refresh_interval);
    let mut recon = tokio::time::interval(opts.reconcile_interval);
    let mut archiving = tokio::time::interval(wal_archive::WAL_ARCHIVE_CHECK_INTERVAL);
    halts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recon.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    archiving.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            _ = halts.tick() => {
                if let Err(e) = clearing.refresh_halts().await {
                    tracing::warn!(error = %e, "cannot refresh clearing halts");
                }
                if let Err(e) = clearing.refresh_markets().await {
                    tracing::warn!(error = %e, "cannot refresh markets");
                }
                if let Err(e) = clearing.catch_up(opts.catch_up_after, opts.catch_up_len_max).await {
                    tracing::warn!(error = %e, "catch-up from event_batches failed");
                }
            }
            _ = recon.tick() => {
                match reconcile::reconcile(clearing.db(), opts.reconcile).await {
                    Ok(report) => {
                        report.export_metrics();
                        if report.ok() {
                            tracing::info!("reconcile ok");
                        } else {
                            tracing::error!(failed = ?report.failed(), report = %report, "reconcile failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reconcile could not run"),
                }
            }
            _ = archiving.tick() => {
                if let Err(e) = wal_archive::export(clearing.db()).await {
                    tracing::warn!(error = %e, "cannot read the WAL archiver's state");
                }
            }
        }
    }
}

/// `# HELP` and units for what clearing exports (promtool wants them).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    let _ = exchange_common::telemetry::metrics_handle();
    describe_gauge!(
        "exchange_market_halted",
        "1 when clearing halted the market after a batch was dead-lettered."
    );
    describe_gauge!(
        "exchange_reconcile_ok",
        "1 when the invariant held at the last reconciliation."
    );
    describe_gauge!(
        "exchange_reconcile_violations",
        "Offending rows the invariant found at the last reconciliation."
    );
    describe_gauge!(
        "exchange_pg_wal_archiving_enabled",
        "1 when PostgreSQL's archive_mode is on (continuous WAL archiving for backups)."
    );
    describe_gauge!(
        "exchange_pg_wal_archive_pending_segments",
        "Completed WAL segments PostgreSQL has not archived yet."
    );
    describe_gauge!(
        "exchange_pg_wal_archive_failing",
        "1 when PostgreSQL's last WAL archiving attempt failed and none succeeded since."
    );
    describe_gauge!(
        "exchange_pg_wal_archive_last_success_timestamp_seconds",
        Unit::Seconds,
        "Unix time PostgreSQL last archived a WAL file."
    );
    describe_gauge!(
        "exchange_reconcile_last_run_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the last reconciliation run."
    );
    describe_counter!(
        "exchange_clearing_batches_total",
        "Event batches handled, by result (applied, duplicate, failed)."
    );
    describe_counter!("exchange_clearing_trades_total", "Trades settled.");
    describe_counter!(
        "exchange_clearing_catch_up_batches_total",
        "Batches settled from event_batches because their stream entry never arrived."
    );
    describe_counter!(
        "exchange_clearing_private_events_total",
        "Private events published on Redis Pub/Sub."
    );
    describe_counter!(
        "exchange_clearing_publish_failures_total",
        "Pipelines of private events that Redis refused."
    );
    describe_histogram!(
        "exchange_clearing_settle_seconds",
        Unit::Seconds,
        "Time to settle and publish one stream read."
    );
    describe_histogram!(
        "exchange_clearing_step_seconds",
        Unit::Seconds,
        "Time per settlement step (plan, balances, orders, trades, fills, ledger, commit, publish)."
    );
}
