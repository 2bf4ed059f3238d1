//! The invariant check: `exchange admin reconcile`, and a scheduled job in
//! clearing exporting `exchange_reconcile_ok{invariant}` and
//! `exchange_reconcile_last_run_timestamp_seconds`.
//!
//! Every check reads one snapshot (a `REPEATABLE READ` read-only
//! transaction), so money in flight between tables is never miscounted:
//! the order service and clearing each move it inside one transaction.
//!
//! Invariants:
//! - `ledger_balanced`: per asset, all postings sum to zero;
//! - `ledger_matches_balances`: per user and asset, the ledger sum of the
//!   user's holdings and what their open withdrawals hold equals available
//!   + locked;
//! - `no_negative_balance`;
//! - `locked_matches_open_orders`: per user and asset, locked equals the
//!   sum of `locked_remaining` of the user's open orders in that asset plus
//!   `amount + fee` of the user's open withdrawals of it;
//! - `custody_holds`: per user and asset, the `withdrawal_pending` ledger
//!   account equals `amount + fee` of the open withdrawals;
//! - `custody_flows`: per asset, what the `custody` ledger account says is
//!   held on chain equals credited chain deposits minus confirmed payouts
//!   (amount + network fee), so a custody booking without its deposit or
//!   withdrawal (or the reverse) is found. With `ledger_balanced` and
//!   `ledger_matches_balances` it closes the custody books: per asset,
//!   users' balances (open withdrawals are in locked) + fee income -
//!   operator credits = what custody holds;
//! - `no_journal_gap`: per market the command journal holds exactly seqs
//!   1..=last_seq of `market_sequences`;
//! - `commands_matched`: every command older than the lag window has its
//!   event batch;
//! - `batches_cleared`: every event batch older than the lag window is in
//!   `cleared_batches`;
//! - `no_halted_market`: clearing has not halted any market.
//!
//! And, in the full check only (`exchange admin reconcile`; they read all
//! history, so the periodic job leaves them to an off-peak run), that every
//! booking of a trade came from matching ([`PROVENANCE_CHECKS`]) — not from a forged stream entry
//! or a row written straight into the database:
//! - `cleared_batches_stored`: every cleared batch is a stored one;
//! - `trades_match_events`: the trades are exactly the `trade` events of
//!   the cleared stored batches, field for field, and the reverse;
//! - `fills_match_trades`: each trade has exactly its maker and taker fill,
//!   with the trade's price, quantity, amount and fees, and every fill its
//!   trade;
//! - `ledger_matches_fills`: per account and asset, the `trade` journals'
//!   postings are what the fills move (each side gets what it bought minus
//!   its fee, pays what it sold; the fee account gets the fees).
//!
//! (A crossed book is the engine's to check.)

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use sqlx::{PgPool, Row as _};

/// At most this many offending rows are listed per invariant.
pub const DETAILS_LEN_MAX: i64 = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// How many offending rows (0 when ok).
    pub violations: i64,
    /// The first offending rows, one line each.
    pub details: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    pub fn failed(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect()
    }

    /// Sets the reconcile gauges.
    pub fn export_metrics(&self) {
        for c in &self.checks {
            metrics::gauge!("exchange_reconcile_ok", "invariant" => c.name).set(if c.ok {
                1.0
            } else {
                0.0
            });
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!("exchange_reconcile_violations", "invariant" => c.name)
                .set(c.violations as f64);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        metrics::gauge!("exchange_reconcile_last_run_timestamp_seconds").set(now.as_secs_f64());
    }
}

/// One line per invariant (`ok` or `FAILED` with the count), the offending
/// rows indented below a failure, and a summary line.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            if c.ok {
                writeln!(f, "{:<28} ok", c.name)?;
            } else {
                writeln!(f, "{:<28} FAILED ({} violations)", c.name, c.violations)?;
                for d in &c.details {
                    writeln!(f, "    {d}")?;
                }
                let listed = i64::try_from(c.details.len()).unwrap_or(i64::MAX);
                if c.violations > listed {
                    writeln!(f, "    ... and {} more", c.violations - listed)?;
                }
            }
        }
        if self.ok() {
            writeln!(f, "reconcile: ok ({} invariants)", self.checks.len())
        } else {
            writeln!(f, "reconcile: FAILED: {}", self.failed().join(", "))
        }
    }
}

