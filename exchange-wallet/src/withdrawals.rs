//! Withdrawals: request (hold), approve, reject, cancel (release), and the
//! payout reports that move one to `broadcast`, `confirmed` (paid out) or
//! `failed` (released). Each is one transaction: the status change, its
//! balanced journal, the balance and (for an operator) the audit row; the
//! private push follows the commit.

use axum::http::StatusCode;
use exchange_common::{ApiError, ErrorCode};
use exchange_domain::money::{format_units, parse_positive_units, parse_units};
use exchange_store::audit::{self, AuditContext};
use exchange_store::ledger::{self, JournalKind};
use serde_json::json;
use sqlx::PgConnection;

use crate::Wallet;
use crate::rules::{self, PayoutReport, RequestFacts, WithdrawalStatus};
use crate::store::{self, NewWithdrawal, StatusChange};
use crate::views::WithdrawalRow;

/// The longest `client_withdrawal_id`.
pub const CLIENT_ID_LEN_MAX: usize = 64;
/// The longest reason an operator gives.
pub const REASON_LEN_MAX: usize = 512;

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.code().as_deref() == Some("23505"))
}

pub fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::WithdrawalNotFound,
        "no such withdrawal",
    )
}

fn unknown_asset(symbol: &str) -> ApiError {
    ApiError::bad_request(
        ErrorCode::UnknownAsset,
        format!("asset {symbol} does not exist"),
    )
}

pub fn check_reason(reason: &str) -> Result<(), ApiError> {
    let len = reason.chars().count();
    if len == 0 || len > REASON_LEN_MAX || reason.contains('\0') {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidReason,
            format!("reason must be 1 to {REASON_LEN_MAX} characters"),
        ));
    }
    Ok(())
}

pub struct Request {
    pub user_id: i64,
    pub asset: String,
    pub address_id: i64,
    pub amount: String,
    pub client_withdrawal_id: Option<String>,
}

