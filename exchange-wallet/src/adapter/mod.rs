//! The chain adapter boundary: everything the wallet needs from a chain,
//! and nothing of the ledger. An adapter derives deposit addresses,
//! reports incoming transfers since a cursor (with block hash and
//! confirmations), validates addresses, sends payouts and follows them.
//! The wallet decides what a report means for money ([`crate::rules`]);
//! an adapter never touches balances.
//!
//! Part 1 ships [`manual::Manual`]: an operator's external custody system
//! reports deposits and payouts through the admin API. A network without a
//! configured adapter is manual.

pub mod evm;
pub mod manual;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::rules::PayoutReport;

/// An incoming transfer as a chain shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub network: String,
    pub tx_hash: String,
    /// The log index (token transfers) or the output index: with the hash,
    /// the transfer's identity, on which it is credited once.
    pub log_index: i32,
    /// The deposit address it was sent to (canonical form).
    pub address: String,
    pub asset: String,
    /// A decimal amount in the asset (at most its scale).
    pub amount: String,
    pub block_number: Option<i64>,
    pub block_hash: Option<String>,
    pub confirmations: i32,
    /// It left the chain (its block was reorganised away).
    pub removed: bool,
}

/// What a scan found, and where the next one resumes.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub transfers: Vec<Transfer>,
    pub cursor: Option<String>,
}

/// A payout to send: an approved withdrawal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payout {
    pub withdrawal_id: i64,
    pub asset: String,
    pub contract: Option<String>,
    pub address: String,
    /// A decimal amount in the asset.
    pub amount: String,
    /// The hash recorded for it already (a restart re-sends the same).
    pub tx_hash: Option<String>,
}

/// How a payout left the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Broadcast under this hash.
    Broadcast { tx_hash: String },
    /// Handed to an operator, who reports it through the admin API.
    AwaitingOperator,
}

pub trait ChainAdapter: Send + Sync {
    /// `manual`, `ethereum`, …: shown in logs and metrics.
    fn kind(&self) -> &'static str;

    /// Whether operators report this network's deposits and payouts.
    fn is_manual(&self) -> bool;

    /// The canonical form of a valid address, or why it is not one.
    fn validate_address(&self, address: &str) -> Result<String, String>;

    /// The canonical form of a transaction hash, or why it is not one: a
    /// transfer is credited once per (network, hash, index), so one hash
    /// must never have two spellings (`0xAB…` and `0xab…`).
    fn canonical_tx_hash(&self, hash: &str) -> Result<String, String>;

    /// The deposit address at derivation `index`; `None` when the adapter
    /// does not derive (the wallet hands out an address an operator loaded).
    fn derive_address(&self, index: i64) -> BoxFuture<'_, anyhow::Result<Option<String>>>;

    /// Transfers to deposit addresses since `cursor` (none: from the start
    /// the adapter is configured with).
    fn scan(&self, cursor: Option<String>) -> BoxFuture<'_, anyhow::Result<Scan>>;

    /// Builds, signs and broadcasts a payout (or hands it on).
    fn send_payout(&self, payout: Payout) -> BoxFuture<'_, anyhow::Result<Sent>>;

    /// Where a sent payout stands; `None` while nothing changed.
    fn payout_status(&self, payout: Payout) -> BoxFuture<'_, anyhow::Result<Option<PayoutReport>>>;
}

/// The adapters by network; every other network is manual.
#[derive(Clone, Default)]
pub struct Adapters {
    by_network: BTreeMap<String, Arc<dyn ChainAdapter>>,
}

impl Adapters {
    pub fn insert(&mut self, network: &str, adapter: Arc<dyn ChainAdapter>) {
        self.by_network.insert(network.to_owned(), adapter);
    }

    pub fn get(&self, network: &str) -> Arc<dyn ChainAdapter> {
        self.by_network
            .get(network)
            .cloned()
            .unwrap_or_else(|| Arc::new(manual::Manual::new(network)))
    }

    /// The networks with an adapter that scans by itself.
    pub fn scanning(&self) -> impl Iterator<Item = (&str, &Arc<dyn ChainAdapter>)> {
        self.by_network
            .iter()
            .filter(|(_, a)| !a.is_manual())
            .map(|(n, a)| (n.as_str(), a))
    }
}
