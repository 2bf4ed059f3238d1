//! The matching service: one in-memory order book per market it owns,
//! fed strictly in sequence order from `<prefix>:orders:{MARKET}`, and its
//! output stored (`event_batches`) and published (`<prefix>:events`).
//!
//! Ownership: `MATCHING_MARKETS` lists the markets of this replica (`*` =
//! every market in the database). The list of markets is reloaded every
//! [`MARKETS_REFRESH_INTERVAL`], so a new market starts without a restart.
//!
//! Per market ([`market::MarketBook`]):
//! - at start the book is restored from the newest good snapshot
//!   (`matching_snapshots`, migration 0005: engine snapshot bytes, checked
//!   against the stored seq and state hash; a bad one is skipped for the
//!   next older, none means an empty book), then the journal
//!   (`order_commands`) after it is replayed; each produced batch is compared
//!   with the stored one, and a difference halts the market (the stored
//!   events are what clearing settled; a book that disagrees must not go
//!   on). Batches missing from `event_batches` are stored and published,
//!   and the newest 10,000 stored batches not yet in `cleared_batches` are published again
//!   (clearing is idempotent). A snapshot is stored every 30 s (or every
//!   100,000 commands) when the book moved and every batch up to it is
//!   stored, and at shutdown; the newest 3 per market are kept. After a
//!   snapshot the market's order stream is trimmed (`XTRIM MINID ~`) below
//!   the last entry that is both consumed and covered by the snapshot.
//! - then an `orderStreamConsumer` loop (exchange-common's consumer
//!   runtime, one per market stream) applies commands: a duplicate
//!   (`seq <= last`) is acknowledged and skipped, a gap is filled from the
//!   journal first, and a command's batch is stored before its entry is
//!   acknowledged (a failed store is retried before new work). Entries are never dead-lettered: the journal is the
//!   source of truth and order matters, so a command that cannot be
//!   processed stops progress (visible in `/ready` and the lag gauges)
//!   rather than being skipped.
//! - `<prefix>:events` is trimmed every `EVENTS_STREAM_TRIM_INTERVAL_SECONDS`
//!   below what every consumer group has passed, and cut to
//!   `EVENTS_STREAM_MAX_LEN` entries when a group lags that far (a dead
//!   replica's); see [`events_trim`].
//! - a halted market shows in `/ready` as a down dependency named
//!   `market <SYMBOL> halted at seq <N>: <reason>`, in
//!   `exchange_market_halted{market}` (the metric the `ExchangeMarketHalted` alert watches), and in
//!   `GET /internal/v1/markets`.

pub mod events_trim;
pub mod market;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use exchange_common::auth::require_internal_token;
use exchange_common::error::Json;
use exchange_common::service::ServiceBase;
use exchange_common::streams::{ConsumerOptions, run_consumer};
use exchange_common::{Config, Shutdown};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::market::{MarketBook, MarketHandler, SharedStatus};

pub const SERVICE: &str = "matching";
pub const MARKETS_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Commands read per stream batch.
pub const COMMAND_BATCH_LEN_MAX: usize = 1_000;
/// A failed entry is retried after this long.
pub const CLAIM_IDLE: Duration = Duration::from_secs(5);
/// How often stored batches whose `XADD` failed are published again.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Pause between recovery attempts while Postgres or Redis is down.
pub const RECOVERY_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The sockets this service serves on (bound by the caller; tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        Ok(Self {
            http: TcpListener::bind(config.matching.http_addr).await?,
        })
    }
}

type Registry = Arc<Mutex<BTreeMap<String, SharedStatus>>>;

#[derive(Clone)]
struct AppState {
    config: Arc<Config>,
    registry: Registry,
}

/// Does this replica own `market`?
pub fn owns(owned: &[String], market: &str) -> bool {
    owned.iter().any(|m| m == "*" || m == market)
}

