//! One market's order book as this service keeps it ([`MarketBook`]) and
//! the rules for feeding it: strict sequence order, duplicates skipped, gaps
//! filled from the journal, every produced batch stored in `event_batches`
//! before its stream entry is acknowledged.
//!
//! Failure handling:
//! - storing batches fails: the book has already moved and is right, so
//!   the batches wait in memory and are stored before any new work (and by
//!   the periodic flush); their entries are not acknowledged until then
//!   (redelivered later, they are duplicates). A crash meanwhile loses
//!   nothing: recovery recomputes them from the journal;
//! - publishing to `exchange:events` fails: the batches are stored, the
//!   entries are acknowledged, and the unpublished batches are retried
//!   before any new work (and, after a crash, republished at start: every
//!   stored batch that clearing has not cleared goes out again);
//! - the engine panics, or a replay produces events different from the
//!   stored ones: the market **halts** (its `market:<SYMBOL>` readiness
//!   entry goes down with the reason, `exchange_market_halted`
//!   is 1, and its consumer stops); an operator must look. The commands
//!   before the halting one were applied correctly: their batches are
//!   stored and published first (at recovery, before the halt is declared;
//!   in a live read, by the flush task, which goes on while the market is
//!   halted until they are out). Their stream entries are acknowledged only
//!   once stored.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exchange_common::redis::Redis;
use exchange_common::streams::{Handler, StreamEntry};
use exchange_domain::{Event, EventBatch, MarketSpec, MarketSymbol, SequencedCommand};
use exchange_engine::OrderBook;
use sqlx::PgPool;

use crate::SERVICE;
use crate::lease::{Lease, LeaseLost};
use crate::store;
use exchange_store::transport::note_forgery;

/// What to do with a command, given the last sequence number applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Already applied: acknowledge and move on.
    Skip,
    /// The next one: apply it.
    Apply,
    /// Commands `from..=to` are missing: read them from the journal first.
    Gap { from: u64, to: u64 },
}

pub fn next(last_applied: u64, seq: u64) -> Next {
    if seq <= last_applied {
        Next::Skip
    } else if seq == last_applied + 1 {
        Next::Apply
    } else {
        Next::Gap {
            from: last_applied + 1,
            to: seq - 1,
        }
    }
}

/// Why a market stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt {
    pub seq: u64,
    pub reason: String,
}

/// The shared, observable state of one market.
#[derive(Debug, Default)]
pub struct Status {
    pub last_seq: u64,
    pub halted: Option<Halt>,
}

pub type SharedStatus = Arc<Mutex<Status>>;

/// One market's [`OrderBook`] and what keeps it durable: the batches it
/// produced that are not yet stored or published, its snapshot and
/// stream-trim marks, and its status (the book is gone once it halts).
pub struct MarketBook {
    pub symbol: MarketSymbol,
    pub spec: MarketSpec,
    book: Option<OrderBook>,
    /// Produced, but storing them failed: stored before any new work.
    unstored: Vec<EventBatch>,
    /// Stored but not yet on the events stream.
    unpublished: Vec<EventBatch>,
    /// The seq of the newest stored snapshot (0: none) and when it was taken.
    snapshot_seq: u64,
    snapshot_at: Instant,
    /// `(last applied seq, stream entry id)` after each fully processed
    /// read, oldest first: what the order stream may be trimmed below.
    consumed: std::collections::VecDeque<(u64, String)>,
    pub status: SharedStatus,
    /// This replica's lease on the market: every store names its epoch,
    /// and nothing is published once it is no longer valid.
    pub lease: Arc<Lease>,
}

/// Consumed-position marks kept for trimming (one per stream read).
pub const CONSUMED_MARKS_LEN_MAX: usize = 4_096;

/// A snapshot is taken when this long has passed since the last one and
/// the book moved...
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(30);
/// ...or when this many commands were applied since the last one.
pub const SNAPSHOT_COMMANDS: u64 = 100_000;

