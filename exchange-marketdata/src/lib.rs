//! The marketdata service: depth, trades, klines and 24h tickers over HTTP
//! (`/api/v1/markets/{symbol}/depth|trades|klines|ticker`, the same paths
//! the gateway proxies) and the public WebSocket `/ws`, which also serves
//! Binance-style market streams (`/ws/<stream>`, `/stream?streams=`, live
//! `SUBSCRIBE`; see [`render::binance`]).
//!
//! It consumes `<prefix>:events` in its **own consumer group per replica**
//! (`MARKETDATA_CONSUMER_GROUP`, which every replica must set to a unique
//! value, e.g. `marketdata-$HOSTNAME`): fan-out, so every replica sees every
//! batch. Replicas sharing a group would each see part of the stream; they
//! stay correct (every gap is filled from Postgres) but slow. A retired
//! replica's group should be destroyed (`XGROUP DESTROY`) so it does not hold
//! back stream trimming. A new group starts at `$`: history comes from
//! Postgres, not from the stream.
//!
//! Invariants: per market, batches are applied strictly in `seq` order
//! (duplicates skipped, gaps filled from `event_batches`), so the depth book
//! is exactly the engine's book at the last applied `seq` and WebSocket
//! depth deltas carry consecutive `seq`. Candles in Postgres only move
//! forward in `last_seq`, and reach Postgres within about
//! [`KLINE_WRITE_INTERVAL`] of the batch that changed them. No WebSocket
//! client can slow the consumer or another client: queues are bounded and
//! never awaited.
//!
//! Modules, each built only on those before it:
//! - [`kline`]: intervals and candles; [`state`]: one market's pure state
//!   (depth, trades, candles, ticker), applied batch by batch;
//! - [`render`]: the state in its two wire formats, side by side:
//!   [`render::native`] and [`render::binance`];
//! - [`channel`]: what a connection subscribes to; [`outbox`]: one
//!   connection's bounded send queue; [`fanout`]: a market's state with its
//!   subscribers, publishing each applied batch;
//! - [`store`]: the Postgres statements; [`registry`]: every market, loaded
//!   on first use and kept live by the consumer;
//! - [`ws`] and [`rest`]: the handlers; this file: the consumer and `run`.

pub mod channel;
pub mod fanout;
pub mod kline;
pub mod limits;
pub mod outbox;
pub mod registry;
pub mod render;
pub mod rest;
pub mod state;
pub mod store;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use exchange_common::service::ServiceBase;
use exchange_common::streams::{ConsumerOptions, Handler, StreamEntry, ensure_group, run_consumer};
use exchange_common::{Config, Shutdown};
use exchange_domain::event::EventBatch;
use tokio::net::TcpListener;

use crate::registry::MarketRegistry;
use crate::store::{Dirty, KLINE_WRITE_ROWS_MAX, restore_unwritten};
use crate::ws::{App, Origins};
use exchange_store::transport::note_forgery;

pub const SERVICE: &str = "marketdata";
/// The loop name `/ready` reports.
pub const CONSUMER_LOOP: &str = "eventStreamConsumer";
/// The stream field that carries an [`EventBatch`] as JSON.
pub const BATCH_FIELD: &str = "batch";
/// Pause between start-up attempts while Postgres or Redis is down.
pub const STARTUP_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a changed candle may wait before it is written. Writing after
/// every stream read was one upsert and commit (an fsync) per read — ~175/s
/// under the order bench; batching bounds it to about 5/s while REST `/klines`
/// (read from Postgres) still lags live candles by at most this much.
/// Candles are derived data: ones lost in a crash are rewritten at the next
/// start by the replay.
pub const KLINE_WRITE_INTERVAL: Duration = Duration::from_millis(200);

/// The sockets this service serves on (bound by the caller; tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        Ok(Self {
            http: TcpListener::bind(config.marketdata.http_addr).await?,
        })
    }
}

/// The market-data routes (REST and `/ws`), without the service skeleton.
pub fn routes(app: App) -> Router {
    let budget = axum::middleware::from_fn_with_state(app.limits.clone(), limits::rest_per_ip);
    Router::new()
        .route("/api/v1/markets/{symbol}/depth", get(rest::depth))
        .route("/api/v1/markets/{symbol}/trades", get(rest::trades))
        .route("/api/v1/markets/{symbol}/klines", get(rest::klines))
        .route("/api/v1/markets/{symbol}/ticker", get(rest::ticker))
        .route_layer(budget)
        .route("/ws", get(ws::ws_handler))
        .route("/ws/{*streams}", get(ws::bn_raw_handler))
        .route("/stream", get(ws::bn_combined_handler))
        .with_state(app)
}

