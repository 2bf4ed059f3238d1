//! The Redis Streams consumer runtime every service uses.
//!
//! One [`run_consumer`] loop per (stream, group, consumer):
//! - creates the group if missing (`MKSTREAM`), and again after `NOGROUP`
//!   (the stream was deleted, e.g. Redis lost its data);
//! - reads bounded batches (`XREADGROUP COUNT n BLOCK ms`) on a dedicated
//!   connection without response timeout;
//! - hands each batch to the [`Handler`], which answers per entry; `Ok`
//!   entries are acknowledged, failed ones stay pending;
//! - on start and after (re)creating the group, first re-reads the entries
//!   still pending under its OWN consumer name (`XREADGROUP ... 0`, paged):
//!   those were read by a previous incarnation that died before acking, and
//!   consumer names are stable across restarts, so nobody else is working on
//!   them and waiting for `claim_idle` would only delay them;
//! - reclaims entries pending longer than `claim_idle` (its own failures and
//!   those of crashed consumers under other names, which may still be alive)
//!   with `XAUTOCLAIM` and redelivers them;
//! - after `deliveries_max` failed deliveries, writes the entry and its last
//!   error to `<stream>:dlq` and only then acknowledges it;
//! - beats a heartbeat (for `/ready` and `exchange_consumer_up`) on every
//!   healthy turn, and exports lag, pending and DLQ length gauges.
//!
//! Delivery is at least once: handlers must be idempotent.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use redis::AsyncCommands as _;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};

use crate::ready::Heartbeats;
use crate::redis::Redis;
use crate::shutdown::Shutdown;

/// Metadata fields a dead-letter entry carries besides the original fields.
pub const DLQ_FIELD_STREAM: &str = "dlq.stream";
pub const DLQ_FIELD_ID: &str = "dlq.id";
pub const DLQ_FIELD_GROUP: &str = "dlq.group";
pub const DLQ_FIELD_CONSUMER: &str = "dlq.consumer";
pub const DLQ_FIELD_DELIVERIES: &str = "dlq.deliveries";
pub const DLQ_FIELD_ERROR: &str = "dlq.error";

/// One stream entry as a handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    pub fields: BTreeMap<String, Vec<u8>>,
    /// 1 on first delivery; counts redeliveries after reclaims.
    pub deliveries: u64,
}

impl StreamEntry {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields.get(name).map(Vec::as_slice)
    }
    pub fn field_str(&self, name: &str) -> Option<&str> {
        self.field(name).and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// Processes a batch; returns exactly one result per entry, in order.
/// An `Err` leaves that entry pending for a later redelivery.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        entries: &[StreamEntry],
    ) -> impl Future<Output = Vec<Result<(), String>>> + Send;
}

/// Adapts a per-entry async function into a [`Handler`] (entries in order).
pub struct PerEntry<F>(pub F);

impl<F, Fut> Handler for PerEntry<F>
where
    F: Fn(StreamEntry) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    async fn handle(&self, entries: &[StreamEntry]) -> Vec<Result<(), String>> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            out.push((self.0)(e.clone()).await);
        }
        out
    }
}

/// How one consumer loop behaves. Every limit is explicit.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// The name `/ready` shows, e.g. `eventStreamConsumer`.
    pub loop_name: String,
    /// The full stream key, e.g. `exchange:events`.
    pub stream: String,
    pub group: String,
    pub consumer: String,
    /// Where a newly created group starts: `0` (everything) or `$` (new only).
    pub start_id: String,
    pub batch_len_max: usize,
    pub block: Duration,
    /// Pending entries idle longer than this are reclaimed and redelivered.
    pub claim_idle: Duration,
    /// How often to look for such entries.
    pub claim_interval: Duration,
    /// After this many failed deliveries the entry goes to the DLQ;
    /// `None` retries forever (for batches that must never be skipped).
    pub deliveries_max: Option<u64>,
    /// The loop counts as down when it has not beaten for this long.
    pub stale_after: Duration,
    pub metrics_interval: Duration,
    /// Pause after a Redis error before trying again.
    pub retry_delay: Duration,
    /// After a read that returned some entries but fewer than
    /// `batch_len_max`, wait this long before the next read so that it
    /// finds more: fewer, larger batches for a handler whose cost is per
    /// read more than per entry, at up to this much added latency. Zero
    /// (the default) reads again at once.
    pub linger: Duration,
    /// When the loop stops: `false` (the default) shows it down in
    /// `/ready` (the service is stopping); `true` removes it, for a loop
    /// that ends while its service goes on (a matching market handed over
    /// to another replica must not leave this one unready).
    pub forget_on_stop: bool,
}

