//! Reads that may lag, and the PostgreSQL read replica (`DB_READ_URL`)
//! that serves them.
//!
//! Invariant: a read sent to the replica sees everything the primary held
//! at most `DB_READ_MAX_LAG_MS` ago; when that cannot be shown (replica
//! unreachable, not a standby, behind, or the primary not answering the
//! measurement) the read goes to the primary. Writes never go anywhere
//! but the primary ([`Reads::primary`]).
//!
//! # Which reads may lag (the one place this is decided)
//!
//! Only reads through [`Reads::history`] may be served by the replica.
//! They are the lists of what already happened, where an answer a few
//! seconds old is still a true answer and nobody acts on its freshness:
//!
//! | path (service) | why it may lag |
//! |---|---|
//! | `GET /api/v1/orders` without `status=open` (order), Binance `allOrders` (gateway) | order history: a closed order does not change |
//! | `GET /api/v1/account/trades` (order), Binance `myTrades` (gateway) | fills are final once written |
//! | klines: `GET /api/v1/markets/{symbol}/klines` and Binance `klines` (marketdata) | closed candles are final; the open one is an estimate anyway |
//! | `GET /admin/v1/audit` (gateway) | an operator's overview of the past |
//!
//! Everything else stays on the primary, because a client acts on it
//! right after its own write and a stale answer would be a wrong one:
//! `GET /api/v1/orders?status=open` (what a bot cancels or amends next),
//! `GET /api/v1/orders/{id}` (the order just placed or canceled: a 404 for
//! it would be a lie), balances and the ledger / statement (summing the
//! entries must give the balance the user sees), sessions, API keys,
//! anything inside a transaction that writes, and every read of the order,
//! matching, clearing and wallet write paths.
//!
//! # Measuring lag
//!
//! `now() - pg_last_xact_replay_timestamp()` on the replica grows while
//! the primary is idle (no new transaction to replay), so it is not used.
//! Instead a background loop samples the primary's WAL position
//! (`pg_current_wal_lsn()`) with the instant it was taken, then asks the
//! replica how far it has replayed (`pg_last_wal_replay_lsn()`). Every
//! sample the replica has passed proves it held all the primary held at
//! that instant ([`Monitor::replayed_at`]); the lag is the time since the
//! newest such instant, an upper bound on how old the replica's view is,
//! which is 0 on an idle, caught-up pair. A replica that reconnects far
//! behind keeps its old `replayed_at`, so it is not used until it has
//! really caught up. Each statement has a timeout; the loop never waits on
//! a dead server longer than [`CHECK_TIMEOUT`].

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::config::Config;
use crate::shutdown::Shutdown;

/// How long one statement of a lag check may take before the server it
/// went to counts as unreachable.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Primary WAL positions kept while the replica has not replayed them;
/// beyond it the newest is overwritten (the oldest, which sets the lag,
/// is kept).
pub const LSN_SAMPLES_MAX: usize = 4_096;

/// How often the lag is measured for a bound of `max_lag`: a quarter of
/// it (so the replica is dropped well before a read could see data older
/// than the bound), between 100 ms and 1 s.
pub fn check_interval(max_lag: Duration) -> Duration {
    (max_lag / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Where one read went, as `exchange_db_reads_total{target}` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Primary,
    Replica,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Replica => "replica",
        }
    }
}

/// The database handles of a service: the primary, and the replica for
/// [`Reads::history`] when `DB_READ_URL` is set. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Reads {
    primary: PgPool,
    replica: Option<Arc<Replica>>,
    service: &'static str,
}

#[derive(Debug)]
struct Replica {
    pool: PgPool,
    /// `host:port` for messages (never the URL: it may hold a password).
    target: String,
    max_lag: Duration,
    state: Mutex<Monitor>,
}

/// What the lag loop knows. `replayed_at`: the replica holds everything
/// the primary held at this instant (`None` until shown once).
#[derive(Debug, Default)]
struct Monitor {
    replayed_at: Option<Instant>,
    /// Primary positions (bytes since 0/0) and when they were read, oldest
    /// first, not yet replayed by the replica.
    samples: VecDeque<(Instant, i64)>,
    /// The primary's position at the last check (to notice it going back).
    primary_lsn: Option<i64>,
    /// Why the last check could not use the replica; `None` when it
    /// reached both servers and the replica is a standby.
    error: Option<String>,
    /// Whether the last check ran at all (before it: not in use).
    checked: bool,
    /// The last [`Monitor::in_use`] answer the loop logged, to log changes only.
    logged_in_use: Option<bool>,
}

