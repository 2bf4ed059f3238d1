//! The `orders` row as stored, and the order as every API shows it
//! (API.md's `Order` plus extensions): the order service's REST answers,
//! clearing's private pushes and the Binance views all read it through
//! [`ORDER_COLUMNS`] into an [`OrderRow`].

use exchange_domain::money::{format_units, pow10};
use serde::Serialize;

use crate::numeric::{Scales, amount, db_units};

/// The columns every order query selects, in [`OrderRow`]'s order.
pub const ORDER_COLUMNS: &str = "id, user_id, client_order_id, market, side, type AS order_type, \
    time_in_force, post_only, stp, price::text AS price, stop_price::text AS stop_price, \
    quantity::text AS quantity, quote_quantity::text AS quote_quantity, \
    filled_quantity::text AS filled_quantity, filled_quote::text AS filled_quote, \
    reserve_asset, reserved::text AS reserved, locked_remaining::text AS locked_remaining, \
    status, reason, seq, \
    floor(extract(epoch FROM created_at) * 1000)::bigint AS created_ms, \
    floor(extract(epoch FROM updated_at) * 1000)::bigint AS updated_ms, \
    floor(extract(epoch FROM triggered_at) * 1000)::bigint AS triggered_ms";

/// One `orders` row, numerics as their decimal text.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderRow {
    pub id: i64,
    pub user_id: i64,
    pub client_order_id: Option<String>,
    pub market: String,
    pub side: String,
    pub order_type: String,
    pub time_in_force: String,
    pub post_only: bool,
    pub stp: String,
    pub price: Option<String>,
    pub stop_price: Option<String>,
    pub quantity: Option<String>,
    pub quote_quantity: Option<String>,
    pub filled_quantity: String,
    pub filled_quote: String,
    pub reserve_asset: String,
    pub reserved: String,
    pub locked_remaining: String,
    pub status: String,
    pub reason: Option<String>,
    pub seq: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// When a stop or take-profit triggered; `None` while it waits.
    pub triggered_ms: Option<i64>,
}

impl OrderRow {
    pub fn is_open(&self) -> bool {
        matches!(self.status.as_str(), "new" | "partially_filled")
    }
}

/// The order as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderJson {
    pub id: i64,
    pub client_order_id: Option<String>,
    pub market: String,
    pub side: String,
    #[serde(rename = "type")]
    pub order_type: String,
    pub price: Option<String>,
    pub quantity: Option<String>,
    pub filled_quantity: String,
    pub status: &'static str,
    pub created_at: i64,
    pub updated_at: i64,
    pub quote_quantity: Option<String>,
    pub stop_price: Option<String>,
    pub time_in_force: String,
    pub post_only: bool,
    pub stp: String,
    pub average_price: Option<String>,
    pub reason: Option<String>,
    /// When a stop or take-profit triggered (ms); absent while it waits
    /// and for other types.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub triggered_at: Option<i64>,
}

/// The public status: the database's `expired` shows as `canceled` (its
/// `reason` says why); anything unknown as `new` never happens (checked column).
pub fn api_status(db: &str) -> &'static str {
    match db {
        "partially_filled" => "partially_filled",
        "filled" => "filled",
        "canceled" | "expired" => "canceled",
        "rejected" => "rejected",
        _ => "new",
    }
}

/// `filled_quote / filled_quantity` as a price at the quote scale, rounded down.
pub fn average_price(filled_quote: u128, filled_qty: u128, base_scale: u8) -> Option<u128> {
    if filled_qty == 0 {
        return None;
    }
    filled_quote
        .checked_mul(pow10(base_scale))
        .map(|q| q / filled_qty)
}

impl OrderJson {
    /// The order as shown, its amounts at `scales` (those of its market;
    /// `None`, for a market no longer known, shows them as stored).
    pub fn new(row: &OrderRow, scales: Option<Scales>) -> Self {
        let Scales {
            base: bs,
            quote: qs,
        } = scales.unwrap_or(Scales::STORED);
        let avg = match (
            db_units(&row.filled_quote, qs),
            db_units(&row.filled_quantity, bs),
        ) {
            (Ok(q), Ok(b)) => average_price(q, b, bs).map(|p| format_units(p, qs)),
            _ => None,
        };
        Self {
            id: row.id,
            client_order_id: row.client_order_id.clone(),
            market: row.market.clone(),
            side: row.side.clone(),
            order_type: row.order_type.clone(),
            price: row.price.as_deref().map(|t| amount(t, qs)),
            quantity: row.quantity.as_deref().map(|t| amount(t, bs)),
            filled_quantity: amount(&row.filled_quantity, bs),
            status: api_status(&row.status),
            created_at: row.created_ms,
            updated_at: row.updated_ms,
            quote_quantity: row.quote_quantity.as_deref().map(|t| amount(t, qs)),
            stop_price: row.stop_price.as_deref().map(|t| amount(t, qs)),
            time_in_force: row.time_in_force.clone(),
            post_only: row.post_only,
            stp: row.stp.clone(),
            average_price: avg,
            reason: row.reason.clone(),
            triggered_at: row.triggered_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_average_price() {
        assert_eq!(api_status("expired"), "canceled");
        assert_eq!(api_status("partially_filled"), "partially_filled");
        // 0.3 BTC (scale 8) for 15000.01 USDT (scale 6): 50000.033333.. -> 50000.033333
        assert_eq!(
            average_price(15_000_010_000, 30_000_000, 8),
            Some(50_000_033_333)
        );
        assert_eq!(average_price(1, 0, 8), None);
    }
}
