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
use exchange_domain::money::{format_units, parse_units, pow10};
use serde::Serialize;
use sqlx::{PgConnection, Row as _};

use crate::plan::MarketAssets;

/// An order exactly as the order service's REST API shows it
/// (`exchange-order/src/view.rs`, `OrderJson`): the database's `expired`
/// shows as `canceled` with its `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderView {
    pub id: u64,
    /// The channel this goes to; not part of the message.
    #[serde(skip)]
    pub user_id: u64,
    pub client_order_id: Option<String>,
    pub market: String,
    pub side: String,
    #[serde(rename = "type")]
    pub order_type: String,
    pub price: Option<String>,
    pub quantity: Option<String>,
    pub filled_quantity: String,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub quote_quantity: Option<String>,
    pub stop_price: Option<String>,
    pub time_in_force: String,
    pub post_only: bool,
    pub stp: String,
    /// `filled_quote / filled_quantity` at the quote scale, rounded down.
    pub average_price: Option<String>,
    pub reason: Option<String>,
    /// When a stop or take-profit triggered (ms); absent while it waits
    /// and for other types.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub triggered_at: Option<i64>,
}

/// The public status of a stored one.
pub fn api_status(db: &str) -> &'static str {
    match db {
        "partially_filled" => "partially_filled",
        "filled" => "filled",
        "canceled" | "expired" => "canceled",
        "rejected" => "rejected",
        _ => "new",
    }
}

/// One side of a trade, as `GET /api/v1/account/trades` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FillView {
    pub id: u64,
    pub order_id: u64,
    pub trade_id: u64,
    pub market: String,
    pub side: String,
    pub price: String,
    pub quantity: String,
    pub quote_amount: String,
    pub fee: String,
    pub fee_asset: String,
    pub liquidity: String,
    pub time: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalanceView {
    pub asset: String,
    pub available: String,
    pub locked: String,
}

/// One event on a user's private channel (an element of a message's array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum PrivateEvent {
    Order(OrderView),
    Trade(FillView),
    Balance(BalanceView),
}

/// `filled_quote / filled_quantity` at the quote scale, rounded down.
fn average_price(m: &MarketAssets, filled_quantity: &str, filled_quote: &str) -> Option<String> {
    let q = parse_units(filled_quote, m.quote_scale).ok()?;
    let b = parse_units(filled_quantity, m.base_scale).ok()?;
    if b == 0 {
        return None;
    }
    let p = q.checked_mul(pow10(m.base_scale))? / b;
    Some(format_units(p, m.quote_scale))
}

/// The `orders o` columns an [`OrderView`] is read from, in the order
/// [`order_view_of_row`] expects them.
pub const ORDER_VIEW_COLUMNS: &str =
    "o.id, o.user_id, o.client_order_id, o.market, o.side, o.type, o.time_in_force,
     trim_scale(o.price)::text, trim_scale(o.quantity)::text,
     trim_scale(o.quote_quantity)::text, trim_scale(o.filled_quantity)::text,
     trim_scale(o.filled_quote)::text, o.status, o.reason,
     (extract(epoch FROM o.created_at) * 1000)::bigint,
     (extract(epoch FROM o.updated_at) * 1000)::bigint,
     trim_scale(o.stop_price)::text, o.post_only, o.stp,
     (extract(epoch FROM o.triggered_at) * 1000)::bigint";

/// An order as pushed, from a row of [`ORDER_VIEW_COLUMNS`].
pub fn order_view_of_row(
    r: &sqlx::postgres::PgRow,
    markets: &BTreeMap<String, MarketAssets>,
) -> Result<OrderView, sqlx::Error> {
    let uid = |v: i64| u64::try_from(v).unwrap_or_default();
    let market: String = r.try_get(3)?;
    let filled_quantity: String = r.try_get(10)?;
    let filled_quote: String = r.try_get(11)?;
    let status: String = r.try_get(12)?;
    let average_price = markets
        .get(&market)
        .and_then(|m| average_price(m, &filled_quantity, &filled_quote));
    Ok(OrderView {
        id: uid(r.try_get(0)?),
        user_id: uid(r.try_get(1)?),
        client_order_id: r.try_get(2)?,
        market,
        side: r.try_get(4)?,
        order_type: r.try_get(5)?,
        time_in_force: r.try_get(6)?,
        price: r.try_get(7)?,
        quantity: r.try_get(8)?,
        quote_quantity: r.try_get(9)?,
        filled_quantity,
        status: api_status(&status).to_owned(),
        reason: r.try_get(13)?,
        created_at: r.try_get(14)?,
        updated_at: r.try_get(15)?,
        stop_price: r.try_get(16)?,
        post_only: r.try_get(17)?,
        stp: r.try_get(18)?,
        average_price,
        triggered_at: r.try_get(19)?,
    })
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
) -> Result<Vec<OrderView>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_VIEW_COLUMNS} FROM orders o WHERE o.id = ANY($1) ORDER BY o.id"
    )))
    .persistent(false)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(order_view_of_row(r, markets)?);
    }
    Ok(out)
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
        let m = PrivateEvent::Balance(BalanceView {
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
