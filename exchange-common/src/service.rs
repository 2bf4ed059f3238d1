//! What every service's `run` starts from: its pools, readiness and router.

use std::sync::Arc;

use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::http;
use crate::ready::{Heartbeats, Readiness};
use crate::redis::Redis;
use crate::shutdown::Shutdown;

/// A service's shared dependencies. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ServiceBase {
    pub name: &'static str,
    pub config: Arc<Config>,
    pub db: PgPool,
    pub redis: Redis,
    pub readiness: Readiness,
}

impl ServiceBase {
    /// Creates lazily connecting pools: nothing here waits on the network.
    pub fn new(config: Arc<Config>, name: &'static str) -> anyhow::Result<Self> {
        let db = crate::db::pool(&config, &format!("exchange-{name}"))?;
        let redis = Redis::new(&config)?;
        let readiness = Readiness::new(name, Some(db.clone()), Some(redis.clone()));
        Ok(Self {
            name,
            config,
            db,
            redis,
            readiness,
        })
    }

    pub fn heartbeats(&self) -> &Heartbeats {
        &self.readiness.heartbeats
    }

    /// `routes` plus `/health`, `/ready`, `/metrics` and the common layers.
    pub fn router(&self, routes: Router) -> Router {
        let skeleton = http::skeleton(self.readiness.clone(), self.config.metrics_token.clone());
        http::finish(routes.merge(skeleton), self.name)
    }

    /// Serves `routes` (with the skeleton) on `listener` until shutdown.
    pub async fn serve(
        &self,
        listener: TcpListener,
        routes: Router,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        http::spawn_ready_refresher(self.readiness.clone(), shutdown.clone());
        http::serve(
            listener,
            self.router(routes),
            shutdown,
            self.config.shutdown_drain,
        )
        .await?;
        tracing::info!(service = self.name, "stopped");
        Ok(())
    }

    /// As [`Self::serve`], for a port the internet reaches (the gateway's,
    /// marketdata's): with the header-read and idle timeouts and the
    /// per-peer connection cap of [`crate::listen`].
    pub async fn serve_public(
        &self,
        listener: TcpListener,
        routes: Router,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        http::spawn_ready_refresher(self.readiness.clone(), shutdown.clone());
        crate::listen::serve_limited(
            listener,
            self.router(routes),
            shutdown,
            self.config.shutdown_drain,
            crate::listen::Limits::public(&self.config),
            self.name,
        )
        .await?;
        tracing::info!(service = self.name, "stopped");
        Ok(())
    }
}