fn describe_metrics() {
    // The contract name (exchange-common describes it); set to 0 at start so
    // dashboards and alerts see the series before the first connection.
    metrics::gauge!("exchange_ws_connections", "service" => "marketdata", "kind" => "public")
        .set(0.0);
    metrics::describe_counter!(
        "marketdata_ws_messages_total",
        "Messages queued to public WebSocket connections"
    );
    metrics::describe_counter!(
        "marketdata_ws_slow_disconnects_total",
        "WebSocket connections closed because their send queue was still full after depth conflation"
    );
    metrics::describe_counter!(
        "marketdata_ws_conflated_total",
        "Depth deltas merged into an earlier queued one for a slow WebSocket connection"
    );
    metrics::describe_counter!(
        "exchange_rate_limit_table_full_total",
        "Requests from a client served untracked because the per-IP budget table was full"
    );
    metrics::describe_counter!(
        "marketdata_ws_origin_refused_total",
        "WebSocket handshakes refused for their Origin"
    );
    metrics::describe_counter!(
        exchange_common::listen::REFUSED_METRIC,
        "Connections refused or cut by an abuse limit, by service and reason (per_ip_cap, header_timeout, idle_timeout, ws_per_ip_cap, ws_message_rate)"
    );
    metrics::describe_counter!(
        "marketdata_gap_fills_total",
        "Gaps in the event stream filled from Postgres"
    );
}

/// Runs the service until `shutdown` is triggered.
pub async fn run(
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    // Klines may come from DB_READ_URL's replica.
    let base = ServiceBase::new(config.clone(), SERVICE)?.with_read_replica(&shutdown)?;
    describe_metrics();
    exchange_store::transport::describe_forgery_metric(SERVICE, &base.redis.events_stream());
    let markets = Arc::new(MarketRegistry::new(base.db.clone()));
    let app = App::new(
        markets.clone(),
        Origins::new(&config.marketdata.ws_allow_origins),
        shutdown.clone(),
    )
    .with_limits(limits::Limits::from_config(&config))
    .with_reads(base.reads.clone());
    let consumer = tokio::spawn(consume(base.clone(), markets, shutdown.clone()));
    let served = base
        .serve_public(listeners.http, routes(app), shutdown)
        .await;
    // Let the consumer finish its read and the candle writer its final
    // write; bounded, since a start-up replay is not interrupted (whatever
    // is not written then is rewritten by the next start's replay).
    if tokio::time::timeout(config.shutdown_drain, consumer)
        .await
        .is_err()
    {
        tracing::warn!(
            "consumer still busy at shutdown; unwritten candles are rebuilt at next start"
        );
    }
    served
}

async fn retry_pause(shutdown: &Shutdown) {
    tokio::select! {
        () = tokio::time::sleep(STARTUP_RETRY_DELAY) => {}
        () = shutdown.wait() => {}
    }
}

/// Creates the group, rebuilds every market from Postgres, then follows the stream.
async fn consume(base: ServiceBase, markets: Arc<MarketRegistry>, shutdown: Shutdown) {
    let stream = base.redis.events_stream();
    let ident = &base.config.marketdata.consumer;
    let mut opts = ConsumerOptions::new(CONSUMER_LOOP, &stream, &ident.group, &ident.name);
    opts.start_id = "$".to_owned();
    // Down in /ready until the loop's first beat.
    base.heartbeats()
        .register(CONSUMER_LOOP, &stream, opts.stale_after);
    // The group first: whatever is published from now on is delivered, so
    // nothing falls between the rebuild and the first read.
    while !shutdown.is_triggered() {
        match ensure_group(&base.redis, &stream, &opts.group, &opts.start_id).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create consumer group, retrying");
                retry_pause(&shutdown).await;
            }
        }
    }
    while !shutdown.is_triggered() {
        match markets.load_all().await {
            Ok(n) => {
                tracing::info!(markets = n, "markets rebuilt from postgres");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot load markets, retrying");
                retry_pause(&shutdown).await;
            }
        }
    }
    let dirty = Arc::new(tokio::sync::Mutex::new(Dirty::new()));
    let writer = tokio::spawn(write_klines_every(
        markets.clone(),
        dirty.clone(),
        KLINE_WRITE_INTERVAL,
        shutdown.clone(),
    ));
    let handler = EventsHandler {
        markets: markets.clone(),
        dirty: dirty.clone(),
        db: base.db.clone(),
        stream: stream.clone(),
    };
    run_consumer(
        base.redis.clone(),
        base.heartbeats().clone(),
        opts,
        handler,
        shutdown,
    )
    .await;
    let _ = writer.await;
    // The consumer's last read may have ended after the writer's final write.
    write_dirty(&markets, &dirty).await;
}