/// Requests a withdrawal: `amount + fee` moves from available to locked,
/// or nothing happens and the first broken rule is the answer. Returns
/// whether it is new, and the withdrawal.
pub async fn request(w: &Wallet, r: Request) -> Result<(bool, WithdrawalRow), ApiError> {
    if let Some(cid) = &r.client_withdrawal_id
        && (cid.is_empty() || cid.chars().count() > CLIENT_ID_LEN_MAX || cid.contains('\0'))
    {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            format!("client_withdrawal_id must be 1 to {CLIENT_ID_LEN_MAX} characters"),
        ));
    }
    let mut tx = w.db.begin().await?;
    let asset = store::asset(&mut tx, &r.asset, true)
        .await
        .map_err(ApiError::from_anyhow)?
        .ok_or_else(|| unknown_asset(&r.asset))?;
    let network = asset.network()?.to_owned();
    let amount = parse_positive_units(&r.amount, asset.scale)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidAmount, format!("amount {e}")))?;
    let user_frozen = store::user_frozen(&mut tx, r.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    // The balance row is the user's lock for this asset: concurrent
    // requests are checked one after another against what the others held.
    let available = store::lock_available(&mut tx, r.user_id, &asset.symbol, asset.scale)
        .await
        .map_err(ApiError::from_anyhow)?;
    if let Some(cid) = &r.client_withdrawal_id
        && let Some(done) = store::withdrawal_by_client_id(&mut tx, r.user_id, cid).await?
    {
        return Ok((false, done));
    }
    let (address, address_usable) =
        store::book_address(&mut tx, r.user_id, r.address_id, &asset.symbol, &network)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    ErrorCode::AddressNotFound,
                    format!(
                        "no withdrawal address {} for {}",
                        r.address_id, asset.symbol
                    ),
                )
            })?;
    let facts = RequestFacts {
        amount,
        available,
        withdrawn_24h: store::withdrawn_24h(&mut tx, r.user_id, &asset.symbol, asset.scale)
            .await
            .map_err(ApiError::from_anyhow)?,
        address_usable,
        user_frozen,
        custody_frozen: store::custody_frozen(&mut tx, r.user_id).await?,
    };
    let hold = rules::check_request(&asset, &facts)?;
    let id = store::next_withdrawal_id(&mut tx).await?;
    let hold_journal_id = ledger::book(
        &mut tx,
        JournalKind::WithdrawalHold,
        &format!("withdrawal:{id}"),
        &asset.symbol,
        asset.scale,
        &rules::hold_postings(r.user_id, hold.total()),
    )
    .await
    .map_err(ApiError::from_anyhow)?;
    let total = format_units(hold.total(), asset.scale);
    store::move_available_locked(&mut tx, r.user_id, &asset.symbol, &total, true).await?;
    let status = hold.status();
    let inserted = store::insert_withdrawal(
        &mut tx,
        &NewWithdrawal {
            id,
            user_id: r.user_id,
            client_id: r.client_withdrawal_id.as_deref(),
            asset: &asset.symbol,
            network: &network,
            address: &address,
            amount: &format_units(hold.amount, asset.scale),
            fee: &format_units(hold.fee, asset.scale),
            status: status.as_str(),
            approvals_required: hold.approvals_required,
            hold_journal_id,
        },
    )
    .await;
    if let (Err(e), Some(cid)) = (&inserted, &r.client_withdrawal_id)
        && is_unique_violation(e)
    {
        // The same client id, requested for another asset at the same time
        // (the balance row serialises one asset only): theirs is the one.
        drop(tx);
        let mut conn = w.db.acquire().await?;
        let done = store::withdrawal_by_client_id(&mut conn, r.user_id, cid)
            .await?
            .ok_or_else(not_found)?;
        return Ok((false, done));
    }
    inserted?;
    let row = store::withdrawal(&mut tx, id, None, false)
        .await?
        .ok_or_else(not_found)?;
    tx.commit().await?;
    metrics::counter!("exchange_wallet_withdrawals_requested_total", "asset" => asset.symbol.clone())
        .increment(1);
    tracing::info!(withdrawal_id = id, user_id = r.user_id, asset = %asset.symbol, amount = %row.amount, status = status.as_str(), "withdrawal requested");
    after_change(w, &row, true).await;
    Ok((true, row))
}

/// Pushes the change to the owner and wakes the payout loop when the
/// withdrawal is ready to be paid.
pub async fn after_change(w: &Wallet, row: &WithdrawalRow, balance_moved: bool) {
    let event = json!({ "type": "withdrawal", "data": row.user_view() });
    crate::push::publish(
        &w.db,
        &w.redis,
        row.user_id,
        vec![event],
        balance_moved.then_some(row.asset.as_str()),
    )
    .await;
    if row.status == WithdrawalStatus::Approved.as_str() {
        w.payouts_due.notify_one();
    }
}

fn status_of(row: &WithdrawalRow) -> Result<WithdrawalStatus, ApiError> {
    WithdrawalStatus::parse(&row.status).ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!(
            "withdrawal {} has an unknown status {}",
            row.id,
            row.status
        ))
    })
}

/// The asset scale of a stored withdrawal and its held total in units.
async fn held(conn: &mut PgConnection, row: &WithdrawalRow) -> Result<(u8, u128, u128), ApiError> {
    let asset = store::asset(conn, &row.asset, false)
        .await
        .map_err(ApiError::from_anyhow)?
        .ok_or_else(|| unknown_asset(&row.asset))?;
    let units = |t: &str| exchange_store::db_units(t, asset.scale).map_err(ApiError::internal);
    Ok((asset.scale, units(&row.amount)?, units(&row.fee)?))
}

