//! Deposits: a user's deposit address, and what a chain observation of a
//! transfer to it does. A transfer is recorded once per (network, tx hash,
//! log index) and credited exactly once, in the transaction that records
//! its confirmations reaching the asset's; a credited deposit that leaves
//! the chain freezes the user's withdrawals (every asset) instead of
//! debiting ([`crate::rules::observe`]).

use axum::http::StatusCode;
use exchange_common::{ApiError, ErrorCode};
use exchange_domain::money::{format_units, parse_positive_units};
use exchange_store::audit::{self, AuditContext};
use exchange_store::ledger::{self, JournalKind};
use serde::Serialize;
use serde_json::json;
use sqlx::PgConnection;

use crate::Wallet;
use crate::adapter::Transfer;
use crate::rules::{self, DepositStatus};
use crate::store;
use crate::views::DepositRow;

#[derive(Debug, Clone, Serialize)]
pub struct DepositAddress {
    pub asset: String,
    pub network: String,
    pub address: String,
}

async fn assigned(
    conn: &mut PgConnection,
    user_id: i64,
    network: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT address FROM deposit_addresses WHERE user_id = $1 AND network = $2")
        .bind(user_id)
        .bind(network)
        .fetch_optional(&mut *conn)
        .await
}

/// Gives the user an address: derived by the adapter when it derives, else
/// the oldest free one an operator loaded.
async fn assign(
    w: &Wallet,
    conn: &mut PgConnection,
    user_id: i64,
    network: &str,
) -> Result<Option<String>, ApiError> {
    let adapter = w.adapters.get(network);
    let index: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(derivation_index) + 1, 0) FROM deposit_addresses WHERE network = $1",
    )
    .bind(network)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(address) = adapter
        .derive_address(index)
        .await
        .map_err(ApiError::from_anyhow)?
    {
        sqlx::query(
            "INSERT INTO deposit_addresses (network, address, user_id, derivation_index, assigned_at)
             VALUES ($1, $2, $3, $4, now())",
        )
        .bind(network)
        .bind(&address)
        .bind(user_id)
        .bind(index)
        .execute(&mut *conn)
        .await?;
        return Ok(Some(address));
    }
    Ok(sqlx::query_scalar(
        "UPDATE deposit_addresses SET user_id = $1, assigned_at = now()
         WHERE id = (SELECT id FROM deposit_addresses WHERE network = $2 AND user_id IS NULL
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING address",
    )
    .bind(user_id)
    .bind(network)
    .fetch_optional(&mut *conn)
    .await?)
}

/// The user's deposit address for `asset`'s network: the same every time.
pub async fn address(w: &Wallet, user_id: i64, asset: &str) -> Result<DepositAddress, ApiError> {
    let mut conn = w.db.acquire().await?;
    let custody = store::asset(&mut conn, asset, false)
        .await
        .map_err(ApiError::from_anyhow)?
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::UnknownAsset,
                format!("asset {asset} does not exist"),
            )
        })?;
    let network = custody.network()?.to_owned();
    let view = |address| DepositAddress {
        asset: custody.symbol.clone(),
        network: network.clone(),
        address,
    };
    if let Some(a) = assigned(&mut conn, user_id, &network).await? {
        return Ok(view(a));
    }
    drop(conn);
    let mut tx = w.db.begin().await?;
    match assign(w, &mut tx, user_id, &network).await {
        Ok(Some(a)) => {
            tx.commit().await?;
            tracing::info!(user_id, network = %network, "deposit address assigned");
            Ok(view(a))
        }
        Ok(None) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NoDepositAddress,
            format!("no deposit address is available for {network} right now; try again later"),
        )),
        Err(e) => {
            // A concurrent request of the same user may have won (the
            // unique (user, network) index): theirs is the address.
            drop(tx);
            let mut conn = w.db.acquire().await?;
            match assigned(&mut conn, user_id, &network).await? {
                Some(a) => Ok(view(a)),
                None => Err(e),
            }
        }
    }
}

