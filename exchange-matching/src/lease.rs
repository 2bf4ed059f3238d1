//! Market ownership by lease (migration 0018): any number of matching
//! replicas run on every market, and each market is matched by the one
//! replica holding its lease in `matching_leases`.
//!
//! - A lease lasts `MATCHING_LEASE_MS` on the database's clock and is
//!   renewed by its owner every quarter of that. A replica takes a market
//!   whose lease has expired (its owner died, was paused, or lost the
//!   database) by bumping the lease's `epoch`, then recovers the book from
//!   snapshot and journal as at any start.
//! - Fencing: every statement that stores event batches or snapshots
//!   names the epoch and share-locks the market's `matching_fences` row
//!   ([`Fence`]). The takeover sets that row in the statement that takes
//!   the lease, so once it has committed a former owner stores nothing,
//!   and the new owner's recovery, which starts after that commit, sees
//!   everything the former owner stored. Renewals touch only
//!   `matching_leases`, so they never wait behind a write, and run in a
//!   task of their own, so nothing else the replica does delays them. Publishing needs the lease to be valid by this
//!   process's own monotonic clock ([`Lease::is_valid`]: counted from when
//!   the renewal was sent, so never later than the database's expiry);
//!   a paused process that wakes up finds it expired. Only stored batches
//!   are ever published, and clearing applies only stored batches, so a
//!   late publish could at worst repeat a genuine batch.
//! - Spreading: each replica also renews its row in `matching_replicas`;
//!   with N replicas alive a replica holds at most ceil(markets / N)
//!   leases and hands the excess over (snapshot first, then release).
//! - Handover: a replica that stops or gives a market up releases the
//!   lease at once and notifies `exchange_matching_leases`, so a standby
//!   takes it without waiting for the expiry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use exchange_common::Shutdown;
use sqlx::PgPool;

/// The channel a release is announced on (standbys take the market at once).
pub const RELEASED_CHANNEL: &str = "exchange_matching_leases";

/// A write was refused because this replica no longer holds the market's
/// lease (another replica took it over).
#[derive(Debug, Clone, thiserror::Error)]
#[error("market {market}: the lease of epoch {epoch} was taken over; nothing stored")]
pub struct LeaseLost {
    pub market: String,
    pub epoch: i64,
}

/// What a fenced write names: the market and the epoch of the lease the
/// writer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub market: String,
    pub epoch: i64,
}

/// One held lease, shared by the supervisor (which renews it) and the
/// market's task (which checks it before publishing).
#[derive(Debug)]
pub struct Lease {
    pub market: String,
    pub epoch: i64,
    valid_until: Mutex<Instant>,
    /// Triggered when the market must stop here: the lease was lost, the
    /// market is handed over, or the service stops.
    pub stop: Shutdown,
}

impl Lease {
    pub fn new(market: String, epoch: i64, valid_until: Instant) -> Self {
        Self {
            market,
            epoch,
            valid_until: Mutex::new(valid_until),
            stop: Shutdown::new(),
        }
    }

    pub fn fence(&self) -> Fence {
        Fence {
            market: self.market.clone(),
            epoch: self.epoch,
        }
    }

    /// Whether the lease is still ours by this process's clock.
    pub fn is_valid(&self) -> bool {
        !self.stop.is_triggered()
            && self
                .valid_until
                .lock()
                .is_ok_and(|until| Instant::now() < *until)
    }

    fn extend(&self, until: Instant) {
        if let Ok(mut u) = self.valid_until.lock() {
            *u = (*u).max(until);
        }
    }
}

/// The leases as seen from one replica.
#[derive(Debug, Clone)]
pub struct Leases {
    db: PgPool,
    /// `<MATCHING_CONSUMER_NAME>/<instance id>`.
    pub owner: String,
    pub duration: Duration,
    started: Instant,
}

/// Who holds a market's lease now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub owner: String,
    pub live: bool,
}

impl Leases {
    pub fn new(db: PgPool, name: &str, duration: Duration) -> Self {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        Self {
            db,
            owner: format!("{name}/{}", &instance[..12]),
            duration,
            started: Instant::now(),
        }
    }