impl std::fmt::Debug for MarketBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketBook")
            .field("symbol", &self.symbol)
            .field("last_seq", &self.last_seq())
            .finish_non_exhaustive()
    }
}

/// Applies one command, turning an engine panic into an error (the book
/// must then be considered lost).
pub fn apply_guarded(book: &mut OrderBook, cmd: &SequencedCommand) -> Result<Vec<Event>, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| {
        book.apply(cmd.seq, cmd.time_ms, &cmd.command)
    })) {
        Ok(Ok(events)) => Ok(events),
        Ok(Err(e)) => Err(format!("engine refused seq {}: {e}", cmd.seq)),
        Err(_) => Err(format!("engine panicked at seq {}", cmd.seq)),
    }
}

impl MarketBook {
    pub fn new(spec: MarketSpec, status: SharedStatus, lease: Arc<Lease>) -> Self {
        metrics::gauge!("exchange_market_halted", "market" => spec.symbol().to_string()).set(0.0);
        Self {
            symbol: spec.symbol(),
            spec,
            book: None,
            unstored: Vec::new(),
            unpublished: Vec::new(),
            snapshot_seq: 0,
            snapshot_at: Instant::now(),
            consumed: std::collections::VecDeque::new(),
            status,
            lease,
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.book.as_ref().map_or(0, OrderBook::last_seq)
    }

    pub fn book(&self) -> Option<&OrderBook> {
        self.book.as_ref()
    }

    pub fn halted(&self) -> Option<Halt> {
        self.status.lock().ok().and_then(|s| s.halted.clone())
    }

    fn halt(&mut self, seq: u64, reason: String) {
        tracing::error!(market = %self.symbol, seq, reason, "market halted");
        metrics::gauge!("exchange_market_halted", "market" => self.symbol.to_string()).set(1.0);
        // The book is dropped, but batches it produced before the halting
        // command stay: they are right, and the flush task keeps storing and
        // publishing them while the market is halted (their stream entries
        // are not acknowledged until they are stored).
        self.book = None;
        if let Ok(mut s) = self.status.lock() {
            s.halted = Some(Halt { seq, reason });
        }
    }

    fn set_last(&self) {
        let last = self.last_seq();
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("exchange_matching_last_seq", "market" => self.symbol.to_string())
            .set(last as f64);
        if let Ok(mut s) = self.status.lock() {
            s.last_seq = last;
        }
    }

    /// Rebuilds the book from the journal (the snapshot hook: a snapshot
    /// would give the starting book and seq instead of an empty book at 0),
    /// checks every replayed batch against the stored one, stores and
    /// publishes the batches that are missing, and republishes stored
    /// batches clearing has not cleared. Returns `Err` only for I/O
    /// failures (retry later); a mismatch halts the market.
    pub async fn recover(&mut self, db: &PgPool, redis: &Redis) -> anyhow::Result<()> {
        let market = self.symbol.to_string();
        let started = std::time::Instant::now();
        let mut book = self.starting_book(db).await?;
        let from_seq = book.last_seq();
        self.snapshot_seq = from_seq;
        self.snapshot_at = Instant::now();
        let mut missing: Vec<EventBatch> = Vec::new();
        let mut replayed = 0u64;
        // Why the replay stopped early, if it did. The batches replayed
        // before that point are right (the same commands, in order, from a
        // good state) and are stored and published below before the market
        // halts: a halt must not lose trades that happened before it.
        let mut halt: Option<(u64, String)> = None;
        let mut mismatch = false;
        'replay: loop {
            let page =
                store::journal_with_batches(db, &market, book.last_seq(), store::REPLAY_PAGE_LEN)
                    .await?;
            if page.is_empty() {
                break;
            }
            for row in page {
                if row.command.seq != book.last_seq() + 1 {
                    halt = Some((
                        row.command.seq,
                        format!("journal gap before seq {}", row.command.seq),
                    ));
                    break 'replay;
                }
                let events = match apply_guarded(&mut book, &row.command) {
                    Ok(e) => e,
                    Err(reason) => {
                        halt = Some((row.command.seq, reason));
                        break 'replay;
                    }
                };
                replayed += 1;
                match row.stored {
                    Some(stored) if stored != events => {
                        mismatch = true;
                        halt = Some((
                            row.command.seq,
                            format!(
                                "replay of seq {} produced events different from the stored ones",
                                row.command.seq
                            ),
                        ));
                        break 'replay;
                    }
                    Some(_) => {}
                    None => missing.push(EventBatch {
                        market: self.symbol,
                        seq: row.command.seq,
                        time_ms: row.command.time_ms,
                        events,
                    }),
                }
            }
            if missing.len() >= store::STORE_CHUNK_LEN {
                let stored = store::insert_batches(db, &self.lease.fence(), &missing).await;
                self.stop_if_lease_lost(stored)?;
                self.unpublished.append(&mut missing);
            }
        }
        let stored = store::insert_batches(db, &self.lease.fence(), &missing).await;
        self.stop_if_lease_lost(stored)?;
        self.unpublished.append(&mut missing);
        // Stored earlier but maybe never published (a crash between store and XADD).
        let uncleared =
            store::uncleared_batches(db, &market, store::REPUBLISH_UNCLEARED_MAX).await?;
        let fresh: std::collections::BTreeSet<u64> =
            self.unpublished.iter().map(|b| b.seq).collect();
        let mut old: Vec<EventBatch> = uncleared
            .into_iter()
            .filter(|b| !fresh.contains(&b.seq))
            .collect();
        old.append(&mut self.unpublished);
        self.unpublished = old;
        if let Some((seq, reason)) = halt {
            // Only what comes before the halting command goes out: a stored
            // batch from there on is what an operator must look at.
            self.unpublished.retain(|b| b.seq < seq);
            // Publish before halting: an error here is an I/O failure and
            // the whole recovery is retried (storing again is a no-op).
            self.flush(db, redis).await?;
            if mismatch {
                metrics::counter!("exchange_matching_replay_mismatch_total", "market" => market.clone())
                    .increment(1);
            }
            self.halt(seq, reason);
            tracing::info!(
                market,
                from_seq,
                replayed,
                "batches before the halt stored and published"
            );
            return Ok(());
        }
        self.book = Some(book);
        self.unstored.clear();
        self.set_last();
        self.flush(db, redis).await?;
        tracing::info!(
            market,
            from_seq,
            replayed,
            last_seq = self.last_seq(),
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "market recovered"
        );
        Ok(())
    }

