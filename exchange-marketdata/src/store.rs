//! The market registry and everything this service reads from or writes to
//! Postgres: market scales, event-batch replay, the `klines` table.
//!
//! Rebuilding a market replays **every** stored event batch of it in seq
//! order through the same code as live events (depth, recent trades,
//! candles, ticker). Simple and exact, but the cost grows with the market's
//! history (roughly a few µs per batch); a persisted snapshot of the derived
//! state at a seq would bound it, and is the next step when start-up time
//! matters. A gap in live delivery replays only the missing batches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use exchange_domain::event::{Event, EventBatch};
use exchange_domain::money::format_units;
use exchange_domain::symbol::MarketSymbol;
use sqlx::{PgPool, Row as _};

use crate::kline::{Candle, Interval};
use crate::state::{Applied, MarketState, Order, Scales};

/// Event batches read per query while replaying.
pub const REPLAY_PAGE_LEN: i64 = 1_000;
/// Candles written per statement.
pub const KLINE_WRITE_ROWS_MAX: usize = 1_000;
/// Candles waiting to be written; beyond this the oldest are dropped (and
/// logged): `backfill_klines` repairs them from `trades`.
pub const DIRTY_CANDLES_MAX: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored event batch {market}/{seq} is unreadable: {error}")]
    BadBatch {
        market: String,
        seq: u64,
        error: String,
    },
    #[error("event batches {market}/{from}..{to} are not in postgres yet")]
    Missing { market: String, from: u64, to: u64 },
    #[error("unknown market {0}")]
    UnknownMarket(String),
}

/// One market: its scales and its state behind a short-held lock (never
/// held across an await).
#[derive(Debug)]
pub struct Market {
    pub symbol: MarketSymbol,
    pub scales: Scales,
    state: Mutex<MarketState>,
}

impl Market {
    pub fn lock(&self) -> MutexGuard<'_, MarketState> {
        // A panic while holding the lock leaves a consistent-enough state
        // for market data (the next gap rebuilds); keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Candles changed since they were last written: (market, interval, open_time) → candle.
pub type Dirty = BTreeMap<(MarketSymbol, Interval, u64), Candle>;

/// Every market this replica knows, and the Postgres pool.
#[derive(Debug)]
pub struct Core {
    pub db: PgPool,
    markets: RwLock<BTreeMap<MarketSymbol, Arc<Market>>>,
    /// Scales by market, looked up once: they never change, and every
    /// candle write needs them (one SELECT per write was as many statements
    /// as the candle upserts themselves).
    scale_cache: RwLock<BTreeMap<MarketSymbol, Scales>>,
    /// Serializes loads so a market is replayed once.
    loading: tokio::sync::Mutex<()>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall clock in Unix ms (for the ticker window only).
pub fn wall_ms() -> u64 {
    now_ms()
}

impl Core {
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

    /// Registers an empty market (benchmarks and tests that drive the core
    /// directly); an existing one is returned unchanged.
    pub fn insert_empty(&self, symbol: MarketSymbol, scales: Scales) -> Arc<Market> {
        let mut map = self.markets.write().unwrap_or_else(|e| e.into_inner());
        map.entry(symbol)
            .or_insert_with(|| {
                Arc::new(Market {
                    symbol,
                    scales,
                    state: Mutex::new(MarketState::new(symbol, scales)),
                })
            })
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
        let market = Arc::new(Market {
            symbol,
            scales,
            state: Mutex::new(state),
        });
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
            .find(|m| crate::binance::lower_name(m) == lower)
            .copied();
        if found.is_some() {
            return Ok(found);
        }
        let row = sqlx::query(
            "SELECT symbol FROM markets WHERE lower(replace(symbol, '-', '')) = $1 LIMIT 1",
        )
        .bind(lower)
        .fetch_optional(&self.db)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let text: String = row.try_get(0)?;
        Ok(MarketSymbol::parse(&text).ok())
    }