/// How tolerant the check is of work in flight, and how deep it reads.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Commands and batches younger than this may still be in the pipeline.
    pub lag: Duration,
    /// Also run [`PROVENANCE_CHECKS`], which read all history.
    pub full: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lag: Duration::from_secs(30),
            full: true,
        }
    }
}

/// Each query returns `(total_count, detail_line)` rows, at most
/// `DETAILS_LEN_MAX` of them; `$1` is the limit, `$2` the lag in seconds.
const CHECKS: &[(&str, &str)] = &[
    (
        "ledger_balanced",
        "SELECT count(*) OVER (), format('asset %s: postings sum to %s', asset, sum(amount))
         FROM ledger_postings GROUP BY asset HAVING sum(amount) <> 0
         ORDER BY asset LIMIT $1",
    ),
    (
        "ledger_matches_balances",
        "WITH l AS (SELECT user_id, asset, sum(amount) AS total FROM ledger_postings
                    WHERE account_kind IN ('user', 'withdrawal_pending') GROUP BY user_id, asset)
         SELECT count(*) OVER (),
                format('user %s %s: ledger %s, balances %s (available %s, locked %s)',
                       coalesce(l.user_id, b.user_id), coalesce(l.asset, b.asset),
                       coalesce(l.total, 0), coalesce(b.available + b.locked, 0),
                       coalesce(b.available, 0), coalesce(b.locked, 0))
         FROM l FULL JOIN balances b ON b.user_id = l.user_id AND b.asset = l.asset
         WHERE coalesce(l.total, 0) <> coalesce(b.available + b.locked, 0)
         ORDER BY coalesce(l.user_id, b.user_id), coalesce(l.asset, b.asset) LIMIT $1",
    ),
    (
        "no_negative_balance",
        "SELECT count(*) OVER (), format('user %s %s: available %s, locked %s',
                user_id, asset, available, locked)
         FROM balances WHERE available < 0 OR locked < 0
         ORDER BY user_id, asset LIMIT $1",
    ),
    (
        "locked_matches_open_orders",
        "WITH o AS (SELECT user_id, asset, sum(total) AS total FROM (
                        SELECT user_id, reserve_asset AS asset, locked_remaining AS total
                        FROM orders WHERE status IN ('new', 'partially_filled')
                        UNION ALL
                        SELECT user_id, asset, amount + fee FROM withdrawals
                        WHERE status IN ('pending_approval', 'approved', 'signing', 'broadcast')) h
                    GROUP BY user_id, asset)
         SELECT count(*) OVER (),
                format('user %s %s: locked %s, open orders and withdrawals hold %s',
                       coalesce(o.user_id, b.user_id), coalesce(o.asset, b.asset),
                       coalesce(b.locked, 0), coalesce(o.total, 0))
         FROM o FULL JOIN balances b ON b.user_id = o.user_id AND b.asset = o.asset
         WHERE coalesce(o.total, 0) <> coalesce(b.locked, 0)
         ORDER BY coalesce(o.user_id, b.user_id), coalesce(o.asset, b.asset) LIMIT $1",
    ),
    (
        "custody_holds",
        "WITH l AS (SELECT user_id, asset, sum(amount) AS total FROM ledger_postings
                    WHERE account_kind = 'withdrawal_pending' GROUP BY user_id, asset),
              w AS (SELECT user_id, asset, sum(amount + fee) AS total FROM withdrawals
                    WHERE status IN ('pending_approval', 'approved', 'signing', 'broadcast')
                    GROUP BY user_id, asset)
         SELECT count(*) OVER (),
                format('user %s %s: withdrawal_pending ledger %s, open withdrawals hold %s',
                       coalesce(l.user_id, w.user_id), coalesce(l.asset, w.asset),
                       coalesce(l.total, 0), coalesce(w.total, 0))
         FROM l FULL JOIN w ON w.user_id = l.user_id AND w.asset = l.asset
         WHERE coalesce(l.total, 0) <> coalesce(w.total, 0)
         ORDER BY coalesce(l.user_id, w.user_id), coalesce(l.asset, w.asset) LIMIT $1",
    ),
    (
        "custody_flows",
        "WITH l AS (SELECT asset, -sum(amount) AS held FROM ledger_postings
                    WHERE account_kind = 'custody' GROUP BY asset),
              f AS (SELECT asset, sum(amount) AS held FROM (
                        SELECT asset, amount FROM chain_deposits WHERE journal_id IS NOT NULL
                        UNION ALL
                        SELECT asset, -(amount + coalesce(network_fee, 0)) FROM withdrawals
                        WHERE status = 'confirmed') m
                    GROUP BY asset)
         SELECT count(*) OVER (),
                format('asset %s: custody ledger holds %s, credited deposits - confirmed payouts = %s',
                       coalesce(l.asset, f.asset), coalesce(l.held, 0), coalesce(f.held, 0))
         FROM l FULL JOIN f ON f.asset = l.asset
         WHERE coalesce(l.held, 0) <> coalesce(f.held, 0)
         ORDER BY coalesce(l.asset, f.asset) LIMIT $1",
    ),
    (
        "no_journal_gap",
        "WITH c AS (SELECT market, count(*) AS n, max(seq) AS top FROM order_commands GROUP BY market)
         SELECT count(*) OVER (),
                format('market %s: last_seq %s, %s commands stored, highest seq %s',
                       coalesce(s.market, c.market), coalesce(s.last_seq, 0),
                       coalesce(c.n, 0), coalesce(c.top, 0))
         FROM market_sequences s FULL JOIN c ON c.market = s.market
         WHERE coalesce(c.n, 0) <> coalesce(s.last_seq, 0) OR coalesce(c.top, 0) <> coalesce(s.last_seq, 0)
         ORDER BY coalesce(s.market, c.market) LIMIT $1",
    ),
    (
        "commands_matched",
        "SELECT count(*) OVER (),
                format('market %s: %s commands older than %ss have no event batch, first seq %s',
                       c.market, count(*), $2, min(c.seq))
         FROM order_commands c
         WHERE c.created_at < now() - make_interval(secs => $2)
           AND NOT EXISTS (SELECT 1 FROM event_batches e WHERE e.market = c.market AND e.seq = c.seq)
         GROUP BY c.market ORDER BY c.market LIMIT $1",
    ),
    (
        "batches_cleared",
        "SELECT count(*) OVER (),
                format('market %s: %s event batches older than %ss not cleared, first seq %s',
                       e.market, count(*), $2, min(e.seq))
         FROM event_batches e
         WHERE e.created_at < now() - make_interval(secs => $2)
           AND NOT EXISTS (SELECT 1 FROM cleared_batches c WHERE c.market = e.market AND c.seq = e.seq)
         GROUP BY e.market ORDER BY e.market LIMIT $1",
    ),
    (
        "no_halted_market",
        "SELECT count(*) OVER (), format('market %s halted at seq %s since %s: %s',
                market, seq, halted_at, error)
         FROM clearing_halts ORDER BY market LIMIT $1",
    ),
];

