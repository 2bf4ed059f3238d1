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
pub mod lease;
pub mod market;
pub mod store;

use std::collections::BTreeMap;
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

use crate::lease::{Lease, Leases};
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

/// The markets this replica holds, and the task matching each.
struct Held {
    lease: Arc<Lease>,
    task: tokio::task::JoinHandle<()>,
    /// `/ready`'s `owns <MARKET>` entry: up while the lease is valid.
    owns: exchange_common::ready::Heartbeat,
    /// Taken because nobody else did (see [`take_free`]): never handed
    /// over to spread markets, since nobody else may want it.
    orphan: bool,
}

/// The lease loop: takes free leases up to this replica's fair share,
/// hands the excess over, and starts and stops the markets accordingly,
/// while [`renew_leases`] keeps the held ones. Wakes every [`Leases::tick`],
/// at once when a market is created or changed or another replica releases
/// one, and stops on `shutdown` after handing every lease over.
async fn supervise(base: ServiceBase, registry: Registry, shutdown: Shutdown) {
    let config = &base.config.matching;
    let leases = Leases::new(base.db.clone(), &config.consumer.name, config.lease);
    tracing::info!(owner = %leases.owner, lease_ms = config.lease.as_millis(), "matching replica started");
    let woken = exchange_store::markets::spawn_listener(
        base.db.clone(),
        &[
            exchange_store::markets::MARKETS_CHANGED_CHANNEL,
            lease::RELEASED_CHANNEL,
        ],
        shutdown.clone(),
    );
    let renewing: LeaseSet = Arc::default();
    // Counted once before the first turn, so that a replica starting beside
    // others takes only its share.
    let alive = leases.replicas_alive().await.unwrap_or(1);
    let replicas = Arc::new(std::sync::atomic::AtomicU64::new(alive));
    let renewer = tokio::spawn(renew_leases(
        leases.clone(),
        renewing.clone(),
        replicas.clone(),
        base.heartbeats()
            .register("leaseLoop", "matching_leases", config.lease),
        shutdown.clone(),
    ));
    let mut held: BTreeMap<String, Held> = BTreeMap::new();
    let mut markets: BTreeMap<String, exchange_store::markets::MarketInfo> = BTreeMap::new();
    let mut markets_loaded: Option<std::time::Instant> = None;
    // Since when each wanted market has been seen without a live lease.
    let mut free_since: BTreeMap<String, std::time::Instant> = BTreeMap::new();
    while !shutdown.is_triggered() {
        reap(&base, &leases, &registry, &renewing, &mut held).await;
        let reload_due = markets_loaded.is_none_or(|t| t.elapsed() >= MARKETS_REFRESH_INTERVAL);
        if reload_due {
            let loaded = tokio::time::timeout(
                leases.call_timeout(),
                exchange_store::markets::load_all(&base.db),
            )
            .await;
            match loaded {
                Ok(Ok(all)) => {
                    markets = all
                        .into_iter()
                        .filter(|(m, _)| owns(&config.markets, m))
                        .collect();
                    markets_loaded = Some(std::time::Instant::now());
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot load markets"),
                Err(_) => tracing::warn!("loading markets timed out"),
            }
        }
        let replicas = replicas.load(std::sync::atomic::Ordering::Relaxed);
        let share = lease::fair_share(markets.len(), replicas);
        let running = held
            .values()
            .filter(|h| !h.lease.stop.is_triggered())
            .count();
        if running > share {
            // Hand one over per turn (the newest-named): it snapshots,
            // stops, and its lease is released when the task has ended.
            if let Some((market, h)) = held
                .iter()
                .rev()
                .find(|(_, h)| !h.orphan && !h.lease.stop.is_triggered() && !h.task.is_finished())
            {
                tracing::info!(
                    market,
                    replicas,
                    share,
                    "handing a market over to spread markets across replicas"
                );
                h.lease.stop.trigger();
            }
        }
        take_free(
            &base,
            &leases,
            &registry,
            &markets,
            share.saturating_sub(running),
            Holdings {
                held: &mut held,
                renewing: &renewing,
                free_since: &mut free_since,
            },
            &shutdown,
        )
        .await;
        publish_ownership(&held, markets.len(), replicas);
        tokio::select! {
            () = tokio::time::sleep(leases.tick()) => {}
            () = woken.notified() => {
                // A market was created or changed, or a lease released.
                markets_loaded = None;
            }
            () = shutdown.wait() => {}
        }
    }
    // Shutdown: every market stops (snapshot included), then its lease is
    // released so that a standby takes it at once.
    for h in held.values() {
        h.lease.stop.trigger();
    }
    for h in std::mem::take(&mut held).into_values() {
        let _ = h.task.await;
        let_go(&leases, &renewing, &h.lease).await;
    }
    let _ = renewer.await;
    if let Err(e) = leases.leave().await {
        tracing::warn!(error = format!("{e:#}"), "leaving the replica list failed");
    }
}

/// What the lease loop keeps of this replica's markets.
struct Holdings<'a> {
    held: &'a mut BTreeMap<String, Held>,
    /// The held leases, for the renewal task.
    renewing: &'a LeaseSet,
    /// Since when each wanted market has been seen without a live lease.
    free_since: &'a mut BTreeMap<String, std::time::Instant>,
}