impl Monitor {
    /// The replica's lag now: an upper bound on how old its view is.
    fn lag(&self, now: Instant) -> Option<Duration> {
        self.replayed_at.map(|t| now.saturating_duration_since(t))
    }

    fn in_use(&self, now: Instant, max_lag: Duration) -> bool {
        self.checked && self.error.is_none() && self.lag(now).is_some_and(|lag| lag <= max_lag)
    }

    /// Records the primary's position `lsn` read at `at`.
    fn sample_primary(&mut self, at: Instant, lsn: i64) {
        if self.primary_lsn.is_some_and(|last| lsn < last) {
            // The primary went back in WAL (a restore, a new cluster): what
            // the replica replayed before proves nothing about it.
            self.samples.clear();
            self.replayed_at = None;
        }
        if self.samples.len() >= LSN_SAMPLES_MAX {
            self.samples.pop_back();
        }
        self.samples.push_back((at, lsn));
        self.primary_lsn = Some(lsn);
    }

    /// Drops the samples the replica has replayed (`replay_lsn`), moving
    /// `replayed_at` to the newest of them.
    fn replica_replayed(&mut self, replay_lsn: i64) {
        while let Some(&(at, lsn)) = self.samples.front() {
            if lsn > replay_lsn {
                break;
            }
            self.replayed_at = Some(at);
            self.samples.pop_front();
        }
    }
}

/// How the replica looks to `/ready` (not counted in its status: the
/// primary serves every read without it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReport {
    /// `up` (in use), `lagging` (reachable, further behind than the bound)
    /// or `down` (unreachable, not a standby, or not yet measured).
    pub state: &'static str,
    /// Why it is not in use, naming its host, never a password.
    pub error: Option<String>,
}

impl Reads {
    /// Every read on `primary` (no `DB_READ_URL`).
    pub fn primary_only(primary: PgPool, service: &'static str) -> Self {
        Self {
            primary,
            replica: None,
            service,
        }
    }

    /// With the replica of `DB_READ_URL` (a lazily connecting pool of
    /// `DB_POOL_MAX`), unused until [`Reads::spawn_monitor`] has measured
    /// it. Without `DB_READ_URL`, [`Reads::primary_only`].
    pub fn new(
        config: &Config,
        primary: PgPool,
        service: &'static str,
    ) -> Result<Self, sqlx::Error> {
        let Some(url) = &config.db.read_url else {
            return Ok(Self::primary_only(primary, service));
        };
        let options = crate::db::connect_options(
            url.expose(),
            config.db.statement_timeout,
            &format!("exchange-{service}-reads"),
        )?;
        let target = crate::db::target(&options);
        let pool = PgPoolOptions::new()
            .max_connections(config.db.pool_max)
            // A read waits less for the replica than for the primary: when
            // it is saturated the primary answers instead.
            .acquire_timeout(CHECK_TIMEOUT)
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_lazy_with(options);
        Ok(Self {
            primary,
            replica: Some(Arc::new(Replica {
                pool,
                target,
                max_lag: config.db.read_max_lag,
                state: Mutex::new(Monitor::default()),
            })),
            service,
        })
    }

    /// The primary: every write, and every read that is not history.
    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// Whether `DB_READ_URL` is configured.
    pub fn has_replica(&self) -> bool {
        self.replica.is_some()
    }

    /// Where a history read goes now.
    pub fn history_target(&self) -> Target {
        match &self.replica {
            Some(r) if r.in_use() => Target::Replica,
            _ => Target::Primary,
        }
    }

    /// Runs a history read (see the module's table for which reads are
    /// history) on the replica when it is in use, else on the primary. A
    /// read the replica fails for a reason that may pass (unreachable,
    /// cancelled by a conflict with recovery) is run once more on the
    /// primary, and the replica is left alone until the next check shows
    /// it well. `query` gets the pool to run on.
    pub async fn history<T, F, Fut>(&self, query: F) -> Result<T, sqlx::Error>
    where
        F: Fn(PgPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        if let Some(replica) = self.replica.as_ref().filter(|r| r.in_use()) {
            self.count(Target::Replica);
            match query(replica.pool.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if crate::db::is_transient(&e) => {
                    let why = crate::db::describe_error(&replica.target, &e);
                    tracing::warn!(error = %why, "read replica failed a read; reading from the primary");
                    replica.set_error(why);
                }
                Err(e) => return Err(e),
            }
        }
        self.count(Target::Primary);
        query(self.primary.clone()).await
    }