/// Validates a reported transfer's fields that need no database; returns
/// it with its address and hash in their canonical form.
fn check_transfer(w: &Wallet, t: &Transfer) -> Result<Transfer, ApiError> {
    let bad = |m: String| ApiError::bad_request(ErrorCode::InvalidRequest, m);
    if t.log_index < 0 || t.confirmations < 0 || t.block_number.is_some_and(|b| b < 0) {
        return Err(bad(
            "log_index, confirmations and block_number are not negative".into(),
        ));
    }
    if t.block_hash
        .as_ref()
        .is_some_and(|h| h.is_empty() || h.len() > 128)
    {
        return Err(bad("block_hash must be 1 to 128 characters".into()));
    }
    let adapter = w.adapters.get(&t.network);
    let address = adapter
        .validate_address(&t.address)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidAddress, e))?;
    let tx_hash = adapter.canonical_tx_hash(&t.tx_hash).map_err(bad)?;
    Ok(Transfer {
        address,
        tx_hash,
        ..t.clone()
    })
}

fn conflict(row: &DepositRow) -> ApiError {
    ApiError::conflict(
        ErrorCode::TransferConflict,
        format!(
            "this transfer is recorded as deposit {} with another address, asset or amount",
            row.id
        ),
    )
}

/// Records what the chain shows of a transfer and credits it when it has
/// its confirmations. `who`: the operator reporting it (manual adapter),
/// audited; none for an adapter's scan. Returns the deposit as it is now.
pub async fn observe(
    w: &Wallet,
    t: &Transfer,
    who: Option<&AuditContext>,
) -> Result<DepositRow, ApiError> {
    let t = &check_transfer(w, t)?;
    let address = t.address.clone();
    let mut tx = w.db.begin().await?;
    let asset = store::asset(&mut tx, &t.asset, false)
        .await
        .map_err(ApiError::from_anyhow)?
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::UnknownAsset,
                format!("asset {} does not exist", t.asset),
            )
        })?;
    if asset.network.as_deref() != Some(t.network.as_str()) {
        return Err(ApiError::bad_request(
            ErrorCode::NetworkMismatch,
            format!("{} is not on network {}", asset.symbol, t.network),
        ));
    }
    let amount = parse_positive_units(&t.amount, asset.scale)
        .ok()
        .filter(|u| *u <= rules::AMOUNT_UNITS_MAX)
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidAmount,
                format!(
                    "amount must be a positive decimal of at most {} places, not too large",
                    asset.scale
                ),
            )
        })?;
    let amount_text = format_units(amount, asset.scale);
    if !t.removed {
        let owner = store::address_owner(&mut tx, &t.network, &address)
            .await?
            .ok_or_else(|| {
                ApiError::bad_request(
                    ErrorCode::UnknownAddress,
                    format!(
                        "{address} is not a deposit address of any user on {}",
                        t.network
                    ),
                )
            })?;
        // First sight records it pending; a concurrent report of the same
        // transfer waits on this row and then takes the path below.
        sqlx::query(
            "INSERT INTO chain_deposits (user_id, asset, network, address, amount, tx_hash, log_index,
                                         block_number, block_hash, confirmations, required_confirmations, status)
             VALUES ($1, $2, $3, $4, $5::numeric, $6, $7, $8, $9, $10, $11, 'pending')
             ON CONFLICT (network, tx_hash, log_index) DO NOTHING",
        )
        .bind(owner)
        .bind(&asset.symbol)
        .bind(&t.network)
        .bind(&address)
        .bind(&amount_text)
        .bind(&t.tx_hash)
        .bind(t.log_index)
        .bind(t.block_number)
        .bind(&t.block_hash)
        .bind(t.confirmations)
        .bind(asset.confirmations)
        .execute(&mut *tx)
        .await?;
    }
    let row = store::deposit_by_transfer(&mut tx, &t.network, &t.tx_hash, t.log_index)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::DepositNotFound,
                "this transfer was never seen: nothing to remove",
            )
        })?;
    let same = row.address == address
        && row.asset == asset.symbol
        && exchange_store::db_units(&row.amount, asset.scale).is_ok_and(|u| u == amount);
    if !same {
        return Err(conflict(&row));
    }
    let decision = rules::observe(
        row.state(),
        t.confirmations,
        row.required_confirmations,
        t.removed,
    )
    .ok_or_else(|| ApiError::internal(anyhow::anyhow!("deposit {} has no state", row.id)))?;
    if decision.credit {
        let journal_id = ledger::book(
            &mut tx,
            JournalKind::Deposit,
            &format!("chain-deposit:{}", row.id),
            &asset.symbol,
            asset.scale,
            &rules::credit_postings(row.user_id, amount),
        )
        .await
        .map_err(ApiError::from_anyhow)?;
        exchange_store::balances::credit_available(
            &mut tx,
            row.user_id,
            &asset.symbol,
            &amount_text,
        )
        .await?;
        sqlx::query("UPDATE chain_deposits SET journal_id = $2, credited_at = now() WHERE id = $1")
            .bind(row.id)
            .bind(journal_id)
            .execute(&mut *tx)
            .await?;
    }
    if decision.freeze {
        freeze(&mut tx, &row).await?;
    }
    sqlx::query(
        "UPDATE chain_deposits SET status = $2, confirmations = $3,
                block_number = coalesce($4, block_number), block_hash = coalesce($5, block_hash),
                reorged_after_credit = reorged_after_credit OR $6, updated_at = now()
         WHERE id = $1",
    )
    .bind(row.id)
    .bind(decision.status.as_str())
    .bind(t.confirmations)
    .bind(t.block_number)
    .bind(&t.block_hash)
    .bind(decision.freeze)
    .execute(&mut *tx)
    .await?;
    if let Some(who) = who {
        let entry = who.entry(
            "deposit.report",
            &format!("chain-deposit:{}", row.id),
            json!({
                "network": t.network, "tx_hash": t.tx_hash, "log_index": t.log_index,
                "asset": asset.symbol, "amount": amount_text, "user_id": row.user_id,
                "confirmations": t.confirmations, "removed": t.removed,
                "status": decision.status.as_str(),
            }),
        );
        audit::append(&mut tx, &entry).await?;
    }
    let after = store::deposit(&mut tx, row.id)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("deposit {} vanished", row.id)))?;
    tx.commit().await?;
    if decision.credit {
        metrics::counter!("exchange_wallet_deposits_credited_total", "asset" => asset.symbol.clone())
            .increment(1);
        tracing::info!(deposit_id = row.id, user_id = row.user_id, asset = %asset.symbol, amount = %amount_text, "deposit credited");
    }
    if row.status != after.status || decision.credit || row.confirmations != after.confirmations {
        let event = json!({ "type": "deposit", "data": after.user_view() });
        crate::push::publish(
            &w.db,
            &w.redis,
            after.user_id,
            vec![event],
            decision.credit.then_some(asset.symbol.as_str()),
        )
        .await;
    }
    Ok(after)
}

