//! `eventStreamConsumer`: reads event batches from `<prefix>:events` in
//! bounded batches and settles all of one read in **one** transaction.
//!
//! - A transient database error (unreachable, deadlock) is retried here
//!   until it passes or the service shuts down: the entries are neither
//!   acked nor counted as failed, so an outage never dead-letters money.
//! - Any other error of a multi-batch transaction makes each batch settle
//!   on its own, so one bad batch cannot hold back the others.
//! - A batch that still fails stays pending and is redelivered; on its last
//!   allowed delivery (when the runtime dead-letters it) its market is
//!   halted: recorded in `clearing_halts`, `/ready` shows `market:<M>` down,
//!   `exchange_market_halted{market}` is 1, an error is logged, and later
//!   batches of that market are refused until an operator deletes the halt
//!   row (after fixing the cause and replaying the DLQ in seq order).
//! - After commit: private events on Redis Pub/Sub, then the runtime acks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exchange_common::Shutdown;
use exchange_common::ready::{Heartbeat, Heartbeats};
use exchange_common::redis::Redis;
use exchange_common::streams::{Handler, StreamEntry};
use exchange_domain::EventBatch;
use sqlx::{PgPool, Row as _};

use crate::plan::MarketAssets;
use crate::private::{self, PrivateEvent};
use crate::store::{self, SettleError, Settled};
use exchange_store::transport::note_forgery;

/// The stream field that carries the JSON batch.
pub const BATCH_FIELD: &str = "batch";
/// Publishes per Redis pipeline round trip.
pub const PUBLISH_PIPELINE_LEN_MAX: usize = 1_024;
/// Events in one private message: well under a gateway connection's send
/// queue (256), which takes a message whole or drops the connection.
pub const PRIVATE_EVENTS_PER_MESSAGE_MAX: usize = 64;
/// Rows of `event_batches` one catch-up query walks.
const CATCH_UP_PAGE_LEN: i64 = 10_000;
/// Backoff bounds while the database is unreachable.
const RETRY_DELAY_MIN: Duration = Duration::from_millis(50);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Halt {
    pub seq: u64,
    pub error: String,
}

/// The settlement side of the clearing service; shared by the stream
/// handler, the scheduled jobs and tests.
pub struct Clearing {
    db: PgPool,
    redis: Redis,
    heartbeats: Heartbeats,
    /// The runtime's dead-letter threshold, to know when a failure is final.
    deliveries_max: Option<u64>,
    shutdown: Shutdown,
    markets: Mutex<Arc<BTreeMap<String, MarketAssets>>>,
    halts: Mutex<BTreeMap<String, (Halt, Heartbeat)>>,
    /// Failed catch-up attempts per batch, to halt like the stream path does.
    catch_up_failures: Mutex<BTreeMap<(String, u64), u64>>,
    /// Per market: every stored batch up to this seq is cleared. `None`
    /// until the first catch-up loads `clearing_watermarks`; stored when
    /// raised.
    watermarks: Mutex<Option<BTreeMap<String, i64>>>,
}

/// Stores catch-up watermarks (`markets[i]` cleared up to `seqs[i]`),
/// never lowering one: another replica may already have gone further.
pub async fn store_watermarks(
    db: &PgPool,
    markets: &[String],
    seqs: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO clearing_watermarks (market, seq)
         SELECT * FROM unnest($1::text[], $2::bigint[])
         ON CONFLICT (market) DO UPDATE
         SET seq = GREATEST(clearing_watermarks.seq, EXCLUDED.seq), updated_at = now()",
    )
    .bind(markets)
    .bind(seqs)
    .execute(db)
    .await?;
    Ok(())
}

impl std::fmt::Debug for Clearing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clearing").finish_non_exhaustive()
    }
}

/// The outcome of one handler call, for callers that drive it by hand.
#[derive(Debug, Default, Clone)]
pub struct HandleOutcome {
    pub results: Vec<Result<(), String>>,
    pub settled: Settled,
}

