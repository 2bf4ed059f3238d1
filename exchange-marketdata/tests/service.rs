//! The marketdata service against real Postgres and Redis, with real
//! WebSocket and HTTP clients. Event batches are published the way matching
//! does: stored in `event_batches`, then added to `<prefix>:events`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exchange_common::Shutdown;
use exchange_common::testing::{TestMarket, seed_market};
use exchange_domain::event::{Event, EventBatch};
use exchange_domain::money::parse_units;
use exchange_domain::order::Side;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message};

mod support;
use support::*;

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

impl Svc {
    /// A client whose socket buffers little (4 KiB asked; the kernel
    /// doubles it), so not reading backs up onto the server quickly rather
    /// than into megabytes of kernel buffer.
    async fn ws_small_buffer(&self) -> Ws {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(self.addr).await.unwrap();
        let url = format!("ws://{}/ws", self.addr);
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
        ws
    }

    /// As matching does: stores `batches`, then adds them to
    /// `<prefix>:events` in one pipeline.
    async fn publish_all(&self, batches: &[EventBatch]) {
        store_batches(&self.db, batches).await;
        let texts: Vec<String> = batches
            .iter()
            .map(|b| serde_json::to_string(b).unwrap())
            .collect();
        self.xadd_texts(&texts).await;
    }

    /// Adds batches already encoded as JSON.
    async fn xadd_texts(&self, texts: &[String]) {
        let mut pipe = redis::pipe();
        for t in texts {
            pipe.xadd(self.redis.events_stream(), "*", &[("batch", t)])
                .ignore();
        }
        let () = pipe.query_async(&mut self.redis.conn()).await.unwrap();
    }
}

/// A local order book rebuilt from snapshot + deltas, keyed by price units.
#[derive(Default, Debug, PartialEq)]
struct LocalBook {
    seq: u64,
    bids: BTreeMap<u128, String>,
    asks: BTreeMap<u128, String>,
}

impl LocalBook {
    fn apply(&mut self, msg: &Value) {
        for (key, side) in [("bids", &mut self.bids), ("asks", &mut self.asks)] {
            for lv in msg[key].as_array().unwrap() {
                let p = lv[0].as_str().unwrap();
                let q = lv[1].as_str().unwrap();
                let units = parse_units(p, QUOTE_SCALE).unwrap();
                if q == "0" {
                    side.remove(&units);
                } else {
                    side.insert(units, q.to_owned());
                }
            }
        }
        self.seq = msg["seq"].as_u64().unwrap();
    }

    fn as_rest(&self) -> Value {
        let fmt = |p: &u128| exchange_domain::money::format_units(*p, QUOTE_SCALE);
        json!({
            "seq": self.seq,
            "bids": self.bids.iter().rev().map(|(p, q)| json!([fmt(p), q])).collect::<Vec<_>>(),
            "asks": self.asks.iter().map(|(p, q)| json!([fmt(p), q])).collect::<Vec<_>>(),
        })
    }
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn depth_snapshot_then_deltas_rebuild_the_rest_book_and_trades_klines_ticker_follow() {
    let (env, db, redis) = seeded().await;
    let svc = start(env, db, redis, &[]).await;
    let t0 = exchange_marketdata::kline::Interval::M1.open_time(now_ms());
    svc.publish(&batch(
        1,
        t0,
        vec![
            level(Side::Buy, "49990", "0.5"),
            level(Side::Buy, "49980", "1"),
            level(Side::Sell, "50010", "0.3"),
        ],
    ))
    .await;
    eventually("seq 1 applied", async || {
        let (_, d) = svc.get("/api/v1/markets/BTC-USDT/depth").await;
        (d["seq"] == 1).then_some(())
    })
    .await;

    let mut ws = svc.ws("/ws", None).await.unwrap();
    let channels = json!([
        "depth:BTC-USDT",
        "trades:BTC-USDT",
        "kline:1m:BTC-USDT",
        "ticker:BTC-USDT"
    ]);
    send(&mut ws, json!({"op": "subscribe", "channels": channels})).await;
    let sub = recv_json(&mut ws).await;
    assert_eq!(sub, json!({"type": "subscribed", "channels": channels}));
    let snap = recv_json(&mut ws).await;
    assert_eq!(snap["channel"], "depth:BTC-USDT");
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["seq"], 1);
    assert_eq!(snap["bids"], json!([["49990", "0.5"], ["49980", "1"]]));
    let mut book = LocalBook::default();
    book.apply(&snap);

