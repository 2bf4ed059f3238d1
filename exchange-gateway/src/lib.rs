//! The gateway: the public REST API, authentication (passwords with
//! Argon2id, HS256 access tokens, API keys with Binance-style request
//! signing), the admin API, and (later) private WebSocket push.
//!
//! Invariants: bad input is a 4xx with a code and changes nothing; money
//! moves only through balanced ledger journal entries in one transaction;
//! secrets and tokens are compared in constant time; an unknown email and a
//! wrong password cost the same and answer the same.

pub mod api;
pub mod authn;
pub mod docs;
pub mod keys;
pub mod password;
pub mod state;
pub mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, patch, post};
use exchange_common::service::ServiceBase;
use exchange_common::{Config, Shutdown};
use tokio::net::TcpListener;

use crate::state::AppState;

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

/// The REST routes (without the skeleton and common layers).
pub fn routes(state: AppState) -> Router {
    let public = Router::new()
        .route("/api/v1/auth/register", post(api::accounts::register))
        .route("/api/v1/auth/login", post(api::accounts::login))
        .route("/api/v1/assets", get(api::public::assets))
        .route("/api/v1/markets", get(api::public::markets));
    let user = Router::new()
        .route("/api/v1/account/balances", get(api::accounts::balances))
        .route(
            "/api/v1/api-keys",
            post(api::accounts::create_api_key).get(api::accounts::list_api_keys),
        )
        .route(
            "/api/v1/api-keys/{id}",
            delete(api::accounts::delete_api_key),
        )
        .route_layer(from_fn_with_state(state.clone(), authn::require_user));
    let admin = Router::new()
        .route("/admin/v1/assets", post(api::admin::create_asset))
        .route("/admin/v1/markets", post(api::admin::create_market))
        .route(
            "/admin/v1/markets/{symbol}",
            patch(api::admin::patch_market),
        )
        .route("/admin/v1/deposits", post(api::admin::deposit))
        .route_layer(from_fn_with_state(state.clone(), authn::require_admin));
    let mut router = public.merge(user).merge(admin).with_state(state.clone());
    if state.base.config.enable_docs {
        router = router.merge(docs::router());
    }
    router
}

/// Runs the gateway until `shutdown` is triggered.
pub async fn run(
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let base = ServiceBase::new(config.clone(), SERVICE)?;
    let state = AppState {
        passwords: password::Passwords::new().await?,
        tokens: Arc::new(tokens::Tokens::new(&config)),
        keys: keys::KeyCipher::new(&config),
        trusted_proxies: config.trusted_proxy_nets().into(),
        base: base.clone(),
    };
    let http = base.serve(listeners.http, routes(state), shutdown.clone());
    // The private WebSocket (`/ws/private`) arrives with the pipeline; the
    // port already answers health probes.
    let ws = base.serve(listeners.ws, Router::new(), shutdown);
    tokio::try_join!(http, ws)?;
    Ok(())
}
