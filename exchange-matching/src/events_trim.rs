//! Trimming of `<prefix>:events`, the stream matching produces.
//!
//! The stream is transport, not the record: every batch is in
//! `event_batches` first, and each consumer refills from there (clearing's
//! catch-up settles stored batches whose entry never came; marketdata fills
//! a per-market seq gap from `event_batches` and rebuilds from Postgres at
//! start). So the stream only has to hold what a consumer group has not
//! passed yet:
//!
//! 1. Per group, its position: the oldest entry still pending in it (not
//!    acknowledged: it may be redelivered), or, when nothing is pending,
//!    its last-delivered id. Entries below the lowest position over all
//!    groups are deleted (`XTRIM MINID`, exact: once per interval, cheap).
//!    Positions only move forward, so reading them before trimming is safe;
//!    with no group at all only the cap below applies.
//! 2. A group that does not move (a marketdata replica that died: groups
//!    are one per replica) would otherwise make Redis grow without bound.
//!    Past `EVENTS_STREAM_MAX_LEN` entries the stream is cut to that length
//!    (`XTRIM MAXLEN`) anyway; each group whose position is then below the
//!    oldest kept entry is *stale*: it is logged by name (with how to
//!    delete it), counted in `exchange_events_stream_stale_group_trims_total{group}`
//!    and shown in `exchange_events_stream_stale_groups`. If it is alive
//!    after all, it loses nothing for good: `XAUTOCLAIM` drops deleted
//!    pending entries and the seq gap is refilled from Postgres.

use std::time::Duration;

use exchange_common::Shutdown;
use exchange_common::redis::Redis;

/// A stream entry id `ms-seq`, comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId(pub u64, pub u64);

impl StreamId {
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// One consumer group of the stream and the id below which it needs nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPosition {
    pub group: String,
    pub pending: u64,
    pub position: StreamId,
}

/// What one trim did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrimOutcome {
    /// Entries deleted below every group's position.
    pub trimmed_passed: u64,
    /// Entries deleted by the length cap.
    pub trimmed_by_cap: u64,
    /// Groups that had not passed entries the cap deleted.
    pub stale_groups: Vec<String>,
    /// Stream length afterwards.
    pub len: u64,
}

/// Every group of `stream` with its position (empty when the stream or its
/// groups do not exist).
pub async fn group_positions(redis: &Redis, stream: &str) -> anyhow::Result<Vec<GroupPosition>> {
    let mut conn = redis.conn();
    let exists: bool = redis::cmd("EXISTS")
        .arg(stream)
        .query_async(&mut conn)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(&mut conn)
        .await?;
    let mut out = Vec::with_capacity(groups.groups.len());
    for g in groups.groups {
        let pending = u64::try_from(g.pending).unwrap_or(0);
        let oldest_pending = if pending > 0 {
            let reply: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
                .arg(stream)
                .arg(&g.name)
                .query_async(&mut conn)
                .await?;
            match reply {
                redis::streams::StreamPendingReply::Data(d) => StreamId::parse(&d.start_id),
                _ => None,
            }
        } else {
            None
        };
        let position = match oldest_pending {
            Some(id) => id,
            // Nothing pending (acknowledged since XINFO, or none): what was
            // delivered is passed.
            None => StreamId::parse(&g.last_delivered_id).ok_or_else(|| {
                anyhow::anyhow!("bad last-delivered-id {:?}", g.last_delivered_id)
            })?,
        };
        out.push(GroupPosition {
            group: g.name,
            pending,
            position,
        });
    }
    Ok(out)
}

/// Trims `stream` below every group's position, then to `max_len`
/// entries at most (see the module comment).
pub async fn trim(redis: &Redis, stream: &str, max_len: u64) -> anyhow::Result<TrimOutcome> {
    let groups = group_positions(redis, stream).await?;
    let mut conn = redis.conn();
    let mut outcome = TrimOutcome::default();
    if let Some(min) = groups.iter().map(|g| g.position).min()
        && min > StreamId(0, 0)
    {
        outcome.trimmed_passed = redis::cmd("XTRIM")
            .arg(stream)
            .arg("MINID")
            .arg(min.to_string())
            .query_async(&mut conn)
            .await?;
    }
    let len: u64 = redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut conn)
        .await?;
    if len > max_len {
        outcome.trimmed_by_cap = redis::cmd("XTRIM")
            .arg(stream)
            .arg("MAXLEN")
            .arg(max_len)
            .query_async(&mut conn)
            .await?;
        let first: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        if let Some(oldest_kept) = first.ids.first().and_then(|e| StreamId::parse(&e.id)) {
            outcome.stale_groups = groups
                .iter()
                .filter(|g| g.position < oldest_kept)
                .map(|g| g.group.clone())
                .collect();
        }
    }
    outcome.len = redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut conn)
        .await?;
    Ok(outcome)
}

/// Runs [`trim`] on `<prefix>:events` every `interval` until `shutdown`,
/// with its log lines and metrics. Every matching replica runs it; trims
/// are idempotent, so several replicas do no harm.
pub async fn run(redis: Redis, max_len: u64, interval: Duration, shutdown: Shutdown) {
    let stream = redis.events_stream();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.wait() => return,
        }
        match trim(&redis, &stream, max_len).await {
            Ok(o) => {
                #[allow(clippy::cast_precision_loss)]
                {
                    metrics::gauge!("exchange_events_stream_length").set(o.len as f64);
                    metrics::gauge!("exchange_events_stream_stale_groups")
                        .set(o.stale_groups.len() as f64);
                }
                metrics::counter!("exchange_events_stream_trimmed_total")
                    .increment(o.trimmed_passed + o.trimmed_by_cap);
                for group in &o.stale_groups {
                    metrics::counter!("exchange_events_stream_stale_group_trims_total", "group" => group.clone())
                        .increment(1);
                    tracing::warn!(
                        stream,
                        group,
                        max_len,
                        trimmed = o.trimmed_by_cap,
                        "consumer group stale: the events stream was cut to EVENTS_STREAM_MAX_LEN past entries it has not read; \
                         a dead marketdata replica's group should be deleted (XGROUP DESTROY, see RUNBOOK)"
                    );
                }
                if o.trimmed_passed + o.trimmed_by_cap > 0 {
                    tracing::debug!(
                        stream,
                        trimmed_passed = o.trimmed_passed,
                        trimmed_by_cap = o.trimmed_by_cap,
                        len = o.len,
                        "events stream trimmed"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(
                    stream,
                    error = format!("{e:#}"),
                    "events stream trim failed; will retry"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_order() {
        assert_eq!(StreamId::parse("5-3"), Some(StreamId(5, 3)));
        assert_eq!(StreamId::parse("0-0"), Some(StreamId(0, 0)));
        assert_eq!(StreamId::parse("7"), Some(StreamId(7, 0)));
        assert_eq!(StreamId::parse("x-1"), None);
        assert!(StreamId(5, 10) < StreamId(6, 0));
        assert!(StreamId(5, 2) < StreamId(5, 10));
        assert_eq!(StreamId(12, 4).to_string(), "12-4");
    }
}
