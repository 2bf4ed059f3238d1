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

/// A credit: `amount` (a decimal at the asset's scale) more available to
/// `user_id`, the balance row created when it is the first. The caller
/// books the ledger entry that explains it in the same transaction.
pub async fn credit_available(
    conn: &mut sqlx::PgConnection,
    user_id: i64,
    asset: &str,
    amount: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO balances (user_id, asset, available) VALUES ($1, $2, $3::numeric)
         ON CONFLICT (user_id, asset) DO UPDATE SET available = balances.available + EXCLUDED.available, updated_at = now()",
    )
    .bind(user_id)
    .bind(asset)
    .bind(amount)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
