//! The `fills` row (one side of a trade) and the fill as every API shows
//! it: `GET /api/v1/account/trades` and clearing's private `trade` pushes.

use serde::Serialize;

use crate::numeric::{Scales, amount};

/// The columns every fill query selects, in [`FillRow`]'s order.
pub const FILL_COLUMNS: &str = "id, order_id, trade_id, market, side, price::text AS price, \
    quantity::text AS quantity, quote_amount::text AS quote_amount, fee::text AS fee, \
    fee_asset, liquidity, time_ms";

/// One `fills` row, numerics as their decimal text.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FillRow {
    pub id: i64,
    pub order_id: i64,
    pub trade_id: i64,
    pub market: String,
    pub side: String,
    pub price: String,
    pub quantity: String,
    pub quote_amount: String,
    pub fee: String,
    pub fee_asset: String,
    pub liquidity: String,
    pub time_ms: i64,
}

/// The fill as the API shows it (API.md's fill plus `trade_id` and
/// `quote_amount`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FillJson {
    pub id: i64,
    pub order_id: i64,
    pub trade_id: i64,
    pub market: String,
    pub side: String,
    pub price: String,
    pub quantity: String,
    /// `price × quantity`, exact, in the quote asset.
    pub quote_amount: String,
    pub fee: String,
    pub fee_asset: String,
    /// `maker` or `taker`.
    pub liquidity: String,
    pub time: i64,
}

impl FillJson {
    /// The fill as shown, its amounts at `scales` (those of its market;
    /// `None`, for a market no longer known, shows them as stored).
    pub fn new(row: &FillRow, scales: Option<Scales>) -> Self {
        let Scales {
            base: bs,
            quote: qs,
        } = scales.unwrap_or(Scales::STORED);
        // A side pays its fee in what it receives: base for a buyer.
        let fee_scale = if row.side == "buy" { bs } else { qs };
        Self {
            id: row.id,
            order_id: row.order_id,
            trade_id: row.trade_id,
            market: row.market.clone(),
            side: row.side.clone(),
            price: amount(&row.price, qs),
            quantity: amount(&row.quantity, bs),
            quote_amount: amount(&row.quote_amount, qs),
            fee: amount(&row.fee, fee_scale),
            fee_asset: row.fee_asset.clone(),
            liquidity: row.liquidity.clone(),
            time: row.time_ms,
        }
    }
}
