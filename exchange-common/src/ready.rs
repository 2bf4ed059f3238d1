//! Readiness: dependency probes (each with a short timeout) and the
//! heartbeats of a service's consumer loops.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::redis::Redis;

/// How long one dependency probe may take before it counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The oldest backend probe `/ready` answers from ([`Readiness::current`]);
/// an older one is refreshed first (one probe at a time).
pub const REPORT_MAX_AGE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Beat {
    last: Option<Instant>,
    stale_after: Duration,
    /// Set when the loop decided to stop on purpose (e.g. a halted market
    /// reports its own reason); `None` while healthy.
    down_reason: Option<&'static str>,
}

/// The heartbeats of one service's loops, keyed by loop name (as `/ready`
/// shows it, e.g. `eventStreamConsumer`) and then by instance (the stream).
#[derive(Clone, Default, Debug)]
pub struct Heartbeats {
    inner: Arc<Mutex<BTreeMap<String, BTreeMap<String, Beat>>>>,
}

impl Heartbeats {
    /// Registers a loop instance; it is down until its first beat.
    pub fn register(&self, name: &str, instance: &str, stale_after: Duration) -> Heartbeat {
        if let Ok(mut map) = self.inner.lock() {
            map.entry(name.to_owned()).or_default().insert(
                instance.to_owned(),
                Beat {
                    last: None,
                    stale_after,
                    down_reason: None,
                },
            );
        }
        Heartbeat {
            owner: self.clone(),
            name: name.to_owned(),
            instance: instance.to_owned(),
        }
    }

    /// Forgets a loop instance (e.g. a market this replica handed over);
    /// the loop goes with its last instance.
    pub fn remove(&self, name: &str, instance: &str) {
        if let Ok(mut map) = self.inner.lock()
            && let Some(instances) = map.get_mut(name)
        {
            instances.remove(instance);
            if instances.is_empty() {
                map.remove(name);
            }
        }
    }

    /// Loop name → up, for every registered loop (up when all its instances are fresh).
    pub fn snapshot(&self) -> BTreeMap<String, bool> {
        let now = Instant::now();
        let Ok(map) = self.inner.lock() else {
            return BTreeMap::new();
        };
        map.iter()
            .map(|(name, instances)| {
                let up = instances.values().all(|b| {
                    b.down_reason.is_none()
                        && b.last
                            .is_some_and(|t| now.duration_since(t) <= b.stale_after)
                });
                (name.clone(), up)
            })
            .collect()
    }

    fn update(&self, name: &str, instance: &str, f: impl FnOnce(&mut Beat)) {
        if let Ok(mut map) = self.inner.lock()
            && let Some(beat) = map.get_mut(name).and_then(|m| m.get_mut(instance))
        {
            f(beat);
        }
    }
}

/// One loop instance's handle: call [`Heartbeat::beat`] on every healthy turn.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    owner: Heartbeats,
    name: String,
    instance: String,
}

impl Heartbeat {
    pub fn beat(&self) {
        self.owner.update(&self.name, &self.instance, |b| {
            b.last = Some(Instant::now());
            b.down_reason = None;
        });
    }

    /// Marks the loop down until the next beat.
    pub fn down(&self, reason: &'static str) {
        self.owner
            .update(&self.name, &self.instance, |b| b.down_reason = Some(reason));
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Removes this loop instance from `/ready` (it ended on purpose).
    pub fn forget(&self) {
        self.owner.remove(&self.name, &self.instance);
    }
}

/// What `/ready` checks for one service.
#[derive(Clone, Debug)]
pub struct Readiness {
    pub service: &'static str,
    pub db: Option<PgPool>,
    pub redis: Option<Redis>,
    pub heartbeats: Heartbeats,
    /// The read replica (`DB_READ_URL`) of a service that reads history
    /// from it: shown as `postgres_replica`, never counted in the status
    /// (without it the primary serves every read).
    pub reads: Option<crate::replica::Reads>,
    /// The latest backend probe and when it finished.
    latest: Arc<Mutex<Option<(Instant, Backends)>>>,
    /// Held while probing: concurrent callers wait for one probe.
    probing: Arc<tokio::sync::Mutex<()>>,
    probes: Arc<AtomicU64>,
}

/// The backends' states and errors from one probe.
#[derive(Debug, Clone, Default)]
struct Backends {
    dependencies: BTreeMap<String, &'static str>,
    errors: BTreeMap<String, String>,
}

/// The outcome of one readiness check.
#[derive(Debug, Clone)]
pub struct ReadyReport {
    pub ok: bool,
    pub dependencies: BTreeMap<String, &'static str>,
    /// Why each down backend (`postgres`, `redis`) is down, naming its
    /// host (e.g. a TLS certificate the configured CA does not sign);
    /// never a password.
    pub errors: BTreeMap<String, String>,
    /// The dependencies listed in `dependencies` that do not count in
    /// `ok` (the read replica): the service works without them.
    pub non_critical: Vec<&'static str>,
}

/// `/ready`'s name for the read replica.
pub const REPLICA_DEPENDENCY: &str = "postgres_replica";

impl Readiness {
    pub fn new(service: &'static str, db: Option<PgPool>, redis: Option<Redis>) -> Self {
        Self {
            service,
            db,
            redis,
            heartbeats: Heartbeats::default(),
            reads: None,
            latest: Arc::default(),
            probing: Arc::default(),
            probes: Arc::default(),
        }
    }

