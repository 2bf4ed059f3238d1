//! One process per consumer name (issue 19): two processes reading a
//! stream in the same group under the same `*_CONSUMER_NAME` silently
//! share one pending list and take each other's entries. Each consumer
//! loop therefore claims `(stream, group, name)` in Redis under its
//! process's id and re-claims it every [`CLAIM_INTERVAL`] with `SET ... GET`:
//! finding another id there means another live process wrote it since,
//! so both sides see the conflict within one interval of the second
//! start, log it as an error, count it in
//! `exchange_consumer_name_conflicts_total` (alert
//! `ExchangeConsumerNameConflict`) and show `consumerName` down in
//! `/ready` until the other process is gone.
//!
//! The first claim of a loop overwrites without looking: a process
//! restarted under its own name (`kill -9` and restart, a StatefulSet pod)
//! finds its dead predecessor's id there, which is no conflict. A dead
//! claim expires after [`CLAIM_TTL`]. A Redis user not allowed the claim's
//! `SET` (an ACL from before it: deploy/prod/redis/users-acl.sh grants it)
//! is logged once as an error and the check is skipped, rather than keeping
//! the service unready.

use std::time::Duration;

use crate::ready::Heartbeats;
use crate::redis::Redis;
use crate::shutdown::Shutdown;

pub const CLAIM_INTERVAL: Duration = Duration::from_secs(2);
pub const CLAIM_TTL: Duration = Duration::from_secs(30);
/// The `/ready` entry of the claims.
pub const LOOP_NAME: &str = "consumerName";
pub const CONFLICTS_METRIC: &str = "exchange_consumer_name_conflicts_total";

/// This process's id in every claim it makes.
static PROCESS_ID: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("{}/{}", std::process::id(), uuid::Uuid::new_v4().simple())
});
/// Claims made by this process (their `/ready` instance names).
static CLAIMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The claim's key, beside the stream's (in its hash slot on a cluster
/// when the stream's name has a hash tag, as the order streams do; a single
/// key either way).
pub fn claim_key(stream: &str, group: &str, consumer: &str) -> String {
    format!("{stream}:consumer:{group}:{consumer}")
}

/// What a re-claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours, or nobody's (expired).
    Held,
    /// Another process wrote its id since our last claim.
    Conflict { other: String },
}

/// Judges the value a `SET ... GET` replaced.
pub fn judge(previous: Option<String>, mine: &str, first: bool) -> Claim {
    match previous {
        Some(other) if other != mine && !first => Claim::Conflict { other },
        _ => Claim::Held,
    }
}

/// Claims the name until `shutdown` (spawns a task).
pub fn spawn_claim(
    redis: Redis,
    heartbeats: &Heartbeats,
    stream: &str,
    group: &str,
    consumer: &str,
    shutdown: Shutdown,
) {
    let key = claim_key(stream, group, consumer);
    // The process's id, not the loop's: a loop that ends and starts again in
    // one process (a matching market handed back) is no conflict, even if
    // the old loop's last claim lands after the new one's first.
    let id = PROCESS_ID.clone();
    // Each loop its own `/ready` instance, so that an ending loop's
    // `forget` cannot remove a newer loop's entry on the same stream.
    let instance = format!(
        "{stream}#{}",
        CLAIMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let beat = heartbeats.register(LOOP_NAME, &instance, CLAIM_INTERVAL * 3);
    let (stream, group, consumer) = (stream.to_owned(), group.to_owned(), consumer.to_owned());
    tokio::spawn(async move {
        let ttl_ms = u64::try_from(CLAIM_TTL.as_millis()).unwrap_or(u64::MAX);
        let mut first = true;
        while !shutdown.is_triggered() {
            let mut conn = redis.conn();
            let replaced: redis::RedisResult<Option<String>> = redis::cmd("SET")
                .arg(&key)
                .arg(&id)
                .arg("PX")
                .arg(ttl_ms)
                .arg("GET")
                .query_async(&mut conn)
                .await;
            match replaced {
                Ok(previous) => match judge(previous, &id, first) {
                    Claim::Held => {
                        first = false;
                        beat.beat();
                    }
                    Claim::Conflict { other } => {
                        tracing::error!(
                            stream,
                            group,
                            consumer,
                            other_process = other,
                            "another live process reads this stream under the same consumer name: give each replica its own *_CONSUMER_NAME"
                        );
                        metrics::counter!(CONFLICTS_METRIC, "stream" => stream.clone(), "group" => group.clone())
                            .increment(1);
                        beat.down("consumer name used by another process");
                    }
                },
                Err(e) if e.to_string().contains("NOPERM") => {
                    if first {
                        tracing::error!(stream, error = %e, "the Redis user may not claim the consumer name: duplicate names go undetected (grant SET and DEL on the claim key: deploy/prod/redis/users-acl.sh)");
                        first = false;
                    }
                    beat.beat();
                }
                Err(e) => tracing::warn!(stream, error = %e, "claiming the consumer name failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(CLAIM_INTERVAL) => {}
                () = shutdown.wait() => {}
            }
        }
        // Stopping: leave the name to a successor at once.
        beat.forget();
        let mut conn = redis.conn();
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&key).query_async(&mut conn).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_another_id_written_after_our_first_claim_is_a_conflict() {
        assert_eq!(judge(None, "a", true), Claim::Held);
        assert_eq!(judge(None, "a", false), Claim::Held, "expired: nobody's");
        assert_eq!(judge(Some("a".into()), "a", false), Claim::Held);
        assert_eq!(
            judge(Some("dead".into()), "a", true),
            Claim::Held,
            "a restarted process finds its predecessor's id"
        );
        assert_eq!(
            judge(Some("b".into()), "a", false),
            Claim::Conflict { other: "b".into() }
        );
    }
}