/// The leases the renewal task keeps alive (every held one, stopping ones
/// included, until released).
type LeaseSet = Arc<Mutex<BTreeMap<String, Arc<Lease>>>>;

/// Renews every held lease and this replica's liveness each tick, in a
/// task of its own so that nothing the lease loop does (loading markets,
/// acquiring, releasing) delays a renewal. A lease that was taken over, or
/// not renewed in time, stops its market.
async fn renew_leases(
    leases: Leases,
    renewing: LeaseSet,
    replicas: Arc<std::sync::atomic::AtomicU64>,
    beat: exchange_common::ready::Heartbeat,
    shutdown: Shutdown,
) {
    while !shutdown.is_triggered() {
        let current: Vec<Arc<Lease>> = renewing
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        let refs: Vec<&Lease> = current.iter().map(AsRef::as_ref).collect();
        match leases.renew(&refs).await {
            Ok(renewed) => {
                for lease in &current {
                    if !renewed.contains(&lease.market) && !lease.stop.is_triggered() {
                        tracing::warn!(
                            market = %lease.market,
                            epoch = lease.epoch,
                            "lease taken over by another replica: stopping the market here"
                        );
                        metrics::counter!("exchange_matching_leases_lost_total", "market" => lease.market.clone())
                            .increment(1);
                        lease.stop.trigger();
                    }
                }
                beat.beat();
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "renewing leases failed"),
        }
        // A lease not renewed in time is as good as lost: stop applying.
        for lease in &current {
            if !lease.is_valid() {
                lease.stop.trigger();
            }
        }
        match leases.replicas_alive().await {
            Ok(n) => replicas.store(n, std::sync::atomic::Ordering::Relaxed),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "replica heartbeat failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(leases.tick()) => {}
            () = shutdown.wait() => {}
        }
    }
}