impl ConsumerOptions {
    pub fn new(loop_name: &str, stream: &str, group: &str, consumer: &str) -> Self {
        Self {
            loop_name: loop_name.to_owned(),
            stream: stream.to_owned(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            start_id: "0".to_owned(),
            batch_len_max: 256,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            deliveries_max: Some(5),
            stale_after: Duration::from_secs(10),
            metrics_interval: Duration::from_secs(5),
            retry_delay: Duration::from_millis(500),
            linger: Duration::ZERO,
            forget_on_stop: false,
        }
    }

    pub fn dlq_stream(&self) -> String {
        Redis::dlq_stream(&self.stream)
    }
}

fn entry_from(id: StreamId, deliveries: u64) -> StreamEntry {
    let fields = id
        .map
        .into_iter()
        .map(|(k, v)| {
            let bytes = redis::from_redis_value::<Vec<u8>>(v).unwrap_or_default();
            (k, bytes)
        })
        .collect();
    StreamEntry {
        id: id.id,
        fields,
        deliveries,
    }
}

/// An entry re-read from a consumer's pending list: its id and fields,
/// `None` when it was deleted from the stream since it was read.
type HistoryRow = (String, Option<BTreeMap<String, Vec<u8>>>);

/// Parses an `XREADGROUP` reply read from history (an explicit id rather
/// than `>`): `(id, fields)` in order, `None` fields for an entry deleted
/// since it was read. Accepts both RESP2 arrays and RESP3 maps.
fn history_rows(reply: redis::Value) -> redis::RedisResult<Vec<HistoryRow>> {
    use redis::Value;
    fn bad(what: &str) -> redis::RedisError {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected XREADGROUP reply",
            what.to_owned(),
        ))
    }
    fn text(v: Value) -> redis::RedisResult<String> {
        Ok(redis::from_redis_value::<String>(v)?)
    }
    let per_stream: Vec<Value> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => Ok(kv.swap_remove(1)),
                _ => Err(bad("stream row")),
            })
            .collect::<redis::RedisResult<_>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
        _ => return Err(bad("top level")),
    };
    let mut rows = Vec::new();
    for entries in per_stream {
        let Value::Array(entries) = entries else {
            return Err(bad("entries"));
        };
        for entry in entries {
            let Value::Array(mut parts) = entry else {
                return Err(bad("entry"));
            };
            if parts.len() != 2 {
                return Err(bad("entry length"));
            }
            let fields = parts.pop().unwrap_or(Value::Nil);
            let id = text(parts.pop().unwrap_or(Value::Nil))?;
            let fields = match fields {
                Value::Nil => None,
                Value::Array(flat) => {
                    let mut map = BTreeMap::new();
                    let mut it = flat.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        map.insert(text(k)?, redis::from_redis_value::<Vec<u8>>(v)?);
                    }
                    Some(map)
                }
                Value::Map(pairs) => {
                    let mut map = BTreeMap::new();
                    for (k, v) in pairs {
                        map.insert(text(k)?, redis::from_redis_value::<Vec<u8>>(v)?);
                    }
                    Some(map)
                }
                _ => return Err(bad("fields")),
            };
            rows.push((id, fields));
        }
    }
    Ok(rows)
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
        || e.to_string().contains("NOGROUP")
        || e.to_string().contains("no longer exists")
}

async fn sleep_or_shutdown(d: Duration, shutdown: &Shutdown) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = shutdown.wait() => {}
    }
}

