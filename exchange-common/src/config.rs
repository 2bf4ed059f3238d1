//! Typed configuration from the environment (and an optional env file).
//!
//! Every variable is read and checked before anything binds a port; all
//! problems are collected and reported together so an operator fixes them in
//! one go. `APP_ENV=prod` refuses development defaults (secrets starting with
//! `dev-` or shorter than 32 characters). Secrets are wrapped in [`Secret`],
//! whose `Debug` prints `***`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Exit code for a configuration error (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// The minimum length of a production secret.
pub const PROD_SECRET_LEN_MIN: usize = 32;

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Dev,
    Prod,
}

/// Consumer group and consumer name of one service's stream loops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerIdentity {
    pub group: String,
    pub name: String,
}

/// Every service's configuration: what all of them read at the top, and
/// a section per service (each reads its own section, and the gateway the
/// addresses it relays to).
#[derive(Debug, Clone)]
pub struct Config {
    pub app_env: AppEnv,
    pub app_version: String,
    pub log_level: String,
    /// How long a stopping service waits for its work in flight.
    pub shutdown_drain: Duration,
    /// What services present to each other's internal routes.
    pub internal_token: Secret,
    pub internal_token_previous: Option<Secret>,
    /// Required on `/metrics` when set.
    pub metrics_token: Option<Secret>,
    pub db: DbConfig,
    pub redis: RedisConfig,
    /// The abuse limits of the public HTTP listeners (the gateway's ports
    /// and marketdata's): see [`HttpLimitsConfig`].
    pub http: HttpLimitsConfig,
    pub gateway: GatewayConfig,
    pub order: OrderConfig,
    pub matching: MatchingConfig,
    pub clearing: ClearingConfig,
    pub marketdata: MarketdataConfig,
    pub wallet: WalletConfig,
}

#[derive(Debug, Clone)]
pub struct DbConfig {
    /// May carry a password, hence a secret.
    pub url: Secret,
    pub pool_max: u32,
    pub statement_timeout: Duration,
    /// `DB_READ_URL`: a streaming replica of `DB_URL` that serves the
    /// reads that may lag (see `exchange_common::replica` for which);
    /// `None`: every read goes to the primary.
    pub read_url: Option<Secret>,
    /// `DB_READ_MAX_LAG_MS`: the replica is not used while it is further
    /// behind the primary than this (reads go to the primary instead).
    pub read_max_lag: Duration,
}

/// The default `DB_READ_MAX_LAG_MS`: history a few seconds old is still
/// history, an order filled a minute ago and missing is a support ticket.
pub const DB_READ_MAX_LAG_MS_DEFAULT: u64 = 5_000;
/// Smallest accepted `DB_READ_MAX_LAG_MS`: the lag is measured every
/// quarter of the bound but at most every 100 ms, and under steady writes
/// reads up to two measurement intervals; a smaller bound would never
/// let the replica serve.
pub const DB_READ_MAX_LAG_MS_MIN: u64 = 500;
/// Largest accepted `DB_READ_MAX_LAG_MS` (ten minutes).
pub const DB_READ_MAX_LAG_MS_MAX: u64 = 600_000;

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: Secret,
    pub key_prefix: String,
    /// `REDIS_CA_FILE`: the PEM certificate(s) a `rediss://` server's
    /// certificate must chain to, instead of the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// `REDIS_CLIENT_CERT_FILE` and `REDIS_CLIENT_KEY_FILE` (PEM): a client
    /// certificate for servers that require one; both or neither.
    pub client_cert: Option<ClientCertFiles>,
    /// `REDIS_CLUSTER_NODES` (`host:port,…`): when set, Redis is a Redis
    /// Cluster whose seed nodes are `REDIS_URL`'s host and these, each
    /// reached with `REDIS_URL`'s scheme and credentials.
    pub cluster_nodes: Vec<String>,
}

impl RedisConfig {
    /// `url` without TLS files, under the default key prefix.
    pub fn plain(url: &str) -> Self {
        Self {
            url: Secret::new(url),
            key_prefix: "exchange".to_owned(),
            ca_file: None,
            client_cert: None,
            cluster_nodes: Vec::new(),
        }
    }

    /// Only the Redis settings from the process environment (`REDIS_URL`,
    /// `REDIS_KEY_PREFIX`, the TLS files), checked as at a service's start:
    /// for tools that need nothing else (`exchange admin dlq`).
    pub fn from_env() -> Result<Self, ConfigErrors> {
        let lookup = |key: &str| std::env::var(key).ok();
        let mut r = Reader {
            lookup: &lookup,
            errors: Vec::new(),
            prod: false,
        };
        let config = Self {
            url: r.url("REDIS_URL", &["redis", "rediss"], "redis://host:6379"),
            key_prefix: r.or("REDIS_KEY_PREFIX", "exchange"),
            ca_file: r.readable_file("REDIS_CA_FILE", false),
            client_cert: r.client_cert_files(),
            cluster_nodes: r.redis_cluster_nodes(),
        };
        if r.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(r.errors))
        }
    }
}

/// What a public listener (the gateway's :8080, :8090 and admin port,
/// marketdata's :8094) allows one connection and one peer address; the
/// internal services' listeners have none of these (their only client is
/// the gateway). See `exchange_common::listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimitsConfig {
    /// `HTTP_HEADER_READ_TIMEOUT_SECONDS`: time for a request's whole head
    /// (request line and headers) to arrive, counted from the moment the
    /// connection is ready for it (opened, or its previous response sent):
    /// a client that sends headers byte by byte, or a keep-alive connection
    /// with no next request, is closed after it.
    pub header_read_timeout: Duration,
    /// `HTTP_IDLE_TIMEOUT_SECONDS`: a connection on which no byte moves
    /// either way for this long (a stalled request body, a response its
    /// client does not read) is closed.
    pub idle_timeout: Duration,
    /// `HTTP_CONNECTIONS_PER_IP_MAX`: open connections (WebSockets included,
    /// authenticated or not) from one TCP peer address (an IPv6 peer by its
    /// /64); beyond it a new connection is closed at once. Peers in
    /// `TRUSTED_PROXIES` (a load balancer carries many clients) are not
    /// capped.
    pub connections_per_ip_max: u32,
}

/// Smallest accepted `HTTP_CONNECTIONS_PER_IP_MAX`: the gateway keeps up to
/// half of it open to marketdata, and a browser opens six at once.
pub const HTTP_CONNECTIONS_PER_IP_MIN: u32 = 8;
/// Largest accepted `HTTP_HEADER_READ_TIMEOUT_SECONDS`.
pub const HTTP_HEADER_READ_TIMEOUT_SECONDS_MAX: u64 = 120;
/// Largest accepted `HTTP_IDLE_TIMEOUT_SECONDS`.
pub const HTTP_IDLE_TIMEOUT_SECONDS_MAX: u64 = 3_600;

/// A client certificate and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertFiles {
    pub cert_file: PathBuf,
    /// Checked at start to be private to the service user (mode 0600 or
    /// 0400, owned by it).
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub http_addr: SocketAddr,
    pub ws_addr: SocketAddr,
    /// `ADMIN_HTTP_ADDR`: when set, the admin API is served on this address
    /// only (e.g. loopback or an internal network) and the public port
    /// answers 404 for `/admin`; when unset, it stays on `http_addr`.
    pub admin_http_addr: Option<SocketAddr>,
    pub order_service_url: String,
    pub marketdata_url: String,
    /// The custody service (`WALLET_SERVICE_URL`), called with `INTERNAL_TOKEN`.
    pub wallet_service_url: String,
    pub consumer_name: String,
    pub auth_token_secret: Secret,
    pub auth_token_secret_previous: Option<Secret>,
    /// `API_KEY_ENCRYPTION_KEY`: the key API-key (and TOTP) secrets are
    /// encrypted with at rest. Required with `APP_ENV=prod`; never equal to
    /// nor derived from `AUTH_TOKEN_SECRET` (so rotating that one leaves API
    /// keys alone). Unset outside prod: a fixed development key (see the
    /// gateway's `auth::keys` module).
    pub api_key_encryption_key: Option<Secret>,
    /// `API_KEY_ENCRYPTION_KEY_PREVIOUS`: still accepted when decrypting
    /// during a rotation, until `exchange admin rotate-api-key-encryption`
    /// has re-encrypted every stored secret under the current key.
    pub api_key_encryption_key_previous: Option<Secret>,
    pub access_token_ttl: Duration,
    /// The issuer shown in authenticator apps (`TOTP_ISSUER`).
    pub totp_issuer: String,
    pub admin_token: Secret,
    pub enable_docs: bool,
    pub rate_limit_login_per_minute: u32,
    /// `LOGIN_FAILURES_PER_ACCOUNT`: wrong logins one email may collect in
    /// [`Self::login_failure_window`] (from any address) before every login
    /// of that email, right or wrong, is refused until the window passes.
    pub login_failures_per_account: u32,
    /// `LOGIN_FAILURE_WINDOW_SECONDS`.
    pub login_failure_window: Duration,
    /// `PASSWORD_HASH_QUEUE_MAX`: password hashes that may wait for a free
    /// hashing slot; beyond that a login or registration is answered 503
    /// `OVERLOADED` at once instead of queueing.
    pub password_hash_queue_max: usize,
    pub rate_limit_orders_per_second: u32,
    pub rate_limit_ip_per_second: u32,
    pub trusted_proxies: Vec<String>,
    /// Placements the gateway coalesces into one call to the order service
    /// (`1` sends each alone).
    pub place_batch_max: usize,
}

