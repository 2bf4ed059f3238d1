//! Postgres and Redis I/O of the matching service: reading the journal,
//! storing event batches, publishing them.

use exchange_common::redis::Redis;
use exchange_domain::{Command, Event, EventBatch, MarketSymbol, SequencedCommand};
use sqlx::PgPool;

use crate::lease::{Fence, LeaseLost};

/// Journal rows read per query while replaying.
pub const REPLAY_PAGE_LEN: i64 = 10_000;
/// Event batches per `INSERT` and per `XADD` pipeline during recovery.
pub const STORE_CHUNK_LEN: usize = 2_000;
/// Stored-but-uncleared batches republished at start, at most (the
/// newest ones: a batch that missed the stream is always among the last
/// stored; clearing also catches up from `event_batches` on its own).
pub const REPUBLISH_UNCLEARED_MAX: i64 = 10_000;

/// A journaled command and, when matching has already processed it, the
/// events it stored for it.
#[derive(Debug)]
pub struct ReplayRow {
    pub command: SequencedCommand,
    pub stored: Option<Vec<Event>>,
}

/// Up to `limit` journal rows after `after_seq`, each with its stored batch.
pub async fn journal_with_batches(
    db: &PgPool,
    market: &str,
    after_seq: u64,
    limit: i64,
) -> anyhow::Result<Vec<ReplayRow>> {
    let symbol = MarketSymbol::parse(market)?;
    let rows: Vec<(i64, i64, String, Option<String>)> = sqlx::query_as(
        "SELECT c.seq, c.time_ms, c.command::text, e.events::text
         FROM order_commands c
         LEFT JOIN event_batches e ON e.market = c.market AND e.seq = c.seq
         WHERE c.market = $1 AND c.seq > $2
         ORDER BY c.seq LIMIT $3",
    )
    .bind(market)
    .bind(i64::try_from(after_seq)?)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|(seq, time_ms, body, events)| {
            Ok(ReplayRow {
                command: sequenced(symbol, seq, time_ms, &body)?,
                stored: events.map(|e| serde_json::from_str(&e)).transpose()?,
            })
        })
        .collect()
}

/// Journal commands `from..=to`, in order.
pub async fn journal_range(
    db: &PgPool,
    market: &str,
    from: u64,
    to: u64,
) -> anyhow::Result<Vec<SequencedCommand>> {
    let symbol = MarketSymbol::parse(market)?;
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT seq, time_ms, command::text FROM order_commands
         WHERE market = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq",
    )
    .bind(market)
    .bind(i64::try_from(from)?)
    .bind(i64::try_from(to)?)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|(seq, time_ms, body)| sequenced(symbol, seq, time_ms, &body))
        .collect()
}

/// Stores batches (one `INSERT` per chunk); a batch already stored is kept
/// as it is (`ON CONFLICT DO NOTHING`). Fenced: the statement share-locks
/// the market's `matching_fences` row and stores nothing unless it still
/// has `fence`'s epoch ([`LeaseLost`] then).
pub async fn insert_batches(
    db: &PgPool,
    fence: &Fence,
    batches: &[EventBatch],
) -> anyhow::Result<()> {
    for chunk in batches.chunks(STORE_CHUNK_LEN) {
        let mut markets = Vec::with_capacity(chunk.len());
        let mut seqs = Vec::with_capacity(chunk.len());
        let mut times = Vec::with_capacity(chunk.len());
        let mut bodies = Vec::with_capacity(chunk.len());
        for b in chunk {
            markets.push(b.market.to_string());
            seqs.push(i64::try_from(b.seq)?);
            times.push(i64::try_from(b.time_ms)?);
            bodies.push(serde_json::to_string(&b.events)?);
        }
        let held: bool = sqlx::query_scalar(
            "WITH lease AS (
                SELECT 1 FROM matching_fences WHERE market = $5 AND epoch = $6 FOR SHARE),
             stored AS (
                INSERT INTO event_batches (market, seq, time_ms, events, epoch)
                SELECT market, seq, time_ms, events::jsonb, $6
                FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[]) AS u(market, seq, time_ms, events)
                WHERE EXISTS (SELECT 1 FROM lease)
                ON CONFLICT (market, seq) DO NOTHING)
             SELECT EXISTS (SELECT 1 FROM lease)",
        )
        .bind(&markets)
        .bind(&seqs)
        .bind(&times)
        .bind(&bodies)
        .bind(&fence.market)
        .bind(fence.epoch)
        .fetch_one(db)
        .await?;
        if !held {
            return Err(lease_lost(fence));
        }
    }
    Ok(())
}