    /// The newest stored snapshot that restores and checks out (same seq,
    /// same state hash), or an empty book. A bad snapshot is skipped with
    /// an error log and `exchange_matching_snapshot_rejected_total`.
    async fn starting_book(&self, db: &PgPool) -> anyhow::Result<OrderBook> {
        let market = self.symbol.to_string();
        for snap in store::latest_snapshots(db, &market).await? {
            match OrderBook::restore(self.spec, &snap.bytes) {
                Ok(book) if book.last_seq() == snap.seq && book.state_hash() == snap.state_hash => {
                    return Ok(book);
                }
                Ok(book) => tracing::error!(
                    market,
                    seq = snap.seq,
                    restored_seq = book.last_seq(),
                    "snapshot does not match its seq or state hash; trying an older one"
                ),
                Err(e) => tracing::error!(market, seq = snap.seq, error = %e,
                    "snapshot cannot be restored; trying an older one"),
            }
            metrics::counter!("exchange_matching_snapshot_rejected_total", "market" => market.clone())
                .increment(1);
        }
        Ok(OrderBook::new(self.spec))
    }

    /// Records that every entry up to stream id `id` is applied and its
    /// batch stored.
    pub fn mark_consumed(&mut self, id: String) {
        if self.consumed.len() >= CONSUMED_MARKS_LEN_MAX {
            self.consumed.pop_front();
        }
        self.consumed.push_back((self.last_seq(), id));
    }