#[derive(Debug, Clone)]
pub struct OrderConfig {
    pub http_addr: SocketAddr,
    pub consumer: ConsumerIdentity,
    /// How long an order-service worker waits for more requests before it
    /// starts a batch while another batch is in flight.
    pub batch_linger: Duration,
}

#[derive(Debug, Clone)]
pub struct MatchingConfig {
    pub http_addr: SocketAddr,
    pub consumer: ConsumerIdentity,
    /// Markets this matching replica owns; `["*"]` means all.
    pub markets: Vec<String>,
    /// Entries `<prefix>:events` keeps at most when a consumer group lags
    /// behind that far (a dead replica's group): beyond it such a group is
    /// no longer waited for (it refills from Postgres). Within it the stream
    /// is trimmed only below what every group has passed.
    pub events_stream_max_len: u64,
    /// How often matching trims `<prefix>:events`.
    pub events_stream_trim_interval: Duration,
    /// How long a replica's lease on a market lasts unrenewed
    /// (`MATCHING_LEASE_MS`): a standby takes a dead owner's markets
    /// after at most this long (exchange-matching's `lease` module).
    pub lease: Duration,
}

#[derive(Debug, Clone)]
pub struct ClearingConfig {
    pub http_addr: SocketAddr,
    pub consumer: ConsumerIdentity,
    /// How long clearing waits after a read that found some but fewer
    /// entries than it takes at once, so that the next settlement covers
    /// more of them (balance and ledger rows are netted per settlement).
    pub read_linger: Duration,
}

#[derive(Debug, Clone)]
pub struct MarketdataConfig {
    pub http_addr: SocketAddr,
    pub consumer: ConsumerIdentity,
    /// Origins whose browsers may open the public WebSocket.
    pub ws_allow_origins: Vec<String>,
    /// `MARKETDATA_WS_CONNECTIONS_PER_IP_MAX`: public WebSockets open at
    /// once per client IP (through `TRUSTED_PROXIES`); beyond it the
    /// handshake is answered 429 `TOO_MANY_CONNECTIONS`.
    pub ws_connections_per_ip_max: u32,
    /// `MARKETDATA_WS_MESSAGES_PER_SECOND`: messages (text, binary, ping,
    /// pong) a client may send per second on one WebSocket, four times that
    /// at once; beyond it the connection is closed (1008), as Binance does.
    pub ws_messages_per_second: u32,
    /// `MARKETDATA_WS_SNAPSHOTS_PER_10S`: depth snapshots one connection
    /// may be sent per 10 s (each depth subscribe or re-subscribe renders
    /// one), that many at once; beyond it the subscribe is refused with
    /// `RATE_LIMITED`.
    /// At least [`MARKETDATA_WS_CHANNELS_PER_MESSAGE_MAX`].
    pub ws_snapshots_per_10s: u32,
    /// `MARKETDATA_RATE_LIMIT_IP_PER_SECOND`: REST requests per client IP
    /// per second (that many at once); beyond it 429 `RATE_LIMITED`. A call
    /// presenting `INTERNAL_TOKEN` (the gateway's, which limits its own
    /// clients) is not counted.
    pub rate_limit_ip_per_second: u32,
}

#[derive(Debug, Clone)]
pub struct WalletConfig {
    pub http_addr: SocketAddr,
    /// How long a new withdrawal address waits before it may be used
    /// (`WITHDRAWAL_ADDRESS_COOLDOWN_SECS`), so a stolen session cannot add
    /// an address and drain the account at once.
    pub address_cooldown: Duration,
}

/// Largest accepted `ORDER_BATCH_LINGER_US`.
pub const ORDER_BATCH_LINGER_US_MAX: u64 = 100_000;

/// Largest accepted `CLEARING_READ_LINGER_MS`.
pub const CLEARING_READ_LINGER_MS_MAX: u64 = 1_000;

/// Largest accepted `GATEWAY_PLACE_BATCH_MAX` (and its default): what one
/// order-service batch call may carry.
pub const GATEWAY_PLACE_BATCH_MAX_LIMIT: usize = 256;

/// Smallest accepted `EVENTS_STREAM_MAX_LEN`: a cap lower than a few reads
/// of every consumer would cut entries live consumers still need.
pub const EVENTS_STREAM_MAX_LEN_MIN: u64 = 10_000;
/// Bounds of `MATCHING_LEASE_MS`: shorter than half a second, a database
/// hiccup would move markets between replicas; longer than a minute, a
/// dead owner stops its markets too long.
pub const MATCHING_LEASE_MS_MIN: u64 = 500;
pub const MATCHING_LEASE_MS_MAX: u64 = 60_000;

/// The default `PASSWORD_HASH_QUEUE_MAX`: 32 waiting hashes per core, at
/// least 64. A hash takes a core for tens of milliseconds, so the last one
/// waits about a second: a burst of sign-ups or logins (a launch, a
/// reconnect storm) is served, a flood is refused at once instead of every
/// login waiting behind it.
pub fn password_hash_queue_default() -> usize {
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .saturating_mul(32)
        .max(64)
}

/// Whether `candidate` is `secret` or made from it by adding or cutting
/// characters (one contains the other), compared case-insensitively.
fn derived_from(candidate: &str, secret: &str) -> bool {
    let (a, b) = (
        candidate.trim().to_ascii_lowercase(),
        secret.trim().to_ascii_lowercase(),
    );
    if a.is_empty() || b.is_empty() {
        return false;
    }
    // A short common piece (a prefix like `dev-`) proves nothing; a
    // containment of 16 or more characters does.
    let shorter = a.len().min(b.len());
    a == b || (shorter >= 16 && (a.contains(&b) || b.contains(&a)))
}

/// `API_KEY_ENCRYPTION_KEY` (and its `_PREVIOUS`): required in prod, never
/// equal to nor derived from `AUTH_TOKEN_SECRET` or its `_PREVIOUS`.
fn check_api_key_encryption_key(r: &mut Reader<'_>, g: &GatewayConfig) {
    if r.prod && g.api_key_encryption_key.is_none() {
        r.errors.push(
            "API_KEY_ENCRYPTION_KEY is required with APP_ENV=prod (a random secret of at least 32 characters, not AUTH_TOKEN_SECRET)"
                .to_owned(),
        );
    }
    let auth = std::iter::once(("AUTH_TOKEN_SECRET", &g.auth_token_secret)).chain(
        g.auth_token_secret_previous
            .as_ref()
            .map(|p| ("AUTH_TOKEN_SECRET_PREVIOUS", p)),
    );
    let auth: Vec<(&str, &Secret)> = auth.collect();
    for (key, value) in [
        ("API_KEY_ENCRYPTION_KEY", g.api_key_encryption_key.as_ref()),
        (
            "API_KEY_ENCRYPTION_KEY_PREVIOUS",
            g.api_key_encryption_key_previous.as_ref(),
        ),
    ] {
        let Some(value) = value else { continue };
        for (auth_key, auth_value) in &auth {
            if derived_from(value.expose(), auth_value.expose()) {
                r.errors.push(format!(
                    "{key} must be its own random secret, not {auth_key} or derived from it (rotating {auth_key} must not touch API keys)"
                ));
            }
        }
    }
}

/// The public listeners' limits and marketdata's: in range.
fn check_abuse_limits(r: &mut Reader<'_>, config: &Config) {
    let h = &config.http;
    let seconds = |key: &str, d: Duration, max: u64, errors: &mut Vec<String>| {
        if d.is_zero() || d.as_secs() > max {
            errors.push(format!("{key} must be between 1 and {max}"));
        }
    };
    seconds(
        "HTTP_HEADER_READ_TIMEOUT_SECONDS",
        h.header_read_timeout,
        HTTP_HEADER_READ_TIMEOUT_SECONDS_MAX,
        &mut r.errors,
    );
    seconds(
        "HTTP_IDLE_TIMEOUT_SECONDS",
        h.idle_timeout,
        HTTP_IDLE_TIMEOUT_SECONDS_MAX,
        &mut r.errors,
    );
    if h.connections_per_ip_max < HTTP_CONNECTIONS_PER_IP_MIN {
        r.errors.push(format!(
            "HTTP_CONNECTIONS_PER_IP_MAX must be at least {HTTP_CONNECTIONS_PER_IP_MIN}"
        ));
    }
    let m = &config.marketdata;
    for (key, value) in [
        (
            "MARKETDATA_WS_CONNECTIONS_PER_IP_MAX",
            m.ws_connections_per_ip_max,
        ),
        (
            "MARKETDATA_WS_MESSAGES_PER_SECOND",
            m.ws_messages_per_second,
        ),
        ("MARKETDATA_WS_SNAPSHOTS_PER_10S", m.ws_snapshots_per_10s),
        (
            "MARKETDATA_RATE_LIMIT_IP_PER_SECOND",
            m.rate_limit_ip_per_second,
        ),
    ] {
        if value == 0 {
            r.errors.push(format!("{key} must be at least 1"));
        }
    }
    // One subscribe may name this many depth channels, each a snapshot
    // taken at once: a smaller budget would refuse it forever.
    if m.ws_snapshots_per_10s != 0
        && usize::try_from(m.ws_snapshots_per_10s)
            .is_ok_and(|n| n < MARKETDATA_WS_CHANNELS_PER_MESSAGE_MAX)
    {
        r.errors.push(format!(
            "MARKETDATA_WS_SNAPSHOTS_PER_10S must be at least {MARKETDATA_WS_CHANNELS_PER_MESSAGE_MAX} \
             (the channels one WebSocket subscribe may name)"
        ));
    }
}