/// Runs the service until `shutdown` is triggered.
pub async fn run(
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let base = ServiceBase::new(config.clone(), SERVICE)?;
    describe_metrics();
    let registry: Registry = Arc::default();
    let supervisor = tokio::spawn(supervise(base.clone(), registry.clone(), shutdown.clone()));
    tokio::spawn(events_trim::run(
        base.redis.clone(),
        config.matching.events_stream_max_len,
        config.matching.events_stream_trim_interval,
        shutdown.clone(),
    ));
    let state = AppState { config, registry };
    let routes = Router::new()
        .route("/internal/v1/markets", get(markets_status))
        .route_layer(axum::middleware::from_fn_with_state(
            state.config.clone(),
            require_internal_token,
        ))
        .with_state(state);
    let served = base.serve(listeners.http, routes, shutdown.clone()).await;
    // Markets stop between two stream reads; wait for them so that nothing
    // of this instance still consumes once `run` has returned.
    shutdown.trigger();
    if tokio::time::timeout(base.config.shutdown_drain, supervisor)
        .await
        .is_err()
    {
        tracing::warn!("markets did not stop within the drain time");
    }
    served
}

#[derive(Debug, Serialize)]
struct MarketJson {
    last_seq: u64,
    halted: Option<HaltJson>,
}

#[derive(Debug, Serialize)]
struct HaltJson {
    seq: u64,
    reason: String,
}

/// `GET /internal/v1/markets`: every owned market's last applied seq and halt.
async fn markets_status(State(state): State<AppState>) -> Json<BTreeMap<String, MarketJson>> {
    let registry = state.registry.lock().map(|r| r.clone()).unwrap_or_default();
    let out = registry
        .into_iter()
        .map(|(m, s)| {
            let (last_seq, halted) = s
                .lock()
                .map(|s| (s.last_seq, s.halted.clone()))
                .unwrap_or_default();
            (
                m,
                MarketJson {
                    last_seq,
                    halted: halted.map(|h| HaltJson {
                        seq: h.seq,
                        reason: h.reason,
                    }),
                },
            )
        })
        .collect();
    Json(out)
}