/// A credited deposit left the chain: its owner's withdrawals (of every
/// asset: the credit may have been traded into another one) stop until an operator releases them. The credit stays; an alert
/// (`exchange_wallet_custody_freezes_open`) calls for a person.
async fn freeze(conn: &mut PgConnection, row: &DepositRow) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO custody_freezes (user_id, asset, deposit_id, reason) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(row.user_id)
    .bind(&row.asset)
    .bind(row.id)
    .bind(format!(
        "credited deposit {} ({} {}, tx {}) left the chain",
        row.id, row.amount, row.asset, row.tx_hash
    ))
    .execute(&mut *conn)
    .await?;
    metrics::counter!("exchange_wallet_reorged_after_credit_total", "asset" => row.asset.clone())
        .increment(1);
    tracing::error!(
        deposit_id = row.id, user_id = row.user_id, asset = %row.asset, amount = %row.amount, tx_hash = %row.tx_hash,
        "a credited deposit left the chain: the user's withdrawals of this asset are frozen until an operator reviews it"
    );
    Ok(())
}

/// Marks deposits as seen from `status` (for lists).
pub fn parse_status(text: &str) -> Result<DepositStatus, ApiError> {
    DepositStatus::parse(text).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::InvalidStatus,
            "status is pending, credited or reorged",
        )
    })
}