/// Channels one marketdata WebSocket subscribe may name (marketdata's
/// `WS_CHANNELS_PER_MESSAGE_MAX`); `MARKETDATA_WS_SNAPSHOTS_PER_10S` may not
/// be smaller.
pub const MARKETDATA_WS_CHANNELS_PER_MESSAGE_MAX: usize = 32;

/// Every configuration problem found, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problems):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads `KEY=VALUE` lines (optional `export `, `#` comments, optional
/// surrounding quotes). Variables already in the process environment win.
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", n + 1));
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("line {}: invalid variable name", n + 1));
        }
        let value = value.trim();
        let value = ["\"", "'"]
            .iter()
            .find_map(|q| value.strip_prefix(q).and_then(|v| v.strip_suffix(q)))
            .unwrap_or(value);
        out.insert(key.to_owned(), value.to_owned());
    }
    Ok(out)
}

struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<String>,
    prod: bool,
}

impl Reader<'_> {
    fn get(&self, key: &str) -> Option<String> {
        (self.lookup)(key).filter(|v| !v.is_empty())
    }

    fn required(&mut self, key: &str, hint: &str) -> String {
        self.get(key).unwrap_or_else(|| {
            self.errors.push(format!("{key} is required ({hint})"));
            String::new()
        })
    }

    fn or(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or_else(|| default.to_owned())
    }

    fn parsed<T: std::str::FromStr>(&mut self, key: &str, default: T, what: &str) -> T {
        match self.get(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                self.errors.push(format!("{key}={v:?} is not {what}"));
                default
            }),
        }
    }

    fn addr(&mut self, key: &str, default: &str) -> SocketAddr {
        let fallback = SocketAddr::from(([0, 0, 0, 0], 0));
        let text = self.or(key, default);
        text.parse().unwrap_or_else(|_| {
            self.errors.push(format!(
                "{key}={text:?} is not a socket address like 127.0.0.1:8080"
            ));
            fallback
        })
    }

    fn optional_addr(&mut self, key: &str) -> Option<SocketAddr> {
        let text = self.get(key)?;
        match text.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.errors.push(format!(
                    "{key}={text:?} is not a socket address like 127.0.0.1:8081"
                ));
                None
            }
        }
    }

    fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.get(key).as_deref() {
            None => default,
            Some("true" | "1" | "yes") => true,
            Some("false" | "0" | "no") => false,
            Some(v) => {
                self.errors
                    .push(format!("{key}={v:?} is not true or false"));
                default
            }
        }
    }

    fn check_secret(&mut self, key: &str, value: &str) {
        if self.prod && !value.is_empty() {
            if value.starts_with("dev-") {
                self.errors.push(format!(
                    "{key} is a development default, refused with APP_ENV=prod"
                ));
            } else if value.chars().count() < PROD_SECRET_LEN_MIN {
                self.errors.push(format!(
                    "{key} is shorter than {PROD_SECRET_LEN_MIN} characters, refused with APP_ENV=prod"
                ));
            }
        }
    }

    fn secret(&mut self, key: &str) -> Secret {
        let v = self.required(key, "a random secret of at least 32 characters");
        self.check_secret(key, &v);
        Secret(v)
    }

    fn optional_secret(&mut self, key: &str) -> Option<Secret> {
        let v = self.get(key)?;
        self.check_secret(key, &v);
        Some(Secret(v))
    }

    fn url(&mut self, key: &str, schemes: &[&str], hint: &str) -> Secret {
        let v = self.required(key, hint);
        self.check_scheme(key, &v, schemes);
        Secret(v)
    }

    fn optional_url(&mut self, key: &str, schemes: &[&str]) -> Option<Secret> {
        let v = self.get(key)?;
        self.check_scheme(key, &v, schemes);
        Some(Secret(v))
    }

    fn check_scheme(&mut self, key: &str, v: &str, schemes: &[&str]) {
        if !v.is_empty() && !schemes.iter().any(|s| v.starts_with(&format!("{s}://"))) {
            self.errors.push(format!(
                "{key} must start with {}://",
                schemes.join("://, ")
            ));
        }
    }

    /// A file that must exist and be readable now; with `private`, also
    /// only readable by the service user (see [`check_private_key_file`]).
    fn readable_file(&mut self, key: &str, private: bool) -> Option<PathBuf> {
        let path = PathBuf::from(self.get(key)?);
        if let Err(e) = std::fs::File::open(&path) {
            self.errors
                .push(format!("{key}={} cannot be read: {e}", path.display()));
        } else if private && let Err(why) = check_private_key_file(&path) {
            self.errors.push(format!("{key}={}: {why}", path.display()));
        }
        Some(path)
    }

    fn client_cert_files(&mut self) -> Option<ClientCertFiles> {
        let cert = self.readable_file("REDIS_CLIENT_CERT_FILE", false);
        let key = self.readable_file("REDIS_CLIENT_KEY_FILE", true);
        match (cert, key) {
            (Some(cert_file), Some(key_file)) => Some(ClientCertFiles {
                cert_file,
                key_file,
            }),
            (None, None) => None,
            _ => {
                self.errors.push(
                    "REDIS_CLIENT_CERT_FILE and REDIS_CLIENT_KEY_FILE go together: set both or neither"
                        .to_owned(),
                );
                None
            }
        }
    }

    /// `REDIS_CLUSTER_NODES` as `host:port` entries (empty when unset).
    fn redis_cluster_nodes(&mut self) -> Vec<String> {
        let Some(list) = self.get("REDIS_CLUSTER_NODES") else {
            return Vec::new();
        };
        match crate::redis::parse_cluster_nodes(&list) {
            Ok(nodes) => nodes
                .into_iter()
                .map(|(host, port)| {
                    if host.contains(':') {
                        format!("[{host}]:{port}")
                    } else {
                        format!("{host}:{port}")
                    }
                })
                .collect(),
            Err(e) => {
                self.errors.push(format!(
                    "REDIS_CLUSTER_NODES must be host:port[,host:port…]: {e}"
                ));
                Vec::new()
            }
        }
    }

    fn consumer(&mut self, service: &str, hostname: &str) -> ConsumerIdentity {
        let upper = service.to_ascii_uppercase();
        ConsumerIdentity {
            group: self.or(&format!("{upper}_CONSUMER_GROUP"), service),
            name: self.or(
                &format!("{upper}_CONSUMER_NAME"),
                &format!("{service}-{hostname}"),
            ),
        }
    }

    fn list(&self, key: &str, default: &str) -> Vec<String> {
        self.or(key, default)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Config {
    /// Loads from the process environment, overlaid on `ENV_FILE` when set.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        let file = match std::env::var("ENV_FILE") {
            Ok(path) if !path.is_empty() => match std::fs::read_to_string(&path) {
                Ok(text) => parse_env_file(&text)
                    .map_err(|e| ConfigErrors(vec![format!("ENV_FILE {path}: {e}")]))?,
                Err(e) => return Err(ConfigErrors(vec![format!("ENV_FILE {path}: {e}")])),
            },
            _ => BTreeMap::new(),
        };
        Self::from_lookup(&|key| std::env::var(key).ok().or_else(|| file.get(key).cloned()))
    }

    /// Loads from any key lookup (tests use a map).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut r = Reader {
            lookup,
            errors: Vec::new(),
            prod: false,
        };
        let app_env = match r.or("APP_ENV", "dev").as_str() {
            "dev" => AppEnv::Dev,
            "prod" => AppEnv::Prod,
            other => {
                r.errors
                    .push(format!("APP_ENV={other:?} must be dev or prod"));
                AppEnv::Dev
            }
        };
        r.prod = app_env == AppEnv::Prod;
        let app_version = if r.prod {
            r.required("APP_VERSION", "the release version, e.g. 1.4.2")
        } else {
            r.or("APP_VERSION", "dev")
        };
        let hostname = r.get("HOSTNAME").unwrap_or_else(|| "local".to_owned());
        let enable_docs = r.bool("ENABLE_DOCS", false);
        if r.prod && enable_docs {
            r.errors
                .push("ENABLE_DOCS=true is refused with APP_ENV=prod".to_owned());
        }
        let origins = r.list("MARKETDATA_WS_ALLOW_ORIGINS", "");
        if r.prod && (origins.is_empty() || origins.iter().any(|o| o == "*")) {
            r.errors.push(
                "MARKETDATA_WS_ALLOW_ORIGINS must list the allowed origins (not empty, not *) with APP_ENV=prod"
                    .to_owned(),
            );
        }
        let log_level = r.or("LOG_LEVEL", "info");
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            r.errors.push(format!(
                "LOG_LEVEL={log_level:?} is not a valid filter (e.g. info, debug)"
            ));
        }
        let db_statement_timeout_ms: u64 =
            r.parsed("DB_STATEMENT_TIMEOUT_MS", 5_000, "a number of milliseconds");
        let access_token_ttl_seconds: u64 =
            r.parsed("ACCESS_TOKEN_TTL_SECONDS", 3_600, "a number of seconds");
        let config = Config {
            app_env,
            app_version,
            internal_token: r.secret("INTERNAL_TOKEN"),
            internal_token_previous: r.optional_secret("INTERNAL_TOKEN_PREVIOUS"),
            metrics_token: r.optional_secret("METRICS_TOKEN"),
            log_level,
            shutdown_drain: Duration::from_secs(r.parsed(
                "SHUTDOWN_DRAIN_SECONDS",
                10,
                "a number of seconds",
            )),
            db: DbConfig {
                url: r.url(
                    "DB_URL",
                    &["postgres", "postgresql"],
                    "postgres://user:password@host:5432/db",
                ),
                pool_max: r.parsed("DB_POOL_MAX", 10, "a positive integer"),
                statement_timeout: Duration::from_millis(db_statement_timeout_ms),
                read_url: r.optional_url("DB_READ_URL", &["postgres", "postgresql"]),
                read_max_lag: Duration::from_millis(r.parsed(
                    "DB_READ_MAX_LAG_MS",
                    DB_READ_MAX_LAG_MS_DEFAULT,
                    "a number of milliseconds",
                )),
            },
            redis: RedisConfig {
                url: r.url("REDIS_URL", &["redis", "rediss"], "redis://host:6379"),
                key_prefix: r.or("REDIS_KEY_PREFIX", "exchange"),
                ca_file: r.readable_file("REDIS_CA_FILE", false),
                client_cert: r.client_cert_files(),
                cluster_nodes: r.redis_cluster_nodes(),
            },
            http: HttpLimitsConfig {
                header_read_timeout: Duration::from_secs(r.parsed(
                    "HTTP_HEADER_READ_TIMEOUT_SECONDS",
                    10,
                    "a number of seconds",
                )),
                idle_timeout: Duration::from_secs(r.parsed(
                    "HTTP_IDLE_TIMEOUT_SECONDS",
                    60,
                    "a number of seconds",
                )),
                connections_per_ip_max: r.parsed(
                    "HTTP_CONNECTIONS_PER_IP_MAX",
                    64,
                    "a whole number of connections",
                ),
            },
            gateway: GatewayConfig {
                auth_token_secret: r.secret("AUTH_TOKEN_SECRET"),
                auth_token_secret_previous: r.optional_secret("AUTH_TOKEN_SECRET_PREVIOUS"),
                api_key_encryption_key: r.optional_secret("API_KEY_ENCRYPTION_KEY"),
                api_key_encryption_key_previous: r
                    .optional_secret("API_KEY_ENCRYPTION_KEY_PREVIOUS"),
                access_token_ttl: Duration::from_secs(access_token_ttl_seconds),
                totp_issuer: r.or("TOTP_ISSUER", "exchange"),
                admin_token: r.secret("ADMIN_TOKEN"),
                enable_docs,
                http_addr: r.addr("GATEWAY_HTTP_ADDR", "127.0.0.1:8080"),
                ws_addr: r.addr("GATEWAY_WS_ADDR", "127.0.0.1:8090"),
                admin_http_addr: r.optional_addr("ADMIN_HTTP_ADDR"),
                order_service_url: r.or("ORDER_SERVICE_URL", "http://127.0.0.1:8091"),
                marketdata_url: r.or("MARKETDATA_URL", "http://127.0.0.1:8094"),
                wallet_service_url: r.or("WALLET_SERVICE_URL", "http://127.0.0.1:8095"),
                consumer_name: r.or("GATEWAY_CONSUMER_NAME", &format!("gateway-{hostname}")),
                rate_limit_login_per_minute: r.parsed(
                    "RATE_LIMIT_LOGIN_PER_MINUTE",
                    10,
                    "a positive integer",
                ),
                login_failures_per_account: r.parsed(
                    "LOGIN_FAILURES_PER_ACCOUNT",
                    10,
                    "a positive integer",
                ),
                login_failure_window: Duration::from_secs(r.parsed(
                    "LOGIN_FAILURE_WINDOW_SECONDS",
                    900,
                    "a number of seconds",
                )),
                password_hash_queue_max: r.parsed(
                    "PASSWORD_HASH_QUEUE_MAX",
                    password_hash_queue_default(),
                    "a whole number of waiting hashes",
                ),
                rate_limit_orders_per_second: r.parsed(
                    "RATE_LIMIT_ORDERS_PER_SECOND",
                    50,
                    "a positive integer",
                ),
                rate_limit_ip_per_second: r.parsed(
                    "RATE_LIMIT_IP_PER_SECOND",
                    100,
                    "a positive integer",
                ),
                trusted_proxies: r.list("TRUSTED_PROXIES", ""),
                place_batch_max: r.parsed(
                    "GATEWAY_PLACE_BATCH_MAX",
                    GATEWAY_PLACE_BATCH_MAX_LIMIT,
                    "a whole number of placements",
                ),
            },
            order: OrderConfig {
                http_addr: r.addr("ORDER_HTTP_ADDR", "127.0.0.1:8091"),
                consumer: r.consumer("order", &hostname),
                batch_linger: Duration::from_micros(r.parsed(
                    "ORDER_BATCH_LINGER_US",
                    2_000,
                    "a number of microseconds",
                )),
            },
            matching: MatchingConfig {
                http_addr: r.addr("MATCHING_HTTP_ADDR", "127.0.0.1:8092"),
                consumer: r.consumer("matching", &hostname),
                markets: r.list("MATCHING_MARKETS", "*"),
                events_stream_max_len: r.parsed(
                    "EVENTS_STREAM_MAX_LEN",
                    1_000_000,
                    "a whole number of entries",
                ),
                events_stream_trim_interval: Duration::from_secs(r.parsed(
                    "EVENTS_STREAM_TRIM_INTERVAL_SECONDS",
                    10,
                    "a number of seconds",
                )),
                lease: Duration::from_millis(r.parsed(
                    "MATCHING_LEASE_MS",
                    2_500,
                    "a number of milliseconds",
                )),
            },
            clearing: ClearingConfig {
                http_addr: r.addr("CLEARING_HTTP_ADDR", "127.0.0.1:8093"),
                consumer: r.consumer("clearing", &hostname),
                read_linger: Duration::from_millis(r.parsed(
                    "CLEARING_READ_LINGER_MS",
                    10,
                    "a number of milliseconds",
                )),
            },
            marketdata: MarketdataConfig {
                ws_allow_origins: origins,
                http_addr: r.addr("MARKETDATA_HTTP_ADDR", "127.0.0.1:8094"),
                consumer: r.consumer("marketdata", &hostname),
                ws_connections_per_ip_max: r.parsed(
                    "MARKETDATA_WS_CONNECTIONS_PER_IP_MAX",
                    32,
                    "a whole number of connections",
                ),
                ws_messages_per_second: r.parsed(
                    "MARKETDATA_WS_MESSAGES_PER_SECOND",
                    5,
                    "a whole number of messages",
                ),
                ws_snapshots_per_10s: r.parsed(
                    "MARKETDATA_WS_SNAPSHOTS_PER_10S",
                    32,
                    "a whole number of snapshots",
                ),
                rate_limit_ip_per_second: r.parsed(
                    "MARKETDATA_RATE_LIMIT_IP_PER_SECOND",
                    50,
                    "a whole number of requests",
                ),
            },
            wallet: WalletConfig {
                http_addr: r.addr("WALLET_HTTP_ADDR", "127.0.0.1:8095"),
                address_cooldown: Duration::from_secs(r.parsed(
                    "WITHDRAWAL_ADDRESS_COOLDOWN_SECS",
                    86_400,
                    "a number of seconds",
                )),
            },
        };
        for proxy in &config.gateway.trusted_proxies {
            if crate::net::IpNet::parse(proxy).is_none() {
                r.errors.push(format!(
                    "TRUSTED_PROXIES entry {proxy:?} is not an IP address or CIDR network"
                ));
            }
        }
        check_api_key_encryption_key(&mut r, &config.gateway);
        check_abuse_limits(&mut r, &config);
        if config.gateway.login_failures_per_account == 0 {
            r.errors
                .push("LOGIN_FAILURES_PER_ACCOUNT must be at least 1".to_owned());
        }
        if config.gateway.login_failure_window.is_zero() {
            r.errors
                .push("LOGIN_FAILURE_WINDOW_SECONDS must be at least 1".to_owned());
        }
        if let Some(admin) = config.gateway.admin_http_addr
            && (admin == config.gateway.http_addr || admin == config.gateway.ws_addr)
        {
            r.errors.push(format!(
                "ADMIN_HTTP_ADDR={admin} must differ from GATEWAY_HTTP_ADDR and GATEWAY_WS_ADDR"
            ));
        }
        if !(1..=GATEWAY_PLACE_BATCH_MAX_LIMIT).contains(&config.gateway.place_batch_max) {
            r.errors.push(format!(
                "GATEWAY_PLACE_BATCH_MAX must be between 1 and {GATEWAY_PLACE_BATCH_MAX_LIMIT}"
            ));
        }
        if config.matching.events_stream_max_len < EVENTS_STREAM_MAX_LEN_MIN {
            r.errors.push(format!(
                "EVENTS_STREAM_MAX_LEN must be at least {EVENTS_STREAM_MAX_LEN_MIN}"
            ));
        }
        if !(MATCHING_LEASE_MS_MIN..=MATCHING_LEASE_MS_MAX)
            .contains(&u64::try_from(config.matching.lease.as_millis()).unwrap_or(u64::MAX))
        {
            r.errors.push(format!(
                "MATCHING_LEASE_MS must be between {MATCHING_LEASE_MS_MIN} and {MATCHING_LEASE_MS_MAX}"
            ));
        }
        if config.matching.events_stream_trim_interval.is_zero() {
            r.errors
                .push("EVENTS_STREAM_TRIM_INTERVAL_SECONDS must be at least 1".to_owned());
        }
        if config.clearing.read_linger > Duration::from_millis(CLEARING_READ_LINGER_MS_MAX) {
            r.errors.push(format!(
                "CLEARING_READ_LINGER_MS must be at most {CLEARING_READ_LINGER_MS_MAX}"
            ));
        }
        if config.order.batch_linger > Duration::from_micros(ORDER_BATCH_LINGER_US_MAX) {
            r.errors.push(format!(
                "ORDER_BATCH_LINGER_US must be at most {ORDER_BATCH_LINGER_US_MAX}"
            ));
        }
        if config.db.pool_max == 0 {
            r.errors.push("DB_POOL_MAX must be at least 1".to_owned());
        }
        check_read_replica(&mut r, &config.db);
        if config.redis.key_prefix.contains(char::is_whitespace)
            || config.redis.key_prefix.contains(['{', '}'])
        {
            r.errors
                .push("REDIS_KEY_PREFIX must not contain spaces or braces".to_owned());
        }
        let allow_plaintext = r.bool("ALLOW_PLAINTEXT_BACKENDS", false);
        check_backend_tls(&mut r, &config, allow_plaintext);
        if r.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(r.errors))
        }
    }

    /// `TRUSTED_PROXIES` parsed (validated at load).
    pub fn trusted_proxy_nets(&self) -> Vec<crate::net::IpNet> {
        self.gateway
            .trusted_proxies
            .iter()
            .filter_map(|p| crate::net::IpNet::parse(p))
            .collect()
    }

    pub fn is_prod(&self) -> bool {
        self.app_env == AppEnv::Prod
    }

    /// A key under this deployment's Redis prefix: `key("events")` → `exchange:events`.
    pub fn redis_key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.redis.key_prefix)
    }

    /// A configuration fit for tests and local tools: dev secrets, the given
    /// database and Redis, every address on an ephemeral loopback port.
    pub fn for_tests(db_url: &str, redis_url: &str, redis_key_prefix: &str) -> Self {
        let map: BTreeMap<&str, String> = [
            ("DB_URL", db_url.to_owned()),
            ("REDIS_URL", redis_url.to_owned()),
            ("REDIS_KEY_PREFIX", redis_key_prefix.to_owned()),
            (
                "INTERNAL_TOKEN",
                "dev-internal-token-change-me-please-000".to_owned(),
            ),
            (
                "AUTH_TOKEN_SECRET",
                "dev-auth-token-secret-change-me-please-0".to_owned(),
            ),
            (
                "ADMIN_TOKEN",
                "dev-admin-token-change-me-please-00000".to_owned(),
            ),
            ("SHUTDOWN_DRAIN_SECONDS", "2".to_owned()),
        ]
        .into_iter()
        .collect();
        #[allow(clippy::expect_used)]
        Self::from_lookup(&|k| map.get(k).cloned()).expect("test configuration is valid")
    }
}

