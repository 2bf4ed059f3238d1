//! Whether PostgreSQL's continuous WAL archiving (the backups' half that
//! bounds the RPO, docs/RUNBOOK.md "Backups") keeps up, read from
//! `pg_stat_archiver` and exported as gauges, so the
//! `ExchangeWalArchiving*` alerts fire when archiving fails or falls
//! behind. A managed database that archives on its own (or hides the view)
//! shows `exchange_pg_wal_archiving_enabled 0` and the alerts stay quiet.

use std::time::Duration;

use sqlx::PgPool;

/// How often the archiver's state is read.
pub const WAL_ARCHIVE_CHECK_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, sqlx::FromRow)]
struct ArchiverState {
    enabled: bool,
    /// Completed WAL segments not archived yet (none while in recovery).
    pending_segments: Option<i64>,
    /// The last attempt failed (and nothing was archived since).
    failing: bool,
    last_archived_unix: Option<i64>,
}

/// The segment number of a WAL file name (`TTTTTTTTLLLLLLLLSSSSSSSS`, hex):
/// log × segments per log + segment.
const SEGNO: &str = "(('x' || substr(f, 9, 8))::bit(32)::bigint * (4294967296 / seg_bytes)
                      + ('x' || substr(f, 17, 8))::bit(32)::bigint)";

/// Reads the archiver's state and sets the gauges.
pub async fn export(db: &PgPool) -> sqlx::Result<()> {
    let query = format!(
        "WITH s AS (SELECT setting::bigint AS seg_bytes FROM pg_settings WHERE name = 'wal_segment_size'),
              cur AS (SELECT CASE WHEN pg_is_in_recovery() THEN NULL
                                  ELSE pg_walfile_name(pg_current_wal_lsn()) END AS f),
              last AS (SELECT CASE WHEN last_archived_wal ~ '^[0-9A-F]{{24}}'
                                   THEN substr(last_archived_wal, 1, 24) END AS f
                       FROM pg_stat_archiver)
         SELECT current_setting('archive_mode') <> 'off' AS enabled,
                greatest((SELECT {SEGNO} FROM cur, s) - coalesce((SELECT {SEGNO} FROM last, s), -1) - 1, 0)
                    AS pending_segments,
                coalesce(a.last_failed_time > coalesce(a.last_archived_time, '-infinity'), false) AS failing,
                extract(epoch FROM a.last_archived_time)::bigint AS last_archived_unix
         FROM pg_stat_archiver a"
    );
    let st: ArchiverState = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .fetch_one(db)
        .await?;
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    metrics::gauge!("exchange_pg_wal_archiving_enabled").set(flag(st.enabled));
    metrics::gauge!("exchange_pg_wal_archive_failing").set(flag(st.enabled && st.failing));
    #[allow(clippy::cast_precision_loss)] // counts and Unix seconds: far below 2^53
    {
        let pending = if st.enabled {
            st.pending_segments.unwrap_or(0)
        } else {
            0
        };
        metrics::gauge!("exchange_pg_wal_archive_pending_segments").set(pending as f64);
        if let Some(t) = st.last_archived_unix {
            metrics::gauge!("exchange_pg_wal_archive_last_success_timestamp_seconds").set(t as f64);
        }
    }
    Ok(())
}
