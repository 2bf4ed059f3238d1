//! One process per consumer name (issue 19): two processes reading a
//! stream in the same group under the same `*_CONSUMER_NAME` silently
//! share one pending list and take each other's entries. Each consumer
//! loop therefore claims `(stream, group, name)` in Redis under an id of
//! its own and re-claims it every [`CLAIM_INTERVAL`] with `SET ... GET`:
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
//! claim expires after [`CLAIM_TTL`].

use std::time::Duration;

use crate::ready::Heartbeats;
use crate::redis::Redis;
use crate::shutdown::Shutdown;

pub const CLAIM_INTERVAL: Duration = Duration::from_secs(2);
pub const CLAIM_TTL: Duration = Duration::from_secs(30);
/// The `/ready` entry of the claims.
pub const LOOP_NAME: &str = "consumerName";
pub const CONFLICTS_METRIC: &str = "exchange_consumer_name_conflicts_total";

/// The claim's key: next to the stream (the same hash slot on a cluster).
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
    let id = format!("{}/{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let beat = heartbeats.register(LOOP_NAME, stream, CLAIM_INTERVAL * 3);
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
