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

/// A consumer that read entries and died before acking them, restarted under
/// the same (stable) name, handles them at once, without waiting for the
/// claim idle time; a poison entry among them still reaches the DLQ after
/// `deliveries_max` deliveries, counted across restarts, and is not re-read
/// in a loop by the restart pass.
#[tokio::test]
async fn restart_under_the_same_name_rereads_its_own_pending_entries_at_once() {
    let r = redis();
    let stream = r.events_stream();
    let dlq = format!("{stream}:dlq");
    let mut conn = r.conn();
    let good: String = conn.xadd(&stream, "*", &[("kind", "good")]).await.unwrap();
    let poison: String = conn
        .xadd(&stream, "*", &[("kind", "poison")])
        .await
        .unwrap();
    // Far longer than this test may take: anything handled here was not
    // reclaimed by XAUTOCLAIM but re-read by the restart.
    let slow_claim = |consumer: &str| {
        let mut o = fast(&stream, consumer);
        o.claim_idle = Duration::from_secs(60);
        o
    };

    // Incarnation 1 reads both entries and "crashes" before acking.
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let crashing = PerEntry(move |e: StreamEntry| {
        let _ = got_tx.send(e.id);
        std::future::pending::<Result<(), String>>()
    });
    let first = tokio::spawn(run_consumer(
        r.clone(),
        Heartbeats::default(),
        slow_claim("matching-1"),
        crashing,
        Shutdown::new(),
    ));
    let received = tokio::time::timeout(Duration::from_secs(5), got_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received, good, "entries are handled in order");
    first.abort();
    let _ = first.await;
    assert_eq!(pending_count(&r, &stream, "clearing").await, 2);

    // Incarnation 2, same name: handles the good entry right away; the
    // poison one fails (delivery 2 of 3) and stays pending.
    let runs = |seen: Seen, attempts: Arc<Mutex<Vec<u64>>>| {
        PerEntry(move |e: StreamEntry| {
            let result = if e.field_str("kind") == Some("poison") {
                attempts.lock().unwrap().push(e.deliveries);
                Err(format!("cannot decode entry {}", e.id))
            } else {
                seen.lock().unwrap().push(e);
                Ok(())
            };
            std::future::ready(result)
        })
    };
    let seen: Seen = Arc::default();
    let attempts: Arc<Mutex<Vec<u64>>> = Arc::default();
    let started = std::time::Instant::now();
    let shutdown = Shutdown::new();
    let second = tokio::spawn(run_consumer(
        r.clone(),
        Heartbeats::default(),
        slow_claim("matching-1"),
        runs(seen.clone(), attempts.clone()),
        shutdown.clone(),
    ));
    eventually("the restart handles the pending entries", async || {
        pending_count(&r, &stream, "clearing").await == 1 && attempts.lock().unwrap().len() == 1
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "handled after {took:?}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].id, good);
        assert_eq!(seen[0].deliveries, 2, "the crashed read counted as one");
    }
    // The failed poison entry is left to XAUTOCLAIM, not re-read in a loop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*attempts.lock().unwrap(), vec![2]);
    let dlq_len: usize = r.conn().xlen(&dlq).await.unwrap();
    assert_eq!(dlq_len, 0);
    shutdown.trigger();
    second.await.unwrap();

    // Incarnation 3, same name: delivery 3 of 3 fails, so the poison entry
    // goes to the DLQ and is acknowledged; it does not come back.
    let attempts: Arc<Mutex<Vec<u64>>> = Arc::default();
    let shutdown = Shutdown::new();
    let third = tokio::spawn(run_consumer(
        r.clone(),
        Heartbeats::default(),
        slow_claim("matching-1"),
        runs(Arc::default(), attempts.clone()),
        shutdown.clone(),
    ));
    eventually("the poison entry reaches the DLQ", async || {
        let len: usize = r.conn().xlen(&dlq).await.unwrap();
        len == 1
    })
    .await;
    assert_eq!(pending_count(&r, &stream, "clearing").await, 0);
    let entries: redis::streams::StreamRangeReply = r.conn().xrange_all(&dlq).await.unwrap();
    let dead = &entries.ids[0];
    let text = |k: &str| redis::from_redis_value::<String>(dead.map[k].clone()).unwrap();
    assert_eq!(text("dlq.id"), poison);
    assert_eq!(text("dlq.deliveries"), "3");
    assert_eq!(text("dlq.consumer"), "matching-1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        *attempts.lock().unwrap(),
        vec![3],
        "delivered once more, then dead-lettered"
    );
    shutdown.trigger();
    third.await.unwrap();
}

/// Entries pending under ANOTHER consumer name are not taken by a restart
/// pass (that replica may still be alive): only XAUTOCLAIM moves them, after
/// the claim idle time.
#[tokio::test]
async fn entries_of_another_consumer_wait_for_the_claim_idle_time() {
    let r = redis();
    let stream = r.events_stream();
    let mut conn = r.conn();
    let id: String = conn.xadd(&stream, "*", &[("n", "1")]).await.unwrap();
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stuck = PerEntry(move |e: StreamEntry| {
        let _ = got_tx.send(e.id);
        std::future::pending::<Result<(), String>>()
    });
    let a = tokio::spawn(run_consumer(
        r.clone(),
        Heartbeats::default(),
        fast(&stream, "a"),
        stuck,
        Shutdown::new(),
    ));
    tokio::time::timeout(Duration::from_secs(5), got_rx.recv())
        .await
        .unwrap()
        .unwrap();
    a.abort();
    let _ = a.await;

    let mut opts = fast(&stream, "b");
    opts.claim_idle = Duration::from_millis(1_500);
    let (seen, handler) = recording();
    let shutdown = Shutdown::new();
    let started = std::time::Instant::now();
    let b = tokio::spawn(run_consumer(
        r.clone(),
        Heartbeats::default(),
        opts,
        handler,
        shutdown.clone(),
    ));
    eventually("B reclaims the entry once idle", async || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_000),
        "taken before the claim idle time: {took:?}"
    );
    assert_eq!(seen.lock().unwrap()[0].id, id);
    shutdown.trigger();
    b.await.unwrap();
}

