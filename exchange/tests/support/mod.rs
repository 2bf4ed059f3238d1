//! End-to-end harness: the real `exchange` binary started as separate
//! processes (`gateway`, `order`, `matching`, `clearing`, `marketdata`,
//! `wallet`) on free ports, against a fresh database (migrated by
//! `exchange migrate`) and a random Redis key prefix.
//!
//! Each process logs to a file under the target tmp dir; the logs are
//! printed when the test panics. Every process is killed (SIGKILL) when the
//! [`Cluster`] is dropped, also while unwinding from a panic. One service
//! can be killed (`kill -9`) and restarted on the same ports ([`Cluster::kill`],
//! [`Cluster::restart`]) for the crash-recovery tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod ccxt;
pub mod private;
pub mod workload;

/// The `exchange` binary: Cargo's, or `EXCHANGE_BIN` when set (a target
/// directory shared by several checkouts may hold another checkout's build
/// at `target/debug/exchange`; point this at `target/debug/deps/exchange-<hash>`).
pub static BIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("EXCHANGE_BIN")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_exchange").to_owned())
});
/// The development secrets of scripts/dev.sh (APP_ENV=dev accepts them).
pub const INTERNAL_TOKEN: &str = "dev-internal-token-change-me-please-000";
pub const AUTH_TOKEN_SECRET: &str = "dev-auth-token-secret-change-me-please-0";
pub const ADMIN_TOKEN: &str = "dev-admin-token-change-me-please-00000";
pub const PASSWORD: &str = "correct horse battery";

/// How long a service may take to answer 200 on `/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Each HTTP request's bound.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The services, in start order (dependencies first).
pub const SERVICES: [&str; 6] = [
    "order",
    "matching",
    "clearing",
    "marketdata",
    "wallet",
    "gateway",
];

struct Proc {
    /// The `exchange` subcommand.
    service: &'static str,
    /// Variables of this process only (a replica's ports and name).
    env: Vec<(String, String)>,
    child: Child,
    log: PathBuf,
    /// Incarnation count (restarts get their own log file).
    runs: u32,
}

pub struct Cluster {
    /// Gateway REST base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Gateway private WebSocket base URL, e.g. `ws://127.0.0.1:41235`.
    pub ws_url: String,
    /// This cluster's own database.
    pub db_url: String,
    pub redis_prefix: String,
    pub client: reqwest::Client,
    env: BTreeMap<String, String>,
    /// `/ready` URL of each process (a service, or a replica by its name).
    ready: BTreeMap<String, String>,
    procs: BTreeMap<String, Proc>,
    log_dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn required_env(key: &str) -> String {
    std::env::var(key).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
        panic!(
            "{key} is not set: end-to-end tests need a real PostgreSQL and Redis. Run scripts/test.sh, or export \
             DB_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379"
        )
    })
}

/// Extra settings for a cluster.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Variables added to (or overriding) every process's environment.
    pub env: Vec<(String, String)>,
    /// An existing, empty database to use (e.g. a private PostgreSQL
    /// instance's) instead of a fresh one on `DB_URL`'s server.
    pub db_url: Option<String>,
    /// The services to start (a subset of [`SERVICES`], in its order);
    /// `None`: all of them.
    pub services: Option<Vec<&'static str>>,
}

impl Cluster {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        required_env("DB_URL");
        let redis_url = required_env("REDIS_URL");
        let db_url = match options.db_url.clone() {
            Some(url) => url,
            None => exchange_common::testing::empty_database().await,
        };
        let db_name = db_url
            .rsplit('/')
            .next()
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_owned();
        let redis_prefix = exchange_common::testing::random_name("e2e-");
        // A given database (a private server's `postgres`) is not unique: name
        // the logs after the Redis prefix then.
        let log_name = if options.db_url.is_some() {
            redis_prefix.clone()
        } else {
            format!("e2e-{db_name}")
        };
        let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(log_name);
        std::fs::create_dir_all(&log_dir).unwrap();

