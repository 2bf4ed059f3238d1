//! Redis connections: a shared multiplexed manager for commands (with
//! timeouts, reconnecting), and dedicated connections without a response
//! timeout for blocking reads (`XREADGROUP BLOCK`): the client's default
//! 500 ms response timeout would cut every blocking read short.
//!
//! `rediss://` URLs connect over TLS (rustls): the server's certificate is
//! checked against `REDIS_CA_FILE` when set, else the system's trust store,
//! and `REDIS_CLIENT_CERT_FILE` / `REDIS_CLIENT_KEY_FILE` add a client
//! certificate. A user and password in the URL are sent with `AUTH`.
//!
//! With `REDIS_CLUSTER_NODES` set, Redis is a Redis Cluster (the crate's own
//! cluster client, `cluster-async`): the same [`Redis`] and [`RedisConn`]
//! route every command to the master of its key's slot, with the same
//! timeouts, TLS and lazy reconnecting. What a cluster changes for callers:
//! - a pipeline must keep its keys on one slot (the crate sends a pipeline
//!   to one node and refuses one that spans slots): one market's keys share
//!   the hash tag `{MARKET}`, see [`Redis::orders_stream`]; pipelines over
//!   several markets go through [`Redis::query_pipelines`];
//! - classic Pub/Sub is broadcast to every node of a cluster, so `PUBLISH`
//!   may go to any node ([`RedisConn::publish_pipeline`]) and a pattern
//!   subscription on any one node sees every message ([`Redis::pubsub`]);
//! - `SCAN` sees one node's keys: [`Redis::scan_keys`] visits every master.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::io::tcp::TcpSettings;
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo,
    IntoConnectionInfo, Pipeline, RedisFuture, TlsCertificates, Value,
};

use crate::config::{Config, RedisConfig};

pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Redis {
    backend: Backend,
    prefix: String,
}

// A handful per process (cloned into each task at start): the single
// variant's size costs nothing, and keeping it unboxed keeps its clone as
// cheap as before.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Backend {
    Single {
        client: Client,
        manager: ConnectionManager,
    },
    Cluster(Arc<ClusterBackend>),
}

struct ClusterBackend {
    /// The shared command connection: connects lazily, follows `MOVED` and
    /// slot changes, reconnects to nodes that come back.
    conn: ClusterConnection,
    /// The same nodes without a response timeout, for `BLOCK` reads.
    blocking: ClusterClient,
    /// One plain client per seed node, for Pub/Sub (tried in turn).
    nodes: Vec<Client>,
    /// `host:port,…` of the seed nodes, for messages.
    target: String,
}