/// Writes the changed candles every `interval`, and once more when
/// `shutdown` is triggered.
async fn write_klines_every(
    markets: Arc<MarketRegistry>,
    dirty: Arc<tokio::sync::Mutex<Dirty>>,
    interval: Duration,
    shutdown: Shutdown,
) {
    let mut ticks = tokio::time::interval(interval);
    // After a slow write, wait a whole interval rather than catch up with a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => write_dirty(&markets, &dirty).await,
            () = shutdown.wait() => break,
        }
    }
    write_dirty(&markets, &dirty).await;
}

/// Writes the changed candles. They are taken out of the shared set first so
/// the consumer never waits on Postgres for them; a failed write puts back
/// what was not written, to be retried on the next write.
async fn write_dirty(markets: &MarketRegistry, dirty: &tokio::sync::Mutex<Dirty>) {
    let mut pending = std::mem::take(&mut *dirty.lock().await);
    if pending.is_empty() {
        return;
    }
    if let Err(e) = markets.write_klines(&mut pending).await {
        let mut dirty = dirty.lock().await;
        restore_unwritten(&mut dirty, pending);
        tracing::warn!(error = %e, pending = dirty.len(), "kline write failed, will retry");
    }
}

/// Applies each batch (in stream order) and notes the candles it touched;
/// a background task writes them every [`KLINE_WRITE_INTERVAL`], the
/// handler itself once [`KLINE_WRITE_ROWS_MAX`] are waiting. What is applied
/// is the stored batch each entry names, never the entry itself (see
/// [`exchange_store::transport`]).
pub struct EventsHandler {
    markets: Arc<MarketRegistry>,
    dirty: Arc<tokio::sync::Mutex<Dirty>>,
    db: sqlx::PgPool,
    stream: String,
}

impl Handler for EventsHandler {
    async fn handle(&self, entries: &[StreamEntry]) -> Vec<Result<(), String>> {
        let claimed: Vec<Result<EventBatch, String>> = entries
            .iter()
            .map(|entry| match entry.field_str(BATCH_FIELD) {
                None => Err(format!("entry has no {BATCH_FIELD:?} text field")),
                Some(text) => serde_json::from_str::<EventBatch>(text)
                    .map_err(|e| format!("unreadable event batch: {e}")),
            })
            .collect();
        let keys: Vec<_> = claimed
            .iter()
            .flatten()
            .map(|b| (b.market, b.seq))
            .collect();
        let stored = match exchange_store::transport::stored_batches(&self.db, &keys).await {
            Ok(s) => s,
            Err(e) => {
                // Redelivered later; a batch that never comes is a gap,
                // filled from Postgres by the next one.
                let e = format!("cannot read the stored batches: {e}");
                return vec![Err(e); entries.len()];
            }
        };
        let mut dirty = self.dirty.lock().await;
        let mut out = Vec::with_capacity(entries.len());
        for (entry, claim) in entries.iter().zip(claimed) {
            let result = match claim.and_then(|b| Ok((stored.verdict(&b)?, b))) {
                Err(e) => Err(e),
                Ok((verdict, batch)) => {
                    if let Some(kind) = verdict.forgery() {
                        note_forgery(
                            SERVICE,
                            &self.stream,
                            &entry.id,
                            kind,
                            &batch.market.to_string(),
                            batch.seq,
                        );
                    }
                    match verdict.into_stored() {
                        None => Ok(()),
                        Some(real) => self
                            .markets
                            .apply_live(&real, &mut dirty)
                            .await
                            .map_err(|e| e.to_string()),
                    }
                }
            };
            out.push(result);
        }
        // Candles are derived data: a failed write stays dirty and is
        // retried; the entries themselves are done.
        let full = dirty.len() >= KLINE_WRITE_ROWS_MAX;
        drop(dirty);
        if full {
            write_dirty(&self.markets, &self.dirty).await;
        }
        out
    }
}
