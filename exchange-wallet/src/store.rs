//! One function per SQL step of the custody flows. Lock order, everywhere:
//! the withdrawal row (when there is one) before the user's balance row,
//! so two flows never wait on each other in a cycle.

use exchange_store::db_units;
use sqlx::PgConnection;

use crate::rules::{AssetCustody, DepositState, DepositStatus};
use crate::views::{DEPOSIT_COLUMNS, DepositRow, WITHDRAWAL_COLUMNS, WithdrawalRow};

#[derive(sqlx::FromRow)]
struct AssetRow {
    symbol: String,
    scale: i16,
    network: Option<String>,
    contract: Option<String>,
    confirmations: i32,
    withdraw_fee: String,
    withdraw_min: String,
    auto_approve_limit: String,
    daily_withdraw_limit: Option<String>,
    withdrawals_enabled: bool,
}

const ASSET_COLUMNS: &str = "symbol, scale, network, contract, confirmations,
    withdraw_fee::text AS withdraw_fee, withdraw_min::text AS withdraw_min,
    auto_approve_limit::text AS auto_approve_limit,
    daily_withdraw_limit::text AS daily_withdraw_limit, withdrawals_enabled";

impl AssetRow {
    fn custody(self) -> anyhow::Result<AssetCustody> {
        let scale = u8::try_from(self.scale)?;
        Ok(AssetCustody {
            withdraw_fee: db_units(&self.withdraw_fee, scale)?,
            withdraw_min: db_units(&self.withdraw_min, scale)?,
            auto_approve_limit: db_units(&self.auto_approve_limit, scale)?,
            daily_withdraw_limit: self
                .daily_withdraw_limit
                .as_deref()
                .map(|t| db_units(t, scale))
                .transpose()?,
            symbol: self.symbol,
            scale,
            network: self.network,
            contract: self.contract,
            confirmations: self.confirmations,
            withdrawals_enabled: self.withdrawals_enabled,
        })
    }
}

/// An asset's custody settings; `FOR SHARE` when `lock` (a request then
/// sees the kill switch as it is at commit: flipping it waits for
/// requests in flight and stops every later one).
pub async fn asset(
    conn: &mut PgConnection,
    symbol: &str,
    lock: bool,
) -> anyhow::Result<Option<AssetCustody>> {
    let sql = format!(
        "SELECT {ASSET_COLUMNS} FROM assets WHERE symbol = $1{}",
        if lock { " FOR SHARE" } else { "" }
    );
    let row: Option<AssetRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(symbol)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(AssetRow::custody).transpose()
}

/// The asset of a (network, contract) pair: what a chain transfer is in.
pub async fn asset_on_network(
    conn: &mut PgConnection,
    network: &str,
    contract: Option<&str>,
) -> anyhow::Result<Option<AssetCustody>> {
    let row: Option<AssetRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ASSET_COLUMNS} FROM assets WHERE network = $1 AND coalesce(contract, '') = coalesce($2, '')"
    )))
    .bind(network)
    .bind(contract)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(AssetRow::custody).transpose()
}

/// Whether the user is frozen (`FOR SHARE`: a freeze waits for a request
/// in flight, and every later request sees it).
pub async fn user_frozen(conn: &mut PgConnection, user_id: i64) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar("SELECT frozen_at IS NOT NULL FROM users WHERE id = $1 FOR SHARE")
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await
}