/// Whether `host` (as a URL names it) is this machine: a loopback address
/// (127.0.0.0/8, ::1), `localhost`, or a Unix socket path.
pub fn is_local_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses a private key file that others than the service user could read:
/// its mode must be 0600 or 0400 (no group or other bits) and its owner the
/// user the process runs as.
pub fn check_private_key_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "key files are refused unless private to the service user: mode is {mode:04o}, \
             expected 0600 or 0400 (chmod 600 it)"
        ));
    }
    // The process's effective uid is the owner of /proc/self (Linux).
    if let Ok(me) = std::fs::metadata("/proc/self").map(|m| m.uid())
        && meta.uid() != me
    {
        return Err(format!(
            "key files are refused unless private to the service user: owned by uid {}, \
             the service runs as uid {me}",
            meta.uid()
        ));
    }
    Ok(())
}

/// `DB_URL`'s host, its TLS mode, and whether it is local, as sqlx (which
/// connects with it) reads the URL. `None` when the URL does not parse.
fn db_target(url: &str) -> Option<(String, sqlx::postgres::PgSslMode)> {
    use std::str::FromStr as _;
    let options = sqlx::postgres::PgConnectOptions::from_str(url).ok()?;
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => options.get_host().to_owned(),
    };
    Some((host, options.get_ssl_mode()))
}