    // seq 2: a resting bid; 3: an aggressive buy trades 0.1 and 0.2 at 50010
    // (level removed); 4: a rejected command (no events); 5: sells hit bids.
    let b = [
        batch(2, t0 + 1_000, vec![level(Side::Buy, "49995.5", "0.25")]),
        batch(
            3,
            t0 + 2_000,
            vec![
                trade(1, Side::Buy, "50010", "0.1"),
                trade(2, Side::Buy, "50010", "0.2"),
                level(Side::Sell, "50010", "0"),
                level(Side::Sell, "50020", "2"),
            ],
        ),
        batch(4, t0 + 3_000, vec![]),
        batch(
            5,
            t0 + 4_000,
            vec![
                trade(3, Side::Sell, "49995.5", "0.25"),
                level(Side::Buy, "49995.5", "0"),
                trade(4, Side::Sell, "49990", "0.05"),
                level(Side::Buy, "49990", "0.45"),
            ],
        ),
    ];
    for x in &b {
        svc.publish(x).await;
    }
    let mut trades = Vec::new();
    let mut last_kline = Value::Null;
    let mut last_ticker = Value::Null;
    while book.seq < 5 {
        let m = recv_json(&mut ws).await;
        match m["type"].as_str().unwrap() {
            "delta" => {
                assert_eq!(
                    m["seq"].as_u64().unwrap(),
                    book.seq + 1,
                    "consecutive seq: {m}"
                );
                book.apply(&m);
            }
            "trade" => trades.push(m["data"].clone()),
            "kline" => last_kline = m,
            "ticker" => last_ticker = m,
            other => panic!("unexpected {other}: {m}"),
        }
    }
    // The trades/kline/ticker of seq 5 are published right after its delta.
    while trades.len() < 4
        || last_ticker["data"]["volume"] != "0.6"
        || last_kline["data"]["volume"] != "0.6"
    {
        let m = recv_json(&mut ws).await;
        match m["type"].as_str().unwrap() {
            "trade" => trades.push(m["data"].clone()),
            "kline" => last_kline = m,
            "ticker" => last_ticker = m,
            other => panic!("unexpected {other}: {m}"),
        }
    }

    let (status, rest) = svc.get("/api/v1/markets/BTC-USDT/depth?limit=1000").await;
    assert_eq!(status, 200);
    assert_eq!(rest, book.as_rest(), "local book equals REST depth exactly");
    assert_eq!(
        rest,
        json!({"seq": 5, "bids": [["49990", "0.45"], ["49980", "1"]], "asks": [["50020", "2"]]})
    );
    let (_, top) = svc.get("/api/v1/markets/BTC-USDT/depth?limit=1").await;
    assert_eq!(top["bids"], json!([["49990", "0.45"]]));

