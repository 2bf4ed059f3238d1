//! A user's statement (API.md "History and statements"): one entry per
//! movement of their balance — `available + locked`, what they own — each
//! with the object behind it:
//!
//! | source | entries (amount signed) | time |
//! |---|---|---|
//! | an operator's credit (`deposits`) | `deposit` + amount | created |
//! | a chain deposit, once credited (`chain_deposits`) | `deposit` + amount | credited |
//! | a fill (`fills`) | `trade` ± base, `trade` ∓ quote, `fee` − fee | the fill's time |
//! | a confirmed withdrawal (`withdrawals`) | `withdrawal` − amount, `fee` − fee | confirmed |
//!
//! Holds (orders reserving, withdrawals waiting) move money between
//! available and locked, not out of the balance, and are not entries; a
//! withdrawal enters the statement when it is paid, a returned one never.
//! Entries come newest first by `(time, source rank, source id, part)`;
//! each source is read on its owner's time index, limited to the page, so a
//! page costs the same wherever it is. `balance_after` is computed by the
//! reader from a running balance per asset (see `Walk`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::numeric::db_units;

/// A position in the statement: `(time in µs, rank, source id, part)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key(pub i64, pub i32, pub i64, pub i32);

/// One movement.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Entry {
    /// Unix microseconds (a fill's time is in ms: ×1000).
    pub time_us: i64,
    pub rank: i32,
    pub src: i64,
    pub part: i32,
    pub asset: String,
    /// Signed decimal text.
    pub amount: String,
    pub kind: String,
    /// `operator`, `chain`, `fill` or `withdrawal`.
    pub source: String,
    pub order_id: Option<i64>,
    pub trade_id: Option<i64>,
}

impl Entry {
    pub fn key(&self) -> Key {
        Key(self.time_us, self.rank, self.src, self.part)
    }

    /// Unix milliseconds, as the API shows times.
    pub fn time_ms(&self) -> i64 {
        self.time_us.div_euclid(1_000)
    }

    /// A stable id: the source and its part.
    pub fn id(&self) -> String {
        let part = match (self.source.as_str(), self.part) {
            ("fill", 2) => "base",
            ("fill", 1) => "quote",
            (_, 0) if self.kind == "fee" => "fee",
            _ => "amount",
        };
        format!("{}-{}-{part}", self.source, self.src)
    }

    /// The object behind it, as the API shows it.
    pub fn reference(&self) -> serde_json::Value {
        match self.source.as_str() {
            "fill" => {
                serde_json::json!({ "trade_id": self.trade_id, "order_id": self.order_id, "fill_id": self.src })
            }
            "withdrawal" => serde_json::json!({ "withdrawal_id": self.src }),
            "chain" => serde_json::json!({ "deposit_id": self.src, "deposit_source": "chain" }),
            _ => serde_json::json!({ "deposit_id": self.src, "deposit_source": "operator" }),
        }
    }
}

/// What a statement query selects: the owner, an optional asset, the
/// `[start, end)` range (ms) and the position to continue below.
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    pub user_id: i64,
    pub asset: Option<&'a str>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub before: Option<Key>,
}

/// The entries of every source, newest first; `$1` user, `$2` asset, `$3`
/// start, `$4` end (ms), `$5`..`$8` the key to continue below, `$9` the
/// most source rows read from each source.
const ENTRIES: &str = "
WITH f AS (
    SELECT id, time_ms * 1000 AS time_us, order_id, trade_id, market, side, quantity, quote_amount, fee, fee_asset
    FROM fills WHERE user_id = $1
      AND ($2::text IS NULL OR split_part(market, '-', 1) = $2 OR split_part(market, '-', 2) = $2)
      AND ($3::int8 IS NULL OR time_ms >= $3) AND ($4::int8 IS NULL OR time_ms < $4)
      AND ($5::int8 IS NULL OR time_ms <= $5 / 1000)
      AND ($5::int8 IS NULL OR (time_ms * 1000, 3, id) <= ($5, $6::int4, $7))
    ORDER BY time_ms DESC, id DESC LIMIT $9 + 1),
d AS (
    SELECT id, (extract(epoch FROM created_at) * 1000000)::int8 AS time_us, asset, amount
    FROM deposits WHERE user_id = $1 AND ($2::text IS NULL OR asset = $2)
      AND ($3::int8 IS NULL OR created_at >= timestamptz 'epoch' + $3 * interval '1 millisecond')
      AND ($4::int8 IS NULL OR created_at < timestamptz 'epoch' + $4 * interval '1 millisecond')
      AND ($5::int8 IS NULL OR created_at <= timestamptz 'epoch' + $5 * interval '1 microsecond')
      AND ($5::int8 IS NULL OR ((extract(epoch FROM created_at) * 1000000)::int8, 1, id) <= ($5, $6::int4, $7))
    ORDER BY created_at DESC, id DESC LIMIT $9 + 1),