    /// This replica's name: the owner without the instance id.
    pub fn name(&self) -> &str {
        name_of(&self.owner)
    }

    /// Within its first lease duration a replica takes back, without
    /// waiting for their expiry, the live leases of an earlier process
    /// under its own name: a restart (`kill -9` and restart, a pod of a
    /// StatefulSet) resumes its markets at once. Safe even if that earlier
    /// process still lives (a misconfigured twin): the takeover bumps the
    /// epoch, which fences it, and the twin is reported
    /// (`ExchangeConsumerNameConflict`); limited to the start, so twins
    /// cannot take markets from each other forever.
    pub fn reclaims(&self) -> bool {
        self.started.elapsed() < self.duration
    }

    /// How often held leases are renewed (and free ones looked for).
    pub fn tick(&self) -> Duration {
        self.duration / 4
    }

    /// Every database call of the lease loops gets this long: a renewal
    /// that takes longer is worth nothing anyway.
    pub fn call_timeout(&self) -> Duration {
        self.duration / 2
    }

    fn millis(&self) -> i64 {
        i64::try_from(self.duration.as_millis()).unwrap_or(i64::MAX)
    }

    async fn timed<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(self.call_timeout(), f).await {
            Ok(r) => Ok(r?),
            Err(_) => anyhow::bail!("{what}: no answer within {:?}", self.call_timeout()),
        }
    }

    /// Renews this replica's liveness row and returns how many replicas
    /// are alive (this one included): seen within two ticks, so that a
    /// dead replica stops counting (and its markets find room elsewhere)
    /// by the time its leases expire.
    pub async fn replicas_alive(&self) -> anyhow::Result<u64> {
        let alive: i64 = self
            .timed(
                "replica heartbeat",
                sqlx::query_scalar(
                    "WITH me AS (
                        INSERT INTO matching_replicas (owner, seen_at) VALUES ($1, now())
                        ON CONFLICT (owner) DO UPDATE SET seen_at = now())
                     SELECT 1 + count(DISTINCT regexp_replace(owner, '/[^/]*$', '')) FROM matching_replicas
                     WHERE regexp_replace(owner, '/[^/]*$', '') <> $3
                       AND seen_at > now() - make_interval(secs => $2 / 1000.0)",
                )
                .bind(&self.owner)
                .bind(self.millis() / 2)
                .bind(self.name())
                .fetch_one(&self.db),
            )
            .await?;
        Ok(u64::try_from(alive).unwrap_or(1))
    }

    /// Every market's current holder.
    pub async fn holders(&self) -> anyhow::Result<BTreeMap<String, Holder>> {
        let rows: Vec<(String, String, bool)> = self
            .timed(
                "listing leases",
                sqlx::query_as("SELECT market, owner, expires_at > now() FROM matching_leases")
                    .fetch_all(&self.db),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(m, owner, live)| (m, Holder { owner, live }))
            .collect())
    }

    /// Takes `market` when its lease is free or expired, or held under this
    /// replica's name while it [`Leases::reclaims`]; returns the new lease.
    /// The takeover waits for a former owner's fenced write in flight (its
    /// share lock) and makes every later one fail.
    pub async fn acquire(&self, market: &str) -> anyhow::Result<Option<Lease>> {
        let sent = Instant::now();
        let epoch: Option<i64> = self
            .timed(
                "acquiring a lease",
                // The fence is set in the same statement: it waits for a
                // former owner's write in flight and fails every later one.
                sqlx::query_scalar(
                    "WITH taken AS (
                        INSERT INTO matching_leases (market, owner, epoch, expires_at)
                        VALUES ($1, $2, 1, now() + make_interval(secs => $3 / 1000.0))
                        ON CONFLICT (market) DO UPDATE
                           SET owner = EXCLUDED.owner, epoch = matching_leases.epoch + 1,
                               expires_at = EXCLUDED.expires_at
                           WHERE matching_leases.expires_at <= now()
                              OR ($4 AND regexp_replace(matching_leases.owner, '/[^/]*$', '') = $5
                                  AND matching_leases.owner <> EXCLUDED.owner)
                        RETURNING market, epoch),
                     fenced AS (
                        INSERT INTO matching_fences (market, epoch) SELECT market, epoch FROM taken
                        ON CONFLICT (market) DO UPDATE SET epoch = EXCLUDED.epoch
                        RETURNING epoch)
                     SELECT epoch FROM fenced",
                )
                .bind(market)
                .bind(&self.owner)
                .bind(self.millis())
                .bind(self.reclaims())
                .bind(self.name())
                .fetch_optional(&self.db),
            )
            .await?;
        Ok(epoch.map(|e| Lease::new(market.to_owned(), e, sent + self.duration)))
    }

    /// Renews `held` in one statement; returns the markets whose leases
    /// were renewed (a missing one was taken over). Each renewed lease is
    /// valid locally until the renewal's send time plus the duration.
    pub async fn renew(&self, held: &[&Lease]) -> anyhow::Result<BTreeSet<String>> {
        if held.is_empty() {
            return Ok(BTreeSet::new());
        }
        let sent = Instant::now();
        let markets: Vec<&str> = held.iter().map(|l| l.market.as_str()).collect();
        let epochs: Vec<i64> = held.iter().map(|l| l.epoch).collect();
        let renewed: Vec<String> = self
            .timed(
                "renewing leases",
                sqlx::query_scalar(
                    "UPDATE matching_leases l
                     SET expires_at = now() + make_interval(secs => $3 / 1000.0)
                     FROM unnest($1::text[], $2::bigint[]) AS h(market, epoch)
                     WHERE l.market = h.market AND l.epoch = h.epoch AND l.owner = $4
                     RETURNING l.market",
                )
                .bind(&markets)
                .bind(&epochs)
                .bind(self.millis())
                .bind(&self.owner)
                .fetch_all(&self.db),
            )
            .await?;
        let renewed: BTreeSet<String> = renewed.into_iter().collect();
        for lease in held {
            if renewed.contains(&lease.market) {
                lease.extend(sent + self.duration);
            }
        }
        Ok(renewed)
    }

    /// Gives `lease` up at once and tells the standbys.
    pub async fn release(&self, lease: &Lease) -> anyhow::Result<()> {
        self.timed(
            "releasing a lease",
            sqlx::query(
                "WITH released AS (
                    UPDATE matching_leases SET expires_at = now()
                    WHERE market = $1 AND epoch = $2 AND owner = $3 RETURNING market)
                 SELECT pg_notify($4, market) FROM released",
            )
            .bind(&lease.market)
            .bind(lease.epoch)
            .bind(&self.owner)
            .bind(RELEASED_CHANNEL)
            .execute(&self.db),
        )
        .await?;
        Ok(())
    }

    /// Removes this replica's liveness row (it stops).
    pub async fn leave(&self) -> anyhow::Result<()> {
        self.timed(
            "leaving",
            sqlx::query("DELETE FROM matching_replicas WHERE owner = $1 OR seen_at < now() - interval '1 day'")
                .bind(&self.owner)
                .execute(&self.db),
        )
        .await?;
        Ok(())
    }
}

/// The replica name of an owner (`<name>/<instance id>`).
pub fn name_of(owner: &str) -> &str {
    owner.rsplit_once('/').map_or(owner, |(name, _)| name)
}

/// How many markets one of `replicas` live replicas should hold at most.
pub fn fair_share(markets: usize, replicas: u64) -> usize {
    let replicas = usize::try_from(replicas.max(1)).unwrap_or(usize::MAX);
    markets.div_ceil(replicas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_share_spreads_and_never_strands_a_market() {
        assert_eq!(fair_share(3, 1), 3);
        assert_eq!(fair_share(3, 2), 2);
        assert_eq!(fair_share(4, 2), 2);
        assert_eq!(fair_share(1, 3), 1);
        assert_eq!(fair_share(0, 2), 0);
        assert_eq!(fair_share(5, 0), 5);
        // Every market has room somewhere: replicas × share ≥ markets.
        for m in 0..50 {
            for r in 1..8 {
                assert!(fair_share(m, r) * usize::try_from(r).expect("small") >= m);
            }
        }
    }
}