/// Records the size of every read it is handed.
struct BatchSizes(Arc<Mutex<Vec<usize>>>);

impl exchange_common::streams::Handler for BatchSizes {
    async fn handle(&self, entries: &[StreamEntry]) -> Vec<Result<(), String>> {
        self.0.lock().unwrap().push(entries.len());
        vec![Ok(()); entries.len()]
    }
}

/// With `linger`, a read that found a few entries is followed by a pause:
/// entries that arrive meanwhile are handed over together in the next
/// read instead of one read each.
#[tokio::test]
async fn linger_gathers_what_arrives_after_a_small_read_into_one_read() {
    let r = redis();
    let stream = r.events_stream();
    let mut conn = r.conn();
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let mut opts = fast(&stream, "c1");
    opts.linger = Duration::from_secs(1);
    let shutdown = Shutdown::new();
    let task = tokio::spawn(run_consumer(
        r.clone(),
        Heartbeats::default(),
        opts,
        BatchSizes(sizes.clone()),
        shutdown.clone(),
    ));
    let _: String = conn.xadd(&stream, "*", &[("n", "0")]).await.unwrap();
    eventually("the first entry is read", async || {
        !sizes.lock().unwrap().is_empty()
    })
    .await;
    // Within the linger that follows the one-entry read.
    for n in 1..=5 {
        let _: String = conn.xadd(&stream, "*", &[("n", n)]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("all six are read", async || {
        sizes.lock().unwrap().iter().sum::<usize>() == 6
    })
    .await;
    assert_eq!(*sizes.lock().unwrap(), vec![1, 5]);
    shutdown.trigger();
    task.await.unwrap();
}
