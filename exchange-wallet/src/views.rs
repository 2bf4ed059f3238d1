//! The custody rows and their JSON (API.md "Custody"): one column list and
//! one row type per table, the user's view and the operator's view.

use serde::Serialize;

/// Columns of a [`WithdrawalRow`] (`withdrawals w`).
pub const WITHDRAWAL_COLUMNS: &str =
    "w.id, w.user_id, w.client_withdrawal_id, w.asset, w.network, w.address,
    trim_scale(w.amount)::text AS amount, trim_scale(w.fee)::text AS fee, w.status, w.tx_hash,
    trim_scale(w.network_fee)::text AS network_fee, w.reason, w.approvals_required,
    coalesce((SELECT array_agg(a.approver ORDER BY a.approved_at, a.approver)
              FROM withdrawal_approvals a WHERE a.withdrawal_id = w.id), '{}') AS approvers,
    floor(extract(epoch FROM w.created_at) * 1000)::int8 AS created_at,
    floor(extract(epoch FROM w.updated_at) * 1000)::int8 AS updated_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WithdrawalRow {
    pub id: i64,
    pub user_id: i64,
    pub client_withdrawal_id: Option<String>,
    pub asset: String,
    pub network: String,
    pub address: String,
    pub amount: String,
    pub fee: String,
    pub status: String,
    pub tx_hash: Option<String>,
    pub network_fee: Option<String>,
    pub reason: Option<String>,
    pub approvals_required: i16,
    pub approvers: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A withdrawal as its owner sees it.
#[derive(Debug, Clone, Serialize)]
pub struct WithdrawalJson {
    pub id: i64,
    pub client_withdrawal_id: Option<String>,
    pub asset: String,
    pub network: String,
    pub address: String,
    pub amount: String,
    pub fee: String,
    pub status: String,
    pub tx_hash: Option<String>,
    /// Operator approvals given (operators stay anonymous to users).
    pub approvals: usize,
    pub created_at: i64,
    pub updated_at: i64,
    pub reason: Option<String>,
}

/// A withdrawal as operators see it: who asked, who approved.
#[derive(Debug, Clone, Serialize)]
pub struct AdminWithdrawalJson {
    #[serde(flatten)]
    pub withdrawal: WithdrawalJson,
    pub user_id: i64,
    pub approvals_required: i16,
    pub approved_by: Vec<String>,
    pub network_fee: Option<String>,
}

impl WithdrawalRow {
    pub fn user_view(&self) -> WithdrawalJson {
        WithdrawalJson {
            id: self.id,
            client_withdrawal_id: self.client_withdrawal_id.clone(),
            asset: self.asset.clone(),
            network: self.network.clone(),
            address: self.address.clone(),
            amount: self.amount.clone(),
            fee: self.fee.clone(),
            status: self.status.clone(),
            tx_hash: self.tx_hash.clone(),
            approvals: self.approvers.len(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            reason: self.reason.clone(),
        }
    }

    pub fn admin_view(&self) -> AdminWithdrawalJson {
        AdminWithdrawalJson {
            withdrawal: self.user_view(),
            user_id: self.user_id,
            approvals_required: self.approvals_required,
            approved_by: self.approvers.clone(),
            network_fee: self.network_fee.clone(),
        }
    }
}

/// Columns of a [`DepositRow`] (`chain_deposits d`).
pub const DEPOSIT_COLUMNS: &str = "d.id, d.user_id, d.asset, d.network, d.address,
    trim_scale(d.amount)::text AS amount, d.tx_hash, d.log_index, d.block_number, d.block_hash,
    d.confirmations, d.required_confirmations, d.status, d.reorged_after_credit,
    floor(extract(epoch FROM d.created_at) * 1000)::int8 AS time,
    floor(extract(epoch FROM d.credited_at) * 1000)::int8 AS credited_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DepositRow {
    pub id: i64,
    pub user_id: i64,
    pub asset: String,
    pub network: String,
    pub address: String,
    pub amount: String,
    pub tx_hash: String,
    pub log_index: i32,
    pub block_number: Option<i64>,
    pub block_hash: Option<String>,
    pub confirmations: i32,
    pub required_confirmations: i32,
    pub status: String,
    pub reorged_after_credit: bool,
    pub time: i64,
    pub credited_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DepositJson {
    pub id: i64,
    pub asset: String,
    pub network: String,
    pub address: String,
    pub amount: String,
    pub tx_hash: String,
    pub log_index: i32,
    pub confirmations: i32,
    pub required_confirmations: i32,
    pub status: String,
    pub time: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminDepositJson {
    #[serde(flatten)]
    pub deposit: DepositJson,
    pub user_id: i64,
    pub block_number: Option<i64>,
    pub block_hash: Option<String>,
    pub credited_at: Option<i64>,
    /// Credited, then its block left the chain: the user's withdrawals of
    /// the asset are frozen until an operator releases them.
    pub reorged_after_credit: bool,
}

impl DepositRow {
    pub fn user_view(&self) -> DepositJson {
        DepositJson {
            id: self.id,
            asset: self.asset.clone(),
            network: self.network.clone(),
            address: self.address.clone(),
            amount: self.amount.clone(),
            tx_hash: self.tx_hash.clone(),
            log_index: self.log_index,
            confirmations: self.confirmations,
            required_confirmations: self.required_confirmations,
            status: self.status.clone(),
            time: self.time,
        }
    }

    pub fn admin_view(&self) -> AdminDepositJson {
        AdminDepositJson {
            deposit: self.user_view(),
            user_id: self.user_id,
            block_number: self.block_number,
            block_hash: self.block_hash.clone(),
            credited_at: self.credited_at,
            reorged_after_credit: self.reorged_after_credit,
        }
    }
}

/// Columns of an [`AddressJson`] (`withdrawal_addresses`).
pub const ADDRESS_COLUMNS: &str = "id, asset, network, address, label,
    floor(extract(epoch FROM usable_from) * 1000)::int8 AS usable_from";

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AddressJson {
    pub id: i64,
    pub asset: String,
    pub network: String,
    pub address: String,
    pub label: String,
    /// When the address may first be used (ms).
    pub usable_from: i64,
}

/// Columns of a [`FreezeJson`] (`custody_freezes`).
pub const FREEZE_COLUMNS: &str = "id, user_id, asset, deposit_id, reason,
    floor(extract(epoch FROM created_at) * 1000)::int8 AS created_at,
    floor(extract(epoch FROM released_at) * 1000)::int8 AS released_at, released_by, release_reason";

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FreezeJson {
    pub id: i64,
    pub user_id: i64,
    pub asset: String,
    pub deposit_id: i64,
    pub reason: String,
    pub created_at: i64,
    pub released_at: Option<i64>,
    pub released_by: Option<String>,
    pub release_reason: Option<String>,
}