/// The user's available balance of `asset`, its row locked for the rest of
/// the transaction (created at zero when missing).
pub async fn lock_available(
    conn: &mut PgConnection,
    user_id: i64,
    asset: &str,
    scale: u8,
) -> anyhow::Result<u128> {
    sqlx::query("INSERT INTO balances (user_id, asset) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(user_id)
        .bind(asset)
        .execute(&mut *conn)
        .await?;
    let text: String = sqlx::query_scalar(
        "SELECT available::text FROM balances WHERE user_id = $1 AND asset = $2 FOR UPDATE",
    )
    .bind(user_id)
    .bind(asset)
    .fetch_one(&mut *conn)
    .await?;
    db_units(&text, scale)
}

/// Moves `amount` (decimal text) between available and locked:
/// `to_locked` true holds it, false releases it.
pub async fn move_available_locked(
    conn: &mut PgConnection,
    user_id: i64,
    asset: &str,
    amount: &str,
    to_locked: bool,
) -> sqlx::Result<()> {
    let sql = if to_locked {
        "UPDATE balances SET available = available - $3::numeric, locked = locked + $3::numeric, updated_at = now()
         WHERE user_id = $1 AND asset = $2"
    } else {
        "UPDATE balances SET available = available + $3::numeric, locked = locked - $3::numeric, updated_at = now()
         WHERE user_id = $1 AND asset = $2"
    };
    sqlx::query(sql)
        .bind(user_id)
        .bind(asset)
        .bind(amount)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A payout left: the hold leaves `locked`.
pub async fn pay_out_locked(
    conn: &mut PgConnection,
    user_id: i64,
    asset: &str,
    amount: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE balances SET locked = locked - $3::numeric, updated_at = now() WHERE user_id = $1 AND asset = $2",
    )
    .bind(user_id)
    .bind(asset)
    .bind(amount)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The amounts of the user's withdrawals of `asset` requested in the last
/// 24 hours that did not end without paying.
pub async fn withdrawn_24h(
    conn: &mut PgConnection,
    user_id: i64,
    asset: &str,
    scale: u8,
) -> anyhow::Result<u128> {
    let text: String = sqlx::query_scalar(
        "SELECT coalesce(sum(amount), 0)::text FROM withdrawals
         WHERE user_id = $1 AND asset = $2 AND created_at > now() - interval '24 hours'
           AND status NOT IN ('rejected', 'canceled', 'failed')",
    )
    .bind(user_id)
    .bind(asset)
    .fetch_one(&mut *conn)
    .await?;
    db_units(&text, scale)
}

/// Whether an open custody freeze stops the user's withdrawals (of every
/// asset: money credited by a deposit that left the chain may have been
/// traded into another one).
pub async fn custody_frozen(conn: &mut PgConnection, user_id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM custody_freezes WHERE user_id = $1 AND released_at IS NULL)",
    )
    .bind(user_id)
    .fetch_one(&mut *conn)
    .await
}

/// A user's address-book entry for `asset` on its current `network`:
/// (address, usable now).
pub async fn book_address(
    conn: &mut PgConnection,
    user_id: i64,
    address_id: i64,
    asset: &str,
    network: &str,
) -> sqlx::Result<Option<(String, bool)>> {
    sqlx::query_as(
        "SELECT address, usable_from <= now() FROM withdrawal_addresses
         WHERE id = $1 AND user_id = $2 AND asset = $3 AND network = $4",
    )
    .bind(address_id)
    .bind(user_id)
    .bind(asset)
    .bind(network)
    .fetch_optional(&mut *conn)
    .await
}

/// A withdrawal by id (of `user_id` when given), locked when `lock`.
pub async fn withdrawal(
    conn: &mut PgConnection,
    id: i64,
    user_id: Option<i64>,
    lock: bool,
) -> sqlx::Result<Option<WithdrawalRow>> {
    let sql = format!(
        "SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals w WHERE w.id = $1 AND ($2::int8 IS NULL OR w.user_id = $2){}",
        if lock { " FOR UPDATE OF w" } else { "" }
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await
}

pub async fn withdrawal_by_client_id(
    conn: &mut PgConnection,
    user_id: i64,
    client_id: &str,
) -> sqlx::Result<Option<WithdrawalRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals w WHERE w.user_id = $1 AND w.client_withdrawal_id = $2"
    )))
    .bind(user_id)
    .bind(client_id)
    .fetch_optional(&mut *conn)
    .await
}

/// A new withdrawal row, as requested.
pub struct NewWithdrawal<'a> {
    pub id: i64,
    pub user_id: i64,
    pub client_id: Option<&'a str>,
    pub asset: &'a str,
    pub network: &'a str,
    pub address: &'a str,
    pub amount: &'a str,
    pub fee: &'a str,
    pub status: &'a str,
    pub approvals_required: i16,
    pub hold_journal_id: i64,
}