c AS (
    SELECT id, (extract(epoch FROM credited_at) * 1000000)::int8 AS time_us, asset, amount
    FROM chain_deposits WHERE user_id = $1 AND journal_id IS NOT NULL AND ($2::text IS NULL OR asset = $2)
      AND ($3::int8 IS NULL OR credited_at >= timestamptz 'epoch' + $3 * interval '1 millisecond')
      AND ($4::int8 IS NULL OR credited_at < timestamptz 'epoch' + $4 * interval '1 millisecond')
      AND ($5::int8 IS NULL OR credited_at <= timestamptz 'epoch' + $5 * interval '1 microsecond')
      AND ($5::int8 IS NULL OR ((extract(epoch FROM credited_at) * 1000000)::int8, 2, id) <= ($5, $6::int4, $7))
    ORDER BY credited_at DESC, id DESC LIMIT $9 + 1),
w AS (
    SELECT id, (extract(epoch FROM updated_at) * 1000000)::int8 AS time_us, asset, amount, fee
    FROM withdrawals WHERE user_id = $1 AND status = 'confirmed' AND ($2::text IS NULL OR asset = $2)
      AND ($3::int8 IS NULL OR updated_at >= timestamptz 'epoch' + $3 * interval '1 millisecond')
      AND ($4::int8 IS NULL OR updated_at < timestamptz 'epoch' + $4 * interval '1 millisecond')
      AND ($5::int8 IS NULL OR updated_at <= timestamptz 'epoch' + $5 * interval '1 microsecond')
      AND ($5::int8 IS NULL OR ((extract(epoch FROM updated_at) * 1000000)::int8, 4, id) <= ($5, $6::int4, $7))
    ORDER BY updated_at DESC, id DESC LIMIT $9 + 1),
e AS (
    SELECT d.time_us, 1 AS rank, d.id AS src, 0 AS part, d.asset, d.amount, 'deposit' AS kind,
           'operator' AS source, NULL::int8 AS order_id, NULL::int8 AS trade_id FROM d
    UNION ALL
    SELECT c.time_us, 2, c.id, 0, c.asset, c.amount, 'deposit', 'chain', NULL, NULL FROM c
    UNION ALL
    SELECT f.time_us, 3, f.id, x.part, x.asset, x.amount, x.kind, 'fill', f.order_id, f.trade_id
    FROM f CROSS JOIN LATERAL (VALUES
        (2, split_part(f.market, '-', 1), CASE WHEN f.side = 'buy' THEN f.quantity ELSE -f.quantity END, 'trade'),
        (1, split_part(f.market, '-', 2), CASE WHEN f.side = 'buy' THEN -f.quote_amount ELSE f.quote_amount END, 'trade'),
        (0, f.fee_asset, -f.fee, 'fee')) AS x(part, asset, amount, kind)
    WHERE x.amount <> 0
    UNION ALL
    SELECT w.time_us, 4, w.id, x.part, w.asset, x.amount, x.kind, 'withdrawal', NULL, NULL
    FROM w CROSS JOIN LATERAL (VALUES (1, -w.amount, 'withdrawal'), (0, -w.fee, 'fee')) AS x(part, amount, kind)
    WHERE x.amount <> 0)
SELECT time_us, rank, src, part, asset, trim_scale(amount)::text AS amount, kind, source, order_id, trade_id
FROM e
WHERE ($2::text IS NULL OR asset = $2)
  AND ($5::int8 IS NULL OR (time_us, rank, src, part) < ($5, $6::int4, $7, $8::int4))
ORDER BY time_us DESC, rank DESC, src DESC, part DESC
LIMIT $9";

/// What every entry after `$2` (Unix ms) adds to each asset: one pass per
/// source on its owner's time index.
const LATER_SUMS: &str = "
SELECT asset, sum(amount)::text FROM (
    SELECT split_part(market, '-', 1) AS asset,
           CASE WHEN side = 'buy' THEN quantity ELSE -quantity END AS amount
    FROM fills WHERE user_id = $1 AND time_ms >= $2
    UNION ALL
    SELECT split_part(market, '-', 2), CASE WHEN side = 'buy' THEN -quote_amount ELSE quote_amount END
    FROM fills WHERE user_id = $1 AND time_ms >= $2
    UNION ALL
    SELECT fee_asset, -fee FROM fills WHERE user_id = $1 AND time_ms >= $2
    UNION ALL
    SELECT asset, amount FROM deposits
    WHERE user_id = $1 AND created_at >= timestamptz 'epoch' + $2 * interval '1 millisecond'
    UNION ALL
    SELECT asset, amount FROM chain_deposits
    WHERE user_id = $1 AND journal_id IS NOT NULL
      AND credited_at >= timestamptz 'epoch' + $2 * interval '1 millisecond'
    UNION ALL
    SELECT asset, -(amount + fee) FROM withdrawals
    WHERE user_id = $1 AND status = 'confirmed'
      AND updated_at >= timestamptz 'epoch' + $2 * interval '1 millisecond') later
