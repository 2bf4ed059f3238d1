//! Private events after a custody change commits, on the same Pub/Sub
//! channel clearing uses (`<prefix>:private:<user_id>`, a JSON array per
//! message), so the gateway's private WebSocket forwards them with the
//! user's `seq`: `{"type":"deposit","data":Deposit}`,
//! `{"type":"withdrawal","data":Withdrawal}` and the `balance` they moved.
//! Best effort, as every push: a lost one is healed by the client's REST
//! resync; the database already holds the truth.

use std::time::Duration;

use exchange_common::redis::Redis;
use exchange_store::BalanceJson;
use exchange_store::balances::BALANCE_COLUMNS;
use serde_json::{Value, json};
use sqlx::PgPool;

/// The longest a publish may take.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn balance(db: &PgPool, user_id: i64, asset: &str) -> Option<Value> {
    let row: Option<BalanceJson> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {BALANCE_COLUMNS} FROM balances WHERE user_id = $1 AND asset = $2"
    )))
    .bind(user_id)
    .bind(asset)
    .fetch_optional(db)
    .await
    .ok()
    .flatten();
    row.map(|b| json!({ "type": "balance", "data": b }))
}

/// Publishes `events` to the user's private channel, with their balance of
/// `asset` after it when `with_balance`.
pub async fn publish(
    db: &PgPool,
    redis: &Redis,
    user_id: i64,
    mut events: Vec<Value>,
    balance_of: Option<&str>,
) {
    if let Some(asset) = balance_of
        && let Some(b) = balance(db, user_id, asset).await
    {
        events.push(b);
    }
    let channel = format!("{}:private:{user_id}", redis.prefix());
    let message = Value::Array(events).to_string();
    let mut conn = redis.conn();
    let sent = tokio::time::timeout(
        PUBLISH_TIMEOUT,
        redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&message)
            .query_async::<i64>(&mut conn),
    )
    .await;
    if !matches!(sent, Ok(Ok(_))) {
        metrics::counter!("exchange_wallet_push_failures_total").increment(1);
        tracing::warn!(
            user_id,
            "private push not sent (the client resyncs over REST)"
        );
    }
}