/// `DB_READ_MAX_LAG_MS` in range; `DB_READ_URL` not the primary itself
/// (a "replica" that is the primary would never be behind, and never be
/// used: the replica monitor refuses a server that is not in recovery).
fn check_read_replica(r: &mut Reader<'_>, db: &DbConfig) {
    let lag_ms = db.read_max_lag.as_millis();
    if !(u128::from(DB_READ_MAX_LAG_MS_MIN)..=u128::from(DB_READ_MAX_LAG_MS_MAX)).contains(&lag_ms)
    {
        r.errors.push(format!(
            "DB_READ_MAX_LAG_MS must be between {DB_READ_MAX_LAG_MS_MIN} and {DB_READ_MAX_LAG_MS_MAX}"
        ));
    }
    if db
        .read_url
        .as_ref()
        .is_some_and(|u| u.expose() == db.url.expose())
    {
        r.errors.push(
            "DB_READ_URL is DB_URL: it must name a streaming replica of it (or be unset)"
                .to_owned(),
        );
    }
}

/// One PostgreSQL URL (`key` names it in errors): it parses, and with
/// `refuse_plaintext` a server off this machine is reached over TLS.
fn check_db_tls(r: &mut Reader<'_>, key: &str, url: &str, refuse_plaintext: bool) {
    use sqlx::postgres::PgSslMode;
    if url.is_empty() {
        return;
    }
    match db_target(url) {
        None => r.errors.push(format!("{key} is not a valid postgres URL")),
        Some((host, mode)) => {
            let tls = matches!(
                mode,
                PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
            );
            if refuse_plaintext && !tls && !is_local_host(&host) {
                r.errors.push(format!(
                    "{key} (host {host}) has no sslmode=require, verify-ca or verify-full: \
                     a database off this machine must be reached over TLS with APP_ENV=prod \
                     (use sslmode=verify-full&sslrootcert=/path/to/ca.pem, or set \
                     ALLOW_PLAINTEXT_BACKENDS=true if the network to it is private on purpose)"
                ));
            }
        }
    }
}

