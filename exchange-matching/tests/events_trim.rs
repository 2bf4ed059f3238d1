//! Trimming of the events stream against a real Redis: entries below every
//! consumer group's position go, entries some group has not passed (pending
//! or undelivered) stay; a group that lags past the length cap is cut and
//! reported; the matching service runs the trim on its own.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use exchange_common::Shutdown;
use exchange_common::redis::Redis;
use exchange_common::testing::random_name;
use exchange_matching::events_trim::{StreamId, trim};

fn redis() -> Redis {
    let url = std::env::var("REDIS_URL").expect("REDIS_URL (a real Redis) is required");
    Redis::with_prefix(&url, &random_name("trim-")).unwrap()
}

async fn add(redis: &Redis, stream: &str, n: usize) -> Vec<String> {
    let mut conn = redis.conn();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id: String = redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("batch")
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

async fn create_group(redis: &Redis, stream: &str, group: &str, at: &str) {
    let mut conn = redis.conn();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg(at)
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Reads `n` new entries into `group` (as consumer `c`); returns their ids.
async fn read(redis: &Redis, stream: &str, group: &str, n: usize) -> Vec<String> {
    let mut conn = redis.conn();
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("c")
        .arg("COUNT")
        .arg(n)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    reply
        .keys
        .into_iter()
        .flat_map(|k| k.ids)
        .map(|e| e.id)
        .collect()
}

async fn ack(redis: &Redis, stream: &str, group: &str, ids: &[String]) {
    let mut conn = redis.conn();
    let _: u64 = redis::cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(ids)
        .query_async(&mut conn)
        .await
        .unwrap();
}

async fn kept(redis: &Redis, stream: &str) -> Vec<String> {
    let mut conn = redis.conn();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    reply.ids.into_iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn only_entries_every_group_has_passed_are_trimmed() {
    let redis = redis();
    let stream = redis.events_stream();
    create_group(&redis, &stream, "clearing", "0").await;
    create_group(&redis, &stream, "marketdata-a", "0").await;
    let ids = add(&redis, &stream, 20).await;

    // clearing: read 10, acknowledged the first 5 (6..10 still pending).
    let got = read(&redis, &stream, "clearing", 10).await;
    ack(&redis, &stream, "clearing", &got[..5]).await;
    // marketdata-a: read and acknowledged 15.
    let got = read(&redis, &stream, "marketdata-a", 15).await;
    ack(&redis, &stream, "marketdata-a", &got).await;

    let o = trim(&redis, &stream, 1_000_000).await.unwrap();
    assert_eq!(o.trimmed_passed, 5, "{o:?}");
    assert_eq!(o.trimmed_by_cap, 0);
    assert!(o.stale_groups.is_empty());
    assert_eq!(
        kept(&redis, &stream).await,
        ids[5..],
        "clearing's oldest pending entry and all after it are kept"
    );

    // The pending entries can still be claimed and are whole.
    let mut conn = redis.conn();
    let claimed: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(&stream)
        .arg("clearing")
        .arg("c2")
        .arg(0)
        .arg("0-0")
        .query_async(&mut conn)
        .await
        .unwrap();
    let claimed: Vec<String> = claimed.claimed.into_iter().map(|e| e.id).collect();
    assert_eq!(claimed, ids[5..10]);
    ack(&redis, &stream, "clearing", &claimed).await;

    // clearing catches up fully; marketdata-a is now the one behind (at 15).
    let rest = read(&redis, &stream, "clearing", 100).await;
    ack(&redis, &stream, "clearing", &rest).await;
    let o = trim(&redis, &stream, 1_000_000).await.unwrap();
    assert_eq!(o.trimmed_passed, 9, "{o:?}");
    assert_eq!(
        kept(&redis, &stream).await,
        ids[14..],
        "entries marketdata-a has not read (and its last delivered one) are kept"
    );
    println!(
        "20 entries, groups at pending #6 and delivered #15: kept #6..#20; then at #20 and #15: kept #15..#20"
    );
}

#[tokio::test]
async fn a_group_that_never_moves_is_cut_past_the_cap_and_reported() {
    let redis = redis();
    let stream = redis.events_stream();
    let before = add(&redis, &stream, 5).await;
    // A replica that created its group (at `$`) and died.
    create_group(&redis, &stream, "marketdata-dead", "$").await;
    create_group(&redis, &stream, "clearing", "$").await;
    let ids = add(&redis, &stream, 50).await;
    let got = read(&redis, &stream, "clearing", 100).await;
    ack(&redis, &stream, "clearing", &got).await;

    // Within the cap: the dead group holds everything after its position.
    let o = trim(&redis, &stream, 100).await.unwrap();
    assert_eq!(o.trimmed_passed, 4, "{o:?}");
    assert_eq!(o.len, 51);
    assert!(o.stale_groups.is_empty());
    assert_eq!(kept(&redis, &stream).await[0], before[4]);

    // Past the cap: cut to it, and the dead group is named.
    let o = trim(&redis, &stream, 20).await.unwrap();
    assert_eq!(o.trimmed_by_cap, 31, "{o:?}");
    assert_eq!(o.len, 20);
    assert_eq!(o.stale_groups, ["marketdata-dead"]);
    assert_eq!(kept(&redis, &stream).await, ids[30..]);

    // Once deleted (RUNBOOK), it holds nothing back any more.
    let mut conn = redis.conn();
    let _: u64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&stream)
        .arg("marketdata-dead")
        .query_async(&mut conn)
        .await
        .unwrap();
    let o = trim(&redis, &stream, 20).await.unwrap();
    assert_eq!(o.trimmed_passed, 19, "{o:?}");
    assert_eq!(o.len, 1, "only clearing's last delivered entry is left");
    assert_eq!(
        StreamId::parse(&kept(&redis, &stream).await[0]),
        StreamId::parse(&ids[49])
    );
}

#[tokio::test]
async fn without_groups_only_the_cap_applies() {
    let redis = redis();
    let stream = redis.events_stream();
    let o = trim(&redis, &stream, 10).await.unwrap();
    assert_eq!(o, Default::default(), "a missing stream is fine");
    let ids = add(&redis, &stream, 15).await;
    let o = trim(&redis, &stream, 100).await.unwrap();
    assert_eq!((o.trimmed_passed, o.trimmed_by_cap, o.len), (0, 0, 15));
    let o = trim(&redis, &stream, 10).await.unwrap();
    assert_eq!((o.trimmed_passed, o.trimmed_by_cap, o.len), (0, 5, 10));
    assert_eq!(kept(&redis, &stream).await, ids[5..]);
}

#[tokio::test]
async fn the_matching_service_trims_the_events_stream_on_its_own() {
    let env = exchange_common::testing::test_env().await;
    let redis = Redis::with_prefix(&env.redis_url, &env.redis_prefix).unwrap();
    let stream = redis.events_stream();
    create_group(&redis, &stream, "clearing", "$").await;
    let ids = add(&redis, &stream, 30).await;
    let got = read(&redis, &stream, "clearing", 20).await;
    ack(&redis, &stream, "clearing", &got).await;

    let mut config = env.config.clone();
    config.matching.events_stream_trim_interval = Duration::from_millis(200);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(exchange_matching::run(
        Arc::new(config),
        exchange_matching::Listeners { http: listener },
        shutdown.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = kept(&redis, &stream).await;
        if now.len() == 11 {
            assert_eq!(now, ids[19..], "kept from clearing's last delivered entry");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not trimmed: {} entries",
            now.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
}