    fn count(&self, target: Target) {
        metrics::counter!("exchange_db_reads_total", "service" => self.service, "target" => target.as_str())
            .increment(1);
    }

    /// The replica's state for `/ready`; `None` without `DB_READ_URL`.
    pub fn replica_report(&self) -> Option<ReplicaReport> {
        let r = self.replica.as_ref()?;
        let now = Instant::now();
        let m = r.state.lock().ok()?;
        let state = if !m.checked || m.error.is_some() {
            "down"
        } else if m.in_use(now, r.max_lag) {
            "up"
        } else {
            "lagging"
        };
        let error = match (&m.error, m.checked, m.lag(now)) {
            (Some(e), _, _) => Some(e.clone()),
            (None, false, _) => Some(format!(
                "postgres replica at {}: not measured yet",
                r.target
            )),
            (None, true, None) => Some(format!(
                "postgres replica at {}: has not yet replayed the primary's WAL position of its first check",
                r.target
            )),
            (None, true, Some(lag)) if lag > r.max_lag => Some(format!(
                "postgres replica at {}: {} ms behind the primary, more than DB_READ_MAX_LAG_MS={}",
                r.target,
                lag.as_millis(),
                r.max_lag.as_millis()
            )),
            _ => None,
        };
        Some(ReplicaReport { state, error })
    }

    /// Starts the lag loop (when `DB_READ_URL` is set) until `shutdown`.
    pub fn spawn_monitor(&self, shutdown: Shutdown) {
        let Some(replica) = self.replica.clone() else {
            return;
        };
        let primary = self.primary.clone();
        let service = self.service;
        let interval = check_interval(replica.max_lag);
        tokio::spawn(async move {
            loop {
                replica.check(&primary, service).await;
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = shutdown.wait() => return,
                }
            }
        });
    }
}

/// `SELECT`s a WAL position as bytes since 0/0, so that the primary's and
/// the replica's compare as integers.
const PRIMARY_LSN_SQL: &str = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8";
const REPLICA_LSN_SQL: &str =
    "SELECT pg_is_in_recovery(), pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::int8";

/// One statement with [`CHECK_TIMEOUT`], its failure as one line naming the server.
async fn timed<T>(
    what: &str,
    target: &str,
    fut: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {}", crate::db::describe_error(target, &e))),
        Err(_) => Err(format!(
            "{what}: postgres at {target}: no answer within {CHECK_TIMEOUT:?}"
        )),
    }
}

impl Replica {
    fn in_use(&self) -> bool {
        self.state
            .lock()
            .is_ok_and(|m| m.in_use(Instant::now(), self.max_lag))
    }

    fn set_error(&self, error: String) {
        if let Ok(mut m) = self.state.lock() {
            m.error = Some(error);
        }
    }