    /// How many backend probes ran (each a `SELECT 1` and a Redis `PING`).
    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }

    /// The report `/ready` answers: the latest backend probe (kept fresh by
    /// [`crate::http::spawn_ready_refresher`]; probed here only when none
    /// is younger than [`REPORT_MAX_AGE`], one caller at a time) with the
    /// loops' heartbeats as of now. Hammering it costs no backend work.
    pub async fn current(&self) -> ReadyReport {
        if let Some(b) = self.fresh() {
            return self.assemble(b);
        }
        let _one = self.probing.lock().await;
        if let Some(b) = self.fresh() {
            return self.assemble(b);
        }
        self.check().await
    }

    fn fresh(&self) -> Option<Backends> {
        let latest = self.latest.lock().ok()?;
        latest
            .as_ref()
            .filter(|(at, _)| at.elapsed() <= REPORT_MAX_AGE)
            .map(|(_, b)| b.clone())
    }

    /// Probes every dependency concurrently (the result is what
    /// [`Readiness::current`] answers next); updates `exchange_ready` and
    /// `exchange_consumer_up`.
    pub async fn check(&self) -> ReadyReport {
        let backends = self.probe().await;
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Some((Instant::now(), backends.clone()));
        }
        self.assemble(backends)
    }

    async fn probe(&self) -> Backends {
        self.probes.fetch_add(1, Ordering::Relaxed);
        let db = async {
            let pool = self.db.as_ref()?;
            let target = crate::db::target(&pool.connect_options());
            Some(
                match tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(pool))
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(crate::db::describe_error(&target, &e)),
                    Err(_) => Err(format!(
                        "postgres at {target}: no answer within {PROBE_TIMEOUT:?}"
                    )),
                },
            )
        };
        let redis = async {
            match &self.redis {
                None => None,
                Some(r) => Some(r.probe(PROBE_TIMEOUT).await),
            }
        };
        let (db, redis) = tokio::join!(db, redis);
        let mut b = Backends::default();
        for (name, probe) in [("postgres", db), ("redis", redis)] {
            if let Some(result) = probe {
                b.dependencies
                    .insert(name.to_owned(), if result.is_ok() { "up" } else { "down" });
                if let Err(e) = result {
                    b.errors.insert(name.to_owned(), e);
                }
            }
        }
        b
    }

    /// A report from backend states and the loops' heartbeats as of now.
    fn assemble(&self, backends: Backends) -> ReadyReport {
        let Backends {
            dependencies: mut deps,
            mut errors,
        } = backends;
        let word = |up: bool| if up { "up" } else { "down" };
        for (name, up) in self.heartbeats.snapshot() {
            metrics::gauge!("exchange_consumer_up", "service" => self.service, "consumer" => name.clone())
                .set(if up { 1.0 } else { 0.0 });
            deps.insert(name, word(up));
        }
        let ok = deps.values().all(|v| *v == "up");
        metrics::gauge!("exchange_ready", "service" => self.service).set(if ok {
            1.0
        } else {
            0.0
        });
        // After `ok`: a replica that is down or behind sends reads to the
        // primary, it does not make the service unready.
        let mut non_critical = Vec::new();
        if let Some(replica) = self.reads.as_ref().and_then(|r| r.replica_report()) {
            deps.insert(REPLICA_DEPENDENCY.to_owned(), replica.state);
            if let Some(e) = replica.error {
                errors.insert(REPLICA_DEPENDENCY.to_owned(), e);
            }
            non_critical.push(REPLICA_DEPENDENCY);
        }
        ReadyReport {
            ok,
            dependencies: deps,
            errors,
            non_critical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_answers_from_the_latest_probe() {
        let r = Readiness::new("test", None, None);
        let beat = r
            .heartbeats
            .register("eventStreamConsumer", "s", Duration::from_secs(5));
        let answers: Vec<ReadyReport> =
            futures_util::future::join_all((0..50).map(|_| r.current())).await;
        assert!(answers.iter().all(|a| !a.ok));
        assert_eq!(r.probes(), 1, "one probe for every caller");
        // Heartbeats are read as of now, the backends from the probe.
        beat.beat();
        assert!(r.current().await.ok);
        assert_eq!(r.probes(), 1);
        // A refresh (the refresher's) is what the next answers use.
        r.check().await;
        assert_eq!(r.probes(), 2);
        r.current().await;
        assert_eq!(r.probes(), 2);
    }

    #[test]
    fn heartbeat_lifecycle() {
        let hb = Heartbeats::default();
        let a = hb.register("eventStreamConsumer", "s1", Duration::from_secs(5));
        assert!(!hb.snapshot()["eventStreamConsumer"]);
        a.beat();
        assert!(hb.snapshot()["eventStreamConsumer"]);
        let b = hb.register("eventStreamConsumer", "s2", Duration::from_millis(0));
        assert!(
            !hb.snapshot()["eventStreamConsumer"],
            "one stale instance makes the loop down"
        );
        b.down("halted");
        drop(b);
    }
}