impl Clearing {
    pub fn new(
        db: PgPool,
        redis: Redis,
        heartbeats: Heartbeats,
        deliveries_max: Option<u64>,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            db,
            redis,
            heartbeats,
            deliveries_max,
            shutdown,
            markets: Mutex::new(Arc::new(BTreeMap::new())),
            halts: Mutex::new(BTreeMap::new()),
            catch_up_failures: Mutex::new(BTreeMap::new()),
            watermarks: Mutex::new(None),
        }
    }

    pub fn db(&self) -> &PgPool {
        &self.db
    }

    fn markets(&self) -> Arc<BTreeMap<String, MarketAssets>> {
        self.markets
            .lock()
            .map(|m| Arc::clone(&m))
            .unwrap_or_default()
    }

    /// Reloads the market → assets cache.
    pub async fn refresh_markets(&self) -> Result<(), sqlx::Error> {
        let fresh = store::load_markets(&self.db).await?;
        for market in fresh.keys() {
            let halted = self.is_halted(market);
            metrics::gauge!("exchange_market_halted", "market" => market.clone()).set(if halted {
                1.0
            } else {
                0.0
            });
        }
        if let Ok(mut m) = self.markets.lock() {
            *m = Arc::new(fresh);
        }
        Ok(())
    }

    pub fn is_halted(&self, market: &str) -> bool {
        self.halts.lock().is_ok_and(|h| h.contains_key(market))
    }

    /// Halted markets and why.
    pub fn halted(&self) -> BTreeMap<String, Halt> {
        self.halts
            .lock()
            .map(|h| h.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    fn mark_halted(&self, market: &str, halt: Halt) {
        let Ok(mut halts) = self.halts.lock() else {
            return;
        };
        if halts.contains_key(market) {
            return;
        }
        let hb = self
            .heartbeats
            .register(&format!("market:{market}"), "clearing", Duration::MAX);
        hb.down("halted");
        metrics::gauge!("exchange_market_halted", "market" => market.to_owned()).set(1.0);
        halts.insert(market.to_owned(), (halt, hb));
    }

    /// Loads halts from `clearing_halts`; markets whose row an operator
    /// deleted resume.
    pub async fn refresh_halts(&self) -> Result<(), sqlx::Error> {
        let rows = sqlx::query("SELECT market, seq, error FROM clearing_halts")
            .fetch_all(&self.db)
            .await?;
        let mut stored = BTreeMap::new();
        for r in rows {
            let seq: i64 = r.try_get(1)?;
            stored.insert(
                r.try_get::<String, _>(0)?,
                Halt {
                    seq: u64::try_from(seq).unwrap_or_default(),
                    error: r.try_get(2)?,
                },
            );
        }
        let resumed: Vec<String> = self
            .halts
            .lock()
            .map(|h| {
                h.keys()
                    .filter(|m| !stored.contains_key(*m))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for market in resumed {
            if let Ok(mut h) = self.halts.lock()
                && let Some((_, hb)) = h.remove(&market)
            {
                hb.beat();
            }
            metrics::gauge!("exchange_market_halted", "market" => market.clone()).set(0.0);
            tracing::warn!(market, "clearing resumed a halted market");
        }
        for (market, halt) in stored {
            self.mark_halted(&market, halt);
        }
        Ok(())
    }

    /// Records a halt: a batch of `market` was dead-lettered.
    async fn halt(&self, market: &str, seq: u64, error: &str) {
        tracing::error!(
            market,
            seq,
            error,
            "event batch failed on its last delivery: dead-lettered, market halted in clearing"
        );
        let stored = sqlx::query(
            "INSERT INTO clearing_halts (market, seq, error) VALUES ($1, $2, $3)
             ON CONFLICT (market) DO NOTHING",
        )
        .bind(market)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .bind(error)
        .execute(&self.db)
        .await;
        if let Err(e) = stored {
            tracing::error!(market, error = %e, "cannot record the halt in clearing_halts");
        }
        self.mark_halted(
            market,
            Halt {
                seq,
                error: error.to_owned(),
            },
        );
    }

    fn final_delivery(&self, entry: &StreamEntry) -> bool {
        self.deliveries_max.is_some_and(|m| entry.deliveries >= m)
    }

    /// Settles `batches` in one transaction, retrying transient errors
    /// until they pass or shutdown. `Err` is a permanent failure.
    pub async fn settle_batches(&self, batches: &[EventBatch]) -> Result<Settled, SettleError> {
        let mut delay = RETRY_DELAY_MIN;
        let mut reloaded = false;
        loop {
            let result = self.try_settle(batches).await;
            match result {
                Ok(s) => return Ok(s),
                Err(SettleError::Plan(crate::plan::PlanError::UnknownMarket(_))) if !reloaded => {
                    reloaded = true;
                    if let Err(e) = self.refresh_markets().await {
                        tracing::warn!(error = %e, "cannot load markets");
                    }
                }
                Err(e) if e.is_transient() && !self.shutdown.is_triggered() => {
                    tracing::warn!(error = %e, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(0), "settlement failed transiently, retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shutdown.wait() => {}
                    }
                    delay = (delay * 2).min(RETRY_DELAY_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_settle(&self, batches: &[EventBatch]) -> Result<Settled, SettleError> {
        let markets = self.markets();
        let mut tx = self.db.begin().await?;
        let settled = store::settle(&mut tx, batches, &markets).await?;
        let mut clock = store::StepClock::new();
        tx.commit().await?;
        clock.step("commit");
        Ok(settled)
    }

    /// Parses, settles and publishes one read of the stream; one result per
    /// entry. Public so tests can play a consumer that crashes before acking.
    pub async fn handle_entries(&self, entries: &[StreamEntry]) -> HandleOutcome {
        let started = Instant::now();
        let mut results: Vec<Result<(), String>> = vec![Ok(()); entries.len()];
        let mut batches: Vec<EventBatch> = Vec::with_capacity(entries.len());
        let mut index: Vec<usize> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            match parse(entry) {
                Ok(b) if self.is_halted(&b.market.to_string()) => {
                    results[i] = Err(format!(
                        "market {} is halted in clearing; batch {} not applied",
                        b.market, b.seq
                    ));
                }
                Ok(b) => {
                    batches.push(b);
                    index.push(i);
                }
                Err(e) => {
                    if self.final_delivery(entry) {
                        tracing::error!(id = %entry.id, error = %e, "malformed event batch dead-lettered");
                    }
                    results[i] = Err(e);
                }
            }
        }
        let (batches, index) = self.stored(entries, batches, index, &mut results).await;
        let mut settled = Settled::default();
        if !batches.is_empty() {
            match self.settle_batches(&batches).await {
                Ok(s) => settled = s,
                Err(e) if batches.len() == 1 || e.is_transient() => {
                    for &i in &index {
                        results[i] = Err(e.to_string());
                    }
                    self.note_failures(entries, &batches, &index, &results)
                        .await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, count = batches.len(), "multi-batch settlement failed, settling one by one");
                    for (b, &i) in batches.iter().zip(&index) {
                        match self.settle_batches(std::slice::from_ref(b)).await {
                            Ok(s) => merge(&mut settled, s),
                            Err(e) => results[i] = Err(e.to_string()),
                        }
                    }
                    self.note_failures(entries, &batches, &index, &results)
                        .await;
                }
            }
        }
        let mut clock = store::StepClock::new();
        self.publish(&settled).await;
        clock.step("publish");
        let labels_ok = u64::try_from(settled.applied.len()).unwrap_or(0);
        metrics::counter!("exchange_clearing_batches_total", "result" => "applied")
            .increment(labels_ok);
        metrics::counter!("exchange_clearing_batches_total", "result" => "duplicate")
            .increment(u64::try_from(settled.duplicates).unwrap_or(0));
        metrics::counter!("exchange_clearing_trades_total")
            .increment(u64::try_from(settled.trades).unwrap_or(0));
        metrics::histogram!("exchange_clearing_settle_seconds")
            .record(started.elapsed().as_secs_f64());
        HandleOutcome { results, settled }
    }

    /// Replaces each claimed batch by the stored one it names (see
    /// [`exchange_store::transport`]): a forged entry is dropped (and
    /// acknowledged), an altered one settles the stored batch, one whose
    /// stored row cannot be read fails (its market halts on the last
    /// delivery, as for a batch that cannot settle). Transient database
    /// errors are retried like settlement's; at shutdown every entry stays
    /// pending.
    async fn stored(
        &self,
        entries: &[StreamEntry],
        claimed: Vec<EventBatch>,
        index: Vec<usize>,
        results: &mut [Result<(), String>],
    ) -> (Vec<EventBatch>, Vec<usize>) {
        if claimed.is_empty() {
            return (claimed, index);
        }
        let keys: Vec<_> = claimed.iter().map(|b| (b.market, b.seq)).collect();
        let mut delay = RETRY_DELAY_MIN;
        let stored = loop {
            match exchange_store::transport::stored_batches(&self.db, &keys).await {
                Ok(s) => break s,
                Err(e) if !self.shutdown.is_triggered() => {
                    tracing::warn!(error = %e, "cannot read the stored batches, retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shutdown.wait() => {}
                    }
                    delay = (delay * 2).min(RETRY_DELAY_MAX);
                }
                Err(e) => {
                    for i in index {
                        results[i] = Err(format!("cannot read the stored batches: {e}"));
                    }
                    return (Vec::new(), Vec::new());
                }
            }
        };
        let mut batches = Vec::with_capacity(claimed.len());
        let mut kept = Vec::with_capacity(index.len());
        for (b, i) in claimed.into_iter().zip(index) {
            let verdict = match stored.verdict(&b) {
                Ok(v) => v,
                Err(e) => {
                    if self.final_delivery(&entries[i]) && !self.shutdown.is_triggered() {
                        self.halt(&b.market.to_string(), b.seq, &e).await;
                    }
                    results[i] = Err(e);
                    continue;
                }
            };
            if let Some(kind) = verdict.forgery() {
                note_forgery(
                    crate::SERVICE,
                    &self.redis.events_stream(),
                    &entries[i].id,
                    kind,
                    &b.market.to_string(),
                    b.seq,
                );
            }
            if let Some(real) = verdict.into_stored() {
                batches.push(real);
                kept.push(i);
            }
        }
        (batches, kept)
    }

    /// Settles batches that matching stored in `event_batches` more than
    /// `older_than` ago but that never reached clearing (e.g. the stream
    /// entry was lost with Redis): Postgres, not Redis, is the source of
    /// truth. At most `limit` batches per call, oldest first per market;
    /// halted markets are left alone. Returns how many were applied.
    ///
    /// Cost: per market it walks `event_batches` by primary key from a
    /// watermark below which everything is known to be cleared, so a round
    /// reads only the batches still in flight. The watermarks are kept in
    /// `clearing_watermarks`, so a restarted clearing does not walk the
    /// history again.
    pub async fn catch_up(&self, older_than: Duration, limit: i64) -> Result<usize, SettleError> {
        if self.watermarks.lock().is_ok_and(|w| w.is_none()) {
            let stored: Vec<(String, i64)> =
                sqlx::query_as("SELECT market, seq FROM clearing_watermarks")
                    .fetch_all(&self.db)
                    .await?;
            if let Ok(mut w) = self.watermarks.lock() {
                *w = Some(stored.into_iter().collect());
            }
        }
        let mut raised: (Vec<String>, Vec<i64>) = (Vec::new(), Vec::new());
        let markets: Vec<String> = self
            .markets()
            .keys()
            .filter(|m| !self.is_halted(m))
            .cloned()
            .collect();
        let want = usize::try_from(limit).unwrap_or(0);
        let mut rows = Vec::new();
        for market in markets {
            if rows.len() >= want {
                break;
            }
            let start = self
                .watermarks
                .lock()
                .ok()
                .and_then(|w| w.as_ref()?.get(&market).copied())
                .unwrap_or(0);
            let mut watermark = start;
            let mut missing: Vec<i64> = Vec::new();
            let mut cursor = watermark;
            let mut advancing = true;
            loop {
                let page = sqlx::query(
                    "SELECT e.seq, c.seq IS NOT NULL,
                            e.created_at < now() - make_interval(secs => $3)
                     FROM event_batches e
                     LEFT JOIN cleared_batches c ON c.market = e.market AND c.seq = e.seq
                     WHERE e.market = $1 AND e.seq > $2
                     ORDER BY e.seq LIMIT $4",
                )
                .bind(&market)
                .bind(cursor)
                .bind(older_than.as_secs_f64())
                .bind(CATCH_UP_PAGE_LEN)
                .fetch_all(&self.db)
                .await?;
                let full = page.len() == usize::try_from(CATCH_UP_PAGE_LEN).unwrap_or(0);
                for r in &page {
                    let seq: i64 = r.try_get(0)?;
                    let done: bool = r.try_get(1)?;
                    let old: bool = r.try_get(2)?;
                    cursor = seq;
                    if done && advancing {
                        watermark = seq;
                    } else {
                        advancing = false;
                        if !done && old && missing.len() + rows.len() < want {
                            missing.push(seq);
                        }
                    }
                }
                if !full || missing.len() + rows.len() >= want {
                    break;
                }
            }
            if let Ok(mut guard) = self.watermarks.lock() {
                guard
                    .get_or_insert_with(BTreeMap::new)
                    .insert(market.clone(), watermark);
            }
            if watermark > start {
                raised.0.push(market.clone());
                raised.1.push(watermark);
            }
            if missing.is_empty() {
                continue;
            }
            let found = sqlx::query(
                "SELECT market, seq, time_ms, events::text FROM event_batches
                 WHERE market = $1 AND seq = ANY($2) ORDER BY seq",
            )
            .bind(&market)
            .bind(&missing)
            .fetch_all(&self.db)
            .await?;
            rows.extend(found);
        }
        if !raised.0.is_empty() {
            store_watermarks(&self.db, &raised.0, &raised.1).await?;
        }
        if rows.is_empty() {
            return Ok(0);
        }
        let mut entries = Vec::with_capacity(rows.len());
        for r in rows {
            let market: String = r.try_get(0)?;
            let seq: i64 = r.try_get(1)?;
            let time_ms: i64 = r.try_get(2)?;
            let events: String = r.try_get(3)?;
            let seq = u64::try_from(seq).unwrap_or_default();
            let deliveries = self
                .catch_up_failures
                .lock()
                .map(|f| f.get(&(market.clone(), seq)).copied().unwrap_or(0))
                .unwrap_or(0)
                + 1;
            // The stream shape, so the one settlement path handles both.
            let batch = format!(
                "{{\"market\":{},\"seq\":{seq},\"time_ms\":{time_ms},\"events\":{events}}}",
                serde_json::Value::String(market)
            );
            entries.push(StreamEntry {
                id: format!("event_batches:{seq}"),
                fields: [(BATCH_FIELD.to_owned(), batch.into_bytes())]
                    .into_iter()
                    .collect(),
                deliveries,
            });
        }
        tracing::warn!(
            count = entries.len(),
            "settling event batches that never arrived on the stream"
        );
        let outcome = self.handle_entries(&entries).await;
        if let Ok(mut failures) = self.catch_up_failures.lock() {
            for (entry, result) in entries.iter().zip(&outcome.results) {
                let Ok(b) = parse(entry) else { continue };
                let key = (b.market.to_string(), b.seq);
                if result.is_err() {
                    *failures.entry(key).or_default() += 1;
                } else {
                    failures.remove(&key);
                }
            }
        }
        let applied = outcome.settled.applied.len();
        metrics::counter!("exchange_clearing_catch_up_batches_total")
            .increment(u64::try_from(applied).unwrap_or(0));
        Ok(applied)
    }

    async fn note_failures(
        &self,
        entries: &[StreamEntry],
        batches: &[EventBatch],
        index: &[usize],
        results: &[Result<(), String>],
    ) {
        for (b, &i) in batches.iter().zip(index) {
            if let Err(e) = &results[i] {
                metrics::counter!("exchange_clearing_batches_total", "result" => "failed")
                    .increment(1);
                if self.final_delivery(&entries[i]) && !self.shutdown.is_triggered() {
                    self.halt(&b.market.to_string(), b.seq, e).await;
                } else {
                    tracing::warn!(market = %b.market, seq = b.seq, deliveries = entries[i].deliveries, error = %e, "event batch failed, will be redelivered");
                }
            }
        }
    }

    /// Publishes the private events of a committed settlement. Best effort:
    /// Pub/Sub loses messages anyway when nobody listens; clients resync
    /// over REST.
    pub async fn publish(&self, settled: &Settled) {
        // A user's events of the settlement go out together, in order
        // (orders, fills, balances), as JSON arrays of up to
        // PRIVATE_EVENTS_PER_MESSAGE_MAX: a settlement of hundreds of orders
        // costs Redis and every gateway about one message per user instead
        // of one per event.
        let mut messages: Vec<(u64, String)> = Vec::new();
        // Per user: the message being filled and how many events it holds
        // (a user seen first counts as full, so that a message is opened).
        let mut open: HashMap<u64, (usize, usize)> = HashMap::new();
        let mut events = 0usize;
        let mut push = |user: u64, ev: PrivateEvent| match serde_json::to_string(&ev) {
            Ok(s) => {
                events += 1;
                let slot = open
                    .entry(user)
                    .or_insert((0, PRIVATE_EVENTS_PER_MESSAGE_MAX));
                if slot.1 == PRIVATE_EVENTS_PER_MESSAGE_MAX {
                    messages.push((user, String::from("[")));
                    *slot = (messages.len() - 1, 0);
                }
                let body = &mut messages[slot.0].1;
                if slot.1 > 0 {
                    body.push(',');
                }
                body.push_str(&s);
                slot.1 += 1;
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a private event"),
        };
        for (user, o) in &settled.orders {
            push(*user, PrivateEvent::Order(o.clone()));
        }
        for (user, f) in &settled.fills {
            push(*user, PrivateEvent::Trade(f.clone()));
        }
        for (user, b) in &settled.balances {
            push(*user, PrivateEvent::Balance(b.clone()));
        }
        if messages.is_empty() {
            return;
        }
        for (_, body) in &mut messages {
            body.push(']');
        }
        let mut conn = self.redis.conn();
        let prefix = self.redis.prefix().to_owned();
        for chunk in messages.chunks(PUBLISH_PIPELINE_LEN_MAX) {
            let mut pipe = redis::pipe();
            for (user, payload) in chunk {
                pipe.cmd("PUBLISH")
                    .arg(private::channel(&prefix, *user))
                    .arg(payload)
                    .ignore();
            }
            // One node of a Redis Cluster takes the whole pipeline (classic
            // Pub/Sub reaches every node), see `RedisConn::publish_pipeline`.
            if let Err(e) = conn.publish_pipeline(&pipe).await {
                metrics::counter!("exchange_clearing_publish_failures_total").increment(1);
                tracing::warn!(error = %e, count = chunk.len(), "private events not published");
                return;
            }
        }
        metrics::counter!("exchange_clearing_private_events_total")
            .increment(u64::try_from(events).unwrap_or(0));
    }
}

fn merge(into: &mut Settled, s: Settled) {
    into.applied.extend(s.applied);
    into.duplicates += s.duplicates;
    into.trades += s.trades;
    into.orders.extend(s.orders);
    into.fills.extend(s.fills);
    into.balances.extend(s.balances);
}

/// Decodes the `batch` field of a stream entry.
pub fn parse(entry: &StreamEntry) -> Result<EventBatch, String> {
    let raw = entry
        .field(BATCH_FIELD)
        .ok_or_else(|| format!("entry {} has no {BATCH_FIELD:?} field", entry.id))?;
    serde_json::from_slice(raw)
        .map_err(|e| format!("entry {}: malformed event batch: {e}", entry.id))
}

/// The stream handler: settles each read of the stream in one transaction.
#[derive(Clone, Debug)]
pub struct ClearingHandler(pub Arc<Clearing>);

impl Handler for ClearingHandler {
    async fn handle(&self, entries: &[StreamEntry]) -> Vec<Result<(), String>> {
        self.0.handle_entries(entries).await.results
    }
}
