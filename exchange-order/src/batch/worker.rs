//! The batch workers: each takes the next batch from the queue, applies it
//! (load → plan → store → commit → publish) and answers its requests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use exchange_common::ApiError;
use exchange_common::redis::Redis;
use sqlx::{PgConnection, PgPool};
use tokio::sync::OwnedMutexGuard;

use super::plan::{self, Loaded};
use super::queue::Intake;
use super::sequencer::Sequencer;
use super::store::{self, CommitOutcomeUnknown};
use super::{Outcome, Request, outcome_unknown};
use exchange_store::{MarketInfo, Markets};

/// What a worker applies batches with.
pub(super) struct Worker {
    pub db: PgPool,
    pub redis: Redis,
    pub markets: Markets,
    pub sequencer: Sequencer,
}

/// What a batch read before deciding.
struct Read {
    loaded: Loaded,
    /// The markets whose journals the batch appends to.
    journals: BTreeSet<String>,
    /// The market cache as the batch saw it.
    markets: Arc<BTreeMap<String, MarketInfo>>,
    /// Asset scales (`plan::asset_scales`).
    scales: HashMap<String, u8>,
    /// On the locked path, the sequencer's locks on `journals`, taken
    /// before the balances were read.
    guards: Option<Vec<OwnedMutexGuard<()>>>,
}

pub(super) async fn run(worker: Worker, intake: Arc<Intake>) {
    loop {
        let batch = intake.next_batch().await;
        if batch.is_empty() {
            return;
        }
        metrics::histogram!("exchange_order_batch_len").record(batch.len() as f64);
        let (requests, replies): (Vec<Request>, Vec<_>) =
            batch.into_iter().map(|j| (j.request, j.reply)).unzip();
        let started = Instant::now();
        let outcomes = worker.apply(&requests).await;
        metrics::histogram!("exchange_order_batch_seconds").record(started.elapsed().as_secs_f64());
        intake.batch_done();
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            let _ = reply.send(outcome);
        }
    }
}

