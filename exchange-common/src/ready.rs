//! Readiness: dependency probes (each with a short timeout) and the
//! heartbeats of a service's consumer loops.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::redis::Redis;

/// How long one dependency probe may take before it counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

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
}

/// What `/ready` checks for one service.
#[derive(Clone, Debug)]
pub struct Readiness {
    pub service: &'static str,
    pub db: Option<PgPool>,
    pub redis: Option<Redis>,
    pub heartbeats: Heartbeats,
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
}

impl Readiness {
    pub fn new(service: &'static str, db: Option<PgPool>, redis: Option<Redis>) -> Self {
        Self {
            service,
            db,
            redis,
            heartbeats: Heartbeats::default(),
        }
    }

    /// Probes every dependency concurrently; updates `exchange_ready` and
    /// `exchange_consumer_up`.
    pub async fn check(&self) -> ReadyReport {
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
        let mut deps = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let word = |up: bool| if up { "up" } else { "down" };
        for (name, probe) in [("postgres", db), ("redis", redis)] {
            if let Some(result) = probe {
                deps.insert(name.to_owned(), word(result.is_ok()));
                if let Err(e) = result {
                    errors.insert(name.to_owned(), e);
                }
            }
        }
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
        ReadyReport {
            ok,
            dependencies: deps,
            errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