    /// Trims the order stream below the newest entry that is both consumed
    /// and covered by the snapshot at `snapshot_seq` (the journal in
    /// Postgres keeps everything; the stream is only transport).
    async fn trim_orders_stream(&mut self, redis: &Redis) -> anyhow::Result<()> {
        let mut min_id = None;
        while let Some((seq, _)) = self.consumed.front() {
            if *seq > self.snapshot_seq {
                break;
            }
            min_id = self.consumed.pop_front().map(|(_, id)| id);
        }
        let Some(id) = min_id else {
            return Ok(());
        };
        let mut conn = redis.conn();
        let trimmed: u64 = redis::cmd("XTRIM")
            .arg(redis.orders_stream(&self.symbol.to_string()))
            .arg("MINID")
            .arg("~")
            .arg(&id)
            .query_async(&mut conn)
            .await?;
        tracing::debug!(market = %self.symbol, below = %id, trimmed, "order stream trimmed");
        Ok(())
    }

    /// Stores a snapshot when one is due (or `force`d, at shutdown) and
    /// safe: the book is live and every batch up to its seq is stored.
    /// Returns the snapshot's seq when one was stored.
    pub async fn maybe_snapshot(
        &mut self,
        db: &PgPool,
        redis: &Redis,
        force: bool,
    ) -> anyhow::Result<Option<u64>> {
        let Some(book) = self.book.as_ref() else {
            return Ok(None);
        };
        let seq = book.last_seq();
        let due = force
            || self.snapshot_at.elapsed() >= SNAPSHOT_INTERVAL
            || seq.saturating_sub(self.snapshot_seq) >= SNAPSHOT_COMMANDS;
        if !due || seq <= self.snapshot_seq || !self.unstored.is_empty() || self.halted().is_some()
        {
            return Ok(None);
        }
        let started = Instant::now();
        let snap = store::Snapshot {
            seq,
            state_hash: book.state_hash(),
            bytes: book.snapshot(),
        };
        let stored = store::insert_snapshot(db, &self.lease.fence(), &snap).await;
        self.stop_if_lease_lost(stored)?;
        self.snapshot_seq = seq;
        self.snapshot_at = Instant::now();
        if let Err(e) = self.trim_orders_stream(redis).await {
            tracing::warn!(market = %self.symbol, error = format!("{e:#}"), "order stream trim failed");
        }
        tracing::info!(market = %self.symbol, seq, bytes = snap.bytes.len(),
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), "snapshot stored");
        Ok(Some(seq))
    }

    /// Stops the market here when a fenced write found the lease taken
    /// over (another replica owns the market now).
    fn stop_if_lease_lost<T>(&self, r: anyhow::Result<T>) -> anyhow::Result<T> {
        if let Err(e) = &r
            && e.is::<LeaseLost>()
            && !self.lease.stop.is_triggered()
        {
            tracing::warn!(market = %self.symbol, epoch = self.lease.epoch, "lease taken over: stopping this market here");
            metrics::counter!("exchange_matching_leases_lost_total", "market" => self.symbol.to_string())
                .increment(1);
            self.lease.stop.trigger();
        }
        r
    }

    /// Nothing waits to be stored or published.
    pub fn flushed(&self) -> bool {
        self.unstored.is_empty() && self.unpublished.is_empty()
    }

    /// Stores what is not yet stored, then publishes what is stored but
    /// not yet on the events stream.
    pub async fn flush(&mut self, db: &PgPool, redis: &Redis) -> anyhow::Result<()> {
        if !self.unstored.is_empty() {
            let stored = store::insert_batches(db, &self.lease.fence(), &self.unstored).await;
            self.stop_if_lease_lost(stored)?;
            self.unpublished.append(&mut self.unstored);
        }
        if self.unpublished.is_empty() {
            return Ok(());
        }
        if !self.lease.is_valid() {
            // The batches are stored: the next owner republishes what
            // clearing has not cleared when it recovers.
            anyhow::bail!("the lease is no longer valid: not publishing");
        }
        for chunk in self.unpublished.chunks(store::STORE_CHUNK_LEN) {
            store::publish_batches(redis, chunk).await?;
        }
        self.unpublished.clear();
        Ok(())
    }

    /// Processes the commands of one stream read. Returns one result per
    /// entry. Every entry is either already applied or applied here and its
    /// batch stored before `Ok`.
    pub async fn handle(
        &mut self,
        db: &PgPool,
        redis: &Redis,
        entries: &[StreamEntry],
    ) -> Vec<Result<(), String>> {
        let fail_all = |e: String| vec![Err(e); entries.len()];
        if !self.lease.is_valid() {
            // Renewal is late or the lease is gone: apply nothing a new
            // owner may be applying too (the entries stay pending).
            return fail_all("this replica's lease on the market is not valid now".to_owned());
        }
        if let Some(h) = self.halted() {
            return fail_all(format!("market halted: {}", h.reason));
        }
        if self.book.is_none() {
            if let Err(e) = self.recover(db, redis).await {
                return fail_all(format!("recovery failed: {e:#}"));
            }
            if let Some(h) = self.halted() {
                return fail_all(format!("market halted: {}", h.reason));
            }
        }
        if !self.unstored.is_empty() {
            if let Err(e) = self.flush(db, redis).await {
                return fail_all(format!(
                    "storing or publishing earlier batches failed: {e:#}"
                ));
            }
        } else if let Err(e) = self.flush(db, redis).await {
            // Stored already: new work may go on; publishing is retried.
            tracing::warn!(market = %self.symbol, error = format!("{e:#}"), "publishing events failed; will retry");
        }
        let mut results: Vec<Result<(), String>> = Vec::with_capacity(entries.len());
        let mut produced: Vec<EventBatch> = Vec::new();
        let Some(book) = self.book.as_mut() else {
            return fail_all("no book".to_owned());
        };
        let mut halt: Option<(u64, String)> = None;
        // Redis is only a transport (see `exchange_store::transport`): an
        // entry names a journaled command by seq, and what is applied is the
        // journal's command. Read ahead once for the whole read.
        let market = self.symbol.to_string();
        let stream = redis.orders_stream(&market);
        let mut ahead = JournalAhead::new(book.last_seq());
        let claimed_top = entries
            .iter()
            .filter_map(|e| e.field_str("command"))
            .filter_map(|t| serde_json::from_str::<SequencedCommand>(t).ok())
            .filter(|c| c.market == self.symbol)
            .map(|c| c.seq)
            .max()
            .unwrap_or(0);
        for entry in entries {
            if halt.is_some() {
                results.push(Err("market halted".to_owned()));
                continue;
            }
            let cmd: SequencedCommand = match entry
                .field_str("command")
                .ok_or_else(|| "entry has no command field".to_owned())
                .and_then(|t| {
                    serde_json::from_str(t).map_err(|e| format!("malformed command: {e}"))
                }) {
                Ok(c) => c,
                Err(e) => {
                    // Not a command we can read; the journal has the real one
                    // and a later entry's read-ahead will apply it.
                    results.push(Err(e));
                    continue;
                }
            };
            if cmd.market != self.symbol {
                results.push(Err(format!(
                    "command for {} on {}'s stream",
                    cmd.market, self.symbol
                )));
                continue;
            }
            if next(book.last_seq(), cmd.seq) == Next::Skip {
                metrics::counter!("exchange_matching_duplicates_total").increment(1);
                results.push(Ok(()));
                continue;
            }
            let todo = match ahead.through(db, &market, cmd.seq, claimed_top).await {
                Ok(Through::Commands(todo)) => todo,
                Ok(Through::NotJournaled(journaled)) => {
                    note_forgery(SERVICE, &stream, &entry.id, "forged", &market, cmd.seq);
                    // The journal's next commands, read on the way, are
                    // genuine: apply them rather than wait for their entries.
                    halt = apply_all(self.symbol, book, journaled, &mut produced);
                    results.push(Ok(()));
                    continue;
                }
                Ok(Through::Behind(todo)) => {
                    // Far behind: apply what was read, come back for the rest.
                    halt = apply_all(self.symbol, book, todo, &mut produced);
                    results.push(Err(format!(
                        "seq {} is more than {JOURNAL_READ_LEN_MAX} commands ahead; catching up",
                        cmd.seq
                    )));
                    continue;
                }
                Err(e) => {
                    results.push(Err(format!("reading the journal failed: {e:#}")));
                    continue;
                }
            };
            if todo.last() != Some(&cmd) {
                note_forgery(SERVICE, &stream, &entry.id, "altered", &market, cmd.seq);
            }
            if todo.len() > 1 {
                let filled = todo.len() as u64 - 1;
                tracing::info!(market = %self.symbol, from = todo[0].seq, to = cmd.seq - 1, "sequence gap filled from the journal");
                metrics::counter!("exchange_matching_gap_filled_total").increment(filled);
            }
            halt = apply_all(self.symbol, book, todo, &mut produced);
            results.push(if halt.is_some() {
                Err("market halted".to_owned())
            } else {
                Ok(())
            });
        }
        // Store what was produced (even before a halt: those were applied
        // correctly), then publish.
        let stored = store::insert_batches(db, &self.lease.fence(), &produced).await;
        if let Err(e) = self.stop_if_lease_lost(stored) {
            tracing::warn!(market = %self.symbol, error = format!("{e:#}"), "storing event batches failed; will retry before new work");
            self.unstored.append(&mut produced);
            // Not halted here when the lease is gone: the new owner replays
            // the same journal and halts there if it must.
            if let Some((seq, reason)) = halt
                && !e.is::<LeaseLost>()
            {
                self.halt(seq, reason);
            }
            self.set_last();
            return fail_all(format!("storing event batches failed: {e:#}"));
        }
        metrics::counter!("exchange_matching_commands_total", "market" => self.symbol.to_string())
            .increment(produced.len() as u64);
        count_outcomes(&self.symbol.to_string(), &produced);
        self.unpublished.append(&mut produced);
        if let Some((seq, reason)) = halt {
            self.halt(seq, reason);
        }
        self.set_last();
        if let Err(e) = self.flush(db, redis).await {
            tracing::warn!(market = %self.symbol, error = format!("{e:#}"), "publishing events failed; will retry");
        }
        results
    }
}

