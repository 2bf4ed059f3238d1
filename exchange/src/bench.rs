//! `exchange bench`: a load tool driving the public API like real users.
//!
//! It creates (and funds, through the admin API) N users, then each user
//! places crossing limit orders back to back over HTTP for the duration
//! (buys above and sells below the reference price, one order in flight
//! per user, so nearly every order trades: takers at once, makers when the
//! next opposite order arrives). It prints orders/s accepted (201 from the
//! gateway) and settled (the order observed `filled` through the private
//! WebSocket), and p50/p99/p99.9 latency from request to ack and from
//! request to settled. Without a working private WebSocket it falls back to
//! polling a sample of orders and says so.
//!
//! With several gateways (`--gateway URL,URL,...`, and `--ws` likewise)
//! user i places through gateway i mod N and watches its fills on that
//! gateway's private WebSocket, as a load balancer spreading users would.
//!
//! The gateway's rate limits apply to the bench as to anyone (every user
//! comes from one IP): start the exchange with e.g.
//! `RATE_LIMIT_IP_PER_SECOND=1000000 RATE_LIMIT_ORDERS_PER_SECOND=1000000
//! RATE_LIMIT_LOGIN_PER_MINUTE=100000 HTTP_CONNECTIONS_PER_IP_MAX=100000`.

// Floats only for printed rates and percentile ranks: no money is computed here.
#![allow(clippy::float_arithmetic)]

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::watch;

