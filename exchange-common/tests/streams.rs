//! The consumer runtime against a real Redis (REDIS_URL).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use exchange_common::Shutdown;
use exchange_common::ready::Heartbeats;
use exchange_common::redis::Redis;
use exchange_common::streams::{ConsumerOptions, PerEntry, StreamEntry, run_consumer};
use redis::AsyncCommands as _;

fn redis() -> Redis {
    let url = std::env::var("REDIS_URL").expect(
        "REDIS_URL is not set: run scripts/test.sh or export REDIS_URL=redis://127.0.0.1:6379",
    );
    Redis::with_prefix(&url, &format!("test-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

fn fast(stream: &str, consumer: &str) -> ConsumerOptions {
    let mut o = ConsumerOptions::new("eventStreamConsumer", stream, "clearing", consumer);
    o.block = Duration::from_millis(100);
    o.claim_idle = Duration::from_millis(200);
    o.claim_interval = Duration::from_millis(50);
    o.deliveries_max = Some(3);
    o.retry_delay = Duration::from_millis(50);
    o
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn pending_count(r: &Redis, stream: &str, group: &str) -> usize {
    let reply: redis::streams::StreamPendingReply = r.conn().xpending(stream, group).await.unwrap();
    reply.count()
}

type Seen = Arc<Mutex<Vec<StreamEntry>>>;

#[allow(clippy::type_complexity)]
fn recording() -> (
    Seen,
    PerEntry<
        impl Fn(StreamEntry) -> std::future::Ready<Result<(), String>> + Send + Sync + 'static,
    >,
) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    (
        seen,
        PerEntry(move |e: StreamEntry| {
            s.lock().unwrap().push(e);
            std::future::ready(Ok(()))
        }),
    )
}

#[tokio::test]
async fn crash_before_ack_is_redelivered_to_another_consumer() {
    let r = redis();
    let stream = r.events_stream();
    let mut conn = r.conn();
    let id: String = conn.xadd(&stream, "*", &[("n", "1")]).await.unwrap();

    // Consumer A receives the entry and "crashes" before acknowledging.
    let (got_tx, mut got_rx) = tokio::sync::mpsc::channel::<String>(1);
    let a_handler = PerEntry(move |e: StreamEntry| {
        let got = got_tx.clone();
        async move {
            let _ = got.send(e.id).await;
            std::future::pending::<Result<(), String>>().await
        }
    });
    let a = tokio::spawn(run_consumer(
        r.clone(),
        Heartbeats::default(),
        fast(&stream, "a"),
        a_handler,
        Shutdown::new(),
    ));
    let received = tokio::time::timeout(Duration::from_secs(5), got_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received, id);
    a.abort();
    assert_eq!(pending_count(&r, &stream, "clearing").await, 1);

    // Consumer B reclaims it once idle and acknowledges it.
    let (seen, b_handler) = recording();
    let shutdown = Shutdown::new();
    let b = tokio::spawn(run_consumer(
        r.clone(),
        Heartbeats::default(),
        fast(&stream, "b"),
        b_handler,
        shutdown.clone(),
    ));
    eventually("B processes the reclaimed entry", async || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].id, id);
        assert_eq!(seen[0].field_str("n"), Some("1"));
        assert!(
            seen[0].deliveries >= 2,
            "a redelivery is counted: {}",
            seen[0].deliveries
        );
    }
    eventually("the entry is acknowledged", async || {
        pending_count(&r, &stream, "clearing").await == 0
    })
    .await;
    shutdown.trigger();
    b.await.unwrap();
}

#[tokio::test]
async fn poison_entry_goes_to_the_dlq_after_the_delivery_limit() {
    let r = redis();
    let stream = r.events_stream();
    let mut conn = r.conn();
    let poison: String = conn
        .xadd(&stream, "*", &[("kind", "poison")])
        .await
        .unwrap();
    let good: String = conn.xadd(&stream, "*", &[("kind", "good")]).await.unwrap();

    let attempts = Arc::new(Mutex::new(0u32));
    let done: Seen = Arc::default();
    let (a, d) = (attempts.clone(), done.clone());
    let handler = PerEntry(move |e: StreamEntry| {
        let result = if e.field_str("kind") == Some("poison") {
            *a.lock().unwrap() += 1;
            Err(format!("cannot decode entry {}", e.id))
        } else {
            d.lock().unwrap().push(e);
            Ok(())
        };
        std::future::ready(result)
    });
    let shutdown = Shutdown::new();
    let task = tokio::spawn(run_consumer(
        r.clone(),
        Heartbeats::default(),
        fast(&stream, "c1"),
        handler,
        shutdown.clone(),
    ));
    let dlq = format!("{stream}:dlq");
    eventually("the poison entry reaches the DLQ", async || {
        let len: usize = r.conn().xlen(&dlq).await.unwrap();
        len == 1
    })
    .await;
    assert_eq!(
        *attempts.lock().unwrap(),
        3,
        "delivered exactly deliveries_max times"
    );
    assert_eq!(
        done.lock()
            .unwrap()
            .iter()
            .map(|e| e.id.clone())
            .collect::<Vec<_>>(),
        vec![good]
    );
    let entries: redis::streams::StreamRangeReply = r.conn().xrange_all(&dlq).await.unwrap();
    let dead = &entries.ids[0];
    let text = |k: &str| redis::from_redis_value::<String>(dead.map[k].clone()).unwrap();
    assert_eq!(text("dlq.id"), poison);
    assert_eq!(text("dlq.error"), format!("cannot decode entry {poison}"));
    assert_eq!(text("dlq.deliveries"), "3");
    assert_eq!(
        text("kind"),
        "poison",
        "the original fields are kept for replay"
    );
    eventually("nothing stays pending", async || {
        pending_count(&r, &stream, "clearing").await == 0
    })
    .await;
    shutdown.trigger();
    task.await.unwrap();
}

#[tokio::test]
async fn group_is_recreated_after_the_stream_is_deleted() {
    let r = redis();
    let stream = r.events_stream();
    let (seen, handler) = recording();
    let heartbeats = Heartbeats::default();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(run_consumer(
        r.clone(),
        heartbeats.clone(),
        fast(&stream, "c1"),
        handler,
        shutdown.clone(),
    ));
    eventually("the loop reports up", async || {
        heartbeats.snapshot().get("eventStreamConsumer") == Some(&true)
    })
    .await;

    let mut conn = r.conn();
    let first: String = conn.xadd(&stream, "*", &[("n", "1")]).await.unwrap();
    eventually("first entry handled", async || {
        seen.lock().unwrap().len() == 1
    })
    .await;

    let _: () = conn.del(&stream).await.unwrap();
    let second: String = conn.xadd(&stream, "*", &[("n", "2")]).await.unwrap();
    eventually("entry after the deletion handled", async || {
        seen.lock().unwrap().len() == 2
    })
    .await;
    let ids: Vec<String> = seen.lock().unwrap().iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, vec![first, second]);
    shutdown.trigger();
    task.await.unwrap();
    assert_eq!(
        heartbeats.snapshot().get("eventStreamConsumer"),
        Some(&false),
        "a stopped loop is down"
    );
}
