//! Binance-style market streams of the marketdata service, against real
//! Postgres and Redis with real WebSocket and HTTP clients: the standard
//! "buffer diffs, fetch snapshot, drop u <= lastUpdateId" sync rebuilds the
//! REST book exactly; trade/aggTrade/kline/ticker fields; combined streams;
//! live SUBSCRIBE/UNSUBSCRIBE/LIST_SUBSCRIPTIONS. Event batches are
//! published the way matching does: stored, then added to `<prefix>:events`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use exchange_domain::event::EventBatch;
use exchange_domain::money::parse_units;
use exchange_domain::order::Side;
use serde_json::{Value, json};

mod support;
use support::*;

/// A Binance-style local book: price units → quantity units.
#[derive(Default, Debug, PartialEq)]
struct Book {
    last: u64,
    bids: BTreeMap<u128, u128>,
    asks: BTreeMap<u128, u128>,
}

fn units(v: &Value, scale: u8) -> u128 {
    let text = v.as_str().unwrap();
    // Binance pads to 8 places: trim what the scale does not hold.
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let frac = frac.trim_end_matches('0');
    let text = if frac.is_empty() {
        int.to_owned()
    } else {
        format!("{int}.{frac}")
    };
    parse_units(&text, scale).unwrap()
}

impl Book {
    fn from_rest(v: &Value) -> Self {
        let mut b = Book {
            last: v["seq"].as_u64().unwrap(),
            ..Book::default()
        };
        for (key, side) in [("bids", &mut b.bids), ("asks", &mut b.asks)] {
            for lv in v[key].as_array().unwrap() {
                side.insert(units(&lv[0], QUOTE_SCALE), units(&lv[1], BASE_SCALE));
            }
        }
        b
    }

    /// Applies a depthUpdate; `false` when it does not follow on.
    fn apply(&mut self, ev: &Value) -> bool {
        let (first, last) = (ev["U"].as_u64().unwrap(), ev["u"].as_u64().unwrap());
        if first != self.last + 1 {
            return false;
        }
        for (key, side) in [("b", &mut self.bids), ("a", &mut self.asks)] {
            for lv in ev[key].as_array().unwrap() {
                let (p, q) = (units(&lv[0], QUOTE_SCALE), units(&lv[1], BASE_SCALE));
                if q == 0 {
                    side.remove(&p);
                } else {
                    side.insert(p, q);
                }
            }
        }
        self.last = last;
        true
    }
}

/// The next message that is an event (not a `{"result","id"}` answer).
async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let v = recv_json(ws).await;
        if v.get("id").is_none() {
            return v;
        }
    }
}

/// Batch `seq` of the feed: level changes (every third batch changes none,
/// so events must fold empty batches), a trade every fifth.
fn feed_batch(seq: u64) -> EventBatch {
    let mut events = Vec::new();
    if !seq.is_multiple_of(3) {
        let p = 100 + seq % 7;
        events.push(level(Side::Buy, &format!("{p}.5"), &format!("0.{seq:04}")));
        events.push(level(
            Side::Sell,
            &format!("{}.25", p + 10),
            &format!("1.{seq}"),
        ));
        if seq.is_multiple_of(4) {
            events.push(level(Side::Buy, &format!("{}.5", 100 + (seq + 3) % 7), "0"));
        }
    }
    if seq.is_multiple_of(5) {
        events.push(trade(seq, Side::Sell, "105.5", "0.01"));
    }
    batch(seq, 1_700_000_000_000 + seq * 10, events)
}