/// With `APP_ENV=prod`, a backend that is not on this machine must be
/// reached over TLS (unless `ALLOW_PLAINTEXT_BACKENDS=true`); the Redis TLS
/// files need a `rediss://` URL and must parse. Errors name the variable and
/// the host, never the URL (it may carry a password).
fn check_backend_tls(r: &mut Reader<'_>, config: &Config, allow_plaintext: bool) {
    let refuse_plaintext = r.prod && !allow_plaintext;
    check_db_tls(r, "DB_URL", config.db.url.expose(), refuse_plaintext);
    if let Some(read_url) = &config.db.read_url {
        // The replica holds the same data as the primary: the same rule.
        check_db_tls(r, "DB_READ_URL", read_url.expose(), refuse_plaintext);
    }
    let redis_url = config.redis.url.expose();
    if redis_url.is_empty() {
        return;
    }
    let info = match redis::IntoConnectionInfo::into_connection_info(redis_url) {
        Ok(info) => info,
        Err(e) => {
            r.errors
                .push(format!("REDIS_URL is not a valid Redis URL: {e}"));
            return;
        }
    };
    let tls_files = config.redis.ca_file.is_some() || config.redis.client_cert.is_some();
    match info.addr() {
        redis::ConnectionAddr::TcpTls { host, insecure, .. } => {
            if *insecure {
                r.errors.push(format!(
                    "REDIS_URL (host {host}) ends in #insecure (no certificate check): refused; \
                     give the server's CA in REDIS_CA_FILE instead"
                ));
            } else if tls_files {
                // Reads and parses the PEM files as the services will.
                if let Err(e) = crate::redis::client(redis_url, &config.redis) {
                    r.errors
                        .push(format!("REDIS_CA_FILE / REDIS_CLIENT_*: {e}"));
                }
            }
        }
        redis::ConnectionAddr::Tcp(host, _) => {
            if tls_files {
                r.errors.push(format!(
                    "REDIS_CA_FILE or REDIS_CLIENT_CERT_FILE is set but REDIS_URL (host {host}) \
                     is not rediss://"
                ));
            }
            if refuse_plaintext && !is_local_host(host) {
                r.errors.push(format!(
                    "REDIS_URL (host {host}) is not rediss://: a Redis off this machine must be \
                     reached over TLS with APP_ENV=prod (or set ALLOW_PLAINTEXT_BACKENDS=true if \
                     the network to it is private on purpose)"
                ));
            }
            // The cluster's other seeds are reached the same way.
            if refuse_plaintext && is_local_host(host) {
                for node in &config.redis.cluster_nodes {
                    let node_host = node.rsplit_once(':').map_or(node.as_str(), |(h, _)| h);
                    if !is_local_host(node_host) {
                        r.errors.push(format!(
                            "REDIS_CLUSTER_NODES (host {node_host}) is reached with REDIS_URL's \
                             redis://: a Redis off this machine must be reached over TLS with \
                             APP_ENV=prod (or set ALLOW_PLAINTEXT_BACKENDS=true)"
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    if !config.redis.cluster_nodes.is_empty()
        && let Err(e) = crate::redis::cluster_node_infos(redis_url, &config.redis.cluster_nodes)
    {
        r.errors
            .push(format!("REDIS_URL with REDIS_CLUSTER_NODES: {e}"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(&|k| map.get(k).cloned())
    }

    const DEV: &[(&str, &str)] = &[
        ("DB_URL", "postgres://postgres@127.0.0.1/postgres"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("INTERNAL_TOKEN", "dev-internal-token-change-me-please-000"),
        (
            "AUTH_TOKEN_SECRET",
            "dev-auth-token-secret-change-me-please-0",
        ),
        ("ADMIN_TOKEN", "dev-admin-token-change-me-please-00000"),
    ];

    #[test]
    fn empty_environment_lists_every_missing_variable() {
        let errors = load(&[]).unwrap_err().0;
        for key in [
            "DB_URL",
            "REDIS_URL",
            "INTERNAL_TOKEN",
            "AUTH_TOKEN_SECRET",
            "ADMIN_TOKEN",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(key)),
                "{key} missing from {errors:?}"
            );
        }
        assert_eq!(errors.len(), 5, "{errors:?}");
    }

    #[test]
    fn dev_defaults_load_with_documented_defaults() {
        let c = load(DEV).unwrap();
        assert_eq!(c.gateway.http_addr.port(), 8080);
        assert_eq!(c.gateway.ws_addr.port(), 8090);
        assert_eq!(c.marketdata.http_addr.port(), 8094);
        assert_eq!(c.redis.key_prefix, "exchange");
        assert_eq!(c.redis_key("events"), "exchange:events");
        assert!(!c.gateway.enable_docs);
        assert_eq!(c.log_level, "info");
        assert_eq!(c.order.consumer.group, "order");
        assert_eq!(c.matching.events_stream_max_len, 1_000_000);
        assert_eq!(
            c.matching.events_stream_trim_interval,
            Duration::from_secs(10)
        );
        assert_eq!(c.clearing.read_linger, Duration::from_millis(10));
        assert_eq!(c.order.batch_linger, Duration::from_millis(2));
    }

    #[test]
    fn the_admin_listener_is_optional_and_checked() {
        assert_eq!(load(DEV).unwrap().gateway.admin_http_addr, None);
        let with = |v: &str| {
            let mut pairs = DEV.to_vec();
            pairs.push(("ADMIN_HTTP_ADDR", v));
            load(&pairs)
        };
        assert_eq!(
            with("127.0.0.1:8081").unwrap().gateway.admin_http_addr,
            Some(SocketAddr::from(([127, 0, 0, 1], 8081)))
        );
        let errors = with("localhost").unwrap_err().0;
        assert!(
            errors[0].starts_with("ADMIN_HTTP_ADDR=\"localhost\" is not"),
            "{errors:?}"
        );
        let errors = with("127.0.0.1:8080").unwrap_err().0;
        assert!(
            errors[0].contains("must differ from GATEWAY_HTTP_ADDR"),
            "{errors:?}"
        );
    }

    #[test]
    fn events_stream_trimming_and_linger_settings_are_checked() {
        for (key, value, needle) in [
            (
                "EVENTS_STREAM_MAX_LEN",
                "lots",
                "EVENTS_STREAM_MAX_LEN=\"lots\" is not",
            ),
            (
                "EVENTS_STREAM_MAX_LEN",
                "100",
                "EVENTS_STREAM_MAX_LEN must be at least 10000",
            ),
            (
                "EVENTS_STREAM_TRIM_INTERVAL_SECONDS",
                "0",
                "EVENTS_STREAM_TRIM_INTERVAL_SECONDS must be at least 1",
            ),
            (
                "EVENTS_STREAM_TRIM_INTERVAL_SECONDS",
                "-1",
                "EVENTS_STREAM_TRIM_INTERVAL_SECONDS=\"-1\" is not",
            ),
            (
                "CLEARING_READ_LINGER_MS",
                "1001",
                "CLEARING_READ_LINGER_MS must be at most 1000",
            ),
            (
                "CLEARING_READ_LINGER_MS",
                "soon",
                "CLEARING_READ_LINGER_MS=\"soon\" is not",
            ),
            (
                "ORDER_BATCH_LINGER_US",
                "100001",
                "ORDER_BATCH_LINGER_US must be at most 100000",
            ),
        ] {
            let mut env = DEV.to_vec();
            env.push((key, value));
            let joined = load(&env).unwrap_err().0.join("\n");
            assert!(joined.contains(needle), "{needle} not in {joined}");
        }
        let mut env = DEV.to_vec();
        env.extend([
            ("EVENTS_STREAM_MAX_LEN", "50000"),
            ("EVENTS_STREAM_TRIM_INTERVAL_SECONDS", "2"),
            ("CLEARING_READ_LINGER_MS", "0"),
            ("ORDER_BATCH_LINGER_US", "500"),
        ]);
        let c = load(&env).unwrap();
        assert_eq!(c.matching.events_stream_max_len, 50_000);
        assert_eq!(
            c.matching.events_stream_trim_interval,
            Duration::from_secs(2)
        );
        assert_eq!(c.clearing.read_linger, Duration::ZERO);
        assert_eq!(c.order.batch_linger, Duration::from_micros(500));
    }

    #[test]
    fn prod_refuses_dev_defaults_short_secrets_and_bad_values_all_at_once() {
        let mut env = DEV.to_vec();
        env.extend([
            ("APP_ENV", "prod"),
            ("METRICS_TOKEN", "short"),
            ("ENABLE_DOCS", "true"),
            ("GATEWAY_HTTP_ADDR", "nonsense"),
            ("DB_POOL_MAX", "many"),
            ("GATEWAY_PLACE_BATCH_MAX", "0"),
        ]);
        let errors = load(&env).unwrap_err().0;
        let joined = errors.join("\n");
        for needle in [
            "APP_VERSION",
            "INTERNAL_TOKEN is a development default",
            "AUTH_TOKEN_SECRET is a development default",
            "ADMIN_TOKEN is a development default",
            "METRICS_TOKEN is shorter",
            "ENABLE_DOCS",
            "MARKETDATA_WS_ALLOW_ORIGINS",
            "GATEWAY_HTTP_ADDR",
            "DB_POOL_MAX",
            "GATEWAY_PLACE_BATCH_MAX must be between 1 and 256",
        ] {
            assert!(joined.contains(needle), "{needle} not in {joined}");
        }
    }

    #[test]
    fn api_key_encryption_key_is_required_in_prod_and_never_the_token_secret() {
        let prod_base = [
            ("APP_ENV", "prod"),
            ("APP_VERSION", "1.0.0"),
            ("MARKETDATA_WS_ALLOW_ORIGINS", "https://exchange.example"),
            ("DB_URL", "postgres://postgres@127.0.0.1/postgres"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            (
                "INTERNAL_TOKEN",
                "internal-token-0123456789abcdef0123456789",
            ),
            (
                "AUTH_TOKEN_SECRET",
                "auth-token-secret-0123456789abcdef012345",
            ),
            ("ADMIN_TOKEN", "admin-token-0123456789abcdef0123456789ab"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut env = prod_base.to_vec();
            env.extend_from_slice(extra);
            load(&env)
        };
        let errors = with(&[]).unwrap_err().0.join("\n");
        assert!(
            errors.contains("API_KEY_ENCRYPTION_KEY is required with APP_ENV=prod"),
            "{errors}"
        );
        let key = "api-key-encryption-key-9876543210fedcba98";
        let c = with(&[("API_KEY_ENCRYPTION_KEY", key)]).unwrap();
        assert_eq!(
            c.gateway
                .api_key_encryption_key
                .as_ref()
                .map(Secret::expose),
            Some(key)
        );
        for (name, value) in [
            (
                "API_KEY_ENCRYPTION_KEY",
                "auth-token-secret-0123456789abcdef012345",
            ),
            (
                "API_KEY_ENCRYPTION_KEY",
                "AUTH-token-secret-0123456789abcdef012345-v2",
            ),
            (
                "API_KEY_ENCRYPTION_KEY",
                "dev-api-key-encryption-key-0123456789abc",
            ),
            ("API_KEY_ENCRYPTION_KEY", "short"),
        ] {
            let errors = with(&[(name, value)]).unwrap_err().0.join("\n");
            assert!(errors.contains(name), "{value}: {errors}");
        }
        // The previous token secret counts too, and the previous key is checked alike.
        let errors = with(&[
            (
                "AUTH_TOKEN_SECRET_PREVIOUS",
                "old-auth-token-secret-0123456789abcdef",
            ),
            ("API_KEY_ENCRYPTION_KEY", key),
            (
                "API_KEY_ENCRYPTION_KEY_PREVIOUS",
                "old-auth-token-secret-0123456789abcdef",
            ),
        ])
        .unwrap_err()
        .0
        .join("\n");
        assert!(
            errors.contains("API_KEY_ENCRYPTION_KEY_PREVIOUS must be its own random secret, not AUTH_TOKEN_SECRET_PREVIOUS"),
            "{errors}"
        );
        let c = with(&[
            ("API_KEY_ENCRYPTION_KEY", key),
            (
                "API_KEY_ENCRYPTION_KEY_PREVIOUS",
                "previous-api-key-encryption-key-0123456789",
            ),
        ])
        .unwrap();
        assert!(c.gateway.api_key_encryption_key_previous.is_some());
        // Outside prod it may be unset (a fixed development key is used).
        assert!(load(DEV).unwrap().gateway.api_key_encryption_key.is_none());
    }

    #[test]
    fn login_limits_have_defaults_and_are_checked() {
        let c = load(DEV).unwrap();
        assert_eq!(c.gateway.login_failures_per_account, 10);
        assert_eq!(c.gateway.login_failure_window, Duration::from_secs(900));
        assert!(c.gateway.password_hash_queue_max >= 8);
        let mut env = DEV.to_vec();
        env.extend([
            ("LOGIN_FAILURES_PER_ACCOUNT", "0"),
            ("LOGIN_FAILURE_WINDOW_SECONDS", "0"),
            ("PASSWORD_HASH_QUEUE_MAX", "many"),
        ]);
        let errors = load(&env).unwrap_err().0.join("\n");
        for needle in [
            "LOGIN_FAILURES_PER_ACCOUNT must be at least 1",
            "LOGIN_FAILURE_WINDOW_SECONDS must be at least 1",
            "PASSWORD_HASH_QUEUE_MAX=\"many\" is not",
        ] {
            assert!(errors.contains(needle), "{needle} not in {errors}");
        }
    }

    #[test]
    fn abuse_limits_have_defaults_and_are_checked_all_at_once() {
        let c = load(DEV).unwrap();
        assert_eq!(c.http.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.http.connections_per_ip_max, 64);
        assert_eq!(c.marketdata.ws_connections_per_ip_max, 32);
        assert_eq!(c.marketdata.ws_messages_per_second, 5);
        assert_eq!(c.marketdata.ws_snapshots_per_10s, 32);
        assert_eq!(c.marketdata.rate_limit_ip_per_second, 50);
        let mut env = DEV.to_vec();
        env.extend([
            ("HTTP_HEADER_READ_TIMEOUT_SECONDS", "0"),
            ("HTTP_IDLE_TIMEOUT_SECONDS", "soon"),
            ("HTTP_CONNECTIONS_PER_IP_MAX", "2"),
            ("MARKETDATA_WS_CONNECTIONS_PER_IP_MAX", "0"),
            ("MARKETDATA_WS_MESSAGES_PER_SECOND", "0"),
            ("MARKETDATA_WS_SNAPSHOTS_PER_10S", "-1"),
            ("MARKETDATA_RATE_LIMIT_IP_PER_SECOND", "0"),
        ]);
        let errors = load(&env).unwrap_err().0.join("\n");
        for needle in [
            "HTTP_HEADER_READ_TIMEOUT_SECONDS must be between 1 and 120",
            "HTTP_IDLE_TIMEOUT_SECONDS=\"soon\" is not",
            "HTTP_CONNECTIONS_PER_IP_MAX must be at least 8",
            "MARKETDATA_WS_CONNECTIONS_PER_IP_MAX must be at least 1",
            "MARKETDATA_WS_MESSAGES_PER_SECOND must be at least 1",
            "MARKETDATA_WS_SNAPSHOTS_PER_10S=\"-1\" is not",
            "MARKETDATA_RATE_LIMIT_IP_PER_SECOND must be at least 1",
        ] {
            assert!(errors.contains(needle), "{needle} not in {errors}");
        }
    }

    #[test]
    fn the_snapshot_budget_fits_the_largest_subscribe() {
        let mut env = DEV.to_vec();
        env.push(("MARKETDATA_WS_SNAPSHOTS_PER_10S", "31"));
        let errors = load(&env).unwrap_err().0.join("\n");
        assert!(
            errors.contains("MARKETDATA_WS_SNAPSHOTS_PER_10S must be at least 32"),
            "{errors}"
        );
        env.pop();
        env.push(("MARKETDATA_WS_SNAPSHOTS_PER_10S", "32"));
        assert!(load(&env).is_ok());
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let c = load(DEV).unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("dev-admin-token"), "{text}");
        assert!(!text.contains("postgres://"), "{text}");
    }

    /// A production environment with every secret long and random, and
    /// the given backends.
    fn prod_with(db: &str, redis: &str, extra: &[(&str, &str)]) -> Vec<String> {
        let secret = "0123456789abcdef0123456789abcdef-prod";
        let mut env = vec![
            ("APP_ENV", "prod"),
            ("APP_VERSION", "1.0.0"),
            ("DB_URL", db),
            ("REDIS_URL", redis),
            ("INTERNAL_TOKEN", secret),
            ("AUTH_TOKEN_SECRET", "fedcba9876543210fedcba9876543210-auth"),
            ("ADMIN_TOKEN", "00112233445566778899aabbccddeeff-admin"),
            ("MARKETDATA_WS_ALLOW_ORIGINS", "https://exchange.example"),
        ];
        env.extend_from_slice(extra);
        // Only the backend checks matter here (other sections may require
        // more in prod).
        match load(&env) {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.into_iter()
                    .filter(|e| {
                        e.contains("DB_URL") || e.contains("DB_READ_URL") || e.contains("REDIS")
                    })
                    .collect()
            }
        }
    }

    #[test]
    fn prod_refuses_plaintext_to_a_backend_off_this_machine() {
        let errors = prod_with(
            "postgres://app:s3cret-db-pw@db.internal:5432/exchange",
            "redis://app:s3cret-redis-pw@cache.internal:6379/0",
            &[],
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("DB_URL (host db.internal) has no sslmode="),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("REDIS_URL (host cache.internal) is not rediss://"),
            "{errors:?}"
        );
        let joined = errors.join("\n");
        assert!(!joined.contains("s3cret"), "a password leaked: {joined}");
        assert!(joined.contains("ALLOW_PLAINTEXT_BACKENDS=true"), "{joined}");
        // sslmode=prefer or disable is no better.
        let errors = prod_with(
            "postgres://app:pw@10.0.0.5/exchange?sslmode=prefer",
            "rediss://cache.internal:6380",
            &[],
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("host 10.0.0.5"), "{errors:?}");

        // TLS, loopback, a Unix socket, or the explicit opt-out are accepted.
        for (db, redis, extra) in [
            (
                "postgres://app:pw@db.internal/exchange?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem",
                "rediss://app:pw@cache.internal:6380/0",
                &[][..],
            ),
            (
                "postgres://app:pw@db.internal/x?sslmode=require",
                "rediss://cache.internal",
                &[],
            ),
            (
                "postgres://app:pw@db.internal/x?sslmode=verify-ca",
                "rediss://cache.internal",
                &[],
            ),
            (
                "postgres://app:pw@127.0.0.2:5432/x",
                "redis://localhost:6379",
                &[],
            ),
            ("postgres://app:pw@[::1]:5432/x", "redis://[::1]:6379", &[]),
            (
                "postgres:///exchange?host=/var/run/postgresql",
                "redis://127.0.0.1",
                &[],
            ),
            (
                "postgres://app:pw@db.internal/x",
                "redis://cache.internal",
                &[("ALLOW_PLAINTEXT_BACKENDS", "true")],
            ),
        ] {
            assert_eq!(
                prod_with(db, redis, extra),
                Vec::<String>::new(),
                "{db} {redis}"
            );
        }
        // Outside prod, plaintext is the developer's choice.
        let mut env = DEV.to_vec();
        env.extend([
            ("DB_URL", "postgres://app:pw@db.internal/x"),
            ("REDIS_URL", "redis://cache.internal"),
        ]);
        load(&env).unwrap();
    }

    #[test]
    fn redis_cluster_nodes_are_checked_at_start() {
        let dev = |url: &str, nodes: &str| {
            let mut env = vec![("REDIS_CLUSTER_NODES", nodes)];
            env.extend(DEV.iter().copied().filter(|(k, _)| *k != "REDIS_URL"));
            env.push(("REDIS_URL", url));
            load(&env)
        };
        let c = dev("redis://127.0.0.1:7000", "127.0.0.1:7001, [::1]:7002").unwrap();
        assert_eq!(c.redis.cluster_nodes, ["127.0.0.1:7001", "[::1]:7002"]);
        assert!(
            load(DEV).unwrap().redis.cluster_nodes.is_empty(),
            "unset: one Redis"
        );
        for (url, nodes, says) in [
            (
                "redis://127.0.0.1:7000",
                "127.0.0.1",
                "REDIS_CLUSTER_NODES must be host:port",
            ),
            (
                "redis://127.0.0.1:7000",
                "h:0",
                "REDIS_CLUSTER_NODES must be host:port",
            ),
            ("redis://127.0.0.1:7000/3", "h:7001", "only database 0"),
        ] {
            let e = dev(url, nodes).unwrap_err().to_string();
            assert!(e.contains(says), "{url} {nodes}: {e}");
        }
        // APP_ENV=prod: every node off this machine needs TLS too.
        let errors = prod_with(
            "postgres://u:p@localhost/x",
            "redis://127.0.0.1:7000",
            &[("REDIS_CLUSTER_NODES", "cache-2.internal:7001")],
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("REDIS_CLUSTER_NODES (host cache-2.internal)")),
            "{errors:?}"
        );
        assert!(
            prod_with(
                "postgres://u:p@localhost/x",
                "rediss://cache-1.internal:7000",
                &[("REDIS_CLUSTER_NODES", "cache-2.internal:7001")],
            )
            .is_empty()
        );
    }

    #[test]
    fn read_replica_is_optional_and_checked_like_db_url() {
        let c = load(DEV).unwrap();
        assert!(c.db.read_url.is_none());
        assert_eq!(
            c.db.read_max_lag,
            Duration::from_millis(DB_READ_MAX_LAG_MS_DEFAULT)
        );
        let mut env = DEV.to_vec();
        env.extend([
            ("DB_READ_URL", "postgres://app:pw@127.0.0.1:54359/exchange"),
            ("DB_READ_MAX_LAG_MS", "1500"),
        ]);
        let c = load(&env).unwrap();
        assert_eq!(c.db.read_max_lag, Duration::from_millis(1500));
        assert!(c.db.read_url.is_some());

        // Every problem at once: scheme, bound, and the primary itself.
        let mut env = DEV.to_vec();
        env.extend([("DB_READ_URL", "mysql://x"), ("DB_READ_MAX_LAG_MS", "0")]);
        let errors = load(&env).unwrap_err().0;
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("DB_READ_URL must start with postgres://")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("DB_READ_MAX_LAG_MS must be between 500 and")),
            "{errors:?}"
        );
        let primary = DEV.iter().find(|(k, _)| *k == "DB_URL").unwrap().1;
        let mut env = DEV.to_vec();
        env.extend([("DB_READ_URL", primary), ("DB_READ_MAX_LAG_MS", "soon")]);
        let errors = load(&env).unwrap_err().0;
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("DB_READ_URL is DB_URL")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("DB_READ_MAX_LAG_MS=\"soon\" is not")),
            "{errors:?}"
        );

        // APP_ENV=prod: a replica off this machine needs TLS, as DB_URL does.
        let errors = prod_with(
            "postgres://app:pw@db.internal/x?sslmode=verify-full",
            "rediss://cache.internal",
            &[(
                "DB_READ_URL",
                "postgres://app:pw@replica.internal/x?sslmode=verify-full",
            )],
        );
        assert!(errors.is_empty(), "{errors:?}");
        let errors = prod_with(
            "postgres://app:pw@db.internal/x?sslmode=verify-full",
            "rediss://cache.internal",
            &[(
                "DB_READ_URL",
                "postgres://app:s3cret@replica.internal/x?sslmode=prefer",
            )],
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        let replica = &errors[0];
        assert!(
            replica.starts_with("DB_READ_URL (host replica.internal) has no sslmode="),
            "{replica}"
        );
        assert!(!replica.contains("s3cret"), "a password leaked: {replica}");
    }

    #[test]
    fn redis_tls_files_are_checked_at_start() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir =
            std::env::temp_dir().join(format!("config-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let key = dir.join("client.key");
        std::fs::write(&key, "not a key").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (ca_s, key_s) = (ca.to_str().unwrap(), key.to_str().unwrap());
        let with = |pairs: &[(&str, &str)]| {
            let mut env = DEV.to_vec();
            env.extend_from_slice(pairs);
            load(&env)
        };

        let errors = with(&[
            ("REDIS_URL", "rediss://u:s3cret@localhost:6380"),
            ("REDIS_CA_FILE", "/nonexistent/ca.pem"),
            ("REDIS_CLIENT_KEY_FILE", key_s),
        ])
        .unwrap_err()
        .0;
        let joined = errors.join("\n");
        for needle in [
            "REDIS_CA_FILE=/nonexistent/ca.pem cannot be read",
            "key files are refused unless private to the service user: mode is 0644",
            "REDIS_CLIENT_CERT_FILE and REDIS_CLIENT_KEY_FILE go together",
        ] {
            assert!(joined.contains(needle), "{needle} not in {joined}");
        }
        assert!(!joined.contains("s3cret"), "{joined}");

        // A private key file passes the mode check; its content is parsed.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let joined = with(&[
            ("REDIS_URL", "rediss://localhost:6380"),
            ("REDIS_CA_FILE", ca_s),
            ("REDIS_CLIENT_CERT_FILE", ca_s),
            ("REDIS_CLIENT_KEY_FILE", key_s),
        ])
        .unwrap_err()
        .0
        .join("\n");
        assert!(
            joined.contains("REDIS_CA_FILE / REDIS_CLIENT_*: "),
            "{joined}"
        );
        assert!(!joined.contains("mode is"), "{joined}");

        // TLS files with a plaintext URL, and #insecure, are refused.
        let joined = with(&[("REDIS_URL", "redis://localhost"), ("REDIS_CA_FILE", ca_s)])
            .unwrap_err()
            .0
            .join("\n");
        assert!(joined.contains("is not rediss://"), "{joined}");
        let joined = with(&[("REDIS_URL", "rediss://localhost/#insecure")])
            .unwrap_err()
            .0
            .join("\n");
        assert!(joined.contains("#insecure"), "{joined}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn services_bind_to_loopback_by_default() {
        let c = load(DEV).unwrap();
        for addr in [
            c.gateway.http_addr,
            c.gateway.ws_addr,
            c.order.http_addr,
            c.matching.http_addr,
            c.clearing.http_addr,
            c.marketdata.http_addr,
            c.wallet.http_addr,
        ] {
            assert!(addr.ip().is_loopback(), "{addr}");
        }
    }

    #[test]
    fn local_hosts() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "[::1]",
            "/run/pg",
        ] {
            assert!(is_local_host(host), "{host}");
        }
        for host in [
            "db.internal",
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "localhost.evil.example",
            "[2001:db8::1]",
        ] {
            assert!(!is_local_host(host), "{host}");
        }
    }

    #[test]
    fn env_file_grammar() {
        let parsed = parse_env_file("# c\nexport A=1\nB=\"two words\"\n\nC='x=y'\n").unwrap();
        assert_eq!(parsed["A"], "1");
        assert_eq!(parsed["B"], "two words");
        assert_eq!(parsed["C"], "x=y");
        assert!(parse_env_file("nonsense").is_err());
    }
}
