//! Redis connections: a shared multiplexed manager for commands (with
//! timeouts, reconnecting), and dedicated connections without a response
//! timeout for blocking reads (`XREADGROUP BLOCK`): the client's default
//! 500 ms response timeout would cut every blocking read short.
//!
//! `rediss://` URLs connect over TLS (rustls): the server's certificate is
//! checked against `REDIS_CA_FILE` when set, else the system's trust store,
//! and `REDIS_CLIENT_CERT_FILE` / `REDIS_CLIENT_KEY_FILE` add a client
//! certificate. A user and password in the URL are sent with `AUTH`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, Client, ClientTlsConfig, IntoConnectionInfo, TlsCertificates};

use crate::config::{Config, RedisConfig};

pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Redis {
    client: Client,
    manager: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Creates the client and a lazily connecting manager: services start
    /// while Redis is down, and `/ready` says so.
    pub fn new(config: &Config) -> redis::RedisResult<Self> {
        let client = client(config.redis.url.expose(), &config.redis)?;
        Self::from_client(client, &config.redis.key_prefix)
    }

    /// A URL without TLS files (a `rediss://` server's certificate is
    /// checked against the system's trust store).
    pub fn with_prefix(url: &str, prefix: &str) -> redis::RedisResult<Self> {
        Self::from_client(client(url, &RedisConfig::plain(url))?, prefix)
    }

    fn from_client(client: Client, prefix: &str) -> redis::RedisResult<Self> {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
            .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)?;
        Ok(Self {
            client,
            manager,
            prefix: prefix.to_owned(),
        })
    }

    /// The shared command connection (cheap to clone).
    pub fn conn(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// A new connection with no response timeout, for `BLOCK` reads only.
    pub async fn blocking_conn(&self) -> redis::RedisResult<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }

    /// A Pub/Sub connection.
    pub async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        tokio::time::timeout(REDIS_CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            })?
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>:<suffix>`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    /// The order stream of a market: `<prefix>:orders:{BTC-USDT}` (the hash
    /// tag keeps one market's keys on one Cluster slot).
    pub fn orders_stream(&self, market: &str) -> String {
        format!("{}:orders:{{{market}}}", self.prefix)
    }

    /// The event stream `<prefix>:events`.
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

    /// `PING` with a timeout; the error names the server (`host:port`),
    /// never the URL's credentials.
    pub async fn probe(&self, timeout: Duration) -> Result<(), String> {
        let mut conn = self.conn();
        let target = self.client.get_connection_info().addr().to_string();
        match tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(describe_error(&target, &e)),
            Err(_) => Err(format!("redis at {target}: no answer within {timeout:?}")),
        }
    }
}

/// The client for `url` (TCP without Nagle's algorithm: commands from many
/// tasks share one connection, and each write behind an unanswered one
/// would wait for the reply's ACK). With `REDIS_CA_FILE` or a client
/// certificate configured, the PEM files are read and parsed here.
pub fn client(url: &str, tls: &RedisConfig) -> redis::RedisResult<Client> {
    let info = url
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    if tls.ca_file.is_none() && tls.client_cert.is_none() {
        return Client::open(info);
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
    Client::build_with_tls(
        info,
        TlsCertificates {
            client_tls,
            root_cert,
        },
    )
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
        assert!(redis.client.get_connection_info().tcp_settings().nodelay());
    }
}
