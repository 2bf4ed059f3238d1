//! The market registry: every market this replica knows, each loaded on
//! first use by replaying its stored event batches, and kept live by the
//! consumer's batches (gaps filled from Postgres).
//!
//! Rebuilding a market replays **every** stored event batch of it in seq
//! order through the same code as live events (depth, recent trades,
//! candles, ticker). Simple and exact, but the cost grows with the market's
//! history (roughly a few µs per batch); a persisted snapshot of the derived
//! state at a seq would bound it, and is the next step when start-up time
//! matters. A gap in live delivery replays only the missing batches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use exchange_domain::event::EventBatch;
use exchange_domain::symbol::MarketSymbol;
use sqlx::PgPool;

use crate::fanout::MarketFeed;
use crate::render::binance::lower_name;
use crate::state::{MarketState, Order, Scales};
use crate::store::{
    self, Dirty, KLINE_WRITE_ROWS_MAX, REPLAY_PAGE_LEN, StoreError, fetch_batches, note_dirty,
};

/// One market: its scales and its feed (state and subscribers) behind a
/// short-held lock (never held across an await).
#[derive(Debug)]
pub struct Market {
    pub symbol: MarketSymbol,
    pub scales: Scales,
    feed: Mutex<MarketFeed>,
}

impl Market {
    fn new(state: MarketState) -> Self {
        Self {
            symbol: state.symbol,
            scales: state.scales,
            feed: Mutex::new(MarketFeed::new(state)),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, MarketFeed> {
        // A panic while holding the lock leaves a consistent-enough state
        // for market data (the next gap rebuilds); keep serving.
        self.feed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every market this replica knows, and the Postgres pool.
#[derive(Debug)]
pub struct MarketRegistry {
    pub db: PgPool,
    markets: RwLock<BTreeMap<MarketSymbol, Arc<Market>>>,
    /// Scales by market, looked up once: they never change, and every
    /// candle write needs them (one SELECT per write was as many statements
    /// as the candle upserts themselves).
    scale_cache: RwLock<BTreeMap<MarketSymbol, Scales>>,
    /// Serializes loads so a market is replayed once.
    loading: tokio::sync::Mutex<()>,
}

impl MarketRegistry {
    pub fn new(db: PgPool) -> Self {
        Self {
            db,
            markets: RwLock::default(),
            scale_cache: RwLock::default(),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    pub fn get(&self, symbol: &MarketSymbol) -> Option<Arc<Market>> {
        self.markets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(symbol)
            .cloned()
    }

    /// Registers an empty market (benchmarks and tests that drive the
    /// registry directly); an existing one is returned unchanged.
    pub fn insert_empty(&self, symbol: MarketSymbol, scales: Scales) -> Arc<Market> {
        let mut map = self.markets.write().unwrap_or_else(|e| e.into_inner());
        map.entry(symbol)
            .or_insert_with(|| Arc::new(Market::new(MarketState::new(symbol, scales))))
            .clone()
    }

    /// The market, loading (and replaying) it on first use; `None` when
    /// Postgres does not know it.
    pub async fn market(&self, symbol: MarketSymbol) -> Result<Option<Arc<Market>>, StoreError> {
        if let Some(m) = self.get(&symbol) {
            return Ok(Some(m));
        }
        let _guard = self.loading.lock().await;
        if let Some(m) = self.get(&symbol) {
            return Ok(Some(m));
        }
        let Some(scales) = self.scales(symbol).await? else {
            return Ok(None);
        };
        let mut state = MarketState::new(symbol, scales);
        let mut dirty = Dirty::new();
        self.replay(&mut state, u64::MAX, &mut dirty, true).await?;
        self.write_klines(&mut dirty).await?;
        tracing::info!(market = %symbol, seq = state.seq, "market loaded from postgres");
        let market = Arc::new(Market::new(state));
        self.markets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(symbol, market.clone());
        Ok(Some(market))
    }

    /// The market whose dashless lowercase name is `lower` (`btcusdt`):
    /// a loaded one, else Postgres is asked (then it is loaded on use).
    pub async fn find_binance(&self, lower: &str) -> Result<Option<MarketSymbol>, StoreError> {
        let found = self
            .markets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .find(|m| lower_name(m) == lower)
            .copied();
        if found.is_some() {
            return Ok(found);
        }
        Ok(store::market_by_lower_name(&self.db, lower).await?)
    }

    /// Loads every market in Postgres.
    pub async fn load_all(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for symbol in store::market_symbols(&self.db).await? {
            if self.market(symbol).await?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The market's scales: from the cache, else from Postgres (and then
    /// cached); `None` when Postgres does not know the market.
    async fn scales(&self, symbol: MarketSymbol) -> Result<Option<Scales>, sqlx::Error> {
        let cached = self
            .scale_cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&symbol)
            .copied();
        if cached.is_some() {
            return Ok(cached);
        }
        let Some(scales) = store::market_scales(&self.db, symbol).await? else {
            return Ok(None);
        };
        self.scale_cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(symbol, scales);
        Ok(Some(scales))
    }

    /// Applies stored batches after `state.seq` up to `until` (inclusive).
    /// `initial` marks a start-up rebuild: candles already stored (by this
    /// or another replica) are not rewritten.
    async fn replay(
        &self,
        state: &mut MarketState,
        until: u64,
        dirty: &mut Dirty,
        initial: bool,
    ) -> Result<(), StoreError> {
        let stored = if initial {
            store::stored_kline_seqs(&self.db, state.symbol).await?
        } else {
            BTreeMap::new()
        };
        loop {
            let page =
                fetch_batches(&self.db, state.symbol, state.seq, until, REPLAY_PAGE_LEN).await?;
            let len = page.len();
            for batch in page {
                match state.apply(&batch) {
                    Ok(applied) => {
                        for (i, c) in applied.candles {
                            if stored.get(&i).is_none_or(|s| c.last_seq > *s) {
                                dirty.insert((state.symbol, i, c.open_time), c);
                            }
                        }
                    }
                    Err(Order::Duplicate) => {}
                    Err(Order::Gap { expected }) => {
                        return Err(StoreError::Missing {
                            market: state.symbol.to_string(),
                            from: expected,
                            to: batch.seq,
                        });
                    }
                }
            }
            if dirty.len() >= KLINE_WRITE_ROWS_MAX {
                self.write_klines(dirty).await?;
            }
            if i64::try_from(len).unwrap_or(0) < REPLAY_PAGE_LEN || state.seq >= until {
                return Ok(());
            }
        }
    }

    /// Applies a live batch and publishes its changes. A duplicate is
    /// skipped; a gap is first filled from Postgres.
    pub async fn apply_live(
        &self,
        batch: &EventBatch,
        dirty: &mut Dirty,
    ) -> Result<(), StoreError> {
        let market = self
            .market(batch.market)
            .await?
            .ok_or_else(|| StoreError::UnknownMarket(batch.market.to_string()))?;
        let gap = {
            let mut feed = market.lock();
            match feed.apply(batch) {
                Ok(applied) => {
                    note_dirty(dirty, batch.market, &applied);
                    feed.publish(&applied, batch.time_ms);
                    return Ok(());
                }
                Err(Order::Duplicate) => return Ok(()),
                Err(Order::Gap { expected }) => expected,
            }
        };
        metrics::counter!("marketdata_gap_fills_total").increment(1);
        tracing::warn!(market = %batch.market, expected = gap, got = batch.seq, "gap in event stream, filling from postgres");
        let mut from = gap - 1;
        while from + 1 < batch.seq {
            let page =
                fetch_batches(&self.db, batch.market, from, batch.seq - 1, REPLAY_PAGE_LEN).await?;
            if page.is_empty() {
                return Err(StoreError::Missing {
                    market: batch.market.to_string(),
                    from: from + 1,
                    to: batch.seq,
                });
            }
            let mut feed = market.lock();
            for b in &page {
                from = b.seq;
                match feed.apply(b) {
                    Ok(applied) => {
                        note_dirty(dirty, batch.market, &applied);
                        feed.publish(&applied, b.time_ms);
                    }
                    Err(Order::Duplicate) => {}
                    Err(Order::Gap { expected }) => {
                        return Err(StoreError::Missing {
                            market: batch.market.to_string(),
                            from: expected,
                            to: b.seq,
                        });
                    }
                }
            }
        }
        let mut feed = market.lock();
        match feed.apply(batch) {
            Ok(applied) => {
                note_dirty(dirty, batch.market, &applied);
                feed.publish(&applied, batch.time_ms);
                Ok(())
            }
            Err(Order::Duplicate) => Ok(()),
            Err(Order::Gap { expected }) => Err(StoreError::Missing {
                market: batch.market.to_string(),
                from: expected,
                to: batch.seq,
            }),
        }
    }

    /// Writes (and clears) `dirty` candles. Rows hold absolute values and only
    /// move forward in `last_seq`, so every replica may write the same candle.
    /// On error the candles stay in `dirty` for the next attempt.
    pub async fn write_klines(&self, dirty: &mut Dirty) -> Result<(), sqlx::Error> {
        while !dirty.is_empty() {
            let mut chunk = Vec::with_capacity(dirty.len().min(KLINE_WRITE_ROWS_MAX));
            for (key, candle) in dirty.iter().take(KLINE_WRITE_ROWS_MAX) {
                // NUMERIC values need the market's scales (cached in `self`).
                let scales = self.scales(key.0).await?.ok_or(sqlx::Error::RowNotFound)?;
                chunk.push((*key, *candle, scales));
            }
            store::upsert_klines(&self.db, &chunk).await?;
            for (k, c, _) in chunk {
                // Keep a candle that changed again meanwhile (not possible while
                // the caller holds `dirty`, but cheap to be exact).
                if dirty.get(&k) == Some(&c) {
                    dirty.remove(&k);
                }
            }
        }
        Ok(())
    }
}
