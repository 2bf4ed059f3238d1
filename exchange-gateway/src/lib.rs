//! The gateway: public REST API, authentication (passwords, access tokens,
//! API keys with Binance-style request signing), the admin API and private
//! WebSocket push.

use std::sync::Arc;

use axum::Router;
use exchange_common::service::ServiceBase;
use exchange_common::{Config, Shutdown};
use tokio::net::TcpListener;

pub const SERVICE: &str = "gateway";

/// The sockets the gateway serves on (bound by the caller; tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    pub ws: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        Ok(Self {
            http: TcpListener::bind(config.gateway_http_addr).await?,
            ws: TcpListener::bind(config.gateway_ws_addr).await?,
        })
    }
}

/// Runs the gateway until `shutdown` is triggered.
pub async fn run(
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let base = ServiceBase::new(config, SERVICE)?;
    let http = base.serve(listeners.http, Router::new(), shutdown.clone());
    let ws = base.serve(listeners.ws, Router::new(), shutdown);
    tokio::try_join!(http, ws)?;
    Ok(())
}
