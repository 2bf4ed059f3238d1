//! `custodyMonitor` and `depositScanner`: the gauges operators alert on
//! (open custody freezes, withdrawals waiting and how long, free deposit
//! addresses), and the scan of every adapter that reads its chain by
//! itself (none in part 1: the manual adapter's deposits are reported).

use std::time::Duration;

use exchange_common::Shutdown;
use exchange_common::ready::Heartbeat;

use crate::Wallet;
use crate::deposits;

pub const MONITOR_LOOP_NAME: &str = "custodyMonitor";
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(15);
pub const MONITOR_STALE_AFTER: Duration = Duration::from_secs(60);
pub const SCANNER_LOOP_NAME: &str = "depositScanner";
pub const SCAN_INTERVAL: Duration = Duration::from_secs(5);
pub const SCANNER_STALE_AFTER: Duration = Duration::from_secs(60);

#[allow(clippy::cast_precision_loss)]
async fn export_gauges(w: &Wallet) -> anyhow::Result<()> {
    let freezes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM custody_freezes WHERE released_at IS NULL")
            .fetch_one(&w.db)
            .await?;
    metrics::gauge!("exchange_wallet_custody_freezes_open").set(freezes as f64);
    let open: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT s, count(w.id), coalesce(extract(epoch FROM now() - min(w.updated_at)), 0)::float8
         FROM unnest(ARRAY['pending_approval', 'approved', 'signing', 'broadcast']) AS s
         LEFT JOIN withdrawals w ON w.status = s GROUP BY s",
    )
    .fetch_all(&w.db)
    .await?;
    for (status, count, oldest) in open {
        metrics::gauge!("exchange_wallet_withdrawals_open", "status" => status.clone())
            .set(count as f64);
        metrics::gauge!("exchange_wallet_withdrawal_oldest_age_seconds", "status" => status)
            .set(oldest);
    }
    let free: Vec<(String, i64)> = sqlx::query_as(
        "SELECT n.network, count(d.id) FROM (SELECT DISTINCT network FROM assets WHERE network IS NOT NULL) n
         LEFT JOIN deposit_addresses d ON d.network = n.network AND d.user_id IS NULL GROUP BY n.network",
    )
    .fetch_all(&w.db)
    .await?;
    for (network, count) in free {
        let manual = w.adapters.get(&network).is_manual();
        if manual {
            metrics::gauge!("exchange_wallet_deposit_addresses_free", "network" => network)
                .set(count as f64);
        }
    }
    Ok(())
}

pub async fn run_monitor(w: Wallet, heartbeat: Heartbeat, shutdown: Shutdown) {
    loop {
        match export_gauges(&w).await {
            Ok(()) => heartbeat.beat(),
            Err(e) => {
                heartbeat.down("gauges not read");
                tracing::warn!(error = format!("{e:#}"), "custody gauges not read");
            }
        }
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(MONITOR_INTERVAL) => {}
        }
    }
}

async fn scan_all(w: &Wallet) -> anyhow::Result<()> {
    for (network, adapter) in w.adapters.scanning() {
        let cursor: Option<String> =
            sqlx::query_scalar("SELECT cursor FROM chain_cursors WHERE network = $1")
                .bind(network)
                .fetch_optional(&w.db)
                .await?;
        let scan = tokio::time::timeout(crate::payouts::ADAPTER_CALL_TIMEOUT, adapter.scan(cursor))
            .await??;
        for t in &scan.transfers {
            if let Err(e) = deposits::observe(w, t, None).await {
                anyhow::bail!(
                    "transfer {}:{} not recorded: {} {}",
                    t.tx_hash,
                    t.log_index,
                    e.code,
                    e.message
                );
            }
        }
        if let Some(c) = scan.cursor {
            sqlx::query(
                "INSERT INTO chain_cursors (network, cursor) VALUES ($1, $2)
                 ON CONFLICT (network) DO UPDATE SET cursor = EXCLUDED.cursor, updated_at = now()",
            )
            .bind(network)
            .bind(c)
            .execute(&w.db)
            .await?;
        }
    }
    Ok(())
}

pub async fn run_scanner(w: Wallet, heartbeat: Heartbeat, shutdown: Shutdown) {
    loop {
        match scan_all(&w).await {
            Ok(()) => heartbeat.beat(),
            Err(e) => {
                heartbeat.down("scan failed");
                tracing::error!(error = format!("{e:#}"), "deposit scan failed");
            }
        }
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(SCAN_INTERVAL) => {}
        }
    }
}
