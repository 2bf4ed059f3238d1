//! `exchange admin dlq list|show|replay|drop`: the operator's tools for dead
//! letters (`<stream>:dlq`, written by the consumer runtime after an entry
//! failed its delivery limit; see `exchange_common::streams`).
//!
//! `replay` puts the entry's original fields back on its stream (consumers
//! are idempotent, so a replay of something already applied is harmless) and
//! deletes it from the dead letters; `drop` only deletes. Both are recorded
//! before they happen, in one transaction, in the `dlq_audit` table and in
//! the audit log (`dlq.replay` / `dlq.drop`, actor `cli:<operator>`), so no
//! dead letter disappears without a trace; the operator is
//! `EXCHANGE_OPERATOR`, else `USER`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use exchange_common::config::RedisConfig;
use exchange_common::redis::{Redis, RedisConn};
use exchange_common::streams::{DLQ_FIELD_ERROR, DLQ_FIELD_ID};
use redis::streams::{StreamId, StreamRangeReply};

const USAGE: &str = "usage: exchange admin dlq <command>

  list                         dead-letter streams under REDIS_KEY_PREFIX and their lengths
  show <stream> [<entry-id>]   the dead letters of <stream> (e.g. exchange:events), or one
  replay <stream> <entry-id>   put the entry back on <stream>, then remove it from <stream>:dlq
  drop <stream> <entry-id>     remove the entry from <stream>:dlq

env: REDIS_URL, REDIS_KEY_PREFIX (default exchange), REDIS_CA_FILE, REDIS_CLIENT_CERT_FILE,
REDIS_CLIENT_KEY_FILE, REDIS_CLUSTER_NODES; replay and drop also need DB_URL (audit)";

/// Entries `show` prints at most.
const SHOW_ENTRIES_MAX: usize = 100;
/// Bound on every Redis and Postgres call of the tool.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run_cli(args: &[String]) -> ExitCode {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["list"] => list().await,
        ["show", stream] => show(stream, None).await,
        ["show", stream, id] => show(stream, Some(id)).await,
        ["replay", stream, id] => resolve(Action::Replay, stream, id).await,
        ["drop", stream, id] => resolve(Action::Drop, stream, id).await,
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dlq: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy)]
enum Action {
    Replay,
    Drop,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Replay => "replay",
            Action::Drop => "drop",
        }
    }
}

fn env(name: &str) -> anyhow::Result<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => bail!("{name} is not set"),
    }
}

async fn timed<T>(
    what: &str,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .with_context(|| format!("{what}: timed out"))?
        .with_context(|| what.to_owned())
}