    assert_eq!(
        trades[0],
        json!({"id": 1, "price": "50010", "quantity": "0.1", "taker_side": "buy", "time": t0 + 2_000})
    );
    assert_eq!(
        trades
            .iter()
            .map(|t| t["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let (_, rest_trades) = svc.get("/api/v1/markets/BTC-USDT/trades?limit=2").await;
    assert_eq!(rest_trades, json!([trades[2], trades[3]]));

    let candle = json!({"open_time": t0, "open": "50010", "high": "50010", "low": "49990",
        "close": "49990", "volume": "0.6"});
    assert_eq!(last_kline["channel"], "kline:1m:BTC-USDT");
    assert_eq!(last_kline["data"], candle);
    let klines = eventually("1m kline stored", async || {
        let (status, k) = svc
            .get("/api/v1/markets/BTC-USDT/klines?interval=1m&limit=10")
            .await;
        assert_eq!(status, 200);
        (k.as_array().unwrap().last() == Some(&candle)).then_some(k)
    })
    .await;
    assert_eq!(klines.as_array().unwrap().len(), 1);
    let (_, day) = svc.get("/api/v1/markets/BTC-USDT/klines?interval=1d").await;
    assert_eq!(day[0]["volume"], "0.6");

    // quote volume: 0.1×50010 + 0.2×50010 + 0.25×49995.5 + 0.05×49990
    let ticker = json!({"last": "49990", "open": "50010", "high": "50010", "low": "49990",
        "volume": "0.6", "quote_volume": "30001.375", "change_percent": "-0.04"});
    assert_eq!(last_ticker["channel"], "ticker:BTC-USDT");
    assert_eq!(last_ticker["data"], ticker);
    let (_, rest_ticker) = svc.get("/api/v1/markets/BTC-USDT/ticker").await;
    assert_eq!(rest_ticker, ticker);

    // Unsubscribe stops the flow; a resubscribe gets a fresh snapshot.
    send(
        &mut ws,
        json!({"op": "unsubscribe", "channels": ["trades:BTC-USDT"]}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await["type"], "unsubscribed");
    send(
        &mut ws,
        json!({"op": "subscribe", "channels": ["depth:BTC-USDT"]}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribed");
    let again = recv_json(&mut ws).await;
    assert_eq!(
        (again["type"].as_str(), again["seq"].as_u64()),
        (Some("snapshot"), Some(5))
    );
}

/// Candles are written on an interval, not after every read: one with no
/// traffic after it must still reach Postgres (and REST) promptly.
#[tokio::test]
async fn a_lone_trade_batch_reaches_rest_klines_within_a_second() {
    let (env, db, redis) = seeded().await;
    let svc = start(env, db, redis, &[]).await;
    let t0 = exchange_marketdata::kline::Interval::M1.open_time(now_ms());
    svc.publish(&batch(
        1,
        t0 + 500,
        vec![trade(1, Side::Buy, "50000", "0.25")],
    ))
    .await;
    let published = Instant::now();
    let candle = json!({"open_time": t0, "open": "50000", "high": "50000", "low": "50000",
        "close": "50000", "volume": "0.25"});
    loop {
        let (status, k) = svc.get("/api/v1/markets/BTC-USDT/klines?interval=1m").await;
        assert_eq!(status, 200);
        if k == json!([candle]) {
            break;
        }
        assert!(
            published.elapsed() < Duration::from_secs(1),
            "candle not in /klines 1 s after its batch (interval {:?}): {k}",
            exchange_marketdata::KLINE_WRITE_INTERVAL
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bad_requests_get_codes() {
    let (env, db, redis) = seeded().await;
    let svc = start(env, db, redis, &[]).await;
    for (path, status, code) in [
        ("/api/v1/markets/ETH-USDT/depth", 404, "MARKET_NOT_FOUND"),
        ("/api/v1/markets/btc-usdt/ticker", 404, "MARKET_NOT_FOUND"),
        (
            "/api/v1/markets/BTC-USDT/depth?limit=0",
            400,
            "INVALID_LIMIT",
        ),
        (
            "/api/v1/markets/BTC-USDT/depth?limit=1001",
            400,
            "INVALID_LIMIT",
        ),
        (
            "/api/v1/markets/BTC-USDT/trades?limit=abc",
            400,
            "INVALID_LIMIT",
        ),
        (
            "/api/v1/markets/BTC-USDT/klines?interval=2m",
            400,
            "INVALID_INTERVAL",
        ),
        ("/api/v1/markets/BTC-USDT/klines", 400, "INVALID_INTERVAL"),
        (
            "/api/v1/markets/BTC-USDT/klines?interval=1m&limit=5000",
            400,
            "INVALID_LIMIT",
        ),
    ] {
        let (s, body) = svc.get(path).await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    // An empty market answers with an empty book at seq 0.
    let (s, body) = svc.get("/api/v1/markets/BTC-USDT/depth").await;
    assert_eq!((s, body), (200, json!({"seq": 0, "bids": [], "asks": []})));
    let (_, t) = svc.get("/api/v1/markets/BTC-USDT/ticker").await;
    assert_eq!(t["change_percent"], "0");

    let mut ws = svc.ws("/ws", None).await.unwrap();
    for (msg, code) in [
        (
            json!({"op": "subscribe", "channels": ["depth:ETH-USDT"]}),
            "MARKET_NOT_FOUND",
        ),
        (
            json!({"op": "subscribe", "channels": ["book:BTC-USDT"]}),
            "INVALID_CHANNEL",
        ),
        (
            json!({"op": "subscribe", "channels": []}),
            "INVALID_CHANNEL",
        ),
        (json!({"op": "dance"}), "INVALID_OP"),
        (json!("nonsense"), "INVALID_MESSAGE"),
        (
            json!({"op": "subscribe", "channels": vec!["depth:BTC-USDT"; 40]}),
            "TOO_MANY_CHANNELS",
        ),
    ] {
        send(&mut ws, msg.clone()).await;
        let reply = recv_json(&mut ws).await;
        assert_eq!(reply["type"], "error", "{msg}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{msg}: {reply}");
    }
    // Too many subscriptions on one connection: 8 markets × 9 channels > 64.
    let mut all = Vec::new();
    for n in 0..8 {
        let asset = format!("X{n}");
        let market = TestMarket {
            qty_step: "0.01",
            min_qty: "0.01",
            min_notional: "0",
            maker_fee: "0",
            taker_fee: "0",
            ..TestMarket::new(&asset, 2, "USDT", 6)
        };
        seed_market(&svc.db, &market).await;
        for kind in [
            "trades",
            "ticker",
            "kline:1m",
            "kline:5m",
            "kline:15m",
            "kline:1h",
            "kline:4h",
            "kline:1d",
            "depth",
        ] {
            all.push(format!("{kind}:{asset}-USDT"));
        }
    }
    let mut accepted = 0;
    let mut refusal = Value::Null;
    for chunk in all.chunks(9) {
        send(&mut ws, json!({"op": "subscribe", "channels": chunk})).await;
        let r = recv_json(&mut ws).await;
        if r["type"] == "error" {
            refusal = r;
            break;
        }
        assert_eq!(r["type"], "subscribed");
        assert_eq!(recv_json(&mut ws).await["type"], "snapshot");
        accepted += chunk.len();
    }
    assert_eq!(accepted, 63, "7 markets fit in 64 subscriptions");
    assert_eq!(
        refusal["error"]["code"], "TOO_MANY_SUBSCRIPTIONS",
        "{refusal}"
    );
    // A frame above the limit closes the connection.
    let big = "x".repeat(exchange_marketdata::ws::WS_CLIENT_MESSAGE_BYTES_MAX + 1);
    let _ = ws.send(Message::Text(big.into())).await;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "oversized frame closes the connection");
}

#[tokio::test]
async fn origin_is_checked_at_the_handshake() {
    let (env, db, redis) = seeded().await;
    let svc = start(env, db, redis, &["https://app.example.com"]).await;
    match svc.ws("/ws", Some("https://evil.example.com")).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| "connected")),
    }
    assert!(svc.ws("/ws", Some("https://app.example.com")).await.is_ok());
    assert!(
        svc.ws("/ws", None).await.is_ok(),
        "non-browser clients send no Origin"
    );
    // `*` is refused by configuration in production.
    let prod = exchange_common::Config::from_lookup(&|k| {
        Some(
            match k {
                "APP_ENV" => "prod",
                "MARKETDATA_WS_ALLOW_ORIGINS" => "*",
                _ => return None,
            }
            .to_owned(),
        )
    })
    .unwrap_err();
    assert!(
        prod.0
            .iter()
            .any(|e| e.contains("MARKETDATA_WS_ALLOW_ORIGINS")),
        "{prod:?}"
    );
}

#[tokio::test]
async fn rebuilds_from_postgres_on_start_and_fills_gaps() {
    let (env, db, redis) = seeded().await;
    let t0 = now_ms();
    // History before the service starts: only in Postgres.
    let pre = Svc {
        addr: "127.0.0.1:1".parse().unwrap(),
        db: db.clone(),
        redis: redis.clone(),
        http: reqwest::Client::new(),
        shutdown: Shutdown::new(),
        _env: env.clone(),
    };
    pre.store(&batch(
        1,
        t0,
        vec![level(Side::Buy, "100", "1"), level(Side::Sell, "101", "1")],
    ))
    .await;
    pre.store(&batch(
        2,
        t0,
        vec![
            trade(1, Side::Buy, "101", "0.5"),
            level(Side::Sell, "101", "0.5"),
        ],
    ))
    .await;
    let svc = start(env, db, redis, &[]).await;
    let (_, d) = svc.get("/api/v1/markets/BTC-USDT/depth").await;
    assert_eq!(
        d,
        json!({"seq": 2, "bids": [["100", "1"]], "asks": [["101", "0.5"]]})
    );
    let (_, t) = svc.get("/api/v1/markets/BTC-USDT/trades").await;
    assert_eq!(t.as_array().unwrap().len(), 1);
    let (_, k) = svc.get("/api/v1/markets/BTC-USDT/klines?interval=1h").await;
    assert_eq!(k[0]["volume"], "0.5", "candles rebuilt and stored: {k}");

    let mut ws = svc.ws("/ws", None).await.unwrap();
    send(
        &mut ws,
        json!({"op": "subscribe", "channels": ["depth:BTC-USDT"]}),
    )
    .await;
    recv_json(&mut ws).await;
    let mut book = LocalBook::default();
    book.apply(&recv_json(&mut ws).await);
    assert_eq!(book.seq, 2);

    // 3 and 4 reach Postgres but not the stream (e.g. Redis lost them); 5 arrives.
    svc.store(&batch(3, t0, vec![level(Side::Buy, "99", "3")]))
        .await;
    svc.store(&batch(4, t0, vec![level(Side::Buy, "100", "0")]))
        .await;
    svc.publish(&batch(5, t0, vec![level(Side::Sell, "102", "7")]))
        .await;
    while book.seq < 5 {
        let m = recv_json(&mut ws).await;
        assert_eq!(
            m["seq"].as_u64().unwrap(),
            book.seq + 1,
            "deltas stay consecutive across the gap"
        );
        book.apply(&m);
    }
    let (_, d) = svc.get("/api/v1/markets/BTC-USDT/depth").await;
    assert_eq!(d, book.as_rest());
    assert_eq!(
        d,
        json!({"seq": 5, "bids": [["99", "3"]], "asks": [["101", "0.5"], ["102", "7"]]})
    );
    // A redelivered old batch changes nothing.
    svc.xadd(&batch(4, t0, vec![level(Side::Buy, "1", "1")]))
        .await;
    svc.publish(&batch(6, t0, vec![])).await;
    let m = recv_json(&mut ws).await;
    assert_eq!((m["seq"].as_u64(), &m["bids"]), (Some(6), &json!([])));
}

#[tokio::test]
async fn klines_backfill_from_trades() {
    let (env, db, redis) = seeded().await;
    let base = 1_700_000_000_000u64 - 1_700_000_000_000u64 % 86_400_000;
    let rows = [
        (1, 1, "100.5", "0.2", "20.1", base + 5_000),
        (2, 1, "101", "0.1", "10.1", base + 30_000),
        (3, 2, "99", "1", "99", base + 61_000),
        (4, 3, "102", "0.5", "51", base + 3_600_000 * 5),
    ];
    for (id, seq, price, qty, quote, time) in rows {
        sqlx::query(
            "INSERT INTO trades (market, id, seq, price, quantity, quote_amount, taker_side, \
             maker_order_id, taker_order_id, maker_user_id, taker_user_id, maker_fee, taker_fee, time_ms) \
             VALUES ('BTC-USDT', $1, $2, $3::numeric, $4::numeric, $5::numeric, 'buy', 1, 2, 1, 2, 0, 0, $6)",
        )
        .bind(id as i64)
        .bind(seq as i64)
        .bind(price)
        .bind(qty)
        .bind(quote)
        .bind(time as i64)
        .execute(&db)
        .await
        .unwrap();
    }
    let written =
        exchange_marketdata::store::backfill_klines(&db, sym(), base + 20_000, base + 86_400_000)
            .await
            .unwrap();
    // 1m: 3 candles, 5m/15m/1h: 2 each, 4h: 2, 1d: 1.
    assert_eq!(written, 3 + 2 + 2 + 2 + 2 + 1);
    let again = exchange_marketdata::store::backfill_klines(&db, sym(), base, base + 86_400_000)
        .await
        .unwrap();
    assert_eq!(again, written, "idempotent");
    let svc = start(env, db, redis, &[]).await;
    let (_, m1) = svc.get("/api/v1/markets/BTC-USDT/klines?interval=1m").await;
    assert_eq!(
        m1,
        json!([
            {"open_time": base, "open": "100.5", "high": "101", "low": "100.5", "close": "101", "volume": "0.3"},
            {"open_time": base + 60_000, "open": "99", "high": "99", "low": "99", "close": "99", "volume": "1"},
            {"open_time": base + 18_000_000, "open": "102", "high": "102", "low": "102", "close": "102", "volume": "0.5"},
        ])
    );
    let (_, d1) = svc
        .get("/api/v1/markets/BTC-USDT/klines?interval=1d&limit=1")
        .await;
    assert_eq!(
        d1,
        json!([{"open_time": base, "open": "100.5", "high": "102", "low": "99", "close": "102", "volume": "1.8"}])
    );
}

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected_and_does_not_delay_others() {
    let (env, db, redis) = seeded().await;
    let svc = start(env, db, redis, &[]).await;
    let sub = json!({"op": "subscribe", "channels": ["depth:BTC-USDT"]});
    let mut slow = svc.ws_small_buffer().await;
    send(&mut slow, sub.clone()).await;
    let mut fast = svc.ws("/ws", None).await.unwrap();
    send(&mut fast, sub).await;
    recv_json(&mut fast).await;
    assert_eq!(recv_json(&mut fast).await["type"], "snapshot");

    const BATCHES: u64 = 2_500;
    const LEVELS: u64 = 200;
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let reader = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut seq = 0;
            while seq < BATCHES {
                let m = recv_json(&mut fast).await;
                let s = m["seq"].as_u64().unwrap();
                // Consecutive (a merged delta, if this reader ever lagged
                // a full queue behind, starts where the last one ended).
                assert_eq!(m["first_seq"].as_u64().unwrap_or(s), seq + 1);
                seq = s;
                let at = sent.lock().unwrap()[&s];
                latencies.push(at.elapsed());
            }
            latencies
        })
    };
    // Deltas of ~6 kB each: the slow client's socket buffers and queue fill up.
    let mut conn = svc.redis.conn();
    let stream = svc.redis.events_stream();
    for chunk in (1..=BATCHES).collect::<Vec<_>>().chunks(50) {
        let mut pipe = redis::pipe();
        for &seq in chunk {
            let events = (1..=LEVELS)
                .map(|p| Event::BookLevel {
                    side: Side::Buy,
                    price: u128::from(p) * 10_000,
                    quantity: u128::from(seq) * 10_000,
                })
                .collect();
            let b = batch(seq, now_ms(), events);
            store_batch(&svc.db, &b).await;
            pipe.xadd(
                &stream,
                "*",
                &[("batch", serde_json::to_string(&b).unwrap())],
            )
            .ignore();
        }
        {
            let mut s = sent.lock().unwrap();
            for &seq in chunk {
                s.insert(seq, Instant::now());
            }
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut latencies = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("fast client received everything")
        .unwrap();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = *latencies.last().unwrap();
    eprintln!(
        "fast client: {} deltas, p99 {p99:?}, max {max:?}",
        latencies.len()
    );
    assert!(p99 < Duration::from_secs(2), "fast client p99 {p99:?}");

    // Its depth is conflated while it lags, so it costs the server one
    // merged delta, not a growing backlog. Keep the market busy (without
    // reading) until its socket is full and no write makes progress for
    // the write timeout: then it is cut off.
    let mut seq = BATCHES;
    let busy_until =
        Instant::now() + exchange_marketdata::ws::WS_WRITE_TIMEOUT + Duration::from_secs(4);
    while Instant::now() < busy_until {
        let chunk: Vec<EventBatch> = (seq + 1..=seq + 50)
            .map(|s| {
                let events = (1..=LEVELS)
                    .map(|p| Event::BookLevel {
                        side: Side::Buy,
                        price: u128::from(p) * 10_000,
                        quantity: u128::from(s) * 10_000,
                    })
                    .collect();
                batch(s, now_ms(), events)
            })
            .collect();
        svc.publish_all(&chunk).await;
        seq += 50;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_published = seq;

    // After what the kernel buffered, the stream ends; what it got was
    // contiguous (merged deltas carry the range they cover).
    let mut last_seen = 0u64;
    let mut merged = 0u64;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Text(t))) => {
                    let m: Value = serde_json::from_str(t.as_str()).unwrap();
                    if m["type"] == "delta" {
                        let s = m["seq"].as_u64().unwrap();
                        let first = m["first_seq"].as_u64().unwrap_or(s);
                        assert_eq!(first, last_seen + 1, "no gap on the slow connection");
                        merged += u64::from(first < s);
                        last_seen = s;
                    } else if m["type"] == "snapshot" {
                        last_seen = m["seq"].as_u64().unwrap();
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    eprintln!("slow client: up to seq {last_seen} of {last_published}, {merged} merged deltas");
    assert!(ended.is_ok(), "slow client disconnected");
    assert!(
        last_seen < last_published,
        "slow client got up to {last_seen} of {last_published}: it was cut off, not waited for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_pauses_gets_conflated_depth_and_rebuilds_the_rest_book_with_every_trade() {
    let (env, db, redis) = seeded().await;
    let svc = start(env, db, redis, &[]).await;
    let mut slow = svc.ws_small_buffer().await;
    send(
        &mut slow,
        json!({"op": "subscribe", "channels": ["depth:BTC-USDT", "trades:BTC-USDT"]}),
    )
    .await;
    assert_eq!(recv_json(&mut slow).await["type"], "subscribed");
    let snapshot = recv_json(&mut slow).await;
    assert_eq!(snapshot["type"], "snapshot");
    let mut book = LocalBook::default();
    book.apply(&snapshot);

    // ~3 kB deltas: ~9 MB, more than the server's socket buffer (~3 MB
    // here), a write burst and the 1,024-item queue hold, so the server
    // must conflate while the client does not read.
    const BATCHES: u64 = 3_000;
    const LEVELS: u64 = 100;
    let batch_at = |seq: u64| {
        let mut events: Vec<Event> = (1..=LEVELS)
            .map(|p| Event::BookLevel {
                side: if p <= LEVELS / 2 {
                    Side::Buy
                } else {
                    Side::Sell
                },
                price: u128::from(p) * 10_000,
                quantity: if (seq + p).is_multiple_of(7) {
                    0
                } else {
                    u128::from(seq % 50 + 1) * 10_000
                },
            })
            .collect();
        if seq.is_multiple_of(100) {
            events.push(trade(seq / 100, Side::Buy, "1.25", "0.5"));
        }
        batch(seq, now_ms(), events)
    };
    let paused_at = Instant::now();
    for chunk in (1..=BATCHES).collect::<Vec<_>>().chunks(50) {
        let batches: Vec<EventBatch> = chunk.iter().map(|s| batch_at(*s)).collect();
        svc.publish_all(&batches).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eprintln!("published after {:?}", paused_at.elapsed());
    let rest = eventually("REST depth at the last batch", async || {
        let (_, d) = svc.get("/api/v1/markets/BTC-USDT/depth?limit=1000").await;
        (d["seq"] == BATCHES).then_some(d)
    })
    .await;
    eprintln!("resuming after {:?}", paused_at.elapsed());

    // Resume: every delta continues the previous one (first_seq = last
    // seq + 1), trades all arrive, in order.
    let (mut merged, mut plain, mut trades) = (0u64, 0u64, Vec::new());
    while book.seq < BATCHES {
        let m = recv_json(&mut slow).await;
        match m["type"].as_str().unwrap() {
            "delta" => {
                let s = m["seq"].as_u64().unwrap();
                let first = m["first_seq"].as_u64().unwrap_or(s);
                assert_eq!(first, book.seq + 1, "a gap, not conflation");
                if first < s {
                    merged += 1;
                } else {
                    plain += 1;
                }
                book.apply(&m);
            }
            "trade" => trades.push(m["data"]["id"].as_u64().unwrap()),
            other => panic!("unexpected {other}: {m}"),
        }
    }
    eprintln!(
        "slow reader: {plain} plain + {merged} merged deltas for {BATCHES} batches, {} trades",
        trades.len()
    );
    assert!(merged > 0, "the backlog was conflated");
    assert!(plain + merged < BATCHES, "fewer messages than batches");
    assert_eq!(book.as_rest(), rest, "rebuilt book equals REST depth");
    // Trades are never conflated: read what is left of them.
    while trades.len() < (BATCHES / 100) as usize {
        let m = recv_json(&mut slow).await;
        if m["type"] == "trade" {
            trades.push(m["data"]["id"].as_u64().unwrap());
        }
    }
    assert_eq!(trades, (1..=BATCHES / 100).collect::<Vec<_>>());
}
