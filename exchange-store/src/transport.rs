//! Redis is a transport, never a source of truth: anyone who can write to
//! Redis can `XADD` an entry of any shape to any stream. So a stream entry
//! is only a claim that names a stored row — a journaled command by
//! `(market, seq)` for matching, a stored event batch by `(market, seq)`
//! for clearing and marketdata — and what is applied is always the row
//! read back from PostgreSQL.
//!
//! A claim that names no stored row (forged), or whose content differs from
//! the row it names (altered), moves nothing: it is logged with its stream
//! entry id and counted in `exchange_stream_forged_total{service, stream,
//! kind}` (the `StreamEntryForged` alert), and the entry is acknowledged. An
//! altered entry's row is applied in its place, so the real batch is never
//! lost to a forgery with its seq.

use std::collections::{HashMap, HashSet};

use exchange_domain::{EventBatch, MarketSymbol};
use sqlx::{PgPool, Row as _};

/// What a stream entry's claim turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<T> {
    /// It is the stored row, byte for byte after decoding.
    Genuine(T),
    /// It names a stored row but differs from it: the stored row is here.
    Altered(T),
    /// No stored row has its key.
    Forged,
}

impl<T: PartialEq> Verdict<T> {
    pub fn of(claimed: &T, stored: Option<T>) -> Self {
        match stored {
            None => Self::Forged,
            Some(s) if &s == claimed => Self::Genuine(s),
            Some(s) => Self::Altered(s),
        }
    }

    /// The stored row to apply, if any.
    pub fn into_stored(self) -> Option<T> {
        match self {
            Self::Genuine(s) | Self::Altered(s) => Some(s),
            Self::Forged => None,
        }
    }

    /// `"altered"` or `"forged"`; `None` for a genuine entry.
    pub fn forgery(&self) -> Option<&'static str> {
        match self {
            Self::Genuine(_) => None,
            Self::Altered(_) => Some("altered"),
            Self::Forged => Some("forged"),
        }
    }
}

/// Logs and counts a stream entry that is not what it claims to be.
pub fn note_forgery(
    service: &'static str,
    stream: &str,
    entry_id: &str,
    kind: &'static str,
    market: &str,
    seq: u64,
) {
    tracing::error!(
        service,
        stream,
        entry_id,
        kind,
        market,
        seq,
        "stream entry does not match PostgreSQL: ignored, the stored row is what counts"
    );
    metrics::counter!("exchange_stream_forged_total",
        "service" => service, "stream" => stream.to_owned(), "kind" => kind)
    .increment(1);
}

/// Declares the counter at 0, so the alert sees the series from the start.
pub fn describe_forgery_metric(service: &'static str, stream: &str) {
    metrics::describe_counter!(
        "exchange_stream_forged_total",
        "Stream entries that named no stored row (forged) or differed from it (altered); none was applied"
    );
    for kind in ["forged", "altered"] {
        metrics::counter!("exchange_stream_forged_total",
            "service" => service, "stream" => stream.to_owned(), "kind" => kind)
        .absolute(0);
    }
}

/// The stored event batches some stream entries name.
#[derive(Debug, Default)]
pub struct StoredBatches {
    batches: HashMap<(MarketSymbol, u64), EventBatch>,
    /// Rows that exist but do not decode: matching wrote them, so this is a
    /// bug or tampering in PostgreSQL itself; their entries are retried
    /// (and dead-lettered, halting the market in clearing), never dropped.
    unreadable: HashSet<(MarketSymbol, u64)>,
}

impl StoredBatches {
    /// What `claimed` (a stream entry's batch) is; `Err` when its stored
    /// row cannot be read.
    pub fn verdict(&self, claimed: &EventBatch) -> Result<Verdict<EventBatch>, String> {
        let key = (claimed.market, claimed.seq);
        if self.unreadable.contains(&key) {
            return Err(format!(
                "the stored batch {} seq {} is unreadable",
                claimed.market, claimed.seq
            ));
        }
        Ok(Verdict::of(claimed, self.batches.get(&key).cloned()))
    }
}

/// Two requested seqs of a market this close are read by one range scan
/// (the rows between them come along and are dropped).
const RANGE_GAP_MAX: u64 = 64;