/// The services' own Redis (`exchange_common::redis::Redis`): `rediss://`
/// with REDIS_CA_FILE and a client certificate, and a Redis Cluster
/// (REDIS_CLUSTER_NODES), work here as they do there. Checked with a
/// `PING` first, so an unreachable server is one clear error.
async fn connect() -> anyhow::Result<(Redis, RedisConn)> {
    let config = RedisConfig::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let redis = Redis::from_config(&config).context("REDIS_URL")?;
    redis
        .probe(CALL_TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
    let conn = redis.conn();
    Ok((redis, conn))
}

fn dlq_key(stream: &str) -> String {
    format!("{stream}:dlq")
}

async fn list() -> anyhow::Result<()> {
    let (redis, mut conn) = connect().await?;
    let prefix = redis.prefix().to_owned();
    // On a cluster, every master's keys (SCAN alone sees one node's).
    let keys = redis
        .scan_keys(&format!("{prefix}:*:dlq"), "stream", CALL_TIMEOUT)
        .await
        .context("SCAN")?;
    if keys.is_empty() {
        println!("no dead-letter streams under {prefix}:");
    }
    for key in keys {
        let len: u64 = timed("XLEN", redis::cmd("XLEN").arg(&key).query_async(&mut conn)).await?;
        println!("{key}\t{len}");
    }
    Ok(())
}

fn field(entry: &StreamId, name: &str) -> Option<String> {
    entry.get::<String>(name)
}

fn print_entry(entry: &StreamId) {
    println!("{}", entry.id);
    let mut names: Vec<&String> = entry.map.keys().collect();
    names.sort();
    for name in names {
        let value = entry
            .get::<String>(name)
            .unwrap_or_else(|| "<binary>".to_owned());
        println!("  {name}: {value}");
    }
}

async fn show(stream: &str, id: Option<&str>) -> anyhow::Result<()> {
    let (_redis, mut conn) = connect().await?;
    let key = dlq_key(stream);
    let (start, end) = id.map_or(("-", "+"), |id| (id, id));
    let reply: StreamRangeReply = timed(
        "XRANGE",
        redis::cmd("XRANGE")
            .arg(&key)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(SHOW_ENTRIES_MAX)
            .query_async(&mut conn),
    )
    .await?;
    if reply.ids.is_empty() {
        match id {
            Some(id) => bail!("no entry {id} in {key}"),
            None => println!("{key} is empty"),
        }
    }
    for entry in &reply.ids {
        print_entry(entry);
    }
    Ok(())
}

/// Records a replay or drop about to happen: its `dlq_audit` row and its
/// audit-log entry, in one transaction. Returns the `dlq_audit` id.
async fn record(
    db: &sqlx::PgPool,
    action: Action,
    stream: &str,
    entry_id: &str,
    original_id: Option<&str>,
    error: Option<String>,
    operator: &str,
) -> sqlx::Result<i64> {
    let mut tx = db.begin().await?;
    let audit_id: i64 = sqlx::query_scalar(
        "INSERT INTO dlq_audit (action, stream, dlq_entry, original_id, error, operator)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(action.name())
    .bind(stream)
    .bind(entry_id)
    .bind(original_id)
    .bind(error)
    .bind(operator)
    .fetch_one(&mut *tx)
    .await?;
    let context = exchange_store::audit::AuditContext {
        actor: format!("cli:{operator}"),
        request_id: uuid::Uuid::new_v4().to_string(),
        ip: None,
    };
    let entry = context.entry(
        &format!("dlq.{}", action.name()),
        &format!("{stream} {entry_id}"),
        serde_json::json!({ "dlq_audit_id": audit_id, "original_id": original_id }),
    );
    exchange_store::audit::append(&mut tx, &entry).await?;
    tx.commit().await?;
    Ok(audit_id)
}

async fn resolve(action: Action, stream: &str, id: &str) -> anyhow::Result<()> {
    let db_url = env("DB_URL").context("the audit record needs Postgres")?;
    let operator = std::env::var("EXCHANGE_OPERATOR")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let (_redis, mut conn) = connect().await?;
    let key = dlq_key(stream);
    let reply: StreamRangeReply = timed(
        "XRANGE",
        redis::cmd("XRANGE")
            .arg(&key)
            .arg(id)
            .arg(id)
            .query_async(&mut conn),
    )
    .await?;
    let Some(entry) = reply.ids.first() else {
        bail!("no entry {id} in {key}");
    };

    let target = exchange_common::db::url_target(&db_url);
    let db = tokio::time::timeout(CALL_TIMEOUT, sqlx::PgPool::connect(&db_url))
        .await
        .with_context(|| format!("connect to postgres at {target}: timed out"))?
        .map_err(|e| {
            anyhow::anyhow!(
                "connect to postgres: {}",
                exchange_common::db::describe_error(&target, &e)
            )
        })?;
    // Audit first: if anything after this fails, the record shows the attempt.
    let original_id = field(entry, DLQ_FIELD_ID);
    let audit_id = tokio::time::timeout(
        CALL_TIMEOUT,
        record(
            &db,
            action,
            stream,
            id,
            original_id.as_deref(),
            field(entry, DLQ_FIELD_ERROR),
            &operator,
        ),
    )
    .await
    .context("audit insert: timed out")?
    .context("audit insert (are the dlq_audit and audit_log migrations applied?)")?;

    if let Action::Replay = action {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(stream).arg("*");
        let mut names: Vec<&String> = entry
            .map
            .keys()
            .filter(|k| !k.starts_with("dlq."))
            .collect();
        names.sort();
        if names.is_empty() {
            bail!("entry {id} has no original fields to replay");
        }
        for name in names {
            let value: Vec<u8> = entry.get(name).unwrap_or_default();
            xadd.arg(name).arg(value);
        }
        let new_id: String = timed("XADD", xadd.query_async(&mut conn)).await?;
        tokio::time::timeout(
            CALL_TIMEOUT,
            sqlx::query("UPDATE dlq_audit SET new_id = $1 WHERE id = $2")
                .bind(&new_id)
                .bind(audit_id)
                .execute(&db),
        )
        .await
        .context("audit update: timed out")?
        .context("audit update")?;
        println!("replayed {key} {id} onto {stream} as {new_id}");
    }
    let deleted: u64 = timed(
        "XDEL",
        redis::cmd("XDEL").arg(&key).arg(id).query_async(&mut conn),
    )
    .await?;
    if deleted != 1 {
        bail!("{id} was not deleted from {key} (already gone?)");
    }
    println!(
        "{} {key} {id} (audit #{audit_id}, operator {operator})",
        action.name()
    );
    Ok(())
}