        let migrate = Command::new(&*BIN)
            .arg("migrate")
            .env("DB_URL", &db_url)
            .env("LOG_LEVEL", "warn")
            .env_remove("ENV_FILE")
            .output()
            .expect("run exchange migrate");
        assert!(
            migrate.status.success(),
            "exchange migrate failed: {}\n{}",
            String::from_utf8_lossy(&migrate.stdout),
            String::from_utf8_lossy(&migrate.stderr)
        );

        let addr = |port: u16| format!("127.0.0.1:{port}");
        let ports: BTreeMap<&str, u16> = [
            "gateway",
            "gateway_ws",
            "order",
            "matching",
            "clearing",
            "marketdata",
            "wallet",
        ]
        .into_iter()
        .map(|s| (s, free_port()))
        .collect();
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            env.insert(k.to_owned(), v);
        };
        set("APP_ENV", "dev".into());
        set("APP_VERSION", "e2e".into());
        set("LOG_LEVEL", "info".into());
        set("DB_URL", db_url.clone());
        // Six processes per test, tests in parallel: keep connections modest.
        set("DB_POOL_MAX", "5".into());
        set("REDIS_URL", redis_url);
        set("REDIS_KEY_PREFIX", redis_prefix.clone());
        set("INTERNAL_TOKEN", INTERNAL_TOKEN.into());
        set("AUTH_TOKEN_SECRET", AUTH_TOKEN_SECRET.into());
        set("ADMIN_TOKEN", ADMIN_TOKEN.into());
        set(
            "MARKETDATA_WS_ALLOW_ORIGINS",
            "http://localhost:3000".into(),
        );
        set("GATEWAY_HTTP_ADDR", addr(ports["gateway"]));
        set("GATEWAY_WS_ADDR", addr(ports["gateway_ws"]));
        set("ORDER_HTTP_ADDR", addr(ports["order"]));
        set("MATCHING_HTTP_ADDR", addr(ports["matching"]));
        set("CLEARING_HTTP_ADDR", addr(ports["clearing"]));
        set("MARKETDATA_HTTP_ADDR", addr(ports["marketdata"]));
        set("WALLET_HTTP_ADDR", addr(ports["wallet"]));
        set(
            "ORDER_SERVICE_URL",
            format!("http://{}", addr(ports["order"])),
        );
        set(
            "MARKETDATA_URL",
            format!("http://{}", addr(ports["marketdata"])),
        );
        set(
            "WALLET_SERVICE_URL",
            format!("http://{}", addr(ports["wallet"])),
        );
        for svc in ["order", "matching", "clearing", "marketdata"] {
            let upper = svc.to_ascii_uppercase();
            set(&format!("{upper}_CONSUMER_GROUP"), svc.to_owned());
            set(&format!("{upper}_CONSUMER_NAME"), format!("{svc}-e2e-1"));
        }
        set("GATEWAY_CONSUMER_NAME", "gateway-e2e-1".into());
        set("MATCHING_MARKETS", "*".into());
        // Every client of a test comes from 127.0.0.1: the per-IP and
        // register/login budgets would otherwise throttle the test itself.
        set("RATE_LIMIT_IP_PER_SECOND", "100000".into());
        set("RATE_LIMIT_LOGIN_PER_MINUTE", "100000".into());
        set("RATE_LIMIT_ORDERS_PER_SECOND", "100000".into());
        set("HTTP_CONNECTIONS_PER_IP_MAX", "100000".into());
        set("MARKETDATA_WS_CONNECTIONS_PER_IP_MAX", "100000".into());
        set("MARKETDATA_RATE_LIMIT_IP_PER_SECOND", "100000".into());
        set("SHUTDOWN_DRAIN_SECONDS", "1".into());
        for (k, v) in options.env {
            env.insert(k, v);
        }

        let ready: BTreeMap<String, String> = SERVICES
            .into_iter()
            .map(|s| (s.to_owned(), format!("http://{}/ready", addr(ports[s]))))
            .collect();
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap();
        let mut cluster = Self {
            url: format!("http://{}", addr(ports["gateway"])),
            ws_url: format!("ws://{}", addr(ports["gateway_ws"])),
            db_url,
            redis_prefix,
            client,
            env,
            ready,
            procs: BTreeMap::new(),
            log_dir,
        };
        let services: Vec<&'static str> = SERVICES
            .into_iter()
            .filter(|s| {
                options
                    .services
                    .as_ref()
                    .is_none_or(|only| only.contains(s))
            })
            .collect();
        for svc in &services {
            cluster.spawn(svc, svc, Vec::new());
        }
        for svc in services {
            cluster.wait_ready(svc).await;
        }
        cluster
    }

    fn spawn(&mut self, name: &str, service: &'static str, env: Vec<(String, String)>) {
        let runs = self.procs.get(name).map_or(0, |p| p.runs) + 1;
        let log = self.log_dir.join(format!("{name}.{runs}.log"));
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(&*BIN)
            .arg(service)
            .env_remove("ENV_FILE")
            .envs(&self.env)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `exchange {service}`: {e}"));
        self.procs.insert(
            name.to_owned(),
            Proc {
                service,
                env,
                child,
                log,
                runs,
            },
        );
    }

    /// Starts another replica of `service` as process `name`, on ports of
    /// its own and with its own `*_CONSUMER_NAME`, and waits for `/ready`.
    pub async fn add_replica(&mut self, service: &'static str, name: &str) {
        self.start_replica(service, name, Vec::new());
        self.wait_ready(name).await;
    }

    /// As [`Cluster::add_replica`] with extra variables, without waiting.
    pub fn start_replica(
        &mut self,
        service: &'static str,
        name: &str,
        extra: Vec<(String, String)>,
    ) {
        let upper = service.to_ascii_uppercase();
        let http = format!("127.0.0.1:{}", free_port());
        let mut env = vec![
            (format!("{upper}_HTTP_ADDR"), http.clone()),
            (format!("{upper}_CONSUMER_NAME"), format!("{name}-e2e")),
        ];
        if service == "marketdata" {
            // Each marketdata replica keeps every market's state: it reads
            // the whole events stream in a group of its own.
            env.push(("MARKETDATA_CONSUMER_GROUP".into(), name.to_owned()));
        }
        if service == "gateway" {
            env.push((
                "GATEWAY_WS_ADDR".into(),
                format!("127.0.0.1:{}", free_port()),
            ));
            env.push((
                "ADMIN_HTTP_ADDR".into(),
                format!("127.0.0.1:{}", free_port()),
            ));
        }
        env.extend(extra);
        self.ready
            .insert(name.to_owned(), format!("http://{http}/ready"));
        self.spawn(name, service, env);
    }

    /// The base URL (`http://host:port`) of process `name`'s HTTP port.
    pub fn http_url(&self, name: &str) -> String {
        self.ready[name].trim_end_matches("/ready").to_owned()
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`, ...) to process `name`.
    pub fn signal(&self, name: &str, signal: &str) {
        let pid = self.pid(name);
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Waits (bounded) until process `name` has exited.
    pub async fn wait_exit(&mut self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let p = self.procs.get_mut(name).expect("a started process");
        while p.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "{name} did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until `service` answers 200 on `/ready`.
    pub async fn wait_ready(&mut self, service: &str) {
        let url = self.ready[service].clone();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .procs
                .get_mut(service)
                .unwrap()
                .child
                .try_wait()
                .unwrap()
            {
                panic!("`exchange {service}` exited during start ({status})");
            }
            let last = match self
                .client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "`exchange {service}` not ready within {READY_TIMEOUT:?}: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id of a running service (to read its memory in /proc).
    pub fn pid(&self, service: &str) -> u32 {
        self.procs
            .get(service)
            .expect("a started service")
            .child
            .id()
    }

    /// `kill -9` of one service.
    pub fn kill(&mut self, service: &str) {
        let p = self.procs.get_mut(service).expect("a started service");
        let _ = p.child.kill();
        let _ = p.child.wait();
    }

    /// Starts `service` again on its ports (after [`Cluster::kill`]) and waits for `/ready`.
    pub async fn restart(&mut self, name: &str) {
        self.kill(name);
        let p = &self.procs[name];
        let (service, env) = (p.service, p.env.clone());
        self.spawn(name, service, env);
        self.wait_ready(name).await;
    }

    /// `service`'s `/ready` URL.
    pub fn ready_url(&self, service: &str) -> &str {
        &self.ready[service]
    }

    /// The environment every process gets (e.g. for `exchange admin ...`).
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// Runs `exchange admin reconcile` against this cluster's database.
    pub fn reconcile(&self) -> std::process::Output {
        Command::new(&*BIN)
            .args(["admin", "reconcile"])
            .env_remove("ENV_FILE")
            .env("DB_URL", &self.db_url)
            .env("LOG_LEVEL", "warn")
            .output()
            .expect("run exchange admin reconcile")
    }

    pub fn log_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.log_dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn dump_logs(&self) {
        const TAIL_BYTES: usize = 64 * 1024;
        for path in self.log_paths() {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let start = text.len().saturating_sub(TAIL_BYTES);
            let start = (start..text.len())
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            eprintln!(
                "===== {} (last {} bytes) =====\n{}",
                path.display(),
                text.len() - start,
                &text[start..]
            );
        }
    }

    // ---- HTTP helpers (the public API only) ----

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: &Value) -> Value {
        let (status, v) = self.call(method, path, Some(ADMIN_TOKEN), Some(body)).await;
        assert!(
            (200..300).contains(&status),
            "admin {path} {body} answered {status}: {v}"
        );
        v
    }

    /// Creates BTC (8) and USDT (8) and `BTC-USDT` (tick 0.01, step 0.00001,
    /// min notional 1) with the given fees.
    pub async fn setup_btc_usdt(&self, maker_fee: &str, taker_fee: &str) {
        use reqwest::Method;
        self.admin(
            Method::POST,
            "/admin/v1/assets",
            &json!({"symbol":"BTC","scale":8}),
        )
        .await;
        self.admin(
            Method::POST,
            "/admin/v1/assets",
            &json!({"symbol":"USDT","scale":8}),
        )
        .await;
        self.admin(
            Method::POST,
            "/admin/v1/markets",
            &json!({"symbol":"BTC-USDT","base":"BTC","quote":"USDT","price_tick":"0.01",
                    "qty_step":"0.00001","min_notional":"1","maker_fee":maker_fee,"taker_fee":taker_fee}),
        )
        .await;
        // The order service learns of a new market through a cache that
        // reloads on a miss at most every 250 ms
        // (exchange_store::markets::MARKETS_MISS_RELOAD_INTERVAL): an order
        // placed sooner is answered 404 MARKET_NOT_FOUND.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Registers and logs in a user: `(user_id, access_token)`.
    pub async fn user(&self, email: &str) -> User {
        use reqwest::Method;
        let creds = json!({"email": email, "password": PASSWORD});
        let (status, v) = self
            .call(Method::POST, "/api/v1/auth/register", None, Some(&creds))
            .await;
        assert_eq!(status, 201, "register {email}: {v}");
        let id = v["user_id"].as_i64().expect("user_id");
        let (status, v) = self
            .call(Method::POST, "/api/v1/auth/login", None, Some(&creds))
            .await;
        assert_eq!(status, 200, "login {email}: {v}");
        User {
            id,
            token: v["access_token"].as_str().expect("access_token").to_owned(),
        }
    }

    /// Credits `amount` of `asset` to `user`, under a reference of its own.
    pub async fn deposit(&self, user: &User, asset: &str, amount: &str) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // `admin` checks the answer is a success.
        self.admin(
            reqwest::Method::POST,
            "/admin/v1/deposits",
            &json!({"user_id": user.id, "asset": asset, "amount": amount,
                    "reference": format!("test-{}-{asset}-{n}", user.id)}),
        )
        .await;
    }

    /// `asset → (available, locked)` in units of 10^-8.
    pub async fn balances(&self, user: &User) -> BTreeMap<String, (i128, i128)> {
        let (status, v) = self
            .call(
                reqwest::Method::GET,
                "/api/v1/account/balances",
                Some(&user.token),
                None,
            )
            .await;
        assert_eq!(status, 200, "balances: {v}");
        v.as_array()
            .expect("a list of balances")
            .iter()
            .map(|b| {
                (
                    b["asset"].as_str().unwrap().to_owned(),
                    (
                        units(b["available"].as_str().unwrap()),
                        units(b["locked"].as_str().unwrap()),
                    ),
                )
            })
            .collect()
    }

    pub async fn place(&self, user: &User, order: &Value) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            "/api/v1/orders",
            Some(&user.token),
            Some(order),
        )
        .await
    }

    pub async fn order(&self, user: &User, id: i64) -> Value {
        let (status, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/orders/{id}"),
                Some(&user.token),
                None,
            )
            .await;
        assert_eq!(status, 200, "GET order {id}: {v}");
        v
    }

    /// Polls (bounded) until order `id`'s status is one of `statuses`.
    pub async fn wait_order(
        &self,
        user: &User,
        id: i64,
        statuses: &[&str],
        within: Duration,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let o = self.order(user, id).await;
            if statuses.contains(&o["status"].as_str().unwrap_or_default()) {
                return o;
            }
            assert!(
                Instant::now() < deadline,
                "order {id} did not reach {statuses:?} within {within:?}: {o}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls (bounded) until `user`'s balances equal `expected` (every
    /// asset listed), then returns; panics with both sides otherwise.
    pub async fn wait_balances(
        &self,
        user: &User,
        expected: &[(&str, i128, i128)],
        within: Duration,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.balances(user).await;
            let ok = expected.iter().all(|(asset, avail, locked)| {
                got.get(*asset).copied().unwrap_or((0, 0)) == (*avail, *locked)
            });
            if ok {
                return;
            }
            if Instant::now() >= deadline {
                let want: Vec<String> = expected
                    .iter()
                    .map(|(a, av, l)| {
                        format!("{a}: available {} locked {}", fmt_units(*av), fmt_units(*l))
                    })
                    .collect();
                let have: Vec<String> = got
                    .iter()
                    .map(|(a, (av, l))| {
                        format!("{a}: available {} locked {}", fmt_units(*av), fmt_units(*l))
                    })
                    .collect();
                panic!(
                    "user {} balances after {within:?}:\n  expected {want:?}\n  got      {have:?}",
                    user.id
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.values_mut() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub token: String,
}

/// Units of 10^-8 per 1 (both test assets have scale 8).
pub const UNIT: i128 = 100_000_000;

/// `"12.5"` → 1_250_000_000 (scale 8); panics on anything else than a plain
/// non-negative-or-negative decimal with at most 8 fractional digits.
pub fn units(text: &str) -> i128 {
    let (neg, t) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    assert!(
        !int.is_empty()
            && int.bytes().all(|b| b.is_ascii_digit())
            && frac.bytes().all(|b| b.is_ascii_digit()),
        "not a decimal: {text:?}"
    );
    let frac = frac.trim_end_matches('0');
    assert!(frac.len() <= 8, "more than 8 decimals: {text:?}");
    let v = int.parse::<i128>().unwrap() * UNIT + format!("{frac:0<8}").parse::<i128>().unwrap();
    if neg { -v } else { v }
}

/// 1_250_000_000 → `"12.5"`.
pub fn fmt_units(v: i128) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.abs();
    let frac = format!("{:08}", a % UNIT);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{sign}{}", a / UNIT)
    } else {
        format!("{sign}{}.{frac}", a / UNIT)
    }
}

/// `a * b` of two scale-8 amounts, exact (panics when it is not a whole number of units).
pub fn mul(a: i128, b: i128) -> i128 {
    let p = a * b;
    assert_eq!(
        p % UNIT,
        0,
        "{} * {} is not exact at scale 8",
        fmt_units(a),
        fmt_units(b)
    );
    p / UNIT
}