/// The trade events of the cleared stored batches, in the units and
/// columns of `trades` (each fee is in what its side receives).
macro_rules! cleared_trade_events {
    () => {
        "
    SELECT e.market, e.seq, (t->>'trade_id')::bigint AS id,
           (t->>'price')::numeric / power(10::numeric, q.scale) AS price,
           (t->>'quantity')::numeric / power(10::numeric, b.scale) AS quantity,
           (t->>'quote_amount')::numeric / power(10::numeric, q.scale) AS quote_amount,
           t->>'taker_side' AS taker_side,
           (t->>'maker_order_id')::bigint AS maker_order_id,
           (t->>'taker_order_id')::bigint AS taker_order_id,
           (t->>'maker_user_id')::bigint AS maker_user_id,
           (t->>'taker_user_id')::bigint AS taker_user_id,
           (t->>'maker_fee')::numeric / power(10::numeric,
               CASE t->>'taker_side' WHEN 'buy' THEN q.scale ELSE b.scale END) AS maker_fee,
           (t->>'taker_fee')::numeric / power(10::numeric,
               CASE t->>'taker_side' WHEN 'buy' THEN b.scale ELSE q.scale END) AS taker_fee,
           e.time_ms
    FROM cleared_batches c
    JOIN event_batches e ON e.market = c.market AND e.seq = c.seq
    JOIN markets m ON m.symbol = e.market
    JOIN assets b ON b.symbol = m.base
    JOIN assets q ON q.symbol = m.quote
    CROSS JOIN LATERAL jsonb_array_elements(e.events) t
    WHERE t->>'type' = 'trade'"
    };
}