const USAGE: &str = "usage: exchange bench --gateway URL[,URL...] --admin-token TOKEN --users N --duration SECONDS
                      [--market BTC-USDT] [--setup] [--ws ws://HOST:8090[,...]] [--price 20000]
                      [--quantity 0.001] [--settle-timeout SECONDS]

  --setup          create the base and quote assets and the market first (existing ones are kept)
  --admin-token    defaults to $ADMIN_TOKEN
  --ws             the gateway's private WebSocket base URL (default: the gateway host, port 8090)
  --gateway, --ws  several gateways, comma-separated (as many --ws as --gateway): user i places
                   through the (i mod N)th gateway and watches its fills on the (i mod N)th --ws

The gateway's rate limits apply: start the exchange with
  RATE_LIMIT_IP_PER_SECOND=1000000 RATE_LIMIT_ORDERS_PER_SECOND=1000000 RATE_LIMIT_LOGIN_PER_MINUTE=100000
  HTTP_CONNECTIONS_PER_IP_MAX=100000 (every user connects from this one address)";

/// Registrations (Argon2 hashing) in flight at once during the setup.
const SETUP_CONCURRENCY_MAX: usize = 8;
/// Each HTTP request's bound.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Settlement is over when nothing new settled for this long (or at `--settle-timeout`).
const SETTLE_QUIET: Duration = Duration::from_secs(3);
/// In polling mode, one order in this many is followed until it fills.
const POLL_SAMPLE_EVERY: u64 = 50;
const PASSWORD: &str = "bench-password-1";

#[derive(Debug, Clone)]
struct Args {
    /// One or more gateway base URLs; user i uses `gateways[i % len]`.
    gateways: Vec<String>,
    /// The private WebSocket base URL of each gateway, in the same order.
    ws: Vec<String>,
    admin_token: String,
    users: usize,
    duration: Duration,
    market: String,
    setup: bool,
    price: String,
    quantity: String,
    settle_timeout: Duration,
}

fn parse_args(args: &[String]) -> anyhow::Result<Args> {
    let mut map: BTreeMap<&str, String> = BTreeMap::new();
    let mut setup = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--setup" => setup = true,
            "--gateway" | "--ws" | "--admin-token" | "--users" | "--duration" | "--market"
            | "--price" | "--quantity" | "--settle-timeout" => {
                let v = it.next().with_context(|| format!("{a} needs a value"))?;
                map.insert(a.as_str(), v.clone());
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    let list = |v: String| -> Vec<String> {
        v.split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    };
    let gateways = list(
        map.remove("--gateway")
            .unwrap_or_else(|| "http://127.0.0.1:8080".into()),
    );
    if gateways.is_empty() {
        bail!("--gateway needs at least one URL");
    }
    let ws = match map.remove("--ws") {
        Some(w) => list(w),
        None => gateways
            .iter()
            .map(|gateway| {
                let host = gateway
                    .strip_prefix("http://")
                    .context("--gateway must start with http://")?;
                let host = host.split('/').next().unwrap_or(host);
                let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
                Ok(format!("ws://{host}:8090"))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    if ws.len() != gateways.len() {
        bail!(
            "--ws names {} URLs for {} gateways: give one per gateway, in the same order",
            ws.len(),
            gateways.len()
        );
    }
    let admin_token = map
        .remove("--admin-token")
        .or_else(|| std::env::var("ADMIN_TOKEN").ok())
        .context("--admin-token (or ADMIN_TOKEN) is required")?;
    let number = |v: Option<String>, key: &str, default: u64| -> anyhow::Result<u64> {
        v.map_or(Ok(default), |s| {
            s.parse()
                .with_context(|| format!("{key} must be a whole number"))
        })
    };
    let users = usize::try_from(number(map.remove("--users"), "--users", 50)?)?;
    if users == 0 {
        bail!("--users must be at least 1");
    }
    Ok(Args {
        gateways,
        ws,
        admin_token,
        users,
        duration: Duration::from_secs(number(map.remove("--duration"), "--duration", 60)?),
        market: map.remove("--market").unwrap_or_else(|| "BTC-USDT".into()),
        setup,
        price: map.remove("--price").unwrap_or_else(|| "20000".into()),
        quantity: map.remove("--quantity").unwrap_or_else(|| "0.001".into()),
        settle_timeout: Duration::from_secs(number(
            map.remove("--settle-timeout"),
            "--settle-timeout",
            30,
        )?),
    })
}

pub async fn run_cli(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e:#}\n\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| path.to_owned())?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// The hot loop's placement: a body serialized once per user and side,
    /// and only the order id read from a 201 (the client shares the
    /// machine with the exchange, so its own parsing is kept small).
    async fn place(&self, token: &str, body: &[u8]) -> anyhow::Result<Placement> {
        let resp = self
            .http
            .post(format!("{}/api/v1/orders", self.base))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .context("/api/v1/orders")?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        if status == 201 {
            #[derive(serde::Deserialize)]
            struct Created {
                id: i64,
            }
            if let Ok(c) = serde_json::from_slice::<Created>(&bytes) {
                return Ok(Placement::Created(c.id));
            }
        }
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Placement::Refused(
            status,
            v["error"]["code"].as_str().unwrap_or("?").to_owned(),
        ))
    }

    async fn admin(&self, token: &str, path: &str, body: &Value) -> anyhow::Result<()> {
        let (status, v) = self
            .call(reqwest::Method::POST, path, token, Some(body))
            .await?;
        if (200..300).contains(&status) || status == 409 {
            Ok(())
        } else {
            bail!("admin {path} {body} answered {status}: {v}")
        }
    }
}

struct BenchUser {
    token: String,
}

enum Placement {
    Created(i64),
    /// Any other answer: status and error code.
    Refused(u16, String),
}

async fn make_user(api: &Api, args: &Args, run_id: &str, i: usize) -> anyhow::Result<BenchUser> {
    let creds = json!({"email": format!("bench-{run_id}-{i}@bench.invalid"), "password": PASSWORD});
    let (status, v) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/auth/register",
            "",
            Some(&creds),
        )
        .await?;
    if status != 201 {
        bail!("register answered {status}: {v}");
    }
    let id = v["user_id"].as_i64().context("user_id")?;
    let (status, v) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/auth/login",
            "",
            Some(&creds),
        )
        .await?;
    if status != 200 {
        bail!("login answered {status}: {v}");
    }
    let token = v["access_token"]
        .as_str()
        .context("access_token")?
        .to_owned();
    let (base, quote) = args
        .market
        .split_once('-')
        .context("--market is BASE-QUOTE")?;
    for (asset, amount) in [(base, "1000000"), (quote, "100000000000")] {
        api.admin(
            &args.admin_token,
            "/admin/v1/deposits",
            // The user is new, so the reference is too (and a retried
            // call credits once).
            &json!({"user_id": id, "asset": asset, "amount": amount,
                    "reference": format!("bench-{id}-{asset}")}),
        )
        .await?;
    }
    Ok(BenchUser { token })
}

/// What one user's placing loop saw.
#[derive(Default)]
struct Placed {
    /// `(order id, sent at, acked at)` of every accepted order.
    accepted: Vec<(i64, Instant, Instant)>,
    errors: BTreeMap<String, u64>,
}

/// Where settlements are observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    WebSocket,
    Polling,
}

type Settled = HashMap<i64, Instant>;

/// Private WebSocket reader of one user: the instant each order was seen `filled`.
async fn watch_fills(
    url: String,
    mut stop: watch::Receiver<bool>,
    counter: Arc<AtomicU64>,
) -> anyhow::Result<Settled> {
    let (mut ws, _) = tokio::time::timeout(
        REQUEST_TIMEOUT,
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .context("WebSocket connect timed out")??;
    let mut settled = Settled::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            msg = ws.next() => {
                let Some(msg) = msg else { bail!("the private WebSocket closed") };
                let msg = msg?;
                let Ok(text) = msg.to_text() else { continue };
                // Most pushes are fills, balances and partial updates: only
                // a message that can be a `filled` order is parsed.
                if !text.contains("\"filled\"") {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(text) else { continue };
                if v["type"] == "order"
                    && v["data"]["status"] == "filled"
                    && let Some(id) = v["data"]["id"].as_i64()
                    && settled.insert(id, Instant::now()).is_none()
                {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(settled)
}

#[allow(clippy::too_many_arguments)]
async fn place_loop(
    api: Arc<Api>,
    token: String,
    market: String,
    buy_price: String,
    sell_price: String,
    quantity: String,
    start_with_buy: bool,
    until: Instant,
    sampler: Option<tokio::sync::mpsc::Sender<(i64, String)>>,
) -> Placed {
    let mut out = Placed::default();
    let mut buy = start_with_buy;
    let mut n: u64 = 0;
    let body = |side: &str, price: &str| {
        json!({"market": market, "side": side, "type": "limit", "price": price, "quantity": quantity})
            .to_string()
            .into_bytes()
    };
    let (buy_body, sell_body) = (body("buy", &buy_price), body("sell", &sell_price));
    while Instant::now() < until {
        let sent = Instant::now();
        match api
            .place(&token, if buy { &buy_body } else { &sell_body })
            .await
        {
            Ok(Placement::Created(id)) => {
                let acked = Instant::now();
                out.accepted.push((id, sent, acked));
                n += 1;
                if let Some(s) = &sampler
                    && n.is_multiple_of(POLL_SAMPLE_EVERY)
                {
                    let _ = s.try_send((id, token.clone()));
                }
                buy = !buy;
            }
            Ok(Placement::Refused(status, code)) => {
                *out.errors.entry(format!("{status} {code}")).or_default() += 1;
                if status == 429 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Err(e) => {
                *out.errors.entry(format!("transport: {e}")).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    out
}

/// Polling mode: follows sampled orders until they fill.
async fn poll_samples(
    api: Arc<Api>,
    mut rx: tokio::sync::mpsc::Receiver<(i64, String)>,
    counter: Arc<AtomicU64>,
    deadline_after_close: Duration,
) -> Settled {
    let mut pending: Vec<(i64, String)> = Vec::new();
    let mut settled = Settled::new();
    let mut closed_at: Option<Instant> = None;
    loop {
        while let Ok(s) = rx.try_recv() {
            pending.push(s);
        }
        if closed_at.is_none() && rx.is_closed() && rx.is_empty() {
            closed_at = Some(Instant::now());
        }
        if closed_at.is_some_and(|t| pending.is_empty() || t.elapsed() > deadline_after_close) {
            return settled;
        }
        let mut still = Vec::with_capacity(pending.len());
        for (id, token) in pending.drain(..) {
            match api
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/orders/{id}"),
                    &token,
                    None,
                )
                .await
            {
                Ok((200, v)) if v["status"] == "filled" => {
                    settled.insert(id, Instant::now());
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok((200, v)) if v["status"] == "canceled" || v["status"] == "rejected" => {}
                _ => still.push((id, token)),
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Before the clock starts, one crossing pair must be matched and settled:
/// a market created just now is picked up by matching only at its next
/// market reload, and orders queued meanwhile would count that wait as
/// settlement latency (and clearing's catch-up after it) instead of the
/// pipeline's steady state.
async fn warm_up(
    api: &Api,
    users: &[BenchUser],
    args: &Args,
    buy_price: &str,
    sell_price: &str,
) -> anyhow::Result<()> {
    let (maker, taker) = match users {
        [one] => (one, one),
        [a, b, ..] => (a, b),
        [] => bail!("no users"),
    };
    let mut ids = Vec::new();
    for (user, side, price) in [(maker, "buy", buy_price), (taker, "sell", sell_price)] {
        let body = json!({"market": args.market, "side": side, "type": "limit", "price": price,
                          "quantity": args.quantity, "stp": "none"});
        let (status, v) = api
            .call(
                reqwest::Method::POST,
                "/api/v1/orders",
                &user.token,
                Some(&body),
            )
            .await?;
        let id = v["id"].as_i64();
        match (status, id) {
            (201, Some(id)) => ids.push((user, id)),
            _ => bail!("warm-up order refused: {status} {v}"),
        }
    }
    let deadline = Instant::now() + args.settle_timeout;
    for (user, id) in ids {
        loop {
            let (status, v) = api
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/orders/{id}"),
                    &user.token,
                    None,
                )
                .await?;
            if status == 200 && v["status"] == "filled" {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "warm-up order {id} not filled within {:?} (last seen: {status} {v})",
                    args.settle_timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Nearest-rank percentile; `per_mille` is the percentile in tenths of a
/// percent (990 = p99, 999 = p99.9), so the rank is exact integer arithmetic.
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (per_mille * sorted.len()).div_ceil(1000);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(label: &str, mut v: Vec<Duration>) -> String {
    v.sort_unstable();
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    format!(
        "{label}: n={} p50={} p99={} p99.9={} max={}",
        v.len(),
        ms(percentile(&v, 500)),
        ms(percentile(&v, 990)),
        ms(percentile(&v, 999)),
        ms(v.last().copied().unwrap_or_default())
    )
}

#[allow(clippy::cast_precision_loss)]
fn rate(count: usize, over: Duration) -> f64 {
    count as f64 / over.as_secs_f64().max(1e-9)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(args.users + SETUP_CONCURRENCY_MAX)
        .tcp_nodelay(true)
        .build()?;
    // One client (one connection pool) for every gateway.
    let apis: Vec<Arc<Api>> = args
        .gateways
        .iter()
        .map(|base| {
            Arc::new(Api {
                http: http.clone(),
                base: base.clone(),
            })
        })
        .collect();
    // Setup, warm-up, polling and the final cancels go through the first.
    let api = apis[0].clone();
    let (base, quote) = args
        .market
        .split_once('-')
        .context("--market is BASE-QUOTE, e.g. BTC-USDT")?;
    if args.setup {
        for asset in [base, quote] {
            api.admin(
                &args.admin_token,
                "/admin/v1/assets",
                &json!({"symbol": asset, "scale": 8}),
            )
            .await?;
        }
        api.admin(
            &args.admin_token,
            "/admin/v1/markets",
            &json!({"symbol": args.market, "base": base, "quote": quote, "price_tick": "0.01",
                    "qty_step": "0.00001", "min_notional": "1", "maker_fee": "0.001", "taker_fee": "0.002"}),
        )
        .await?;
    }
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let setup_started = Instant::now();
    let mut users = Vec::with_capacity(args.users);
    let mut pending = futures_util::stream::iter(0..args.users)
        .map(|i| {
            let api = api.clone();
            let args = args.clone();
            let run_id = run_id.clone();
            async move { make_user(&api, &args, &run_id, i).await }
        })
        .buffer_unordered(SETUP_CONCURRENCY_MAX);
    while let Some(u) = pending.next().await {
        users.push(u?);
    }
    drop(pending);
    eprintln!(
        "bench: {} users registered and funded in {:.1?}",
        users.len(),
        setup_started.elapsed()
    );

    // Private WebSockets first, so no fill is missed.
    let (stop_tx, stop_rx) = watch::channel(false);
    let settled_count = Arc::new(AtomicU64::new(0));
    let mut watchers = Vec::with_capacity(users.len());
    let mut mode = Mode::WebSocket;
    for (i, u) in users.iter().enumerate() {
        let ws_base = &args.ws[i % args.ws.len()];
        let url = format!("{ws_base}/ws/private?token={}", u.token);
        let probe = tokio_tungstenite::connect_async(url.as_str()).await;
        match probe {
            Ok((ws, _)) => {
                drop(ws);
                watchers.push(tokio::spawn(watch_fills(
                    url,
                    stop_rx.clone(),
                    settled_count.clone(),
                )));
            }
            Err(e) => {
                eprintln!(
                    "bench: private WebSocket {ws_base} unavailable ({e}); settlement measured by polling 1 in {POLL_SAMPLE_EVERY} orders"
                );
                mode = Mode::Polling;
                break;
            }
        }
    }
    if mode == Mode::Polling {
        let _ = stop_tx.send(true);
        for w in watchers.drain(..) {
            let _ = w.await;
        }
    }
    // Let every connection authenticate and subscribe.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (sample_tx, sample_rx) = tokio::sync::mpsc::channel(100_000);
    let poller = (mode == Mode::Polling).then(|| {
        tokio::spawn(poll_samples(
            api.clone(),
            sample_rx,
            settled_count.clone(),
            args.settle_timeout,
        ))
    });
    let sampler = (mode == Mode::Polling).then_some(sample_tx);

    // Buys 1% above and sells 1% below the reference: every pair crosses.
    let price: u64 = args
        .price
        .parse()
        .context("--price must be a whole number")?;
    let buy_price = (price + price / 100).to_string();
    let sell_price = (price - price / 100).to_string();
    eprintln!(
        "bench: {} users placing {} {} limit orders (buy @ {buy_price}, sell @ {sell_price}) for {:?} on {}",
        users.len(),
        args.quantity,
        args.market,
        args.duration,
        args.gateways.join(",")
    );
    let warmup_started = Instant::now();
    warm_up(&api, &users, &args, &buy_price, &sell_price).await?;
    eprintln!(
        "bench: the market matched and settled a warm-up pair in {:.1?}",
        warmup_started.elapsed()
    );
    let started = Instant::now();
    let until = started + args.duration;
    let placers: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            tokio::spawn(place_loop(
                apis[i % apis.len()].clone(),
                u.token.clone(),
                args.market.clone(),
                buy_price.clone(),
                sell_price.clone(),
                args.quantity.clone(),
                i % 2 == 0,
                until,
                sampler.clone(),
            ))
        })
        .collect();
    drop(sampler);
    let mut placed = Vec::with_capacity(placers.len());
    for p in placers {
        placed.push(p.await?);
    }
    let placing_took = started.elapsed();

    // Wait for settlement to go quiet (bounded).
    let settle_deadline = Instant::now() + args.settle_timeout;
    let mut last = settled_count.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while Instant::now() < settle_deadline && mode == Mode::WebSocket {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = settled_count.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= SETTLE_QUIET {
            break;
        }
    }
    let _ = stop_tx.send(true);
    let mut settled = Settled::new();
    for w in watchers {
        match w.await? {
            Ok(s) => settled.extend(s),
            Err(e) => eprintln!("bench: a private WebSocket failed: {e:#}"),
        }
    }
    if let Some(p) = poller {
        settled.extend(p.await?);
    }

    // Leave an empty book behind.
    for u in &users {
        let _ = api
            .call(
                reqwest::Method::DELETE,
                &format!("/api/v1/orders?market={}", args.market),
                &u.token,
                None,
            )
            .await;
    }

    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut ack = Vec::new();
    let mut settle_lat = Vec::new();
    let mut accepted = 0usize;
    let mut last_settled = started;
    for p in &placed {
        for (k, v) in &p.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
        for (id, sent, acked) in &p.accepted {
            accepted += 1;
            ack.push(*acked - *sent);
            if let Some(at) = settled.get(id) {
                settle_lat.push(at.saturating_duration_since(*sent));
                last_settled = last_settled.max(*at);
            }
        }
    }
    let settled_n = settle_lat.len();
    let settle_window = last_settled.saturating_duration_since(started);
    println!(
        "exchange bench: gateway {}, market {}, {} users, {:?}; settled observed via {}",
        args.gateways.join(","),
        args.market,
        users.len(),
        args.duration,
        match mode {
            Mode::WebSocket => "the private WebSocket (order status `filled`)".to_owned(),
            Mode::Polling =>
                format!("polling GET /api/v1/orders/{{id}} for 1 in {POLL_SAMPLE_EVERY} orders"),
        }
    );
    println!(
        "accepted: {accepted} orders in {:.1?} = {:.0} orders/s",
        placing_took,
        rate(accepted, placing_took)
    );
    match mode {
        Mode::WebSocket => println!(
            "settled:  {settled_n} orders filled by +{:.1?} = {:.0} orders/s ({} accepted not filled: resting or unseen)",
            settle_window,
            rate(settled_n, settle_window),
            accepted - settled_n
        ),
        Mode::Polling => println!(
            "settled:  {settled_n} sampled orders seen filled (rate not measured in polling mode)"
        ),
    }
    println!("{}", summary("latency request→ack", ack));
    println!("{}", summary("latency request→settled", settle_lat));
    if errors.is_empty() {
        println!("errors: none");
    } else {
        println!("errors: {errors:?}");
        if errors.keys().any(|k| k.starts_with("429")) {
            println!(
                "hint: raise RATE_LIMIT_IP_PER_SECOND and RATE_LIMIT_ORDERS_PER_SECOND on the gateway"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 500), Duration::from_millis(500));
        assert_eq!(percentile(&v, 990), Duration::from_millis(990));
        assert_eq!(percentile(&v, 999), Duration::from_millis(999));
        assert_eq!(percentile(&[], 990), Duration::ZERO);
    }

    #[test]
    fn ws_url_defaults_to_the_gateway_host() {
        let args: Vec<String> = ["--gateway", "http://10.0.0.5:8080", "--admin-token", "t"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let a = parse_args(&args).expect("valid arguments");
        assert_eq!(a.ws, ["ws://10.0.0.5:8090"]);
        assert_eq!(a.users, 50);
        assert!(parse_args(&["--bogus".to_owned()]).is_err());
    }

    #[test]
    fn several_gateways_each_with_its_websocket() {
        let parse = |v: &[&str]| parse_args(&v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        let a = parse(&[
            "--gateway",
            "http://10.0.0.5:8080/, http://10.0.0.6:8080",
            "--admin-token",
            "t",
        ])
        .expect("valid arguments");
        assert_eq!(a.gateways, ["http://10.0.0.5:8080", "http://10.0.0.6:8080"]);
        assert_eq!(a.ws, ["ws://10.0.0.5:8090", "ws://10.0.0.6:8090"]);
        let a = parse(&[
            "--gateway",
            "http://h:1,http://h:2",
            "--ws",
            "ws://h:3,ws://h:4",
            "--admin-token",
            "t",
        ])
        .expect("valid arguments");
        assert_eq!(a.ws, ["ws://h:3", "ws://h:4"]);
        assert!(
            parse(&[
                "--gateway",
                "http://h:1,http://h:2",
                "--ws",
                "ws://h:3",
                "--admin-token",
                "t"
            ])
            .is_err()
        );
    }
}