#[tokio::test]
async fn binance_depth_sync_rebuilds_the_rest_book_exactly() {
    let (env, db, redis) = seeded().await;
    let svc = start(env, db, redis, &[]).await;
    for seq in 1..=10 {
        svc.publish(&feed_batch(seq)).await;
    }
    feeder_done(&svc, 10).await;

    // Two ways in: the raw stream path, and ccxt's way (/ws/<n> + SUBSCRIBE).
    let mut raw = svc.ws("/ws/btcusdt@depth", None).await.unwrap();
    let mut live = svc.ws("/ws/0", None).await.unwrap();
    send(
        &mut live,
        json!({"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms", "btcusdt@trade"], "id": 7}),
    )
    .await;
    assert_eq!(recv_json(&mut live).await, json!({"result": null, "id": 7}));
    send(&mut live, json!({"method": "LIST_SUBSCRIPTIONS", "id": 8})).await;
    let list = recv_json(&mut live).await;
    assert_eq!(list["id"], 8);
    let mut names: Vec<&str> = list["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["btcusdt@depth@100ms", "btcusdt@trade"]);
    // Our own protocol still works on the same socket.
    send(&mut live, json!({"op": "ping"})).await;
    assert_eq!(recv_json(&mut live).await, json!({"type": "pong"}));

    // The feed runs while the clients sync.
    const LAST: u64 = 80;
    let feeder = {
        let db = svc.db.clone();
        let redis = svc.redis.clone();
        tokio::spawn(async move {
            for seq in 11..=LAST {
                publish_batch(&db, &redis, &feed_batch(seq)).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let ((raw_book, raw_id, _), (live_book, live_id, mut trades)) = tokio::join!(
        binance_sync(&svc, "raw", &mut raw, 3, LAST),
        binance_sync(&svc, "live", &mut live, 6, LAST)
    );
    // The snapshots were taken mid-stream, so the sync steps mattered.
    assert!(raw_id > 10 && raw_id < LAST && live_id > 10 && live_id < LAST);
    feeder_done(&svc, LAST).await;
    let (_, rest) = svc.get("/api/v1/markets/BTC-USDT/depth?limit=1000").await;
    let want = Book::from_rest(&rest);
    // The last batch (LAST % 3 == 2: it changes levels) ends the stream.
    assert_eq!(want.last, LAST);
    assert_eq!(raw_book, want, "raw: rebuilt book differs from REST depth");
    assert_eq!(
        live_book, want,
        "live: rebuilt book differs from REST depth"
    );
    assert!(!want.bids.is_empty() && !want.asks.is_empty());
    feeder.await.unwrap();
    assert_eq!(LAST % 3, 2);

    // Trade events (live subscribed to btcusdt@trade).
    let want_ids: Vec<u64> = (11..=LAST).filter(|s| s % 5 == 0).collect();
    while trades.len() < want_ids.len() {
        let ev = next_event(&mut live).await;
        if ev["e"] == "trade" {
            trades.push(ev);
        }
    }
    let ids: Vec<u64> = trades.iter().map(|t| t["t"].as_u64().unwrap()).collect();
    assert_eq!(ids, want_ids);
    let t = &trades[0];
    assert_eq!(
        *t,
        json!({"e": "trade", "E": 1_700_000_000_150_u64, "s": "BTCUSDT", "t": 15, "p": "105.50000000",
               "q": "0.01000000", "T": 1_700_000_000_150_u64, "m": true, "M": true})
    );
}

/// Binance's sync procedure on `ws` until the book is at `last`: returns
/// the book, the snapshot's `lastUpdateId`, and the other events seen.
async fn binance_sync(
    svc: &Svc,
    name: &str,
    ws: &mut Ws,
    buffer_n: usize,
    last: u64,
) -> (Book, u64, Vec<Value>) {
    let mut others = Vec::new();
    // 1-2. Buffer events; 3. fetch a snapshot after a few.
    let mut pending = std::collections::VecDeque::new();
    while pending.len() < buffer_n {
        let ev = next_event(ws).await;
        if ev["e"] == "depthUpdate" {
            pending.push_back(ev);
        } else {
            others.push(ev);
        }
    }
    let (_, snap) = svc.get("/api/v1/markets/BTC-USDT/depth?limit=1000").await;
    let mut book = Book::from_rest(&snap);
    let id = book.last;
    // 4. Drop u <= lastUpdateId; 5. the first kept has U <= id+1 <= u;
    // 6. then each U is the previous u + 1.
    let mut first = true;
    while book.last < last {
        let ev = match pending.pop_front() {
            Some(ev) => ev,
            None => next_event(ws).await,
        };
        if ev["e"] != "depthUpdate" {
            others.push(ev);
            continue;
        }
        assert_eq!(ev["s"], "BTCUSDT");
        let (u_first, u_last) = (ev["U"].as_u64().unwrap(), ev["u"].as_u64().unwrap());
        assert!(u_first <= u_last, "{name}: {ev}");
        if u_last <= id {
            continue;
        }
        if first {
            assert!(u_first <= id + 1 && id < u_last, "{name}: {ev} after {id}");
            book.last = u_first - 1;
            first = false;
        }
        assert!(
            book.apply(&ev),
            "{name}: {ev} does not follow {}",
            book.last
        );
    }
    (book, id, others)
}

/// Waits until marketdata has applied batch `last`.
async fn feeder_done(svc: &Svc, last: u64) {
    for _ in 0..200 {
        let (_, d) = svc.get("/api/v1/markets/BTC-USDT/depth?limit=1").await;
        if d["seq"].as_u64() == Some(last) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("batch {last} not applied");
}

#[tokio::test]
async fn combined_streams_kline_ticker_and_errors() {
    let (env, db, redis) = seeded().await;
    let svc = start(env, db, redis, &["https://app.example.com"]).await;
    svc.publish(&batch(
        1,
        1_700_000_000_000,
        vec![level(Side::Buy, "100", "2"), level(Side::Sell, "101", "3")],
    ))
    .await;

    // Origin is checked as for /ws.
    assert!(
        svc.ws("/ws/btcusdt@trade", Some("https://evil.example.com"))
            .await
            .is_err()
    );
    assert!(
        svc.ws(
            "/stream?streams=btcusdt@trade",
            Some("https://evil.example.com")
        )
        .await
        .is_err()
    );
    // Unknown streams and symbols are refused at the handshake.
    for path in [
        "/ws/btcusdt@nope",
        "/ws/ethusdt@trade",
        "/stream?streams=btcusdt@depth@500ms",
    ] {
        let r = svc.http.get(svc.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
    }

    let mut ws = svc
        .ws(
            "/stream?streams=btcusdt@aggTrade/btcusdt@kline_1m",
            Some("https://app.example.com"),
        )
        .await
        .unwrap();
    send(
        &mut ws,
        json!({"method": "SUBSCRIBE", "params": ["btcusdt@ticker", "btcusdt@miniTicker"], "id": 1}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await, json!({"result": null, "id": 1}));
    send(
        &mut ws,
        json!({"method": "SUBSCRIBE", "params": ["btcusdt@bogus"], "id": 2}),
    )
    .await;
    let err = recv_json(&mut ws).await;
    assert_eq!(
        (err["id"].clone(), err["error"]["code"].clone()),
        (json!(2), json!(2)),
        "{err}"
    );
    send(&mut ws, json!({"method": "FOO", "id": 3})).await;
    assert_eq!(recv_json(&mut ws).await["error"]["code"], 2);

    let time = 1_700_000_000_000 + 61_000;
    svc.publish(&batch(
        2,
        time,
        vec![
            trade(41, Side::Buy, "101", "0.5"),
            level(Side::Sell, "101", "2.5"),
        ],
    ))
    .await;
    let mut got = BTreeMap::new();
    while got.len() < 4 {
        let v = recv_json(&mut ws).await;
        let stream = v["stream"]
            .as_str()
            .expect("combined messages are wrapped")
            .to_owned();
        got.insert(stream, v["data"].clone());
    }
    assert_eq!(
        got["btcusdt@aggTrade"],
        json!({"e": "aggTrade", "E": time, "s": "BTCUSDT", "a": 41, "p": "101.00000000", "q": "0.50000000",
               "f": 41, "l": 41, "T": time, "m": false, "M": true})
    );
    let k = &got["btcusdt@kline_1m"];
    assert_eq!(k["e"], "kline");
    let open = 1_700_000_040_000_u64; // 1_700_000_061_000 rounded down to the minute
    assert_eq!(
        k["k"],
        json!({"t": open, "T": open + 59_999, "s": "BTCUSDT", "i": "1m", "f": 41, "L": 41,
               "o": "101.00000000", "c": "101.00000000", "h": "101.00000000", "l": "101.00000000",
               "v": "0.50000000", "n": 1, "x": false, "q": "50.50000000",
               "V": "0.00000000", "Q": "0.00000000", "B": "0"})
    );
    let t = &got["btcusdt@ticker"];
    assert_eq!(t["e"], "24hrTicker");
    assert_eq!(t["s"], "BTCUSDT");
    assert_eq!(t["c"], "101.00000000");
    assert_eq!(t["Q"], "0.50000000");
    assert_eq!(t["b"], "100.00000000");
    assert_eq!(t["B"], "2.00000000");
    assert_eq!(t["a"], "101.00000000");
    assert_eq!(t["A"], "2.50000000");
    assert_eq!(t["v"], "0.50000000");
    assert_eq!(t["L"], 41);
    assert_eq!(
        got["btcusdt@miniTicker"],
        json!({"e": "24hrMiniTicker", "E": time, "s": "BTCUSDT", "c": "101.00000000", "o": "101.00000000",
               "h": "101.00000000", "l": "101.00000000", "v": "0.50000000", "q": "50.50000000"})
    );

    send(
        &mut ws,
        json!({"method": "UNSUBSCRIBE", "params": ["btcusdt@ticker", "btcusdt@miniTicker", "btcusdt@kline_1m"], "id": 4}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await, json!({"result": null, "id": 4}));
    send(&mut ws, json!({"method": "LIST_SUBSCRIPTIONS", "id": 5})).await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"result": ["btcusdt@aggTrade"], "id": 5})
    );
}
