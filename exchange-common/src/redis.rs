//! Redis connections: a shared multiplexed manager for commands (with
//! timeouts, reconnecting), and dedicated connections without a response
//! timeout for blocking reads (`XREADGROUP BLOCK`): the client's default
//! 500 ms response timeout would cut every blocking read short.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo};

use crate::config::Config;

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
        Self::with_prefix(config.redis.url.expose(), &config.redis.key_prefix)
    }

    pub fn with_prefix(url: &str, prefix: &str) -> redis::RedisResult<Self> {
        // Commands from many tasks share one connection: with Nagle's
        // algorithm each write behind an unanswered one would wait for
        // the reply's ACK.
        let info = url
            .into_connection_info()?
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let client = Client::open(info)?;
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
        let mut conn = self.conn();
        matches!(
            tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn))
                .await,
            Ok(Ok(_))
        )
    }
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
