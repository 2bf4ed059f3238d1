//! The custody service: deposit addresses, deposits from a chain,
//! withdrawals with an address book, limits and four-eyes approval, and the
//! chain adapters ([`adapter`]). It is the only process that will hold
//! signing keys; the gateway reaches it over the internal API ([`api`]).
//!
//! Invariants:
//! - every credit, hold, release and payout is a balanced ledger journal in
//!   the same transaction as the balance change and the status change
//!   ([`deposits`], [`withdrawals`]);
//! - a deposit is credited exactly once, on (network, tx hash, log index),
//!   when it has its asset's confirmations; a credited deposit that leaves
//!   the chain is never debited silently: it freezes the user's
//!   withdrawals (of every asset: the credit may have been traded) until an
//!   operator decides;
//! - a withdrawal holds `amount + fee` from request to end; concurrent
//!   requests are checked one after another under the user's balance row,
//!   so they can never hold more than is available;
//! - above `auto_approve_limit` two different operators approve;
//! - `withdrawals_enabled = false` stops new requests and every payout not
//!   yet claimed ([`payouts`]).
//!
//! Loops (each a `/ready` entry): `payoutLoop`, `depositScanner`,
//! `custodyMonitor`.

pub mod adapter;
pub mod api;
pub mod deposits;
pub mod monitor;
pub mod payouts;
pub mod push;
pub mod rules;
pub mod store;
pub mod views;
pub mod withdrawals;

use std::sync::Arc;

use exchange_common::redis::Redis;
use exchange_common::service::ServiceBase;
use exchange_common::{Config, Shutdown};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::adapter::Adapters;

pub const SERVICE: &str = "wallet";

/// The sockets this service serves on (bound by the caller; tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        Ok(Self {
            http: TcpListener::bind(config.wallet.http_addr).await?,
        })
    }
}

/// What every custody flow works with.
#[derive(Clone)]
pub struct Wallet {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub redis: Redis,
    pub adapters: Adapters,
    /// Woken when a withdrawal becomes payable.
    pub payouts_due: Arc<Notify>,
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "exchange_wallet_deposits_credited_total",
        "Chain deposits credited, by asset"
    );
    describe_counter!(
        "exchange_wallet_withdrawals_requested_total",
        "Withdrawals requested (funds held), by asset"
    );
    describe_counter!(
        "exchange_wallet_payouts_failed_total",
        "Payouts that failed on chain (funds returned), by asset"
    );
    describe_counter!(
        "exchange_wallet_reorged_after_credit_total",
        "Credited deposits that left the chain (the user's withdrawals frozen), by asset"
    );
    describe_counter!(
        "exchange_wallet_push_failures_total",
        "Private deposit/withdrawal pushes not published"
    );
    describe_gauge!(
        "exchange_wallet_custody_freezes_open",
        "Custody freezes waiting for an operator (a credited deposit left the chain)"
    );
    describe_gauge!(
        "exchange_wallet_withdrawals_open",
        "Withdrawals holding funds, by status"
    );
    describe_gauge!(
        "exchange_wallet_withdrawal_oldest_age_seconds",
        "Seconds since the oldest withdrawal in a status last changed, by status"
    );
    describe_gauge!(
        "exchange_wallet_deposit_addresses_free",
        "Deposit addresses loaded and not yet given to a user, by manual network"
    );
}

/// Runs the wallet until `shutdown` is triggered.
pub async fn run(
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let base = ServiceBase::new(config.clone(), SERVICE)?;
    describe_metrics();
    let wallet = Wallet {
        config,
        db: base.db.clone(),
        redis: base.redis.clone(),
        adapters: Adapters::default(),
        payouts_due: Arc::new(Notify::new()),
    };
    let beats = base.heartbeats();
    let payout_beat = beats.register(payouts::LOOP_NAME, "payouts", payouts::PAYOUT_STALE_AFTER);
    let scanner_beat = beats.register(
        monitor::SCANNER_LOOP_NAME,
        "chains",
        monitor::SCANNER_STALE_AFTER,
    );
    let monitor_beat = beats.register(
        monitor::MONITOR_LOOP_NAME,
        "gauges",
        monitor::MONITOR_STALE_AFTER,
    );
    tokio::spawn(payouts::run(wallet.clone(), payout_beat, shutdown.clone()));
    tokio::spawn(monitor::run_scanner(
        wallet.clone(),
        scanner_beat,
        shutdown.clone(),
    ));
    tokio::spawn(monitor::run_monitor(
        wallet.clone(),
        monitor_beat,
        shutdown.clone(),
    ));
    base.serve(listeners.http, api::routes(wallet), shutdown)
        .await
}
