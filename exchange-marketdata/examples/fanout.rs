//! Fan-out benchmark: N WebSocket clients subscribed to the depth channel of
//! one busy market, served by the real `/ws` handler in this process.
//!
//! ```text
//! cargo run --release -p exchange-marketdata --example fanout -- \
//!     [--clients 1000] [--rate 1000] [--seconds 10] [--levels 5] [--step-ms 1]
//! ```
//!
//! The publisher applies `rate` event batches per second (each with `levels`
//! book changes) to the market and publishes them exactly as the consumer
//! does (no Redis or Postgres in the loop: this measures the fan-out).
//! Every client parses each delta's `seq` and measures its delivery latency
//! from the moment the batch was published. Prints deliveries/s and latency
//! percentiles; clients cut off as too slow are counted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use exchange_common::Shutdown;
use exchange_domain::event::{Event, EventBatch};
use exchange_domain::order::Side;
use exchange_domain::symbol::MarketSymbol;
use exchange_marketdata::registry::MarketRegistry;
use exchange_marketdata::state::Scales;
use exchange_marketdata::ws::{App, Origins};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

struct Args {
    clients: usize,
    rate: u64,
    seconds: u64,
    levels: u64,
    step_ms: u64,
}

fn args() -> Args {
    let mut a = Args {
        clients: 1_000,
        rate: 1_000,
        seconds: 10,
        levels: 5,
        step_ms: 1,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).map(|s| s.parse::<u64>().expect("a number"));
        match (pair[0].as_str(), v) {
            ("--clients", Some(v)) => a.clients = v as usize,
            ("--rate", Some(v)) => a.rate = v,
            ("--seconds", Some(v)) => a.seconds = v,
            ("--levels", Some(v)) => a.levels = v,
            ("--step-ms", Some(v)) => a.step_ms = v.max(1),
            _ => panic!(
                "usage: fanout [--clients N] [--rate BATCHES_PER_S] [--seconds S] [--levels L] [--step-ms MS]"
            ),
        }
    }
    a
}

fn seq_of(text: &str) -> Option<u64> {
    let at = text.find("\"seq\":")? + 6;
    let digits: &str = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[tokio::main]
async fn main() {
    let a = args();
    let symbol = MarketSymbol::parse("BTC-USDT").unwrap();
    // Never connected: the market is registered in memory.
    let db = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://bench@127.0.0.1:1/none")
        .unwrap();
    let markets = Arc::new(MarketRegistry::new(db));
    let market = markets.insert_empty(symbol, Scales { base: 8, quote: 6 });
    let shutdown = Shutdown::new();
    let app = App::new(markets, Origins::default(), shutdown.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(
            listener,
            exchange_marketdata::routes(app)
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move { server_stop.wait().await })
        .await
        .unwrap();
    });

    let origin = Instant::now();
    let total_batches = a.rate * a.seconds + 16;
    // Publish time of each seq, in ns since `origin` (0 = not yet).
    let published: Arc<Vec<AtomicU64>> =
        Arc::new((0..=total_batches + 1).map(|_| AtomicU64::new(0)).collect());
    let measuring = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));

    let mut clients = tokio::task::JoinSet::new();
    let ready = Arc::new(AtomicU64::new(0));
    for _ in 0..a.clients {
        let (published, measuring, delivered, dropped, ready) = (
            published.clone(),
            measuring.clone(),
            delivered.clone(),
            dropped.clone(),
            ready.clone(),
        );
        clients.spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
                .await
                .expect("connect");
            ws.send(Message::Text(
                r#"{"op":"subscribe","channels":["depth:BTC-USDT"]}"#.into(),
            ))
            .await
            .unwrap();
            let mut lat_us: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut snapshot = false;
            while let Some(msg) = ws.next().await {
                let Ok(Message::Text(t)) = msg else {
                    if msg.is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    continue;
                };
                let Some(seq) = seq_of(t.as_str()) else {
                    continue;
                };
                if !snapshot {
                    snapshot = true;
                    ready.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if measuring.load(Ordering::Relaxed) {
                    let sent = published[seq as usize].load(Ordering::Relaxed);
                    let now = origin.elapsed().as_nanos() as u64;
                    lat_us.push((now.saturating_sub(sent) / 1_000) as u32);
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                if seq >= total_batches {
                    break;
                }
            }
            lat_us
        });
    }
    while ready.load(Ordering::Relaxed) < a.clients as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{} clients subscribed; publishing", a.clients);

    // Publisher: `rate` batches per second, released every `step_ms` (the
    // service's consumer likewise applies a stream read's entries back to back).
    let mut seq = 0u64;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(a.step_ms));
    let warmup = 8;
    let mut measure_start = None;
    while seq < total_batches {
        tick.tick().await;
        let due = (start.elapsed().as_micros() as u64 * a.rate / 1_000_000).min(total_batches);
        while seq < due {
            seq += 1;
            if seq == warmup {
                measuring.store(true, Ordering::Relaxed);
                measure_start = Some(Instant::now());
            }
            let events = (0..a.levels)
                .map(|l| Event::BookLevel {
                    side: if l % 2 == 0 { Side::Buy } else { Side::Sell },
                    price: 50_000_000_000 + u128::from((seq * 7 + l) % 500) * 10_000,
                    quantity: u128::from(seq % 97 + 1) * 10_000,
                })
                .collect();
            let batch = EventBatch {
                market: symbol,
                seq,
                time_ms: 0,
                events,
            };
            let mut feed = market.lock();
            let applied = feed.apply(&batch).expect("in order");
            published[seq as usize].store(origin.elapsed().as_nanos() as u64, Ordering::Relaxed);
            feed.publish(&applied, 0);
        }
    }
    let mut all: Vec<u32> = Vec::new();
    let mut finished_at = None;
    while let Some(r) = clients.join_next().await {
        all.extend(r.unwrap());
        finished_at = Some(Instant::now());
    }
    let elapsed = finished_at.unwrap().duration_since(measure_start.unwrap());
    shutdown.trigger();
    all.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.is_empty() {
            return 0;
        }
        #[allow(clippy::float_arithmetic, clippy::cast_sign_loss)]
        let i = ((all.len() as f64 - 1.0) * p) as usize;
        all[i]
    };
    let n = delivered.load(Ordering::Relaxed);
    #[allow(clippy::float_arithmetic)]
    let per_s = n as f64 / elapsed.as_secs_f64();
    println!(
        "clients={} rate={} batches/s levels={} seconds={} step_ms={}",
        a.clients, a.rate, a.levels, a.seconds, a.step_ms
    );
    println!(
        "delivered={n} in {:.2}s -> {:.0} deliveries/s; latency p50={}us p99={}us p999={}us max={}us; clients cut off={}",
        elapsed.as_secs_f64(),
        per_s,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        all.last().copied().unwrap_or(0),
        dropped.load(Ordering::Relaxed)
    );
}