pub async fn insert_withdrawal(
    conn: &mut PgConnection,
    w: &NewWithdrawal<'_>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO withdrawals (id, user_id, client_withdrawal_id, asset, network, address, amount, fee, status,
                                  approvals_required, hold_journal_id)
         VALUES ($11, $1, $2, $3, $4, $5, $6::numeric, $7::numeric, $8, $9, $10) RETURNING id",
    )
    .bind(w.user_id)
    .bind(w.client_id)
    .bind(w.asset)
    .bind(w.network)
    .bind(w.address)
    .bind(w.amount)
    .bind(w.fee)
    .bind(w.status)
    .bind(w.approvals_required)
    .bind(w.hold_journal_id)
    .bind(w.id)
    .fetch_one(&mut *conn)
    .await
}

/// A status change; `final_journal_id` for the payout or release journal,
/// `tx_hash`, `network_fee` and `reason` kept when `None`.
pub struct StatusChange<'a> {
    pub status: &'a str,
    pub final_journal_id: Option<i64>,
    pub tx_hash: Option<&'a str>,
    pub network_fee: Option<&'a str>,
    pub reason: Option<&'a str>,
}

pub async fn set_status(
    conn: &mut PgConnection,
    id: i64,
    c: &StatusChange<'_>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE withdrawals SET status = $2, final_journal_id = coalesce($3, final_journal_id),
                tx_hash = coalesce($4, tx_hash), network_fee = coalesce($5::numeric, network_fee),
                reason = coalesce($6, reason), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(c.status)
    .bind(c.final_journal_id)
    .bind(c.tx_hash)
    .bind(c.network_fee)
    .bind(c.reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records an approval; false when this approver approved already.
pub async fn add_approval(conn: &mut PgConnection, id: i64, approver: &str) -> sqlx::Result<bool> {
    let added = sqlx::query(
        "INSERT INTO withdrawal_approvals (withdrawal_id, approver) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(approver)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(added == 1)
}

/// Who approved a withdrawal, read after its row is locked (a subquery of
/// the locking statement would see the snapshot from before the wait).
pub async fn approvers(conn: &mut PgConnection, id: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT approver FROM withdrawal_approvals WHERE withdrawal_id = $1 ORDER BY approved_at, approver",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await
}

/// A deposit by its chain identity, locked.
pub async fn deposit_by_transfer(
    conn: &mut PgConnection,
    network: &str,
    tx_hash: &str,
    log_index: i32,
) -> sqlx::Result<Option<DepositRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DEPOSIT_COLUMNS} FROM chain_deposits d
         WHERE d.network = $1 AND d.tx_hash = $2 AND d.log_index = $3 FOR UPDATE OF d"
    )))
    .bind(network)
    .bind(tx_hash)
    .bind(log_index)
    .fetch_optional(&mut *conn)
    .await
}

pub async fn deposit(conn: &mut PgConnection, id: i64) -> sqlx::Result<Option<DepositRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DEPOSIT_COLUMNS} FROM chain_deposits d WHERE d.id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
}

impl DepositRow {
    pub fn state(&self) -> Option<DepositState> {
        DepositStatus::parse(&self.status).map(|status| DepositState {
            status,
            reorged_after_credit: self.reorged_after_credit,
        })
    }
}

/// The user a deposit address belongs to.
pub async fn address_owner(
    conn: &mut PgConnection,
    network: &str,
    address: &str,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT user_id FROM deposit_addresses WHERE network = $1 AND address = $2 AND user_id IS NOT NULL",
    )
    .bind(network)
    .bind(address)
    .fetch_optional(&mut *conn)
    .await
}

/// The id the next withdrawal takes: known before its hold is journaled, so
/// the hold's journal names it.
pub async fn next_withdrawal_id(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT nextval(pg_get_serial_sequence('withdrawals', 'id'))")
        .fetch_one(&mut *conn)
        .await
}