/// Ends an open withdrawal without paying: the hold returns to available.
async fn release(
    conn: &mut PgConnection,
    row: &WithdrawalRow,
    status: WithdrawalStatus,
    reason: Option<&str>,
) -> Result<(), ApiError> {
    let (scale, amount, fee) = held(conn, row).await?;
    let journal_id = ledger::book(
        conn,
        JournalKind::WithdrawalRelease,
        &format!("withdrawal:{}", row.id),
        &row.asset,
        scale,
        &rules::release_postings(row.user_id, amount + fee),
    )
    .await
    .map_err(ApiError::from_anyhow)?;
    let total = format_units(amount + fee, scale);
    store::move_available_locked(conn, row.user_id, &row.asset, &total, false).await?;
    store::set_status(
        conn,
        row.id,
        &StatusChange {
            status: status.as_str(),
            final_journal_id: Some(journal_id),
            tx_hash: None,
            network_fee: None,
            reason,
        },
    )
    .await?;
    Ok(())
}

/// Re-reads a withdrawal inside the transaction that changed it.
async fn reread(conn: &mut PgConnection, id: i64) -> Result<WithdrawalRow, ApiError> {
    store::withdrawal(conn, id, None, false)
        .await?
        .ok_or_else(not_found)
}

/// The owner cancels while nothing is being signed.
pub async fn cancel(w: &Wallet, user_id: i64, id: i64) -> Result<WithdrawalRow, ApiError> {
    let mut tx = w.db.begin().await?;
    let row = store::withdrawal(&mut tx, id, Some(user_id), true)
        .await?
        .ok_or_else(not_found)?;
    rules::check_cancel(status_of(&row)?)?;
    release(
        &mut tx,
        &row,
        WithdrawalStatus::Canceled,
        Some("canceled by the user"),
    )
    .await?;
    let row = reread(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(withdrawal_id = id, user_id, "withdrawal canceled");
    after_change(w, &row, true).await;
    Ok(row)
}

/// An operator rejects: the hold returns.
pub async fn reject(
    w: &Wallet,
    id: i64,
    reason: &str,
    who: &AuditContext,
) -> Result<WithdrawalRow, ApiError> {
    check_reason(reason)?;
    let mut tx = w.db.begin().await?;
    let row = store::withdrawal(&mut tx, id, None, true)
        .await?
        .ok_or_else(not_found)?;
    rules::check_reject(status_of(&row)?)?;
    release(&mut tx, &row, WithdrawalStatus::Rejected, Some(reason)).await?;
    let entry = who.entry(
        "withdrawal.reject",
        &format!("withdrawal:{id}"),
        json!({ "user_id": row.user_id, "asset": row.asset, "amount": row.amount, "reason": reason }),
    );
    audit::append(&mut tx, &entry).await?;
    let row = reread(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(withdrawal_id = id, by = %who.actor, "withdrawal rejected");
    after_change(w, &row, true).await;
    Ok(row)
}

/// An operator approves; the second different one (above the limit)
/// moves it to `approved`.
pub async fn approve(w: &Wallet, id: i64, who: &AuditContext) -> Result<WithdrawalRow, ApiError> {
    let mut tx = w.db.begin().await?;
    let row = store::withdrawal(&mut tx, id, None, true)
        .await?
        .ok_or_else(not_found)?;
    let approvers = store::approvers(&mut tx, id).await?;
    let next = rules::approve(
        status_of(&row)?,
        row.approvals_required,
        &approvers,
        &who.actor,
    )?;
    if !store::add_approval(&mut tx, id, &who.actor).await? {
        return Err(ApiError::conflict(
            ErrorCode::SameApprover,
            "you approved this withdrawal already: a second operator must approve it",
        ));
    }
    if next != WithdrawalStatus::PendingApproval {
        store::set_status(
            &mut tx,
            id,
            &StatusChange {
                status: next.as_str(),
                final_journal_id: None,
                tx_hash: None,
                network_fee: None,
                reason: None,
            },
        )
        .await?;
    }
    let entry = who.entry(
        "withdrawal.approve",
        &format!("withdrawal:{id}"),
        json!({ "user_id": row.user_id, "asset": row.asset, "amount": row.amount, "status": next.as_str() }),
    );
    audit::append(&mut tx, &entry).await?;
    let row = reread(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(withdrawal_id = id, by = %who.actor, status = next.as_str(), "withdrawal approved");
    after_change(w, &row, false).await;
    Ok(row)
}

/// A payout report as an operator types it: the network fee as a decimal.
pub fn parse_network_fee(text: Option<&str>, scale: u8) -> Result<u128, ApiError> {
    text.map_or(Ok(0), |t| {
        parse_units(t, scale).map_err(|e| {
            ApiError::bad_request(ErrorCode::InvalidAmount, format!("network_fee {e}"))
        })
    })
}

/// Applies what the chain (an adapter, or an operator for the manual one)
/// says about a payout; a report that repeats the recorded state changes
/// nothing. `who`: the operator, audited; none for an adapter.
pub async fn report(
    w: &Wallet,
    id: i64,
    report: &PayoutReport,
    who: Option<&AuditContext>,
) -> Result<WithdrawalRow, ApiError> {
    let mut tx = w.db.begin().await?;
    let row = store::withdrawal(&mut tx, id, None, true)
        .await?
        .ok_or_else(not_found)?;
    if who.is_some() && !w.adapters.get(&row.network).is_manual() {
        return Err(ApiError::conflict(
            ErrorCode::NotManualNetwork,
            format!(
                "{} payouts are sent and followed by the wallet itself",
                row.network
            ),
        ));
    }
    let Some(next) = rules::apply_report(status_of(&row)?, row.tx_hash.as_deref(), report)? else {
        return Ok(row);
    };
    let network_fee_text;
    let mut change = StatusChange {
        status: next.as_str(),
        final_journal_id: None,
        tx_hash: None,
        network_fee: None,
        reason: None,
    };
    match report {
        PayoutReport::Broadcast { tx_hash } => {
            change.tx_hash = Some(tx_hash);
            store::set_status(&mut tx, id, &change).await?;
        }
        PayoutReport::Confirmed { network_fee } => {
            let (scale, amount, fee) = held(&mut tx, &row).await?;
            rules::check_network_fee(*network_fee, amount, fee)?;
            let journal_id = ledger::book(
                &mut tx,
                JournalKind::Withdrawal,
                &format!("withdrawal:{id}"),
                &row.asset,
                scale,
                &rules::payout_postings(row.user_id, amount, fee, *network_fee),
            )
            .await
            .map_err(ApiError::from_anyhow)?;
            store::pay_out_locked(
                &mut tx,
                row.user_id,
                &row.asset,
                &format_units(amount + fee, scale),
            )
            .await?;
            network_fee_text = format_units(*network_fee, scale);
            change.final_journal_id = Some(journal_id);
            change.network_fee = Some(&network_fee_text);
            store::set_status(&mut tx, id, &change).await?;
        }
        PayoutReport::Failed { reason } => {
            release(&mut tx, &row, WithdrawalStatus::Failed, Some(reason)).await?;
        }
    }
    if let Some(who) = who {
        let details = match report {
            PayoutReport::Broadcast { tx_hash } => json!({ "tx_hash": tx_hash }),
            PayoutReport::Confirmed { .. } => json!({ "network_fee": change.network_fee }),
            PayoutReport::Failed { reason } => json!({ "reason": reason }),
        };
        let entry = who.entry(
            &format!("withdrawal.{}", next.as_str()),
            &format!("withdrawal:{id}"),
            details,
        );
        audit::append(&mut tx, &entry).await?;
    }
    let row = reread(&mut tx, id).await?;
    tx.commit().await?;
    if next == WithdrawalStatus::Failed {
        metrics::counter!("exchange_wallet_payouts_failed_total", "asset" => row.asset.clone())
            .increment(1);
    }
    tracing::info!(withdrawal_id = id, status = next.as_str(), tx_hash = ?row.tx_hash, "payout report applied");
    after_change(w, &row, next != WithdrawalStatus::Broadcast).await;
    Ok(row)
}