/// Takes up to `room` markets whose leases are free or expired, and any
/// market left free for longer than a lease whatever the room (no other
/// replica wants it: e.g. replicas with different `MATCHING_MARKETS`).
async fn take_free(
    base: &ServiceBase,
    leases: &Leases,
    registry: &Registry,
    markets: &BTreeMap<String, exchange_store::markets::MarketInfo>,
    room: usize,
    holdings: Holdings<'_>,
    shutdown: &Shutdown,
) {
    let Holdings {
        held,
        renewing,
        free_since,
    } = holdings;
    let holders = match leases.holders().await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "cannot list leases");
            return;
        }
    };
    let mut taken = 0;
    free_since.retain(|m, _| markets.contains_key(m));
    for (symbol, info) in markets {
        let holder = holders.get(symbol);
        if holder.is_some_and(|h| h.live) {
            free_since.remove(symbol);
        }
        let ours_before =
            |h: &lease::Holder| leases.reclaims() && lease::name_of(&h.owner) == leases.name();
        if held.contains_key(symbol) || holder.is_some_and(|h| h.live && !ours_before(h)) {
            continue;
        }
        // Free (no lease yet, or expired) for a whole lease by this
        // replica's clock: nobody with room wants it.
        let since = *free_since
            .entry(symbol.clone())
            .or_insert_with(std::time::Instant::now);
        let orphan = since.elapsed() >= leases.duration;
        if taken >= room && !orphan {
            continue;
        }
        let lease = match leases.acquire(symbol).await {
            Ok(Some(l)) => Arc::new(l),
            Ok(None) => continue, // another replica was faster
            Err(e) => {
                tracing::warn!(market = %symbol, error = format!("{e:#}"), "acquiring the lease failed");
                continue;
            }
        };
        let from = holders.get(symbol).map(|h| h.owner.as_str());
        tracing::info!(market = %symbol, epoch = lease.epoch, previous_owner = from, "lease acquired: starting the market");
        if from.is_some() {
            metrics::counter!("exchange_matching_takeovers_total", "market" => symbol.clone())
                .increment(1);
        }
        taken += 1;
        exchange_store::transport::describe_forgery_metric(
            SERVICE,
            &base.redis.orders_stream(symbol),
        );
        let status = SharedStatus::default();
        if let Ok(mut r) = registry.lock() {
            r.insert(symbol.clone(), status.clone());
        }
        // The market stops with the service, or alone when its lease goes.
        {
            let (global, local) = (shutdown.clone(), lease.stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = global.wait() => local.trigger(),
                    () = local.wait() => {}
                }
            });
        }
        let task = tokio::spawn(run_market(
            base.clone(),
            MarketBook::new(info.spec, status, lease.clone()),
        ));
        free_since.remove(symbol);
        if let Ok(mut r) = renewing.lock() {
            r.insert(symbol.clone(), lease.clone());
        }
        let owns =
            base.heartbeats()
                .register(&owns_loop(symbol), "matching_leases", leases.duration);
        owns.beat();
        held.insert(
            symbol.clone(),
            Held {
                lease,
                task,
                owns,
                orphan,
            },
        );
    }
}

/// Forgets markets whose task has ended: a halted market keeps its lease
/// (another replica would only halt on the same journal), any other
/// releases it unless it was taken over.
async fn reap(
    base: &ServiceBase,
    leases: &Leases,
    registry: &Registry,
    renewing: &LeaseSet,
    held: &mut BTreeMap<String, Held>,
) {
    let ended: Vec<String> = held
        .iter()
        .filter(|(_, h)| h.task.is_finished())
        .map(|(m, _)| m.clone())
        .collect();
    for market in ended {
        let halted = registry
            .lock()
            .ok()
            .and_then(|r| r.get(&market).cloned())
            .is_some_and(|s| s.lock().is_ok_and(|s| s.halted.is_some()));
        // A halted market stays here while its lease does.
        if halted
            && held
                .get(&market)
                .is_some_and(|h| !h.lease.stop.is_triggered())
        {
            continue;
        }
        let Some(h) = held.remove(&market) else {
            continue;
        };
        // Handed over or stopping: release at once (a no-op when the
        // lease was taken over meanwhile).
        let_go(leases, renewing, &h.lease).await;
        if let Ok(mut r) = registry.lock() {
            r.remove(&market);
        }
        base.heartbeats()
            .remove(&owns_loop(&market), "matching_leases");
        metrics::gauge!("exchange_matching_market_owned", "market" => market.clone()).set(0.0);
        tracing::info!(market, epoch = h.lease.epoch, "market stopped here");
    }
}

