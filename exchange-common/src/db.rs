//! The Postgres pool and the migration runner.
//!
//! Migrations are the SQL files of `exchange-common/migrations/`, embedded at
//! build time, applied in lexical order, each once and inside its own
//! transaction, recorded in `schema_migrations(version)` where `version` is
//! the file name — the same bookkeeping (and advisory lock) as
//! `exchange-common/scripts/migrate.sh`, so either tool may be used.
//!
//! TLS comes from the URL as libpq reads it: `sslmode=require` (encrypted,
//! certificate not checked), `verify-ca` (chains to `sslrootcert=`, or the
//! system's trust store), `verify-full` (and names the host).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::config::Config;

/// How long a request waits for a pooled connection before failing.
pub const DB_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The advisory lock `migrate.sh` also takes, so concurrent runners serialise.
const MIGRATION_LOCK_ID: i64 = 727_361;

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Every embedded migration as `(file name, sql)`, in lexical order.
pub fn migrations() -> &'static [(&'static str, &'static str)] {
    MIGRATIONS
}

pub fn connect_options(
    url: &str,
    statement_timeout: Duration,
    application_name: &str,
) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url)?
        .application_name(application_name)
        .options([(
            "statement_timeout",
            statement_timeout.as_millis().to_string(),
        )]))
}

/// A lazily connecting pool: the service starts (and `/ready` reports
/// postgres down) even while the database is unreachable.
pub fn pool(config: &Config, application_name: &str) -> Result<PgPool, sqlx::Error> {
    let options = connect_options(
        config.db.url.expose(),
        config.db.statement_timeout,
        application_name,
    )?;
    Ok(PgPoolOptions::new()
        .max_connections(config.db.pool_max)
        .acquire_timeout(DB_ACQUIRE_TIMEOUT)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(options))
}

/// Where `options` connects, for messages: `host:port` or the socket path
/// (never the user or password).
pub fn target(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

/// [`target`] of a URL (`DB_URL` when it does not parse).
pub fn url_target(url: &str) -> String {
    PgConnectOptions::from_str(url).map_or_else(|_| "DB_URL".to_owned(), |o| target(&o))
}

/// `e` (from connecting or querying) as one line naming the server, e.g.
/// `postgres at db.internal:5432: TLS: invalid peer certificate: UnknownIssuer`.
pub fn describe_error(target: &str, e: &sqlx::Error) -> String {
    let what = match e {
        sqlx::Error::Tls(e) => format!("TLS: {e}"),
        sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            // rustls reports a failed handshake (e.g. an unknown CA) as I/O.
            format!("TLS or I/O: {e}")
        }
        e => e.to_string(),
    };
    format!(
        "postgres at {target}: {what}{}",
        tls_hint(&what, "sslrootcert= in DB_URL")
    )
}

/// What an operator should check after a TLS verification failure (as
/// rustls words it), or nothing; `ca_setting` names where the CA is set.
pub fn tls_hint(error: &str, ca_setting: &str) -> String {
    if error.contains("UnknownIssuer") || error.contains("BadSignature") {
        format!(
            " (the server's certificate is not signed by a CA this service trusts: check {ca_setting})"
        )
    } else if error.contains("NotValidForName") {
        " (the server's certificate does not name the host of the URL)".to_owned()
    } else if error.contains("Expired") || error.contains("NotValidYet") {
        " (the server's certificate is outside its validity period, or this clock is wrong)"
            .to_owned()
    } else {
        String::new()
    }
}

/// Applies the pending migrations; returns the names applied now.
pub async fn migrate(url: &str) -> anyhow::Result<Vec<&'static str>> {
    use anyhow::Context as _;
    let options = PgConnectOptions::from_str(url).context("DB_URL is not a valid postgres URL")?;
    let target = target(&options);
    let mut conn = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::PgConnection::connect_with(&options),
    )
    .await
    .with_context(|| format!("timed out connecting to the database at {target}"))?
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to the database: {}",
            describe_error(&target, &e)
        )
    })?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version text PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .execute(&mut conn)
    .await
    .context("cannot create schema_migrations")?;
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK_ID)
            .execute(&mut *tx)
            .await?;
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)",
        )
        .bind(*version)
        .fetch_one(&mut *tx)
        .await?;
        if done {
            continue;
        }
        sqlx::raw_sql(*sql)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("migration {version} failed, nothing of it was applied"))?;
        sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
            .bind(*version)
            .execute(&mut *tx)
            .await?;
        tx.commit()
            .await
            .with_context(|| format!("migration {version}: commit failed"))?;
        tracing::info!(version, "migration applied");
        applied.push(*version);
    }
    Ok(applied)
}

/// Whether `e` means a parameter held text PostgreSQL cannot store (a NUL
/// character, invalid UTF-8): bad input, answered 400, never a server error.
pub fn is_bad_text(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "22021" || c == "22P05")
}

/// Whether `e` means the database could not be reached or ended the session
/// (connection lost, server restarting or shutting down, too many
/// connections, lock or serialization race), so the statement was not
/// applied and the same request may simply be retried. Callers answer 503
/// `UNAVAILABLE` for these, never 500.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c == "40001"
                || c == "40P01"
                || c == "55P03"
                || c.starts_with("08")
                || c.starts_with("57P")
                || c.starts_with("53")
        }),
        _ => false,
    }
}