/// The keys as `(market, first seq, last seq)` ranges of nearby seqs: a
/// read of the events stream names consecutive seqs of a few markets, so
/// this is a few primary-key range scans. A far-away seq (a forged or old
/// one) is a range of its own, so no range spans history.
fn ranges(keys: &[(MarketSymbol, u64)]) -> Vec<(MarketSymbol, u64, u64)> {
    let mut sorted: Vec<(MarketSymbol, u64)> = keys.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(MarketSymbol, u64, u64)> = Vec::new();
    for (market, seq) in sorted {
        match out.last_mut() {
            Some((m, _, hi)) if *m == market && seq - *hi <= RANGE_GAP_MAX => *hi = seq,
            _ => out.push((market, seq, seq)),
        }
    }
    out
}

/// The stored event batches with these keys.
pub async fn stored_batches(
    db: &PgPool,
    keys: &[(MarketSymbol, u64)],
) -> Result<StoredBatches, sqlx::Error> {
    let mut out = StoredBatches::default();
    if keys.is_empty() {
        return Ok(out);
    }
    let wanted: HashSet<(MarketSymbol, u64)> = keys.iter().copied().collect();
    let bigint = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut rows = Vec::new();
    // One plain range query per range (a read names one or two): the shape
    // the planner always answers with the primary key. Joined to a list of
    // keys or ranges instead, it could pick a plan that scans the table.
    for (market, lo, hi) in ranges(keys) {
        rows.extend(
            sqlx::query(
                "SELECT market, seq, time_ms, events::text FROM event_batches
                 WHERE market = $1 AND seq BETWEEN $2 AND $3",
            )
            .bind(market.to_string())
            .bind(bigint(lo))
            .bind(bigint(hi))
            .fetch_all(db)
            .await?,
        );
    }
    for r in rows {
        let market: String = r.try_get(0)?;
        let seq: i64 = r.try_get(1)?;
        let time_ms: i64 = r.try_get(2)?;
        let events: String = r.try_get(3)?;
        let (Ok(market), Ok(seq)) = (MarketSymbol::parse(&market), u64::try_from(seq)) else {
            continue; // not a key anyone asked for
        };
        if !wanted.contains(&(market, seq)) {
            continue; // between two that were
        }
        match (u64::try_from(time_ms), serde_json::from_str(&events)) {
            (Ok(time_ms), Ok(events)) => {
                out.batches.insert(
                    (market, seq),
                    EventBatch {
                        market,
                        seq,
                        time_ms,
                        events,
                    },
                );
            }
            _ => {
                tracing::error!(%market, seq, "stored event batch is unreadable");
                out.unreadable.insert((market, seq));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearby_seqs_are_one_range_far_ones_their_own() {
        let a = MarketSymbol::parse("BTC-USDT").unwrap_or_else(|_| unreachable!());
        let b = MarketSymbol::parse("ETH-USDT").unwrap_or_else(|_| unreachable!());
        let keys = [
            (a, 12),
            (a, 10),
            (b, 5),
            (a, 11),
            (a, 10),
            (a, 1_000_000),
            (a, 76),
        ];
        assert_eq!(
            ranges(&keys),
            vec![(a, 10, 76), (a, 1_000_000, 1_000_000), (b, 5, 5)]
        );
        assert_eq!(ranges(&[(a, 1), (a, 66)]), vec![(a, 1, 1), (a, 66, 66)]);
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::of(&1, Some(1)), Verdict::Genuine(1));
        assert_eq!(Verdict::of(&1, Some(2)), Verdict::Altered(2));
        assert_eq!(Verdict::<i32>::of(&1, None), Verdict::Forged);
        assert_eq!(Verdict::of(&1, Some(2)).into_stored(), Some(2));
        assert_eq!(Verdict::<i32>::Forged.into_stored(), None);
        assert_eq!(Verdict::Genuine(1).forgery(), None);
        assert_eq!(Verdict::Altered(1).forgery(), Some("altered"));
        assert_eq!(Verdict::<i32>::Forged.forgery(), Some("forged"));
    }
}