/// The most addresses one load call takes.
pub const ADDRESSES_PER_LOAD_MAX: usize = 1_000;

#[derive(Debug, Clone, Serialize)]
pub struct LoadedAddresses {
    pub network: String,
    pub added: u64,
    /// Already loaded before (ignored).
    pub present: u64,
    /// Free addresses of the network after the load.
    pub free: i64,
}

/// Loads deposit addresses an external custody system made (manual
/// adapter): every one validated first, all or nothing.
pub async fn load_addresses(
    w: &Wallet,
    network: &str,
    addresses: &[String],
    who: &AuditContext,
) -> Result<LoadedAddresses, ApiError> {
    if addresses.is_empty() || addresses.len() > ADDRESSES_PER_LOAD_MAX {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            format!("addresses holds 1 to {ADDRESSES_PER_LOAD_MAX} addresses"),
        ));
    }
    let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM assets WHERE network = $1)")
        .bind(network)
        .fetch_one(&w.db)
        .await?;
    if !known {
        return Err(ApiError::bad_request(
            ErrorCode::NoNetwork,
            format!("no asset is on network {network:?}"),
        ));
    }
    let adapter = w.adapters.get(network);
    let canonical = addresses
        .iter()
        .map(|a| {
            adapter
                .validate_address(a)
                .map_err(|e| ApiError::bad_request(ErrorCode::InvalidAddress, format!("{a}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut tx = w.db.begin().await?;
    let added = sqlx::query(
        "INSERT INTO deposit_addresses (network, address) SELECT $1, a FROM unnest($2::text[]) AS a
         ON CONFLICT (network, address) DO NOTHING",
    )
    .bind(network)
    .bind(&canonical)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let free: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deposit_addresses WHERE network = $1 AND user_id IS NULL",
    )
    .bind(network)
    .fetch_one(&mut *tx)
    .await?;
    let entry = who.entry(
        "deposit_addresses.load",
        network,
        json!({ "added": added, "offered": canonical.len(), "free": free }),
    );
    audit::append(&mut tx, &entry).await?;
    tx.commit().await?;
    Ok(LoadedAddresses {
        network: network.to_owned(),
        added,
        present: canonical.len() as u64 - added,
        free,
    })
}

/// An operator lifts a custody freeze after reviewing its deposit (and,
/// where the user kept money that left the chain, settling it with them).
pub async fn release_freeze(
    w: &Wallet,
    id: i64,
    reason: &str,
    who: &AuditContext,
) -> Result<crate::views::FreezeJson, ApiError> {
    crate::withdrawals::check_reason(reason)?;
    let mut tx = w.db.begin().await?;
    let columns = crate::views::FREEZE_COLUMNS;
    let released: Option<crate::views::FreezeJson> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE custody_freezes SET released_at = now(), released_by = $2, release_reason = $3
         WHERE id = $1 AND released_at IS NULL RETURNING {columns}"
    )))
    .bind(id)
    .bind(&who.actor)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(freeze) = released else {
        drop(tx);
        // Released already (a repeated call), or no such freeze.
        return sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {columns} FROM custody_freezes WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&w.db)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::FreezeNotFound,
                "no such custody freeze",
            )
        });
    };
    let entry = who.entry(
        "custody_freeze.release",
        &format!("user:{}", freeze.user_id),
        json!({ "freeze_id": id, "asset": freeze.asset, "deposit_id": freeze.deposit_id, "reason": reason }),
    );
    audit::append(&mut tx, &entry).await?;
    tx.commit().await?;
    tracing::info!(freeze_id = id, user_id = freeze.user_id, by = %who.actor, "custody freeze released");
    Ok(freeze)
}
