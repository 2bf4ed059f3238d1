//! Private events published after a settlement commits, on the Redis
//! Pub/Sub channel `<prefix>:private:<user_id>`. The gateway's private
//! WebSocket adds the per-user `seq` and forwards them.
//!
//! Shapes (amounts are decimal strings, times Unix milliseconds):
//! - `{"type":"order","data":Order}`
//! - `{"type":"trade","data":Fill}`
//! - `{"type":"balance","data":{"asset","available","locked"}}`

use serde::Serialize;

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

/// One message on a user's private channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum PrivateEvent {
    Order(OrderView),
    Trade(FillView),
    Balance(BalanceView),
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