/// Checks that every trade booking came from matching; they read all
/// history (see the module documentation).
const PROVENANCE_CHECKS: &[(&str, &str)] = &[
        (
            "cleared_batches_stored",
            "SELECT count(*) OVER (),
                    format('market %s seq %s: cleared, but matching stored no such batch', c.market, c.seq)
             FROM cleared_batches c
             WHERE NOT EXISTS (SELECT 1 FROM event_batches e WHERE e.market = c.market AND e.seq = c.seq)
             ORDER BY c.market, c.seq LIMIT $1",
        ),
        (
            "trades_match_events",
            concat!(
                "WITH ev AS (",
                cleared_trade_events!(),
                ")
                 SELECT count(*) OVER (),
                        CASE WHEN ev.id IS NULL THEN
                             format('market %s trade %s (seq %s): no trade event in the stored batches explains it',
                                    t.market, t.id, t.seq)
                             WHEN t.id IS NULL THEN
                             format('market %s trade %s (seq %s): in a cleared stored batch but not booked',
                                    ev.market, ev.id, ev.seq)
                             ELSE format('market %s trade %s (seq %s): booked %s %s @ %s, the stored event says %s %s @ %s',
                                    t.market, t.id, t.seq, t.taker_side, t.quantity, t.price,
                                    ev.taker_side, ev.quantity, ev.price) END
                 FROM ev FULL JOIN trades t ON t.market = ev.market AND t.id = ev.id
                 WHERE ev.id IS NULL OR t.id IS NULL
                    OR (t.seq, t.price, t.quantity, t.quote_amount, t.taker_side, t.maker_order_id,
                        t.taker_order_id, t.maker_user_id, t.taker_user_id, t.maker_fee, t.taker_fee, t.time_ms)
                       IS DISTINCT FROM
                       (ev.seq, ev.price, ev.quantity, ev.quote_amount, ev.taker_side, ev.maker_order_id,
                        ev.taker_order_id, ev.maker_user_id, ev.taker_user_id, ev.maker_fee, ev.taker_fee, ev.time_ms)
                 ORDER BY coalesce(t.market, ev.market), coalesce(t.id, ev.id) LIMIT $1"
            ),
        ),
        (
            "fills_match_trades",
            "WITH want AS (
                 SELECT t.market, t.id AS trade_id, 'maker' AS liquidity, t.maker_user_id AS user_id,
                        t.maker_order_id AS order_id,
                        CASE t.taker_side WHEN 'buy' THEN 'sell' ELSE 'buy' END AS side,
                        t.price, t.quantity, t.quote_amount, t.maker_fee AS fee,
                        CASE t.taker_side WHEN 'buy' THEN m.quote ELSE m.base END AS fee_asset, t.time_ms
                 FROM trades t JOIN markets m ON m.symbol = t.market
                 UNION ALL
                 SELECT t.market, t.id, 'taker', t.taker_user_id, t.taker_order_id, t.taker_side,
                        t.price, t.quantity, t.quote_amount, t.taker_fee,
                        CASE t.taker_side WHEN 'buy' THEN m.base ELSE m.quote END, t.time_ms
                 FROM trades t JOIN markets m ON m.symbol = t.market)
             SELECT count(*) OVER (),
                    format('market %s trade %s %s fill: %s', coalesce(w.market, f.market),
                           coalesce(w.trade_id, f.trade_id), coalesce(w.liquidity, f.liquidity),
                           CASE WHEN f.id IS NULL THEN 'missing'
                                WHEN w.trade_id IS NULL THEN format('fill %s has no trade', f.id)
                                ELSE format('fill %s differs from its trade', f.id) END)
             FROM want w FULL JOIN fills f
               ON f.market = w.market AND f.trade_id = w.trade_id AND f.liquidity = w.liquidity
             WHERE w.trade_id IS NULL OR f.id IS NULL
                OR (f.user_id, f.order_id, f.side, f.price, f.quantity, f.quote_amount, f.fee,
                    f.fee_asset, f.time_ms)
                   IS DISTINCT FROM
                   (w.user_id, w.order_id, w.side, w.price, w.quantity, w.quote_amount, w.fee,
                    w.fee_asset, w.time_ms)
             ORDER BY coalesce(w.market, f.market), coalesce(w.trade_id, f.trade_id) LIMIT $1",
        ),
        (
            "ledger_matches_fills",
            "WITH l AS (SELECT p.account_kind AS account, coalesce(p.user_id, 0) AS user_id, p.asset,
                               sum(p.amount) AS total
                        FROM ledger_postings p JOIN ledger_journal j ON j.id = p.journal_id
                        WHERE j.kind = 'trade' GROUP BY 1, 2, 3),
                  f AS (SELECT account, user_id, asset, sum(amount) AS total FROM (
                            SELECT 'user' AS account, f.user_id, m.base AS asset,
                                   CASE f.side WHEN 'buy' THEN f.quantity ELSE -f.quantity END AS amount
                            FROM fills f JOIN markets m ON m.symbol = f.market
                            UNION ALL
                            SELECT 'user', f.user_id, m.quote,
                                   CASE f.side WHEN 'buy' THEN -f.quote_amount ELSE f.quote_amount END
                            FROM fills f JOIN markets m ON m.symbol = f.market
                            UNION ALL
                            SELECT 'user', f.user_id, f.fee_asset, -f.fee FROM fills f
                            UNION ALL
                            SELECT 'fees', 0, f.fee_asset, f.fee FROM fills f) x
                        GROUP BY 1, 2, 3)
             SELECT count(*) OVER (),
                    format('%s %s %s: trade journals post %s, the fills move %s',
                           coalesce(l.account, f.account), coalesce(l.user_id, f.user_id),
                           coalesce(l.asset, f.asset), coalesce(l.total, 0), coalesce(f.total, 0))
             FROM l FULL JOIN f ON f.account = l.account AND f.user_id = l.user_id AND f.asset = l.asset
             WHERE coalesce(l.total, 0) <> coalesce(f.total, 0)
             ORDER BY 2 LIMIT $1",
    ),
];

