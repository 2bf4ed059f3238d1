//! Public reference data: assets and markets.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use exchange_common::ApiError;
use exchange_common::error::Json;

use crate::state::AppState;

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct AssetView {
    pub symbol: String,
    pub scale: i16,
    /// The chain it is deposited and withdrawn on; absent for an
    /// off-chain asset.
    pub network: Option<String>,
    /// The token contract (absent for the chain's own coin).
    pub contract: Option<String>,
    /// Confirmations before a deposit is credited.
    pub confirmations: i32,
    pub withdraw_fee: String,
    pub withdraw_min: String,
    /// Per user over 24 hours; absent: no limit.
    pub daily_withdraw_limit: Option<String>,
    pub withdrawals_enabled: bool,
}

/// The columns of an [`AssetView`] (`assets`).
pub const ASSET_COLUMNS: &str = "symbol, scale, network, contract, confirmations,
    trim_scale(withdraw_fee)::text AS withdraw_fee, trim_scale(withdraw_min)::text AS withdraw_min,
    trim_scale(daily_withdraw_limit)::text AS daily_withdraw_limit, withdrawals_enabled";

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct MarketView {
    pub symbol: String,
    pub base: String,
    pub quote: String,
    pub price_tick: String,
    pub qty_step: String,
    pub min_qty: String,
    pub min_notional: String,
    pub maker_fee: String,
    pub taker_fee: String,
    pub status: String,
}

pub const MARKET_COLUMNS: &str = "symbol, base, quote, trim_scale(price_tick)::text AS price_tick,
    trim_scale(qty_step)::text AS qty_step, trim_scale(min_qty)::text AS min_qty,
    trim_scale(min_notional)::text AS min_notional, trim_scale(maker_fee)::text AS maker_fee,
    trim_scale(taker_fee)::text AS taker_fee, status";

#[utoipa::path(get, path = "/api/v1/assets", responses((status = 200, body = [AssetView])))]
pub async fn assets(State(s): State<AppState>) -> Result<Json<Vec<AssetView>>, ApiError> {
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ASSET_COLUMNS} FROM assets ORDER BY symbol"
    )))
    .fetch_all(s.db())
    .await?;
    Ok(Json(rows))
}

#[utoipa::path(get, path = "/api/v1/markets", responses((status = 200, body = [MarketView])))]
pub async fn markets(State(s): State<AppState>) -> Result<Json<Vec<MarketView>>, ApiError> {
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MARKET_COLUMNS} FROM markets ORDER BY symbol"
    )))
    .fetch_all(s.db())
    .await?;
    Ok(Json(rows))
}