/// Stops renewing `lease` and releases it, so that a standby takes the
/// market at once; a failed release only means the lease expires on its own.
async fn let_go(leases: &Leases, renewing: &LeaseSet, lease: &Lease) {
    if let Ok(mut r) = renewing.lock() {
        r.remove(&lease.market);
    }
    if let Err(e) = leases.release(lease).await {
        tracing::warn!(
            market = %lease.market,
            error = format!("{e:#}"),
            "releasing the lease failed; it expires on its own"
        );
    }
}

fn owns_loop(market: &str) -> String {
    format!("owns {market}")
}

/// Who owns what, for `/ready` (an `owns <MARKET>` entry per held market,
/// up while its lease is valid) and `/metrics`.
fn publish_ownership(held: &BTreeMap<String, Held>, markets: usize, replicas: u64) {
    for (market, h) in held {
        if h.lease.is_valid() {
            h.owns.beat();
        }
        metrics::gauge!("exchange_matching_market_owned", "market" => market.clone()).set(1.0);
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("exchange_matching_lease_epoch", "market" => market.clone())
            .set(h.lease.epoch as f64);
    }
    #[allow(clippy::cast_precision_loss)]
    {
        metrics::gauge!("exchange_matching_replicas_alive").set(replicas as f64);
        metrics::gauge!("exchange_matching_markets_held").set(held.len() as f64);
        metrics::gauge!("exchange_matching_markets").set(markets as f64);
    }
}

async fn run_market(base: ServiceBase, mut market: MarketBook) {
    let symbol = market.symbol.to_string();
    let stop = market.lease.stop.clone();
    // Recover before consuming; retry while a dependency is down.
    loop {
        if stop.is_triggered() {
            return;
        }
        match market.recover(&base.db, &base.redis).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(market = %symbol, error = format!("{e:#}"), "recovery failed, retrying");
                tokio::select! {
                    () = tokio::time::sleep(RECOVERY_RETRY_DELAY) => {}
                    () = stop.wait() => return,
                }
            }
        }
    }
    let market_shutdown = Shutdown::new();
    {
        let (stop, local) = (stop.clone(), market_shutdown.clone());
        tokio::spawn(async move {
            stop.wait().await;
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
        // The market may move to another replica while this one goes on.
        opts.forget_on_stop = true;
        let market = Arc::new(tokio::sync::Mutex::new(market));
        // On the lease's stop, not the market's: a market that halts may
        // still hold batches of commands applied before the halt, and they
        // must still be stored and published.
        let flusher = tokio::spawn(flush_unpublished(
            market.clone(),
            base.db.clone(),
            base.redis.clone(),
            stop.clone(),
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
        let mut final_market = final_market.lock().await;
        if final_market.halted().is_none() {
            flusher.abort();
            // A last snapshot, so the next owner replays little (refused,
            // harmlessly, when the lease was taken over).
            if let Err(e) = final_market
                .maybe_snapshot(&base.db, &base.redis, true)
                .await
            {
                tracing::warn!(market = %symbol, error = format!("{e:#}"), "snapshot at stop failed");
            }
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
    describe_gauge!(
        "exchange_matching_market_owned",
        "1 while this replica holds the market's lease (it matches the market), 0 after it gave it up"
    );
    describe_gauge!(
        "exchange_matching_lease_epoch",
        "Epoch of this replica's lease on the market (bumped at every takeover)"
    );
    describe_counter!(
        "exchange_matching_leases_lost_total",
        "Leases this replica lost to another (not renewed in time, or taken over)"
    );
    describe_counter!(
        "exchange_matching_takeovers_total",
        "Markets this replica took from another replica's expired or reclaimed lease"
    );
    describe_gauge!(
        "exchange_matching_replicas_alive",
        "Matching replicas seen alive (distinct names), this one included"
    );
    describe_gauge!(
        "exchange_matching_markets_held",
        "Markets whose lease this replica holds"
    );
    describe_gauge!(
        "exchange_matching_markets",
        "Markets this replica may match (MATCHING_MARKETS among the markets in the database)"
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