/// Journal commands one read may fetch ahead of the book, at most.
pub const JOURNAL_READ_LEN_MAX: u64 = 10_000;

/// What the journal holds from the book's next seq through a claimed seq.
#[derive(Debug, PartialEq, Eq)]
pub enum Through {
    /// Every command from the next seq through the claimed one, in order.
    Commands(Vec<SequencedCommand>),
    /// The journal ends before the claimed seq: no such command was ever
    /// journaled, so the entry is forged. The journal's commands from the
    /// next seq to its end, which were read on the way.
    NotJournaled(Vec<SequencedCommand>),
    /// More than [`JOURNAL_READ_LEN_MAX`] commands away: the first ones.
    Behind(Vec<SequencedCommand>),
}

/// The journal read ahead of the book during one stream read: contiguous
/// commands from the book's next seq, fetched in as few queries as the read
/// needs (one, normally).
#[derive(Debug)]
pub struct JournalAhead {
    next: u64,
    rows: std::collections::VecDeque<SequencedCommand>,
}

impl JournalAhead {
    pub fn new(last_applied: u64) -> Self {
        Self {
            next: last_applied + 1,
            rows: std::collections::VecDeque::new(),
        }
    }

    /// The commands from the next seq through `seq` (taken out), reading up
    /// to `hint` (the highest seq this read claims) when it must query.
    pub async fn through(
        &mut self,
        db: &PgPool,
        market: &str,
        seq: u64,
        hint: u64,
    ) -> anyhow::Result<Through> {
        if i64::try_from(seq).is_err() {
            // Beyond any journal seq (a bigint); `seq + 1` could overflow.
            return Ok(Through::NotJournaled(Vec::new()));
        }
        let have = self.next + self.rows.len() as u64; // the first seq not read
        // The highest seq whose journal row, if it exists, has been read.
        let mut read_through = have - 1;
        if seq >= have {
            let to = seq.max(hint).min(have + JOURNAL_READ_LEN_MAX - 1);
            for c in store::journal_range(db, market, have, to).await? {
                if c.seq != self.next + self.rows.len() as u64 {
                    anyhow::bail!("journal gap before seq {}", c.seq);
                }
                self.rows.push_back(c);
            }
            read_through = to;
        }
        let count = usize::try_from(seq + 1 - self.next).unwrap_or(usize::MAX);
        if self.rows.len() >= count {
            self.next = seq + 1;
            return Ok(Through::Commands(self.rows.drain(..count).collect()));
        }
        let journal_top = self.next + self.rows.len() as u64 - 1;
        if read_through >= seq || journal_top < read_through {
            // The journal ends before `seq`.
            self.next = journal_top + 1;
            return Ok(Through::NotJournaled(self.rows.drain(..).collect()));
        }
        self.next = journal_top + 1;
        Ok(Through::Behind(self.rows.drain(..).collect()))
    }
}

