//! The clearing service: settlement of event batches into balances, the double-entry ledger, fees and trades.
//!
//! For now it serves the platform skeleton (`/health`, `/ready`,
//! `/metrics`); the trading pipeline (issue 4) adds its routes and stream
//! consumers here.

use std::sync::Arc;

use axum::Router;
use exchange_common::service::ServiceBase;
use exchange_common::{Config, Shutdown};
use tokio::net::TcpListener;

pub const SERVICE: &str = "clearing";

/// The sockets this service serves on (bound by the caller; tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        Ok(Self {
            http: TcpListener::bind(config.clearing_http_addr).await?,
        })
    }
}

/// Runs the service until `shutdown` is triggered.
pub async fn run(
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let base = ServiceBase::new(config, SERVICE)?;
    base.serve(listeners.http, Router::new(), shutdown).await
}
