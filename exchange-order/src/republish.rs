//! The republisher: puts journaled commands that never reached the order
//! stream (an `XADD` failed after the commit, or Redis lost its data) back
//! on it. It runs at start and every [`REPUBLISH_INTERVAL`].
//!
//! Per market it looks at commands older than [`REPUBLISH_GRACE`] (younger
//! ones may still be in flight from the batcher), and publishes those
//! above both what matching has stored (`event_batches`) and the last
//! command the stream holds. Republishing is always safe: matching skips
//! a sequence number it has already applied.

use std::time::Duration;

use exchange_common::Shutdown;
use exchange_common::redis::Redis;
use exchange_domain::{Command, MarketSymbol, SequencedCommand};
use sqlx::PgPool;

use crate::batch::publish;
use exchange_store::transport::{Verdict, note_forgery};

pub const REPUBLISH_INTERVAL: Duration = Duration::from_secs(5);
/// Commands younger than this are left to the batcher's own `XADD`.
pub const REPUBLISH_GRACE: Duration = Duration::from_secs(2);
/// Commands republished per market per round.
pub const REPUBLISH_BATCH_LEN_MAX: i64 = 10_000;

/// The sequence number of the newest entry on a market's order stream (0 if
/// none). Only a journaled command counts: a forged tail entry (anyone who
/// can write to Redis can add one, see `exchange_store::transport`) with a
/// high seq must not make the commands below it look published.
pub async fn stream_last_seq(db: &PgPool, redis: &Redis, market: &str) -> anyhow::Result<u64> {
    let mut conn = redis.conn();
    let stream = redis.orders_stream(market);
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    let Some(entry) = reply.ids.first() else {
        return Ok(0);
    };
    let body: Option<String> = entry.get("command");
    let Ok(claimed) = serde_json::from_str::<SequencedCommand>(body.as_deref().unwrap_or(""))
    else {
        return Ok(0);
    };
    let stored: Option<(i64, String)> = sqlx::query_as(
        "SELECT time_ms, command::text FROM order_commands WHERE market = $1 AND seq = $2",
    )
    .bind(market)
    .bind(i64::try_from(claimed.seq).unwrap_or(i64::MAX))
    .fetch_optional(db)
    .await?;
    let journaled = stored.and_then(|(time_ms, body)| {
        Some(SequencedCommand {
            market: claimed.market,
            seq: claimed.seq,
            time_ms: u64::try_from(time_ms).ok()?,
            command: serde_json::from_str::<Command>(&body).ok()?,
        })
    });
    match Verdict::of(&claimed, journaled).forgery() {
        None => Ok(claimed.seq),
        Some(kind) => {
            note_forgery(
                crate::SERVICE,
                &stream,
                &entry.id,
                kind,
                market,
                claimed.seq,
            );
            Ok(0)
        }
    }
}

/// One round over every market; returns how many commands were republished.
pub async fn republish_once(db: &PgPool, redis: &Redis) -> anyhow::Result<usize> {
    let grace_ms = i64::try_from(REPUBLISH_GRACE.as_millis())?;
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT s.market,
                COALESCE((SELECT max(seq) FROM order_commands c
                          WHERE c.market = s.market AND c.created_at < now() - $1 * interval '1 millisecond'), 0),
                COALESCE((SELECT max(seq) FROM event_batches e WHERE e.market = s.market), 0)
         FROM market_sequences s ORDER BY s.market",
    )
    .bind(grace_ms)
    .fetch_all(db)
    .await?;
    let mut total = 0;
    for (market, settled_max, processed) in rows {
        if settled_max <= processed {
            continue;
        }
        let in_stream = i64::try_from(stream_last_seq(db, redis, &market).await.unwrap_or(0))?;
        let from = processed.max(in_stream);
        if from >= settled_max {
            continue;
        }
        let symbol = MarketSymbol::parse(&market)?;
        let cmds: Vec<(i64, i64, String)> = sqlx::query_as(
            "SELECT seq, time_ms, command::text FROM order_commands
             WHERE market = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
        )
        .bind(&market)
        .bind(from)
        .bind(settled_max)
        .bind(REPUBLISH_BATCH_LEN_MAX)
        .fetch_all(db)
        .await?;
        let mut out = Vec::with_capacity(cmds.len());
        for (seq, time_ms, body) in cmds {
            let command: Command = serde_json::from_str(&body)?;
            out.push(SequencedCommand {
                market: symbol,
                seq: seq.unsigned_abs(),
                time_ms: time_ms.unsigned_abs(),
                command,
            });
        }
        publish(redis, &out).await?;
        tracing::info!(
            market,
            from = from + 1,
            count = out.len(),
            "republished journaled commands"
        );
        metrics::counter!("exchange_order_republished_total").increment(out.len() as u64);
        total += out.len();
    }
    Ok(total)
}

/// Runs [`republish_once`] now and every interval until shutdown.
pub async fn run(db: PgPool, redis: Redis, shutdown: Shutdown) {
    loop {
        if let Err(e) = republish_once(&db, &redis).await {
            tracing::warn!(error = format!("{e:#}"), "republish round failed");
        }
        tokio::select! {
            () = tokio::time::sleep(REPUBLISH_INTERVAL) => {}
            () = shutdown.wait() => return,
        }
    }
}
