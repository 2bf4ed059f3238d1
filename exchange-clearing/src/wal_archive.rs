//! Whether PostgreSQL's continuous WAL archiving (the backups' half that
//! bounds the RPO, docs/RUNBOOK.md "Backup and restore") keeps up, read from
//! `pg_stat_archiver` and exported as gauges, so the
//! `ExchangeWalArchiving*` alerts fire when archiving fails or falls
//! behind. With `archive_mode` off (a managed database that archives
//! outside PostgreSQL, or none) `exchange_pg_wal_archiving_enabled` is 0 and
//! the alerts stay quiet.

use std::time::Duration;

use sqlx::PgPool;

/// How often the archiver's state is read.
pub const WAL_ARCHIVE_CHECK_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, sqlx::FromRow)]
struct ArchiverState {
    enabled: bool,
    /// The last attempt failed (and nothing was archived since).
    failing: bool,
    last_archived_unix: Option<i64>,
}

/// The segment number of a WAL file name `f` (`TTTTTTTTLLLLLLLLSSSSSSSS`,
/// hex): log × segments per log + segment.
const SEGNO: &str = "(('x' || substr(f, 9, 8))::bit(32)::bigint * (4294967296 / seg_bytes)
                      + ('x' || substr(f, 17, 8))::bit(32)::bigint)";

/// Reads the archiver's state and sets the gauges.
pub async fn export(db: &PgPool) -> sqlx::Result<()> {
    let st: ArchiverState = sqlx::query_as(
        "SELECT current_setting('archive_mode') <> 'off' AS enabled,
                coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) AS failing,
                extract(epoch FROM last_archived_time)::bigint AS last_archived_unix
         FROM pg_stat_archiver",
    )
    .fetch_one(db)
    .await?;
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    metrics::gauge!("exchange_pg_wal_archiving_enabled").set(flag(st.enabled));
    metrics::gauge!("exchange_pg_wal_archive_failing").set(flag(st.enabled && st.failing));
    #[allow(clippy::cast_precision_loss)] // Unix seconds: far below 2^53
    if let Some(t) = st.last_archived_unix {
        metrics::gauge!("exchange_pg_wal_archive_last_success_timestamp_seconds").set(t as f64);
    }
    // Separately: the current WAL position is not readable everywhere (a
    // replica, some managed databases), and the rest must not depend on it.
    let pending = if st.enabled {
        pending_segments(db).await.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "WAL position unreadable; pending segments shown as 0");
            0
        })
    } else {
        0
    };
    #[allow(clippy::cast_precision_loss)] // a count of segments
    metrics::gauge!("exchange_pg_wal_archive_pending_segments").set(pending as f64);
    Ok(())
}

/// Completed WAL segments not archived yet: between the last archived one
/// and the one being written. 0 when unknown: in recovery, or before the
/// archiver's statistics name a segment (they are reset by a crash, and an
/// idle database archives nothing to set them again; a broken archiver
/// shows as failing instead).
async fn pending_segments(db: &PgPool) -> sqlx::Result<i64> {
    let query = format!(
        "WITH s AS (SELECT setting::bigint AS seg_bytes FROM pg_settings WHERE name = 'wal_segment_size'),
              cur AS (SELECT pg_walfile_name(pg_current_wal_lsn()) AS f WHERE NOT pg_is_in_recovery()),
              last AS (SELECT substr(last_archived_wal, 1, 24) AS f FROM pg_stat_archiver
                       WHERE last_archived_wal ~ '^[0-9A-F]{{24}}')
         SELECT coalesce(greatest((SELECT {SEGNO} FROM cur, s) - (SELECT {SEGNO} FROM last, s) - 1, 0), 0)"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(query))
        .fetch_one(db)
        .await
}
