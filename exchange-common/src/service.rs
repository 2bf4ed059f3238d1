//! What every service's `run` starts from: its pools, readiness and router.

use std::sync::Arc;

use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::http;
use crate::ready::{Heartbeats, Readiness};
use crate::redis::Redis;
use crate::replica::Reads;
use crate::shutdown::Shutdown;

/// A service's shared dependencies. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ServiceBase {
    pub name: &'static str,
    pub config: Arc<Config>,
    pub db: PgPool,
    pub redis: Redis,
    pub readiness: Readiness,
    /// The primary, and the read replica for history reads once
    /// [`Self::with_read_replica`] is called (otherwise the primary only).
    pub reads: Reads,
}

impl ServiceBase {
    /// Creates lazily connecting pools: nothing here waits on the network.
    pub fn new(config: Arc<Config>, name: &'static str) -> anyhow::Result<Self> {
        let db = crate::db::pool(&config, &format!("exchange-{name}"))?;
        let redis = Redis::new(&config)?;
        let readiness = Readiness::new(name, Some(db.clone()), Some(redis.clone()));
        let reads = Reads::primary_only(db.clone(), name);
        Ok(Self {
            name,
            config,
            db,
            redis,
            readiness,
            reads,
        })
    }

    /// For a service that serves history reads: `DB_READ_URL`'s replica
    /// (when set) in [`Self::reads`], its lag loop started until
    /// `shutdown`, and its state in `/ready` (not critical). Services
    /// without history reads do not call this and never connect to it.
    pub fn with_read_replica(mut self, shutdown: &Shutdown) -> anyhow::Result<Self> {
        self.reads = Reads::new(&self.config, self.db.clone(), self.name)?;
        if self.reads.has_replica() {
            self.reads.spawn_monitor(shutdown.clone());
            self.readiness.reads = Some(self.reads.clone());
        }
        Ok(self)
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