    /// Loads every market in Postgres.
    pub async fn load_all(&self) -> Result<usize, StoreError> {
        let rows = sqlx::query("SELECT symbol FROM markets ORDER BY symbol")
            .fetch_all(&self.db)
            .await?;
        let mut n = 0;
        for row in rows {
            let text: String = row.try_get(0)?;
            if let Ok(symbol) = MarketSymbol::parse(&text)
                && self.market(symbol).await?.is_some()
            {
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
        let row = sqlx::query(
            "SELECT b.scale, q.scale FROM markets m \
             JOIN assets b ON b.symbol = m.base JOIN assets q ON q.symbol = m.quote \
             WHERE m.symbol = $1",
        )
        .bind(symbol.to_string())
        .fetch_optional(&self.db)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let base: i16 = row.try_get(0)?;
        let quote: i16 = row.try_get(1)?;
        let scales = Scales {
            base: u8::try_from(base).unwrap_or(0),
            quote: u8::try_from(quote).unwrap_or(0),
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
            stored_kline_seqs(&self.db, state.symbol).await?
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
            let mut state = market.lock();
            match state.apply(batch) {
                Ok(applied) => {
                    note_dirty(dirty, batch.market, &applied);
                    state.publish(&applied, batch.time_ms);
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
            let mut state = market.lock();
            for b in &page {
                from = b.seq;
                match state.apply(b) {
                    Ok(applied) => {
                        note_dirty(dirty, batch.market, &applied);
                        state.publish(&applied, b.time_ms);
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
        let mut state = market.lock();
        match state.apply(batch) {
            Ok(applied) => {
                note_dirty(dirty, batch.market, &applied);
                state.publish(&applied, batch.time_ms);
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
}

fn note_dirty(dirty: &mut Dirty, market: MarketSymbol, applied: &Applied) {
    for (i, c) in &applied.candles {
        dirty.insert((market, *i, c.open_time), *c);
    }
    cap_dirty(dirty);
}

/// Puts back candles whose write failed (they were taken out of `dirty` to
/// be written without holding it). A candle noted again meanwhile is newer
/// (candles only move forward) and is kept instead.
pub fn restore_unwritten(dirty: &mut Dirty, unwritten: Dirty) {
    for (k, c) in unwritten {
        dirty.entry(k).or_insert(c);
    }
    cap_dirty(dirty);
}

fn cap_dirty(dirty: &mut Dirty) {
    while dirty.len() > DIRTY_CANDLES_MAX {
        if let Some((key, _)) = dirty.pop_first() {
            tracing::error!(market = %key.0, interval = %key.1, open_time = key.2,
                "candle dropped before it could be written; run the kline backfill");
        }
    }
}

/// Stored batches of `market` with `after < seq <= until`, in order.
pub async fn fetch_batches(
    db: &PgPool,
    market: MarketSymbol,
    after: u64,
    until: u64,
    limit: i64,
) -> Result<Vec<EventBatch>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, time_ms, events::text FROM event_batches \
         WHERE market = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
    )
    .bind(market.to_string())
    .bind(i64::try_from(after).unwrap_or(i64::MAX))
    .bind(i64::try_from(until).unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(db)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: i64 = row.try_get(0)?;
        let time_ms: i64 = row.try_get(1)?;
        let text: String = row.try_get(2)?;
        let seq = u64::try_from(seq).unwrap_or(0);
        let events: Vec<Event> = serde_json::from_str(&text).map_err(|e| StoreError::BadBatch {
            market: market.to_string(),
            seq,
            error: e.to_string(),
        })?;
        out.push(EventBatch {
            market,
            seq,
            time_ms: u64::try_from(time_ms).unwrap_or(0),
            events,
        });
    }
    Ok(out)
}

/// The highest `last_seq` stored per interval for `market`.
async fn stored_kline_seqs(
    db: &PgPool,
    market: MarketSymbol,
) -> Result<BTreeMap<Interval, u64>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT interval, max(last_seq) FROM klines WHERE market = $1 GROUP BY interval",
    )
    .bind(market.to_string())
    .fetch_all(db)
    .await?;
    let mut out = BTreeMap::new();
    for row in rows {
        let interval: String = row.try_get(0)?;
        let seq: i64 = row.try_get(1)?;
        if let Some(i) = Interval::parse(&interval) {
            out.insert(i, u64::try_from(seq).unwrap_or(0));
        }
    }
    Ok(out)
}

const KLINE_UPSERT_SET: &str = "ON CONFLICT (market, interval, open_time) DO UPDATE SET \
     open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close, \
     volume = EXCLUDED.volume, quote_volume = EXCLUDED.quote_volume, \
     trade_count = EXCLUDED.trade_count, last_seq = EXCLUDED.last_seq \
     WHERE klines.last_seq <= EXCLUDED.last_seq";

impl Core {
    /// Writes (and clears) `dirty` candles. Rows hold absolute values and only
    /// move forward in `last_seq`, so every replica may write the same candle.
    /// On error the candles stay in `dirty` for the next attempt.
    pub async fn write_klines(&self, dirty: &mut Dirty) -> Result<(), sqlx::Error> {
        while !dirty.is_empty() {
            let chunk: Vec<_> = dirty
                .iter()
                .take(KLINE_WRITE_ROWS_MAX)
                .map(|(k, c)| (*k, *c))
                .collect();
            let mut cols: [Vec<String>; 8] = Default::default();
            let mut times = Vec::with_capacity(chunk.len());
            let mut counts = Vec::with_capacity(chunk.len());
            let mut seqs = Vec::with_capacity(chunk.len());
            for ((m, i, open_time), c) in &chunk {
                // NUMERIC values need the market's scales (cached in `self`).
                let Scales { base: b, quote: q } =
                    self.scales(*m).await?.ok_or(sqlx::Error::RowNotFound)?;
                cols[0].push(m.to_string());
                cols[1].push(i.as_str().to_owned());
                cols[2].push(format_units(c.open, q));
                cols[3].push(format_units(c.high, q));
                cols[4].push(format_units(c.low, q));
                cols[5].push(format_units(c.close, q));
                cols[6].push(format_units(c.volume, b));
                cols[7].push(format_units(c.quote_volume, q));
                times.push(i64::try_from(*open_time).unwrap_or(i64::MAX));
                counts.push(i64::try_from(c.trades).unwrap_or(i64::MAX));
                seqs.push(i64::try_from(c.last_seq).unwrap_or(i64::MAX));
            }
            let sql = format!(
                "INSERT INTO klines (market, interval, open_time, open, high, low, close, volume, \
                 quote_volume, trade_count, last_seq) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[]::numeric[], \
                 $5::text[]::numeric[], $6::text[]::numeric[], $7::text[]::numeric[], \
                 $8::text[]::numeric[], $9::text[]::numeric[], $10::int8[], $11::int8[]) {KLINE_UPSERT_SET}"
            );
            let [
                markets,
                intervals,
                open,
                high,
                low,
                close,
                volume,
                quote_volume,
            ] = cols;
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(markets)
                .bind(intervals)
                .bind(times)
                .bind(open)
                .bind(high)
                .bind(low)
                .bind(close)
                .bind(volume)
                .bind(quote_volume)
                .bind(counts)
                .bind(seqs)
                .execute(&self.db)
                .await?;
            for (k, c) in chunk {
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

/// Recomputes the candles of every interval for `market` from the `trades`
/// table over `[from_ms, to_ms)` (widened to whole candles, so no candle is
/// overwritten with part of its trades) and upserts them. A stored candle
/// with a newer `last_seq` (trades not yet cleared) is left alone.
/// Returns the number of rows written.
pub async fn backfill_klines(
    db: &PgPool,
    market: MarketSymbol,
    from_ms: u64,
    to_ms: u64,
) -> Result<u64, sqlx::Error> {
    let mut written = 0;
    for interval in Interval::ALL {
        let len = interval.millis();
        let from = interval.open_time(from_ms);
        let to = interval.open_time(to_ms.saturating_add(len - 1));
        let sql = format!(
            "INSERT INTO klines (market, interval, open_time, open, high, low, close, volume, \
             quote_volume, trade_count, last_seq) \
             SELECT market, $2, (time_ms / $3) * $3, \
                    (array_agg(price ORDER BY id))[1], max(price), min(price), \
                    (array_agg(price ORDER BY id DESC))[1], sum(quantity), sum(quote_amount), \
                    count(*), max(seq) \
             FROM trades WHERE market = $1 AND time_ms >= $4 AND time_ms < $5 \
             GROUP BY market, (time_ms / $3) * $3 {KLINE_UPSERT_SET}"
        );
        let result = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(market.to_string())
            .bind(interval.as_str())
            .bind(i64::try_from(len).unwrap_or(i64::MAX))
            .bind(i64::try_from(from).unwrap_or(i64::MAX))
            .bind(i64::try_from(to).unwrap_or(i64::MAX))
            .execute(db)
            .await?;
        written += result.rows_affected();
    }
    Ok(written)
}

/// A stored candle as REST serves it (decimal strings straight from NUMERIC).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KlineRow {
    pub open_time: i64,
    pub open: String,
    pub high: String,
    pub low: String,
    pub close: String,
    pub volume: String,
}

/// The newest `limit` candles of `interval`, oldest first.
pub async fn load_klines(
    db: &PgPool,
    market: MarketSymbol,
    interval: Interval,
    limit: i64,
) -> Result<Vec<KlineRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT open_time, trim_scale(open)::text, trim_scale(high)::text, trim_scale(low)::text, \
                trim_scale(close)::text, trim_scale(volume)::text \
         FROM klines WHERE market = $1 AND interval = $2 ORDER BY open_time DESC LIMIT $3",
    )
    .bind(market.to_string())
    .bind(interval.as_str())
    .bind(limit)
    .fetch_all(db)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows.iter().rev() {
        out.push(KlineRow {
            open_time: row.try_get(0)?,
            open: row.try_get(1)?,
            high: row.try_get(2)?,
            low: row.try_get(3)?,
            close: row.try_get(4)?,
            volume: row.try_get(5)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_is_put_back_without_undoing_newer_candles() {
        let m = MarketSymbol::parse("BTC-USDT").unwrap_or_else(|e| panic!("{e}"));
        let key = |t| (m, Interval::M1, t);
        let older = Candle::first(0, 100, 1, 100, 1);
        let newer = Candle::first(0, 100, 2, 200, 2);
        let other = Candle::first(60_000, 101, 1, 101, 3);
        // Noted while the write was in flight: the newer candle 0.
        let mut dirty = Dirty::from([(key(0), newer)]);
        restore_unwritten(
            &mut dirty,
            Dirty::from([(key(0), older), (key(60_000), other)]),
        );
        assert_eq!(dirty, Dirty::from([(key(0), newer), (key(60_000), other)]));
    }
}