/// Runs every check in one consistent snapshot.
pub async fn reconcile(db: &PgPool, opts: Options) -> Result<Report, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    // Full scans of the ledger outgrow the services' short statement timeout.
    sqlx::query("SET LOCAL statement_timeout = '10min'")
        .execute(&mut *tx)
        .await?;
    let lag = opts.lag.as_secs_f64();
    let provenance = if opts.full { PROVENANCE_CHECKS } else { &[] };
    let mut checks = Vec::with_capacity(CHECKS.len() + provenance.len());
    for (name, sql) in CHECKS.iter().chain(provenance) {
        let mut query = sqlx::query(*sql).bind(DETAILS_LEN_MAX);
        if sql.contains("$2") {
            query = query.bind(lag);
        }
        let rows = query.fetch_all(&mut *tx).await?;
        let mut violations = 0;
        let mut details = Vec::with_capacity(rows.len());
        for r in rows {
            violations = r.try_get::<i64, _>(0)?;
            details.push(r.try_get::<String, _>(1)?);
        }
        checks.push(Check {
            name,
            ok: violations == 0,
            violations,
            details,
        });
    }
    tx.rollback().await?;
    Ok(Report { checks })
}

/// `exchange admin reconcile`: prints the report; exit 0 when every
/// invariant holds, 1 when one fails, 2 when the check could not run.
/// Reads `DB_URL`; `RECONCILE_LAG_SECONDS` (default 30) sets the window.
pub async fn run_cli() -> ExitCode {
    let Some(url) = std::env::var("DB_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("reconcile: DB_URL is not set (postgres://user:password@host:5432/dbname)");
        return ExitCode::from(64);
    };
    let lag = match std::env::var("RECONCILE_LAG_SECONDS") {
        Err(_) => Options::default().lag,
        Ok(v) => match v.parse::<u64>() {
            Ok(s) => Duration::from_secs(s),
            Err(_) => {
                eprintln!("reconcile: RECONCILE_LAG_SECONDS must be a whole number of seconds");
                return ExitCode::from(64);
            }
        },
    };
    let pool = match exchange_common::db::connect_options(
        &url,
        Duration::from_secs(300),
        "exchange-reconcile",
    ) {
        Ok(o) => sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(o),
        Err(e) => {
            eprintln!("reconcile: DB_URL is not a valid postgres URL: {e}");
            return ExitCode::from(64);
        }
    };
    match reconcile(&pool, Options { lag, full: true }).await {
        Ok(report) => {
            print!("{report}");
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("reconcile: cannot run the checks: {e}");
            ExitCode::from(2)
        }
    }
}