/// A connection of either kind; every command and pipeline goes through
/// [`redis::aio::ConnectionLike`], so callers use `AsyncCommands` and
/// `query_async` unchanged.
#[derive(Clone)]
pub enum RedisConn {
    /// The shared, reconnecting command connection of a single Redis.
    Manager(ConnectionManager),
    /// A dedicated connection of a single Redis (blocking reads).
    Multiplexed(MultiplexedConnection),
    /// A Redis Cluster connection (routes per key slot).
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Manager(c) => c.req_packed_command(cmd),
            Self::Multiplexed(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Manager(c) => c.get_db(),
            Self::Multiplexed(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisConn {
    /// Sends a pipeline of `PUBLISH` commands (replies ignored). On a
    /// cluster it goes to one master, whichever: classic Pub/Sub messages
    /// are forwarded to every node over the cluster bus, and routing each
    /// `PUBLISH` by its channel's slot would split one pipeline into as
    /// many as there are users' channels (the crate refuses a pipeline
    /// across slots).
    pub async fn publish_pipeline(&mut self, pipe: &Pipeline) -> redis::RedisResult<()> {
        match self {
            Self::Cluster(c) => {
                let count = pipe.cmd_iter().count();
                c.route_pipeline(pipe.clone(), 0, count, SingleNodeRoutingInfo::RandomPrimary)
                    .await?;
                Ok(())
            }
            _ => pipe.query_async::<()>(self).await,
        }
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("cluster", &self.is_cluster())
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Creates the client and a lazily connecting manager: services start
    /// while Redis is down, and `/ready` says so.
    pub fn new(config: &Config) -> redis::RedisResult<Self> {
        Self::from_config(&config.redis)
    }

    /// From the Redis settings alone (`exchange admin dlq`): a single
    /// Redis, or a cluster when `cluster_nodes` is set.
    pub fn from_config(config: &RedisConfig) -> redis::RedisResult<Self> {
        let url = config.url.expose();
        if config.cluster_nodes.is_empty() {
            Self::from_client(client(url, config)?, &config.key_prefix)
        } else {
            Self::cluster(url, &config.cluster_nodes, config, &config.key_prefix)
        }
    }

    /// A URL without TLS files (a `rediss://` server's certificate is
    /// checked against the system's trust store).
    pub fn with_prefix(url: &str, prefix: &str) -> redis::RedisResult<Self> {
        Self::from_client(client(url, &RedisConfig::plain(url))?, prefix)
    }

    /// A Redis Cluster reached through `url` (scheme, credentials) and
    /// `nodes` (`host:port` seeds), without TLS files: for tests.
    pub fn cluster_with_prefix(
        url: &str,
        nodes: &[String],
        prefix: &str,
    ) -> redis::RedisResult<Self> {
        Self::cluster(url, nodes, &RedisConfig::plain(url), prefix)
    }

    fn from_client(client: Client, prefix: &str) -> redis::RedisResult<Self> {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
            .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)?;
        Ok(Self {
            backend: Backend::Single { client, manager },
            prefix: prefix.to_owned(),
        })
    }

    fn cluster(
        url: &str,
        nodes: &[String],
        tls: &RedisConfig,
        prefix: &str,
    ) -> redis::RedisResult<Self> {
        let infos = cluster_node_infos(url, nodes)?;
        let node_clients = infos
            .iter()
            .map(|info| client_from_info(info.clone(), tls))
            .collect::<redis::RedisResult<Vec<_>>>()?;
        let certs = tls_certificates(tls)?;
        let builder = |response: Option<Duration>| {
            let mut b = ClusterClient::builder(infos.clone())
                .connection_timeout(REDIS_CONNECT_TIMEOUT)
                // A command is retried (MOVED, a node failing over) within
                // the same bound as a single Redis's response timeout.
                .overall_response_timeout(response)
                .retries(2)
                .min_retry_wait(50)
                .max_retry_wait(500)
                .tcp_settings(TcpSettings::default().set_nodelay(true));
            if let Some(r) = response {
                b = b.response_timeout(r);
            }
            if let Some(certs) = &certs {
                b = b.certs(certs.clone());
            }
            b.build()
        };
        let commands = builder(Some(REDIS_RESPONSE_TIMEOUT))?;
        let conn = commands.get_pending_async_connection_with_config(
            redis::cluster::ClusterConfig::new()
                .set_connection_timeout(REDIS_CONNECT_TIMEOUT)
                .set_response_timeout(REDIS_RESPONSE_TIMEOUT),
        );
        Ok(Self {
            backend: Backend::Cluster(Arc::new(ClusterBackend {
                conn,
                blocking: builder(None)?,
                nodes: node_clients,
                target: infos
                    .iter()
                    .map(|i| i.addr().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            })),
            prefix: prefix.to_owned(),
        })
    }

    /// Whether this is a Redis Cluster (`REDIS_CLUSTER_NODES`).
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// The shared command connection (cheap to clone).
    pub fn conn(&self) -> RedisConn {
        match &self.backend {
            Backend::Single { manager, .. } => RedisConn::Manager(manager.clone()),
            Backend::Cluster(c) => RedisConn::Cluster(c.conn.clone()),
        }
    }

    /// A new connection with no response timeout, for `BLOCK` reads only
    /// (on a cluster: its own cluster connection, whose read goes to the
    /// stream's master and is bounded by `BLOCK` as on a single Redis).
    pub async fn blocking_conn(&self) -> redis::RedisResult<RedisConn> {
        match &self.backend {
            Backend::Single { client, .. } => {
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
                    .set_response_timeout(None);
                Ok(RedisConn::Multiplexed(
                    client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?,
                ))
            }
            Backend::Cluster(c) => {
                // Connecting asks a node for the slot map: bounded by one
                // connect and one response timeout.
                let connect = c.blocking.get_async_connection_with_config(
                    redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(REDIS_CONNECT_TIMEOUT),
                );
                tokio::time::timeout(REDIS_CONNECT_TIMEOUT + REDIS_RESPONSE_TIMEOUT, connect)
                    .await
                    .map_err(|_| timed_out())?
                    .map(RedisConn::Cluster)
            }
        }
    }

    /// A Pub/Sub connection. On a cluster, to the first seed node that
    /// answers: classic Pub/Sub messages reach every node of the cluster,
    /// so a pattern subscription on any one of them sees them all.
    pub async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let clients: &[Client] = match &self.backend {
            Backend::Single { client, .. } => std::slice::from_ref(client),
            Backend::Cluster(c) => &c.nodes,
        };
        let mut last = None;
        for client in clients {
            match tokio::time::timeout(REDIS_CONNECT_TIMEOUT, client.get_async_pubsub()).await {
                Ok(Ok(ps)) => return Ok(ps),
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(timed_out()),
            }
        }
        Err(last.unwrap_or_else(timed_out))
    }

    /// Runs non-atomic pipelines whose keys each stay on one slot (e.g. one
    /// per market), replies ignored: on a single Redis as one pipeline (one
    /// round trip); on a cluster each to its own slot's master, concurrently.
    /// Commands keep their order within each pipeline.
    pub async fn query_pipelines(&self, pipes: Vec<Pipeline>) -> redis::RedisResult<()> {
        let mut conn = self.conn();
        if self.is_cluster() {
            let sends = pipes.into_iter().map(|p| {
                let mut conn = conn.clone();
                async move { p.query_async::<()>(&mut conn).await }
            });
            futures_util::future::try_join_all(sends).await?;
            return Ok(());
        }
        let mut all = redis::pipe();
        for p in &pipes {
            for cmd in p.cmd_iter() {
                all.add_command(cmd.clone()).ignore();
            }
        }
        all.query_async::<()>(&mut conn).await
    }

    /// Every key matching `pattern` (a `SCAN MATCH` glob) of `kind` (`TYPE`,
    /// e.g. `stream`), sorted and deduplicated. On a cluster `SCAN` sees one
    /// node's keys, so every master is scanned (found with `CLUSTER SLOTS`).
    /// Each call is bounded by `timeout`.
    pub async fn scan_keys(
        &self,
        pattern: &str,
        kind: &str,
        timeout: Duration,
    ) -> redis::RedisResult<Vec<String>> {
        let mut conn = self.conn();
        let routes: Vec<Option<Route>> = match &mut conn {
            RedisConn::Cluster(c) => {
                let slots = bounded(
                    timeout,
                    c.route_command(
                        redis::cmd("CLUSTER").arg("SLOTS").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    ),
                )
                .await?;
                master_first_slots(&slots)?
                    .into_iter()
                    .map(|slot| Some(Route::new(slot, SlotAddr::Master)))
                    .collect()
            }
            _ => vec![None],
        };
        let mut keys = Vec::new();
        for route in routes {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("TYPE")
                    .arg(kind)
                    .arg("COUNT")
                    .arg(1000);
                let reply = match (&mut conn, &route) {
                    (RedisConn::Cluster(c), Some(route)) => {
                        bounded(
                            timeout,
                            c.route_command(
                                scan,
                                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                                    *route,
                                )),
                            ),
                        )
                        .await?
                    }
                    _ => bounded(timeout, scan.query_async::<Value>(&mut conn)).await?,
                };
                let (next, batch): (u64, Vec<String>) = redis::from_redis_value(reply)?;
                keys.extend(batch);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>:<suffix>`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    /// The order stream of a market: `<prefix>:orders:{BTC-USDT}` (the hash
    /// tag keeps one market's keys on one Cluster slot: its stream and its
    /// dead letters, `<prefix>:orders:{BTC-USDT}:dlq`).
    pub fn orders_stream(&self, market: &str) -> String {
        format!("{}:orders:{{{market}}}", self.prefix)
    }

    /// The event stream `<prefix>:events` (one key; its dead letters,
    /// `<prefix>:events:dlq`, may sit on another slot: no command uses both).
    pub fn events_stream(&self) -> String {
        self.key("events")
    }

    /// The dead-letter stream of a stream key: `<stream>:dlq`.
    pub fn dlq_stream(stream: &str) -> String {
        format!("{stream}:dlq")
    }

    /// `PING` with a timeout: the readiness probe.
    pub async fn ping(&self, timeout: Duration) -> bool {
        self.probe(timeout).await.is_ok()
    }

    /// `PING` with a timeout (on a cluster, every master must answer); the
    /// error names the server (`host:port`), never the URL's credentials.
    pub async fn probe(&self, timeout: Duration) -> Result<(), String> {
        let mut conn = self.conn();
        let target = match &self.backend {
            Backend::Single { client, .. } => client.get_connection_info().addr().to_string(),
            Backend::Cluster(c) => format!("cluster {}", c.target),
        };
        match tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(describe_error(&target, &e)),
            Err(_) => Err(format!("redis at {target}: no answer within {timeout:?}")),
        }
    }
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
}

async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| timed_out())?
}

/// The first slot of each master's ranges in a `CLUSTER SLOTS` reply
/// (`[[start, end, [host, port, id, …], replicas…], …]`): one route per
/// master.
fn master_first_slots(reply: &Value) -> redis::RedisResult<Vec<u16>> {
    let bad =
        || redis::RedisError::from((redis::ErrorKind::Parse, "unexpected CLUSTER SLOTS reply"));
    let Value::Array(ranges) = reply else {
        return Err(bad());
    };
    let mut firsts: std::collections::BTreeMap<(String, i64), u16> =
        std::collections::BTreeMap::new();
    for range in ranges {
        let Value::Array(parts) = range else {
            return Err(bad());
        };
        let (Some(Value::Int(start)), Some(Value::Array(master))) = (parts.first(), parts.get(2))
        else {
            return Err(bad());
        };
        let host: String = master
            .first()
            .map(redis::from_redis_value_ref)
            .transpose()?
            .unwrap_or_default();
        let port: i64 = master
            .get(1)
            .map(redis::from_redis_value_ref)
            .transpose()?
            .unwrap_or_default();
        let start = u16::try_from(*start).map_err(|_| bad())?;
        let first = firsts.entry((host, port)).or_insert(start);
        *first = (*first).min(start);
    }
    Ok(firsts.into_values().collect())
}

/// The client for `url` (TCP without Nagle's algorithm: commands from many
/// tasks share one connection, and each write behind an unanswered one
/// would wait for the reply's ACK). With `REDIS_CA_FILE` or a client
/// certificate configured, the PEM files are read and parsed here.
pub fn client(url: &str, tls: &RedisConfig) -> redis::RedisResult<Client> {
    client_from_info(url.into_connection_info()?, tls)
}

fn client_from_info(info: ConnectionInfo, tls: &RedisConfig) -> redis::RedisResult<Client> {
    let info = info.set_tcp_settings(TcpSettings::default().set_nodelay(true));
    match tls_certificates(tls)? {
        None => Client::open(info),
        Some(certs) => Client::build_with_tls(info, certs),
    }
}

/// The PEM files of `REDIS_CA_FILE` and the client certificate, read and
/// parsed; `None` when neither is configured.
fn tls_certificates(tls: &RedisConfig) -> redis::RedisResult<Option<TlsCertificates>> {
    if tls.ca_file.is_none() && tls.client_cert.is_none() {
        return Ok(None);
    }
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            redis::RedisError::from(std::io::Error::new(
                e.kind(),
                format!("{what} {}: {e}", path.display()),
            ))
        })
    };
    let root_cert = match &tls.ca_file {
        Some(path) => Some(read("REDIS_CA_FILE", path)?),
        None => None,
    };
    let client_tls = match &tls.client_cert {
        Some(files) => Some(ClientTlsConfig {
            client_cert: read("REDIS_CLIENT_CERT_FILE", &files.cert_file)?,
            client_key: read("REDIS_CLIENT_KEY_FILE", &files.key_file)?,
        }),
        None => None,
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// `REDIS_CLUSTER_NODES` parsed: `host:port` entries separated by commas
/// (IPv6 as `[::1]:7000`); the error says which entry is wrong.
pub fn parse_cluster_nodes(list: &str) -> Result<Vec<(String, u16)>, String> {
    let mut nodes = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (host, port) = entry
            .rsplit_once(':')
            .ok_or_else(|| format!("{entry:?} is not host:port"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{entry:?} has no valid port"))?;
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err(format!("{entry:?} has no valid host"));
        }
        nodes.push((host.to_owned(), port));
    }
    if nodes.is_empty() {
        return Err("no host:port entry".to_owned());
    }
    Ok(nodes)
}

/// The seed nodes of a cluster: `url`'s own host and port, then `nodes`
/// (`host:port`), each with `url`'s scheme (TLS or not), user, password
/// and protocol. A cluster has only database 0, and the crate's cluster
/// client cannot use Unix sockets.
pub fn cluster_node_infos(url: &str, nodes: &[String]) -> redis::RedisResult<Vec<ConnectionInfo>> {
    let bad = |what: String| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "REDIS_CLUSTER_NODES",
            what,
        ))
    };
    let base = url.into_connection_info()?;
    if base.redis_settings().db() != 0 {
        return Err(bad(
            "a Redis Cluster has only database 0: REDIS_URL must not name another".to_owned(),
        ));
    }
    let unix = || {
        bad("a Redis Cluster is reached over TCP: REDIS_URL must name a host and port".to_owned())
    };
    let with_host = |host: String, port: u16| -> redis::RedisResult<ConnectionInfo> {
        let addr = match base.addr() {
            ConnectionAddr::Tcp(..) => ConnectionAddr::Tcp(host, port),
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => return Err(unix()),
        };
        Ok(base.clone().set_addr(addr))
    };
    let (host, port) = match base.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            (host.clone(), *port)
        }
        _ => return Err(unix()),
    };
    let mut infos = vec![with_host(host, port)?];
    for (host, port) in parse_cluster_nodes(&nodes.join(",")).map_err(bad)? {
        let info = with_host(host, port)?;
        if !infos
            .iter()
            .any(|i| i.addr().to_string() == info.addr().to_string())
        {
            infos.push(info);
        }
    }
    Ok(infos)
}

/// `e` as one line that names the server and says what failed, e.g.
/// `redis at cache.internal:6380: TLS: invalid peer certificate: UnknownIssuer`.
pub fn describe_error(target: &str, e: &redis::RedisError) -> String {
    let what = e.to_string();
    format!(
        "redis at {target}: {what}{}",
        crate::db::tls_hint(&what, "REDIS_CA_FILE")
    )
}

/// `host:port` of a Redis URL (for messages; never the credentials).
pub fn url_target(url: &str) -> String {
    url.into_connection_info().map_or_else(
        |_| "an unparsable REDIS_URL".to_owned(),
        |i| i.addr().to_string(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_have_nagle_off() {
        let redis = Redis::with_prefix("redis://127.0.0.1:1/", "t").unwrap();
        let Backend::Single { client, .. } = &redis.backend else {
            panic!("a single Redis");
        };
        assert!(client.get_connection_info().tcp_settings().nodelay());
    }

    /// Lazy as a single Redis: made while no node answers, then `/ready`'s
    /// probe fails within its bound, naming the seeds.
    #[tokio::test]
    async fn a_cluster_that_is_down_is_reported_not_fatal() {
        let redis =
            Redis::cluster_with_prefix("redis://127.0.0.1:1", &["127.0.0.1:2".to_owned()], "t")
                .unwrap();
        assert!(redis.is_cluster());
        let t0 = std::time::Instant::now();
        let e = redis.probe(Duration::from_secs(3)).await.unwrap_err();
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "bounded: {:?}",
            t0.elapsed()
        );
        assert!(
            e.starts_with("redis at cluster 127.0.0.1:1,127.0.0.1:2"),
            "{e}"
        );
    }

    #[test]
    fn cluster_nodes_parse_and_inherit_the_url() {
        assert_eq!(
            parse_cluster_nodes("a:7000, [::1]:7001,").unwrap(),
            vec![("a".to_owned(), 7000), ("::1".to_owned(), 7001)]
        );
        for bad in ["", "a", "a:0", "a:x", ":7000", "a:70000"] {
            assert!(parse_cluster_nodes(bad).is_err(), "{bad}");
        }
        let infos = cluster_node_infos(
            "rediss://u:pw@seed:6380",
            &["b:6381".to_owned(), "seed:6380".to_owned()],
        )
        .unwrap();
        let addrs: Vec<String> = infos.iter().map(|i| i.addr().to_string()).collect();
        assert_eq!(
            addrs,
            ["seed:6380", "b:6381"],
            "the URL's node first, no duplicate"
        );
        assert!(
            matches!(infos[1].addr(), ConnectionAddr::TcpTls { .. }),
            "rediss for every node"
        );
        assert_eq!(infos[1].redis_settings().password(), Some("pw"));
        assert!(cluster_node_infos("redis://seed:6379/2", &["b:1".to_owned()]).is_err());
        assert!(cluster_node_infos("redis+unix:///tmp/r.sock", &["b:1".to_owned()]).is_err());
    }

    #[test]
    fn cluster_slots_give_one_route_per_master() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.into()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |s: i64, e: i64, h: &str, p: i64| {
            Value::Array(vec![Value::Int(s), Value::Int(e), node(h, p)])
        };
        let reply = Value::Array(vec![
            range(10923, 16383, "127.0.0.1", 3),
            range(0, 100, "127.0.0.1", 1),
            range(5461, 10922, "127.0.0.1", 2),
            range(101, 5460, "127.0.0.1", 1),
        ]);
        assert_eq!(master_first_slots(&reply).unwrap(), vec![0, 5461, 10923]);
    }
}
