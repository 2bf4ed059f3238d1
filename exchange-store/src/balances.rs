//! A balance as every API shows it: `GET /api/v1/account/balances` and
//! clearing's private `balance` pushes.

use serde::Serialize;

/// The columns a [`BalanceJson`] is read from (`balances` row).
pub const BALANCE_COLUMNS: &str =
    "asset, trim_scale(available)::text AS available, trim_scale(locked)::text AS locked";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = Balance)]
pub struct BalanceJson {
    pub asset: String,
    /// Free to spend or withdraw.
    pub available: String,
    /// Reserved by open orders.
    pub locked: String,
}