/// Applies `cmds` in order, adding their batches to `produced`; stops at the
/// first the engine refuses or panics on and returns why (the market halts).
fn apply_all(
    market: MarketSymbol,
    book: &mut OrderBook,
    cmds: Vec<SequencedCommand>,
    produced: &mut Vec<EventBatch>,
) -> Option<(u64, String)> {
    for c in cmds {
        match apply_guarded(book, &c) {
            Ok(events) => produced.push(EventBatch {
                market,
                seq: c.seq,
                time_ms: c.time_ms,
                events,
            }),
            Err(reason) => return Some((c.seq, reason)),
        }
    }
    None
}

/// The stream handler of one market: its book behind an async mutex
/// (the consumer loop calls it sequentially; the mutex makes it `Sync`).
pub struct MarketHandler {
    pub market: Arc<tokio::sync::Mutex<MarketBook>>,
    pub db: PgPool,
    pub redis: Redis,
    /// Triggered when the market halts, to stop its consumer loop.
    pub on_halt: exchange_common::Shutdown,
}

impl Handler for MarketHandler {
    async fn handle(&self, entries: &[StreamEntry]) -> Vec<Result<(), String>> {
        let mut market = self.market.lock().await;
        let out = market.handle(&self.db, &self.redis, entries).await;
        if let Some(last) = entries.last()
            && out.iter().all(Result::is_ok)
        {
            market.mark_consumed(last.id.clone());
        }
        if market.halted().is_some() {
            self.on_halt.trigger();
        }
        out
    }
}

/// The events of a command as JSON for the `events` column and the stream.
pub fn events_json(events: &[Event]) -> serde_json::Result<String> {
    serde_json::to_string(events)
}

/// The contract counters: orders the engine accepted and trades it made,
/// counted once, when their batch is first stored (not on recovery replay).
fn count_outcomes(market: &str, batches: &[EventBatch]) {
    let (mut accepted, mut trades) = (0u64, 0u64);
    for event in batches.iter().flat_map(|b| &b.events) {
        match event {
            Event::OrderAccepted { .. } => accepted += 1,
            Event::Trade { .. } => trades += 1,
            _ => {}
        }
    }
    metrics::counter!("exchange_orders_accepted_total", "market" => market.to_owned())
        .increment(accepted);
    metrics::counter!("exchange_trades_total", "market" => market.to_owned()).increment(trades);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_rules() {
        assert_eq!(next(0, 1), Next::Apply);
        assert_eq!(next(5, 6), Next::Apply);
        assert_eq!(next(5, 5), Next::Skip);
        assert_eq!(next(5, 1), Next::Skip);
        assert_eq!(next(5, 9), Next::Gap { from: 6, to: 8 });
        assert_eq!(next(0, 2), Next::Gap { from: 1, to: 1 });
    }
}