GROUP BY asset";

/// Up to `limit` entries below `filter.before`, newest first.
pub async fn entries(
    conn: &mut PgConnection,
    filter: &Filter<'_>,
    limit: i64,
) -> sqlx::Result<Vec<Entry>> {
    let k = filter.before;
    sqlx::query_as(ENTRIES)
        .bind(filter.user_id)
        .bind(filter.asset)
        .bind(filter.start_ms)
        .bind(filter.end_ms)
        .bind(k.map(|k| k.0))
        .bind(k.map(|k| k.1))
        .bind(k.map(|k| k.2))
        .bind(k.map(|k| k.3))
        .bind(limit)
        .fetch_all(conn)
        .await
}

/// The user's balance (`available + locked`) per asset, in units, as it
/// stood just before `end_ms` (now when none): the balances table less
/// every entry at or after `end_ms`. Read in the snapshot of the first
/// page, it is where the running `balance_after` starts.
pub async fn balances_before(
    conn: &mut PgConnection,
    user_id: i64,
    end_ms: Option<i64>,
    scales: &BTreeMap<String, u8>,
) -> anyhow::Result<BTreeMap<String, i128>> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT asset, (available + locked)::text FROM balances WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&mut *conn)
            .await?;
    let mut out = BTreeMap::new();
    for (asset, total) in rows {
        let scale = scales.get(&asset).copied().unwrap_or(18);
        out.insert(asset, i128::try_from(db_units(&total, scale)?)?);
    }
    if let Some(end) = end_ms {
        let later: Vec<(String, String)> = sqlx::query_as(LATER_SUMS)
            .bind(user_id)
            .bind(end)
            .fetch_all(&mut *conn)
            .await?;
        for (asset, sum) in later {
            let scale = scales.get(&asset).copied().unwrap_or(18);
            *out.entry(asset).or_default() -= signed_units(&sum, scale)?;
        }
    }
    Ok(out)
}

/// A signed numeric's text in units.
pub fn signed_units(text: &str, scale: u8) -> anyhow::Result<i128> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let units = i128::try_from(db_units(digits, scale)?)?;
    Ok(if negative { -units } else { units })
}

/// The walk's state between pages: where it is and each asset's balance
/// after the next (older) entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Walk {
    pub before: Option<Key>,
    pub running: BTreeMap<String, i128>,
}

impl Walk {
    /// Gives each entry its balance after, newest first, and moves on.
    pub fn step(
        &mut self,
        entries: &[Entry],
        scales: &BTreeMap<String, u8>,
    ) -> anyhow::Result<Vec<i128>> {
        let mut after = Vec::with_capacity(entries.len());
        for e in entries {
            let scale = scales.get(&e.asset).copied().unwrap_or(18);
            let running = self.running.entry(e.asset.clone()).or_default();
            after.push(*running);
            *running -= signed_units(&e.amount, scale)?;
            self.before = Some(e.key());
        }
        Ok(after)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(asset: &str, amount: &str, src: i64) -> Entry {
        Entry {
            time_us: 10 - src,
            rank: 3,
            src,
            part: 1,
            asset: asset.into(),
            amount: amount.into(),
            kind: "trade".into(),
            source: "fill".into(),
            order_id: Some(1),
            trade_id: Some(src),
        }
    }

    #[test]
    fn balance_after_runs_backwards_from_the_balance_per_asset() {
        let scales = BTreeMap::from([("BTC".to_owned(), 8), ("USDT".to_owned(), 2)]);
        let mut walk = Walk {
            before: None,
            running: BTreeMap::from([("BTC".to_owned(), 300), ("USDT".to_owned(), 5_000)]),
        };
        let page = [
            entry("BTC", "0.000001", 1),
            entry("USDT", "-10.5", 2),
            entry("BTC", "0.000002", 3),
        ];
        assert_eq!(walk.step(&page, &scales).unwrap(), vec![300, 5_000, 200]);
        assert_eq!(walk.running["BTC"], 0, "what the oldest entry started from");
        assert_eq!(walk.running["USDT"], 6_050);
        assert_eq!(walk.before, Some(page[2].key()));
        assert_eq!(signed_units("-1.5", 2).unwrap(), -150);
    }
}