async fn supervise(base: ServiceBase, registry: Registry, shutdown: Shutdown) {
    let mut running: BTreeSet<String> = BTreeSet::new();
    let mut tasks = Vec::new();
    while !shutdown.is_triggered() {
        match exchange_store::markets::load_all(&base.db).await {
            Ok(markets) => {
                for (symbol, info) in markets {
                    if running.contains(&symbol) || !owns(&base.config.matching.markets, &symbol) {
                        continue;
                    }
                    running.insert(symbol.clone());
                    exchange_store::transport::describe_forgery_metric(
                        SERVICE,
                        &base.redis.orders_stream(&symbol.to_string()),
                    );
                    let status = SharedStatus::default();
                    if let Ok(mut r) = registry.lock() {
                        r.insert(symbol.clone(), status.clone());
                    }
                    tasks.push(tokio::spawn(run_market(
                        base.clone(),
                        MarketBook::new(info.spec, status),
                        shutdown.clone(),
                    )));
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot load markets"),
        }
        tokio::select! {
            () = tokio::time::sleep(MARKETS_REFRESH_INTERVAL) => {}
            () = shutdown.wait() => {}
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn run_market(base: ServiceBase, mut market: MarketBook, shutdown: Shutdown) {
    let symbol = market.symbol.to_string();
    // Recover before consuming; retry while a dependency is down.
    loop {
        if shutdown.is_triggered() {
            return;
        }
        match market.recover(&base.db, &base.redis).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(market = %symbol, error = format!("{e:#}"), "recovery failed, retrying");
                tokio::select! {
                    () = tokio::time::sleep(RECOVERY_RETRY_DELAY) => {}
                    () = shutdown.wait() => return,
                }
            }
        }
    }
    let market_shutdown = Shutdown::new();
    {
        let (global, local) = (shutdown.clone(), market_shutdown.clone());
        tokio::spawn(async move {
            global.wait().await;
            local.trigger();
        });
    }
    let status = market.status.clone();
    if market.halted().is_none() {
        let config = &base.config;
        let mut opts = ConsumerOptions::new(
            "orderStreamConsumer",
            &base.redis.orders_stream(&symbol),
            &config.matching.consumer.group,
            &config.matching.consumer.name,
        );
        opts.batch_len_max = COMMAND_BATCH_LEN_MAX;
        opts.deliveries_max = None;
        opts.claim_idle = CLAIM_IDLE;
        opts.claim_interval = Duration::from_secs(1);
        let market = Arc::new(tokio::sync::Mutex::new(market));
        // On the service's shutdown, not the market's: a market that halts
        // may still hold batches of commands applied before the halt, and
        // they must still be stored and published.
        tokio::spawn(flush_unpublished(
            market.clone(),
            base.db.clone(),
            base.redis.clone(),
            shutdown.clone(),
        ));
        let final_market = market.clone();
        let handler = MarketHandler {
            market,
            db: base.db.clone(),
            redis: base.redis.clone(),
            on_halt: market_shutdown.clone(),
        };
        run_consumer(
            base.redis.clone(),
            base.heartbeats().clone(),
            opts,
            handler,
            market_shutdown,
        )
        .await;
        // A last snapshot, so the next start replays little.
        if let Err(e) = final_market
            .lock()
            .await
            .maybe_snapshot(&base.db, &base.redis, true)
            .await
        {
            tracing::warn!(market = %symbol, error = format!("{e:#}"), "snapshot at shutdown failed");
        }
    }
    let halted = status.lock().ok().and_then(|s| s.halted.clone());
    if let Some(h) = halted {
        // Never beaten: /ready shows it down, with the reason in its name.
        let name = format!("market {symbol} halted at seq {}: {}", h.seq, h.reason);
        base.heartbeats()
            .register(&name, "engine", Duration::ZERO)
            .down("halted");
    }
}

/// Stores and publishes batches whose `INSERT` or `XADD` failed, even when
/// no new command arrives to trigger it, and takes due snapshots. Runs until
/// the service stops, or, once the market has halted, until nothing is left
/// to store or publish.
async fn flush_unpublished(
    market: Arc<tokio::sync::Mutex<MarketBook>>,
    db: sqlx::PgPool,
    redis: exchange_common::redis::Redis,
    shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(FLUSH_INTERVAL) => {}
            () = shutdown.wait() => return,
        }
        let mut market = market.lock().await;
        if let Err(e) = market.flush(&db, &redis).await {
            tracing::warn!(market = %market.symbol, error = format!("{e:#}"), "publishing events failed; will retry");
        }
        if market.halted().is_some() {
            if market.flushed() {
                tracing::info!(market = %market.symbol, "halted market: every batch before the halt is stored and published");
                return;
            }
            continue;
        }
        if let Err(e) = market.maybe_snapshot(&db, &redis, false).await {
            tracing::warn!(market = %market.symbol, error = format!("{e:#}"), "snapshot failed; will retry");
        }
    }
}

/// Describes this service's metrics (help text for `/metrics`).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    // `exchange_market_halted{market}` (1 when the engine stopped: replay
    // mismatch, engine failure, journal gap) is described with the contract
    // metrics in exchange_common::telemetry.
    describe_gauge!(
        "exchange_matching_last_seq",
        "Last command sequence number applied per market"
    );
    describe_counter!(
        "exchange_matching_commands_total",
        "Commands applied and their event batches stored"
    );
    describe_counter!(
        "exchange_matching_duplicates_total",
        "Order stream entries skipped because their seq was already applied"
    );
    describe_counter!(
        "exchange_matching_gap_filled_total",
        "Commands read from the journal to fill a sequence gap"
    );
    describe_counter!(
        "exchange_matching_replay_mismatch_total",
        "Replays whose events differed from the stored batch (the market halts)"
    );
    describe_gauge!(
        "exchange_events_stream_length",
        "Entries in the events stream after the last trim"
    );
    describe_gauge!(
        "exchange_events_stream_stale_groups",
        "Consumer groups of the events stream that the last trim cut past (they lag more than EVENTS_STREAM_MAX_LEN)"
    );
    describe_counter!(
        "exchange_events_stream_trimmed_total",
        "Entries deleted from the events stream by trimming"
    );
    describe_counter!(
        "exchange_events_stream_stale_group_trims_total",
        "Trims that cut the events stream past entries this group had not passed"
    );
    describe_counter!(
        "exchange_matching_snapshot_rejected_total",
        "Stored snapshots skipped at recovery (unreadable or wrong seq or state hash)"
    );
}
