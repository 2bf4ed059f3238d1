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

/// The stored event batches with these keys.
pub async fn stored_batches(
    db: &PgPool,
    keys: &[(MarketSymbol, u64)],
) -> Result<StoredBatches, sqlx::Error> {
    let mut out = StoredBatches::default();
    if keys.is_empty() {
        return Ok(out);
    }
    let markets: Vec<String> = keys.iter().map(|(m, _)| m.to_string()).collect();
    let seqs: Vec<i64> = keys
        .iter()
        .map(|(_, s)| i64::try_from(*s).unwrap_or(i64::MAX))
        .collect();
    let rows = sqlx::query(
        "SELECT e.market, e.seq, e.time_ms, e.events::text
         FROM unnest($1::text[], $2::bigint[]) AS k(market, seq)
         JOIN event_batches e ON e.market = k.market AND e.seq = k.seq",
    )
    .bind(&markets)
    .bind(&seqs)
    .fetch_all(db)
    .await?;
    for r in rows {
        let market: String = r.try_get(0)?;
        let seq: i64 = r.try_get(1)?;
        let time_ms: i64 = r.try_get(2)?;
        let events: String = r.try_get(3)?;
        let (Ok(market), Ok(seq)) = (MarketSymbol::parse(&market), u64::try_from(seq)) else {
            continue; // not a key anyone asked for
        };
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