/// Creates the group (and the stream) if missing.
pub async fn ensure_group(
    redis: &Redis,
    stream: &str,
    group: &str,
    start_id: &str,
) -> redis::RedisResult<()> {
    let mut conn = redis.conn();
    let created: redis::RedisResult<()> =
        conn.xgroup_create_mkstream(stream, group, start_id).await;
    match created {
        Ok(()) => {
            tracing::info!(stream, group, "consumer group created");
            Ok(())
        }
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

struct Runner<H> {
    redis: Redis,
    opts: ConsumerOptions,
    handler: Arc<H>,
    dlq: String,
}

impl<H: Handler> Runner<H> {
    /// Runs the handler, treating a panic as a failure of the whole batch.
    async fn process(&self, entries: Vec<StreamEntry>) -> redis::RedisResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let results = match AssertUnwindSafe(self.handler.handle(&entries))
            .catch_unwind()
            .await
        {
            Ok(r) if r.len() == entries.len() => r,
            Ok(r) => {
                let msg = format!(
                    "handler returned {} results for {} entries",
                    r.len(),
                    entries.len()
                );
                tracing::error!(stream = %self.opts.stream, "{msg}");
                vec![Err(msg); entries.len()]
            }
            Err(_) => vec![Err("handler panicked".to_owned()); entries.len()],
        };
        let mut conn = self.redis.conn();
        let mut ack = Vec::with_capacity(entries.len());
        for (entry, result) in entries.into_iter().zip(results) {
            match result {
                Ok(()) => ack.push(entry.id),
                Err(error) => {
                    let exhausted = self
                        .opts
                        .deliveries_max
                        .is_some_and(|m| entry.deliveries >= m);
                    tracing::warn!(stream = %self.opts.stream, group = %self.opts.group, id = %entry.id,
                        deliveries = entry.deliveries, dead_letter = exhausted, error = %error, "stream entry failed");
                    if exhausted {
                        let mut items: Vec<(String, Vec<u8>)> = entry.fields.into_iter().collect();
                        items.push((
                            DLQ_FIELD_STREAM.into(),
                            self.opts.stream.clone().into_bytes(),
                        ));
                        items.push((DLQ_FIELD_ID.into(), entry.id.clone().into_bytes()));
                        items.push((DLQ_FIELD_GROUP.into(), self.opts.group.clone().into_bytes()));
                        items.push((
                            DLQ_FIELD_CONSUMER.into(),
                            self.opts.consumer.clone().into_bytes(),
                        ));
                        items.push((
                            DLQ_FIELD_DELIVERIES.into(),
                            entry.deliveries.to_string().into_bytes(),
                        ));
                        items.push((DLQ_FIELD_ERROR.into(), error.into_bytes()));
                        // Written before the ack: a crash in between leaves a
                        // duplicate in the DLQ, never a lost entry.
                        let _: String = conn.xadd(&self.dlq, "*", &items).await?;
                        ack.push(entry.id);
                    }
                }
            }
        }
        if !ack.is_empty() {
            let _: u64 = conn.xack(&self.opts.stream, &self.opts.group, &ack).await?;
        }
        Ok(())
    }

    /// Delivery counts, per id, of this consumer's pending entries in
    /// `first..=last` (both reads and claims count a delivery).
    async fn delivery_counts(
        &self,
        first: &str,
        last: &str,
    ) -> redis::RedisResult<HashMap<String, u64>> {
        let mut conn = self.redis.conn();
        let pending: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.opts.stream)
            .arg(&self.opts.group)
            .arg(first)
            .arg(last)
            .arg(self.opts.batch_len_max)
            .arg(&self.opts.consumer)
            .query_async(&mut conn)
            .await?;
        Ok(pending
            .ids
            .into_iter()
            .map(|p| (p.id, u64::try_from(p.times_delivered).unwrap_or(u64::MAX)))
            .collect())
    }

    /// One page of this consumer's own pending entries after `cursor`
    /// (`XREADGROUP ... STREAMS s <cursor>`), processed like any delivery.
    /// Returns the next cursor, or `None` once nothing is left.
    ///
    /// The cursor moves past every entry returned, failed or not: an entry
    /// that fails again stays pending and goes back to the `XAUTOCLAIM`
    /// path, so a poison entry is not re-read in a loop here. Redis counts
    /// this read as a delivery, so the DLQ limit still holds across restarts.
    async fn read_own_pending(&self, cursor: &str) -> redis::RedisResult<Option<String>> {
        let mut conn = self.redis.conn();
        let reply: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.opts.group)
            .arg(&self.opts.consumer)
            .arg("COUNT")
            .arg(self.opts.batch_len_max)
            .arg("STREAMS")
            .arg(&self.opts.stream)
            .arg(cursor)
            .query_async(&mut conn)
            .await?;
        let rows = history_rows(reply)?;
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Ok(None);
        };
        let next = last.0.clone();
        let counts = self.delivery_counts(&first.0, &last.0).await?;
        let mut entries = Vec::with_capacity(rows.len());
        let mut gone = Vec::new();
        for (id, fields) in rows {
            match fields {
                Some(fields) => {
                    let deliveries = counts.get(&id).copied().unwrap_or(2);
                    entries.push(StreamEntry {
                        id,
                        fields,
                        deliveries,
                    });
                }
                // Trimmed or deleted since it was read: nothing left to
                // process (XAUTOCLAIM drops such ids from the PEL as well).
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            tracing::warn!(stream = %self.opts.stream, group = %self.opts.group, count = gone.len(),
                "own pending entries no longer in the stream, acknowledged");
            let _: u64 = conn
                .xack(&self.opts.stream, &self.opts.group, &gone)
                .await?;
        }
        tracing::info!(stream = %self.opts.stream, group = %self.opts.group, consumer = %self.opts.consumer,
            count = entries.len(), "re-reading own pending entries");
        self.process(entries).await?;
        Ok(Some(next))
    }

    /// One `XAUTOCLAIM` page; returns the next cursor.
    async fn reclaim(&self, cursor: &str) -> redis::RedisResult<String> {
        let mut conn = self.redis.conn();
        let idle_ms = u64::try_from(self.opts.claim_idle.as_millis()).unwrap_or(u64::MAX);
        let reply: StreamAutoClaimReply = conn
            .xautoclaim_options(
                &self.opts.stream,
                &self.opts.group,
                &self.opts.consumer,
                idle_ms,
                cursor,
                StreamAutoClaimOptions::default().count(self.opts.batch_len_max),
            )
            .await?;
        if reply.claimed.is_empty() {
            return Ok(reply.next_stream_id);
        }
        // Delivery counts of what we just claimed (the claim counted as one).
        let first = reply
            .claimed
            .first()
            .map(|e| e.id.clone())
            .unwrap_or_default();
        let last = reply
            .claimed
            .last()
            .map(|e| e.id.clone())
            .unwrap_or_default();
        let counts = self.delivery_counts(&first, &last).await?;
        let entries: Vec<StreamEntry> = reply
            .claimed
            .into_iter()
            .map(|id| {
                let n = counts.get(&id.id).copied().unwrap_or(2);
                entry_from(id, n)
            })
            .collect();
        tracing::info!(stream = %self.opts.stream, group = %self.opts.group, count = entries.len(), "reclaimed idle entries");
        self.process(entries).await?;
        Ok(reply.next_stream_id)
    }

    async fn export_metrics(&self) -> redis::RedisResult<()> {
        let mut conn = self.redis.conn();
        let groups: redis::streams::StreamInfoGroupsReply =
            conn.xinfo_groups(&self.opts.stream).await?;
        if let Some(g) = groups.groups.iter().find(|g| g.name == self.opts.group) {
            let labels = [
                ("stream", self.opts.stream.clone()),
                ("group", self.opts.group.clone()),
            ];
            #[allow(clippy::cast_precision_loss)]
            {
                metrics::gauge!("exchange_stream_lag", &labels).set(g.lag.unwrap_or(0) as f64);
                metrics::gauge!("exchange_stream_pending", &labels).set(g.pending as f64);
            }
        }
        let dlq_len: u64 = conn.xlen(&self.dlq).await?;
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("exchange_stream_dlq_length", "stream" => self.opts.stream.clone())
            .set(dlq_len as f64);
        Ok(())
    }
}