impl Worker {
    /// Applies a batch, retrying under row locks when it must, and turns a
    /// failure into every request's answer.
    async fn apply(&self, requests: &[Request]) -> Vec<Outcome> {
        let mut result = self.apply_batch(requests, false).await;
        if matches!(result, Ok(None)) {
            // A balance changed between our unlocked read and our write,
            // or a user of the batch is frozen: decide again under row
            // locks and the sequencer.
            metrics::counter!("exchange_order_batch_relocked_total").increment(1);
            result = self.apply_batch(requests, true).await;
        }
        if result.as_ref().is_err_and(is_unique_violation) {
            // A concurrent batch inserted one of our client_order_ids first;
            // the retry finds that order and answers it (200).
            result = self.apply_batch(requests, true).await;
        }
        let result = result.and_then(|r| {
            r.ok_or_else(|| anyhow::anyhow!("balance write missed rows under row locks"))
        });
        match result {
            Ok(outcomes) => outcomes,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    count = requests.len(),
                    "order batch failed"
                );
                metrics::counter!("exchange_order_batch_failed_total").increment(1);
                let err = if e.is::<CommitOutcomeUnknown>() {
                    outcome_unknown("the database connection was lost during commit")
                } else {
                    ApiError::unavailable("database unavailable, nothing was applied, retry")
                };
                vec![Err(err); requests.len()]
            }
        }
    }

    /// Applies one batch; `Err` means nothing was applied, except
    /// [`CommitOutcomeUnknown`] (the commit may have taken effect).
    ///
    /// Optimistic (`locked == false`): balances are read without row locks
    /// and the batch is decided on that read; the balance write at the end
    /// checks `available >= amount` per row and, if any row no longer
    /// covers its amount (another batch or a withdrawal got there first),
    /// rolls back and returns `Ok(None)`: the caller retries with `locked
    /// == true`, which takes the market sequencer first and the balance
    /// rows `FOR UPDATE` before deciding (the always-correct path).
    async fn apply_batch(
        &self,
        requests: &[Request],
        locked: bool,
    ) -> anyhow::Result<Option<Vec<Outcome>>> {
        // Provisional; the commands' time is taken again once the sequence
        // numbers are ours (below), so time never goes backwards along a
        // market's sequence, even with several batches in flight.
        let mut time_ms = now_ms();
        let t0 = Instant::now();
        let mut tx = self.db.begin().await?;

        // Load, then plan.
        let read = self.load(&mut tx, requests, locked).await?;
        let t_locked = t0.elapsed();
        let mut plan = plan::decide(requests, read.loaded, &read.markets);

        // Store: order ids (no locks), then, under the market sequencer,
        // the writes that take row locks, kept to the end of the
        // transaction.
        let order_ids = store::next_order_ids(&mut tx, plan.new_orders().count()).await?;
        let guards = match read.guards {
            Some(guards) => guards,
            None => self.sequencer.lock(&read.journals).await,
        };
        // A freeze cancels the user's open orders once it commits. The
        // placing users' rows are share-locked here, to the commit: a freeze
        // committed before sends the batch to the locked path (which reads
        // it again and refuses those users); a freeze after waits for this
        // commit, so its cancel-all sees these orders.
        if !locked
            && !store::frozen_users(&mut tx, &plan::trading_users(requests))
                .await?
                .is_empty()
        {
            tx.rollback().await?;
            return Ok(None);
        }
        store::add_amend_reserves(&mut tx, &plan.amend_reserves).await?;
        if !store::lock_funds(&mut tx, &plan.locks, &read.scales).await? {
            tx.rollback().await?;
            return Ok(None);
        }
        store::set_market_statuses(&mut tx, &plan.statuses).await?;
        let first_seq = store::take_sequences(&mut tx, &plan.commands_per_market()).await?;
        time_ms = now_ms().max(time_ms);
        let commands = plan::sequence(&mut plan, order_ids, first_seq, time_ms)?;
        store::insert_orders(&mut tx, plan.new_orders(), time_ms).await?;
        store::insert_commands(&mut tx, &commands, time_ms).await?;
        // Last: the audit log's lock is taken after every row lock.
        for entry in &plan.audits {
            exchange_store::audit::append(&mut tx, entry).await?;
        }
        let t_written = t0.elapsed();

        // Commit.
        store::commit(tx).await?;
        let t_commit = t0.elapsed();
        for (symbol, status) in &plan.statuses {
            self.markets.set_status(symbol, *status);
        }

        // Publish; a failure here is repaired by the republisher.
        if let Err(e) = store::publish(&self.redis, &commands).await {
            metrics::counter!("exchange_order_publish_failed_total").increment(1);
            tracing::warn!(error = %e, count = commands.len(), "xadd failed after commit; the republisher will retry");
        }
        drop(guards);
        metrics::counter!("exchange_order_commands_total").increment(commands.len() as u64);
        tracing::debug!(
            len = requests.len(),
            locked_us = micros(t_locked),
            written_us = micros(t_written),
            committed_us = micros(t_commit),
            published_us = micros(t0.elapsed()),
            "order batch"
        );
        Ok(Some(plan::answers(plan, &commands)))
    }

    /// Reads what the batch decides on: the orders it names, then the
    /// balances it may spend — on the locked path under the sequencer and
    /// the rows' locks, taken in a fixed order (amended orders by id, then
    /// balances by key).
    async fn load(
        &self,
        tx: &mut PgConnection,
        requests: &[Request],
        locked: bool,
    ) -> anyhow::Result<Read> {
        let lookups = plan::lookups(requests);
        let by_client_id =
            store::load_orders_by_client_id(tx, &lookups.client_id_users, &lookups.client_ids)
                .await?;
        let last_price = store::load_last_prices(tx, &lookups.price_markets).await?;
        let by_id = store::load_orders_by_id(tx, &lookups.order_ids).await?;
        let journals = plan::batch_markets(requests, &by_id);
        let guards = if locked {
            Some(self.sequencer.lock(&journals).await)
        } else {
            None
        };
        let markets = self.markets.all();
        let scales = plan::asset_scales(&markets, requests);
        if locked {
            store::lock_orders(tx, &plan::amended_order_ids(requests)).await?;
        }
        let keys = plan::balance_keys(requests, &by_id);
        let (available, unknown_scale) = store::load_available(tx, &keys, &scales, locked).await?;
        // Unlocked, this read would not hold: `apply_batch` checks again
        // under the sequencer.
        let frozen = if locked {
            store::frozen_users(tx, &plan::trading_users(requests)).await?
        } else {
            BTreeSet::new()
        };
        Ok(Read {
            loaded: Loaded {
                by_client_id,
                by_id,
                last_price,
                available,
                unknown_scale,
                frozen,
            },
            journals,
            markets,
            scales,
            guards,
        })
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn is_unique_violation(e: &anyhow::Error) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .is_some_and(|d| d.code().as_deref() == Some("23505"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