fn lease_lost(fence: &Fence) -> anyhow::Error {
    LeaseLost {
        market: fence.market.clone(),
        epoch: fence.epoch,
    }
    .into()
}

/// The newest `limit` stored batches of `market` that clearing has not
/// cleared, oldest first.
pub async fn uncleared_batches(
    db: &PgPool,
    market: &str,
    limit: i64,
) -> anyhow::Result<Vec<EventBatch>> {
    let symbol = MarketSymbol::parse(market)?;
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT e.seq, e.time_ms, e.events::text FROM event_batches e
         WHERE e.market = $1
           AND NOT EXISTS (SELECT 1 FROM cleared_batches c WHERE c.market = e.market AND c.seq = e.seq)
         ORDER BY e.seq DESC LIMIT $2",
    )
    .bind(market)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .rev()
        .map(|(seq, time_ms, events)| {
            Ok(EventBatch {
                market: symbol,
                seq: u64::try_from(seq)?,
                time_ms: u64::try_from(time_ms)?,
                events: serde_json::from_str(&events)?,
            })
        })
        .collect()
}

/// `XADD <prefix>:events * batch <json>` for each batch, pipelined, in order.
pub async fn publish_batches(redis: &Redis, batches: &[EventBatch]) -> anyhow::Result<()> {
    if batches.is_empty() {
        return Ok(());
    }
    let stream = redis.events_stream();
    let mut pipe = redis::pipe();
    for b in batches {
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("batch")
            .arg(serde_json::to_string(b)?)
            .ignore();
    }
    let mut conn = redis.conn();
    pipe.query_async::<()>(&mut conn).await?;
    Ok(())
}

/// Snapshots kept per market (older ones are deleted when a new one is stored).
pub const SNAPSHOTS_KEPT: i64 = 3;

/// A stored book snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub seq: u64,
    pub state_hash: u64,
    pub bytes: Vec<u8>,
}

/// The u64 state hash as the bigint with the same bits, and back.
pub fn hash_to_db(hash: u64) -> i64 {
    i64::from_ne_bytes(hash.to_ne_bytes())
}

pub fn hash_from_db(hash: i64) -> u64 {
    u64::from_ne_bytes(hash.to_ne_bytes())
}

/// The newest snapshots of `market`, newest first.
pub async fn latest_snapshots(db: &PgPool, market: &str) -> anyhow::Result<Vec<Snapshot>> {
    let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT seq, state_hash, bytes FROM matching_snapshots WHERE market = $1 ORDER BY seq DESC LIMIT $2",
    )
    .bind(market)
    .bind(SNAPSHOTS_KEPT)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|(seq, hash, bytes)| {
            Ok(Snapshot {
                seq: u64::try_from(seq)?,
                state_hash: hash_from_db(hash),
                bytes,
            })
        })
        .collect()
}

/// Stores a snapshot and deletes all but the newest [`SNAPSHOTS_KEPT`];
/// fenced like [`insert_batches`].
pub async fn insert_snapshot(db: &PgPool, fence: &Fence, snap: &Snapshot) -> anyhow::Result<()> {
    let market = fence.market.as_str();
    let mut tx = db.begin().await?;
    let held: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM matching_fences WHERE market = $1 AND epoch = $2 FOR SHARE",
    )
    .bind(market)
    .bind(fence.epoch)
    .fetch_optional(&mut *tx)
    .await?;
    if held.is_none() {
        return Err(lease_lost(fence));
    }
    sqlx::query(
        "INSERT INTO matching_snapshots (market, seq, state_hash, bytes) VALUES ($1, $2, $3, $4)
         ON CONFLICT (market, seq) DO NOTHING",
    )
    .bind(market)
    .bind(i64::try_from(snap.seq)?)
    .bind(hash_to_db(snap.state_hash))
    .bind(&snap.bytes)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM matching_snapshots WHERE market = $1 AND seq < (
            SELECT min(seq) FROM (SELECT seq FROM matching_snapshots WHERE market = $1
                                  ORDER BY seq DESC LIMIT $2) newest)",
    )
    .bind(market)
    .bind(SNAPSHOTS_KEPT)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A journal row as [`Command`] JSON back into a [`SequencedCommand`].
pub fn sequenced(
    market: MarketSymbol,
    seq: i64,
    time_ms: i64,
    body: &str,
) -> anyhow::Result<SequencedCommand> {
    let command: Command = serde_json::from_str(body)?;
    Ok(SequencedCommand {
        market,
        seq: u64::try_from(seq)?,
        time_ms: u64::try_from(time_ms)?,
        command,
    })
}
