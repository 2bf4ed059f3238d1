//! Private events published after a settlement commits, on the Redis
//! Pub/Sub channel `<prefix>:private:<user_id>`, a user's events of one
//! settlement together as a JSON array (up to
//! [`crate::consumer::PRIVATE_EVENTS_PER_MESSAGE_MAX`] per message). The
//! gateway's private WebSocket adds the per-user `seq` and forwards each.
//!
//! Shapes (amounts are decimal strings, times Unix milliseconds):
//! - `{"type":"order","data":Order}`
//! - `{"type":"trade","data":Fill}`
//! - `{"type":"balance","data":{"asset","available","locked"}}`
//!
//! Every order a settlement touches is published in its state after it:
//! fills, amends and ends (`OrderDone`: filled, canceled, expired shown as
//! canceled, rejected) through the settlement's own order updates, and an
//! order that was only accepted (it rests on the book, or a stop order
//! waits for its trigger) through [`accepted_order_ids`], so a client learns
//! its order is open (`new`) without polling.

use std::collections::{BTreeMap, BTreeSet};

use exchange_domain::EventBatch;
use exchange_domain::event::Event;
use exchange_store::{BalanceJson, FillJson, ORDER_COLUMNS, OrderJson, OrderRow};
use serde::Serialize;
use sqlx::PgConnection;

use crate::plan::MarketAssets;

/// One event on a user's private channel (an element of a message's array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum PrivateEvent {
    Order(OrderJson),
    Trade(FillJson),
    Balance(BalanceJson),
}

/// An order as pushed, with its owner (the channel it goes to), from a
/// row read by [`ORDER_COLUMNS`].
pub fn order_view(row: &OrderRow, markets: &BTreeMap<String, MarketAssets>) -> (u64, OrderJson) {
    let scales = markets.get(&row.market).map(MarketAssets::scales);
    (
        u64::try_from(row.user_id).unwrap_or_default(),
        OrderJson::new(row, scales),
    )
}

/// The ids of the orders `batches` accepted that `covered` (the orders the
/// settlement updates) does not include, sorted: they changed no row, but
/// their owners still learn they are open.
pub fn accepted_order_ids(batches: &[&EventBatch], covered: impl Fn(u64) -> bool) -> Vec<i64> {
    let ids: BTreeSet<i64> = batches
        .iter()
        .flat_map(|b| &b.events)
        .filter_map(|e| match e {
            Event::OrderAccepted { order_id, .. } if !covered(order_id.0) => {
                i64::try_from(order_id.0).ok()
            }
            _ => None,
        })
        .collect();
    ids.into_iter().collect()
}

/// The orders `ids` ([`accepted_order_ids`]) as their rows are now (read
/// in the settlement's transaction; the order service wrote them before
/// matching saw them), sorted by id. Only for a settlement that updates no
/// order: otherwise the update reads them in the same statement.
pub async fn accepted_orders(
    tx: &mut PgConnection,
    ids: &[i64],
    markets: &BTreeMap<String, MarketAssets>,
) -> Result<Vec<(u64, OrderJson)>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = ANY($1) ORDER BY id"
    )))
    .persistent(false)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.iter().map(|r| order_view(r, markets)).collect())
}

/// The channel of a user's private events, given the Redis key prefix.
pub fn channel(prefix: &str, user_id: u64) -> String {
    format!("{prefix}:private:{user_id}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn balance_message_shape() {
        let m = PrivateEvent::Balance(BalanceJson {
            asset: "USDT".into(),
            available: "1.5".into(),
            locked: "0".into(),
        });
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"balance","data":{"asset":"USDT","available":"1.5","locked":"0"}}"#
        );
    }
}
