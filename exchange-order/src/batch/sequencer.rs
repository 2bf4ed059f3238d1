//! One async mutex per market, held by a batch from its balance writes
//! through sequence assignment, commit and `XADD`: batches of one market
//! take sequence numbers, commit and publish one after another, so the
//! stream receives every market's commands in sequence order and command
//! times never go backwards, while other batches read and plan meanwhile.
//! (Across replicas the `market_sequences` row lock still keeps the
//! sequence gapless; only the publication order is per process.)

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OwnedMutexGuard;

#[derive(Clone, Default)]
pub(super) struct Sequencer {
    markets: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Sequencer {
    /// Locks the given markets in name order (so batches never deadlock).
    pub(super) async fn lock(&self, names: &BTreeSet<String>) -> Vec<OwnedMutexGuard<()>> {
        let mutexes: Vec<_> = {
            let mut map = self.markets.lock().unwrap_or_else(PoisonError::into_inner);
            names
                .iter()
                .map(|n| map.entry(n.clone()).or_default().clone())
                .collect()
        };
        let mut guards = Vec::with_capacity(mutexes.len());
        for m in mutexes {
            guards.push(m.lock_owned().await);
        }
        guards
    }
}
