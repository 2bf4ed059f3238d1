//! Everything this service reads from or writes to Postgres, one function
//! per statement: market names and scales, stored event batches (replay and
//! gap fills), and the `klines` table with the candles waiting for it.

use std::collections::BTreeMap;

use exchange_domain::event::{Event, EventBatch};
use exchange_domain::money::format_units;
use exchange_domain::symbol::MarketSymbol;
use sqlx::{PgPool, Row as _};

use crate::kline::{Candle, Interval};
use crate::state::{Applied, Scales};

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

/// The markets Postgres knows (a name that does not parse is skipped).
pub async fn market_symbols(db: &PgPool) -> Result<Vec<MarketSymbol>, sqlx::Error> {
    let rows = sqlx::query("SELECT symbol FROM markets ORDER BY symbol")
        .fetch_all(db)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let text: String = row.try_get(0)?;
        if let Ok(symbol) = MarketSymbol::parse(&text) {
            out.push(symbol);
        }
    }
    Ok(out)
}

/// The market whose dashless lowercase name is `lower` (`btcusdt`).
pub async fn market_by_lower_name(
    db: &PgPool,
    lower: &str,
) -> Result<Option<MarketSymbol>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT symbol FROM markets WHERE lower(replace(symbol, '-', '')) = $1 LIMIT 1",
    )
    .bind(lower)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let text: String = row.try_get(0)?;
    Ok(MarketSymbol::parse(&text).ok())
}

/// The scales of the market's assets; `None` when Postgres does not know it.
pub async fn market_scales(
    db: &PgPool,
    symbol: MarketSymbol,
) -> Result<Option<Scales>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT b.scale, q.scale FROM markets m \
         JOIN assets b ON b.symbol = m.base JOIN assets q ON q.symbol = m.quote \
         WHERE m.symbol = $1",
    )
    .bind(symbol.to_string())
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let base: i16 = row.try_get(0)?;
    let quote: i16 = row.try_get(1)?;
    Ok(Some(Scales {
        base: u8::try_from(base).unwrap_or(0),
        quote: u8::try_from(quote).unwrap_or(0),
    }))
}

/// Candles changed since they were last written: (market, interval, open_time) → candle.
pub type Dirty = BTreeMap<(MarketSymbol, Interval, u64), Candle>;

/// Notes the candles a batch changed, to be written.
pub fn note_dirty(dirty: &mut Dirty, market: MarketSymbol, applied: &Applied) {
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
pub async fn stored_kline_seqs(
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

/// Upserts candles, each with its market's scales (NUMERIC values are
/// written from them). Rows hold absolute values and only move forward in
/// `last_seq`, so every replica may write the same candle.
pub async fn upsert_klines(
    db: &PgPool,
    rows: &[((MarketSymbol, Interval, u64), Candle, Scales)],
) -> Result<(), sqlx::Error> {
    let mut cols: [Vec<String>; 8] = Default::default();
    let mut times = Vec::with_capacity(rows.len());
    let mut counts = Vec::with_capacity(rows.len());
    let mut seqs = Vec::with_capacity(rows.len());
    for ((m, i, open_time), c, Scales { base: b, quote: q }) in rows {
        let (b, q) = (*b, *q);
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
        .execute(db)
        .await?;
    Ok(())
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
