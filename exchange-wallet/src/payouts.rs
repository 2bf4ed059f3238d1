//! `payoutLoop`: hands approved withdrawals to their chain adapter and
//! follows the ones it sent. An approved withdrawal is claimed (→
//! `signing`) only while its asset's kill switch is on, its owner is not
//! frozen and no custody freeze stops it. The claim holds the asset and
//! user rows `FOR SHARE`, so flipping `withdrawals_enabled` to false (or a
//! freeze) waits for a claim in flight and no claim passes it afterwards:
//! from its commit on, no payout not yet claimed leaves. The manual adapter
//! leaves claimed payouts to an operator.

use std::time::Duration;

use exchange_common::Shutdown;
use exchange_common::ready::Heartbeat;

use crate::Wallet;
use crate::adapter::{Payout, Sent};
use crate::rules::{PayoutReport, WithdrawalStatus};
use crate::store::{self, StatusChange};
use crate::views::{WITHDRAWAL_COLUMNS, WithdrawalRow};
use crate::withdrawals;

pub const LOOP_NAME: &str = "payoutLoop";
/// How often the loop looks without being woken.
pub const PAYOUT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// `/ready` shows the loop down when it has not turned for this long.
pub const PAYOUT_STALE_AFTER: Duration = Duration::from_secs(30);
/// Withdrawals claimed per turn.
pub const CLAIM_LEN_MAX: i64 = 32;
/// The longest an adapter call may take.
pub const ADAPTER_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Moves the payable approved withdrawals to `signing`, in one transaction.
pub async fn claim(w: &Wallet) -> anyhow::Result<Vec<WithdrawalRow>> {
    let mut tx = w.db.begin().await?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT w.id FROM withdrawals w
         JOIN assets a ON a.symbol = w.asset
         JOIN users u ON u.id = w.user_id
         WHERE w.status = 'approved' AND a.withdrawals_enabled AND u.frozen_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM custody_freezes f
                           WHERE f.user_id = w.user_id AND f.released_at IS NULL)
         ORDER BY w.id LIMIT $1
         FOR UPDATE OF w SKIP LOCKED
         FOR SHARE OF a, u",
    )
    .bind(CLAIM_LEN_MAX)
    .fetch_all(&mut *tx)
    .await?;
    for id in &ids {
        store::set_status(
            &mut tx,
            *id,
            &StatusChange {
                status: WithdrawalStatus::Signing.as_str(),
                final_journal_id: None,
                tx_hash: None,
                network_fee: None,
                reason: None,
            },
        )
        .await?;
    }
    let rows: Vec<WithdrawalRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals w WHERE w.id = ANY($1) ORDER BY w.id"
    )))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

async fn payout_of(w: &Wallet, row: &WithdrawalRow) -> anyhow::Result<Payout> {
    let mut conn = w.db.acquire().await?;
    let contract = store::asset(&mut conn, &row.asset, false)
        .await?
        .and_then(|a| a.contract);
    Ok(Payout {
        withdrawal_id: row.id,
        asset: row.asset.clone(),
        contract,
        address: row.address.clone(),
        amount: row.amount.clone(),
        tx_hash: row.tx_hash.clone(),
    })
}

/// Sends one claimed payout through its adapter.
async fn send(w: &Wallet, row: &WithdrawalRow) -> anyhow::Result<()> {
    let adapter = w.adapters.get(&row.network);
    let payout = payout_of(w, row).await?;
    let sent = tokio::time::timeout(ADAPTER_CALL_TIMEOUT, adapter.send_payout(payout)).await??;
    match sent {
        Sent::AwaitingOperator => {
            tracing::info!(withdrawal_id = row.id, network = %row.network, "payout waits for an operator (manual network)");
        }
        Sent::Broadcast { tx_hash } => {
            withdrawals::report(w, row.id, &PayoutReport::Broadcast { tx_hash }, None)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))?;
        }
    }
    Ok(())
}

/// Asks the adapters of non-manual networks where their payouts stand.
async fn follow(w: &Wallet) -> anyhow::Result<()> {
    let networks: Vec<String> = w.adapters.scanning().map(|(n, _)| n.to_owned()).collect();
    if networks.is_empty() {
        return Ok(());
    }
    let rows: Vec<WithdrawalRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals w
         WHERE w.status IN ('signing', 'broadcast') AND w.network = ANY($1) ORDER BY w.id LIMIT 256"
    )))
    .bind(&networks)
    .fetch_all(&w.db)
    .await?;
    for row in rows {
        let adapter = w.adapters.get(&row.network);
        let payout = payout_of(w, &row).await?;
        let report =
            tokio::time::timeout(ADAPTER_CALL_TIMEOUT, adapter.payout_status(payout)).await??;
        if let Some(report) = report
            && let Err(e) = withdrawals::report(w, row.id, &report, None).await
        {
            tracing::warn!(withdrawal_id = row.id, code = %e.code, error = %e.message, "payout report not applied");
        }
    }
    Ok(())
}

async fn turn(w: &Wallet) -> anyhow::Result<()> {
    for row in claim(w).await? {
        tracing::info!(withdrawal_id = row.id, asset = %row.asset, amount = %row.amount, "payout claimed");
        withdrawals::after_change(w, &row, false).await;
        if let Err(e) = send(w, &row).await {
            // It stays `signing`; the adapter is asked again by `follow`.
            tracing::error!(
                withdrawal_id = row.id,
                error = format!("{e:#}"),
                "payout not sent"
            );
        }
    }
    follow(w).await
}

pub async fn run(w: Wallet, heartbeat: Heartbeat, shutdown: Shutdown) {
    loop {
        match turn(&w).await {
            Ok(()) => heartbeat.beat(),
            Err(e) => {
                heartbeat.down("payout turn failed");
                tracing::error!(error = format!("{e:#}"), "payout loop turn failed");
            }
        }
        tokio::select! {
            () = shutdown.wait() => return,
            () = w.payouts_due.notified() => {}
            () = tokio::time::sleep(PAYOUT_POLL_INTERVAL) => {}
        }
    }
}