/// Runs one consumer loop until `shutdown`. Never returns an error: Redis
/// failures are logged, make the heartbeat go stale, and are retried.
pub async fn run_consumer<H: Handler>(
    redis: Redis,
    heartbeats: Heartbeats,
    opts: ConsumerOptions,
    handler: H,
    shutdown: Shutdown,
) {
    let heartbeat = heartbeats.register(&opts.loop_name, &opts.stream, opts.stale_after);
    // Ends with this loop (a matching market handed over ends its loop
    // while the service goes on).
    let claim = Shutdown::new();
    crate::consumer_name::spawn_claim(
        redis.clone(),
        &heartbeats,
        &opts.stream,
        &opts.group,
        &opts.consumer,
        claim.clone(),
    );
    let runner = Runner {
        dlq: opts.dlq_stream(),
        redis,
        opts,
        handler: Arc::new(handler),
    };
    let opts = &runner.opts;
    let block_ms = usize::try_from(opts.block.as_millis()).unwrap_or(1_000);
    let read_options = StreamReadOptions::default()
        .group(&opts.group, &opts.consumer)
        .count(opts.batch_len_max)
        .block(block_ms);
    let mut blocking = None;
    let mut group_ready = false;
    let mut last_read_len = 0usize;
    // `Some(cursor)` while this consumer's own pending entries are re-read.
    let mut own_cursor: Option<String> = None;
    let mut claim_cursor = "0-0".to_owned();
    let mut last_claim = Instant::now();
    let mut last_metrics: Option<Instant> = None;
    tracing::info!(stream = %opts.stream, group = %opts.group, consumer = %opts.consumer, "consumer started");
    while !shutdown.is_triggered() {
        if !group_ready {
            if let Err(e) =
                ensure_group(&runner.redis, &opts.stream, &opts.group, &opts.start_id).await
            {
                tracing::warn!(stream = %opts.stream, error = %e, "cannot create consumer group");
                sleep_or_shutdown(opts.retry_delay, &shutdown).await;
                continue;
            }
            group_ready = true;
            // Whatever a previous incarnation under this name read and did
            // not ack is ours: handle it now instead of after `claim_idle`.
            own_cursor = Some("0-0".to_owned());
        }
        if blocking.is_none() {
            match runner.redis.blocking_conn().await {
                Ok(c) => blocking = Some(c),
                Err(e) => {
                    tracing::warn!(stream = %opts.stream, error = %e, "cannot connect to redis");
                    sleep_or_shutdown(opts.retry_delay, &shutdown).await;
                    continue;
                }
            }
        }
        heartbeat.beat();

        if let Some(cursor) = own_cursor.take() {
            match runner.read_own_pending(&cursor).await {
                Ok(Some(next)) => own_cursor = Some(next),
                Ok(None) => {}
                Err(e) => {
                    if is_nogroup(&e) {
                        group_ready = false;
                    } else {
                        own_cursor = Some(cursor);
                    }
                    tracing::warn!(stream = %opts.stream, error = %e, "reading own pending entries failed");
                    sleep_or_shutdown(opts.retry_delay, &shutdown).await;
                }
            }
            continue;
        }

        if last_claim.elapsed() >= opts.claim_interval {
            last_claim = Instant::now();
            match runner.reclaim(&claim_cursor).await {
                Ok(next) => claim_cursor = next,
                Err(e) => {
                    if is_nogroup(&e) {
                        group_ready = false;
                    }
                    tracing::warn!(stream = %opts.stream, error = %e, "reclaim failed");
                    claim_cursor = "0-0".to_owned();
                    sleep_or_shutdown(opts.retry_delay, &shutdown).await;
                    continue;
                }
            }
        }
        if last_metrics.is_none_or(|t| t.elapsed() >= opts.metrics_interval) {
            last_metrics = Some(Instant::now());
            if let Err(e) = runner.export_metrics().await {
                tracing::debug!(stream = %opts.stream, error = %e, "stream metrics unavailable");
            }
        }

        let Some(conn) = blocking.as_mut() else {
            continue;
        };
        if last_read_len > 0 && last_read_len < opts.batch_len_max && !opts.linger.is_zero() {
            sleep_or_shutdown(opts.linger, &shutdown).await;
        }
        // Not raced against shutdown: dropping a read that Redis already
        // served would leave entries pending until reclaimed. BLOCK bounds it.
        let read: redis::RedisResult<Option<StreamReadReply>> = conn
            .xread_options(&[&opts.stream], &[">"], &read_options)
            .await;
        match read {
            Ok(reply) => {
                heartbeat.beat();
                let entries: Vec<StreamEntry> = reply
                    .into_iter()
                    .flat_map(|r| r.keys)
                    .flat_map(|k| k.ids)
                    .map(|id| entry_from(id, 1))
                    .collect();
                last_read_len = entries.len();
                if let Err(e) = runner.process(entries).await {
                    tracing::warn!(stream = %opts.stream, error = %e, "ack or dead-letter write failed");
                    sleep_or_shutdown(opts.retry_delay, &shutdown).await;
                }
            }
            Err(e) if is_nogroup(&e) => {
                tracing::warn!(stream = %opts.stream, group = %opts.group, error = %e, "consumer group missing, recreating");
                group_ready = false;
            }
            Err(e) => {
                tracing::warn!(stream = %opts.stream, error = %e, "stream read failed");
                blocking = None;
                sleep_or_shutdown(opts.retry_delay, &shutdown).await;
            }
        }
    }
    if opts.forget_on_stop {
        heartbeat.forget();
    } else {
        heartbeat.down("stopped");
    }
    claim.trigger();
    tracing::info!(stream = %opts.stream, group = %opts.group, "consumer stopped");
}