    /// One measurement: the primary's position first, then how far the
    /// replica replayed (so a sample is never newer than what it is
    /// compared with). Updates the state, the gauges, and logs a change.
    async fn check(&self, primary: &PgPool, service: &'static str) {
        let primary_target = crate::db::target(&primary.connect_options());
        let at = Instant::now();
        let primary_lsn = timed(
            "lag unknown: the primary did not say its WAL position",
            &primary_target,
            sqlx::query_scalar::<_, i64>(PRIMARY_LSN_SQL).fetch_one(primary),
        )
        .await;
        let replica = match &primary_lsn {
            Ok(_) => {
                timed(
                    "replica unreachable",
                    &self.target,
                    sqlx::query_as::<_, (bool, Option<i64>)>(REPLICA_LSN_SQL).fetch_one(&self.pool),
                )
                .await
            }
            Err(e) => Err(e.clone()),
        };
        let Ok(mut m) = self.state.lock() else { return };
        if let Ok(lsn) = primary_lsn {
            m.sample_primary(at, lsn);
        }
        m.checked = true;
        m.error = match replica {
            Err(e) => Some(e),
            Ok((true, None)) => Some(format!(
                "postgres at {}: in recovery but has replayed nothing yet",
                self.target
            )),
            Ok((false, _)) => Some(format!(
                "postgres at {}: not a standby (pg_is_in_recovery() is false): \
                 DB_READ_URL must name a streaming replica of DB_URL",
                self.target
            )),
            Ok((true, Some(replay_lsn))) => {
                m.replica_replayed(replay_lsn);
                None
            }
        };
        let now = Instant::now();
        let in_use = m.in_use(now, self.max_lag);
        // Before the replica has shown it holds any sample, its lag is at
        // least the age of the oldest one.
        let lag = m.lag(now).or_else(|| {
            m.samples
                .front()
                .map(|(t, _)| now.saturating_duration_since(*t))
        });
        if let Some(lag) = lag {
            metrics::gauge!("exchange_db_read_replica_lag_seconds", "service" => service)
                .set(lag.as_secs_f64());
        }
        metrics::gauge!("exchange_db_read_replica_up", "service" => service)
            .set(if m.error.is_none() { 1.0 } else { 0.0 });
        metrics::gauge!("exchange_db_read_replica_in_use", "service" => service).set(if in_use {
            1.0
        } else {
            0.0
        });
        if m.logged_in_use != Some(in_use) {
            m.logged_in_use = Some(in_use);
            let lag_ms = lag.map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX));
            if in_use {
                tracing::info!(replica = %self.target, lag_ms, "read replica in use for history reads");
            } else {
                tracing::warn!(
                    replica = %self.target,
                    lag_ms,
                    max_lag_ms = u64::try_from(self.max_lag.as_millis()).unwrap_or(u64::MAX),
                    error = m.error.as_deref().unwrap_or("behind the primary"),
                    "read replica not in use: history reads go to the primary"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(2);

    fn checked() -> Monitor {
        Monitor {
            checked: true,
            ..Monitor::default()
        }
    }

    #[test]
    fn an_idle_caught_up_pair_has_no_lag() {
        let t0 = Instant::now();
        let mut m = checked();
        for i in 0..10u32 {
            // The primary writes nothing: the same position, replayed.
            m.sample_primary(t0 + Duration::from_secs(i.into()), 1_000);
            m.replica_replayed(1_000);
        }
        let now = t0 + Duration::from_secs(9);
        assert_eq!(m.lag(now), Some(Duration::ZERO));
        assert!(m.in_use(now, BOUND));
        assert!(m.samples.is_empty());
    }

    #[test]
    fn a_replica_that_stopped_replaying_lags_from_the_first_position_it_missed() {
        let t0 = Instant::now();
        let mut m = checked();
        m.sample_primary(t0, 100);
        m.replica_replayed(100);
        // Replay paused at 100 while the primary moves on.
        for i in 1..=5u32 {
            m.sample_primary(t0 + Duration::from_secs(i.into()), 100 + i64::from(i));
            m.replica_replayed(100);
        }
        let now = t0 + Duration::from_secs(5);
        assert_eq!(m.lag(now), Some(Duration::from_secs(5)));
        assert!(!m.in_use(now, BOUND));
        // Replay resumes past everything: caught up at the newest sample.
        m.replica_replayed(105);
        assert_eq!(m.lag(now), Some(Duration::ZERO));
        assert!(m.in_use(now, BOUND));
    }

    #[test]
    fn a_replica_first_seen_behind_is_not_used_until_it_catches_up() {
        let t0 = Instant::now();
        let mut m = checked();
        m.sample_primary(t0, 500);
        m.replica_replayed(10);
        assert_eq!(m.lag(t0), None);
        assert!(!m.in_use(t0, BOUND), "lag unknown: not used");
        m.sample_primary(t0 + Duration::from_secs(1), 600);
        m.replica_replayed(550);
        let now = t0 + Duration::from_secs(1);
        assert_eq!(m.lag(now), Some(Duration::from_secs(1)));
        assert!(m.in_use(now, BOUND));
    }

    #[test]
    fn an_error_or_a_primary_that_went_back_in_wal_stops_use() {
        let t0 = Instant::now();
        let mut m = checked();
        m.sample_primary(t0, 100);
        m.replica_replayed(100);
        assert!(m.in_use(t0, BOUND));
        m.error = Some("down".into());
        assert!(!m.in_use(t0, BOUND));
        m.error = None;
        // A restored primary starts over at a lower position.
        m.sample_primary(t0, 50);
        assert_eq!(m.lag(t0), None);
        assert!(!m.in_use(t0, BOUND));
    }

    #[test]
    fn samples_are_bounded_and_keep_the_oldest() {
        let t0 = Instant::now();
        let mut m = checked();
        for i in 0..(LSN_SAMPLES_MAX as i64 + 10) {
            m.sample_primary(t0, i + 1);
        }
        assert_eq!(m.samples.len(), LSN_SAMPLES_MAX);
        assert_eq!(m.samples.front().map(|s| s.1), Some(1));
    }

    #[test]
    fn the_check_interval_is_a_quarter_of_the_bound_within_limits() {
        assert_eq!(
            check_interval(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        assert_eq!(
            check_interval(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            check_interval(Duration::from_secs(60)),
            Duration::from_secs(1)
        );
    }
}
