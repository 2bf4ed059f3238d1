//! The gateway: the public REST API, authentication (passwords with
//! Argon2id, HS256 access tokens, API keys with Binance-style request
//! signing), the admin API (root and named operators with roles, every
//! change audited: [`auth::operators`]; optionally on its own listener,
//! `ADMIN_HTTP_ADDR`), order and market-data routes proxied to the
//! internal services ([`upstream`]), rate limits ([`ratelimit`]) and the
//! private WebSocket push ([`ws`]).
//!
//! Invariants: bad input is a 4xx with a code and changes nothing; money
//! moves only through balanced ledger journal entries in one transaction;
//! secrets and tokens are compared in constant time; an unknown email and a
//! wrong password cost the same and answer the same; the user id sent to
//! the order service is always the authenticated one; an internal service
//! that is down is a 503, never a 500.

pub mod api;
pub mod auth;
pub mod binance;
pub mod docs;
pub mod hub;
pub mod ratelimit;
pub mod state;
pub mod upstream;
pub mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use exchange_common::ErrorCode;
use exchange_common::service::ServiceBase;
use exchange_common::{ApiError, Config, Shutdown};
use tokio::net::TcpListener;

use crate::auth::operators::{self, Permission};
use crate::auth::{authn, keys, password, tokens};
use crate::ratelimit::Limits;
use crate::state::AppState;

pub const SERVICE: &str = "gateway";

/// The sockets the gateway serves on (bound by the caller; tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    pub ws: TcpListener,
    /// `ADMIN_HTTP_ADDR`: when present, the admin routes are served here
    /// only (the public port answers 404 for them); when absent, on `http`.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        let admin = match config.gateway.admin_http_addr {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        Ok(Self {
            http: TcpListener::bind(config.gateway.http_addr).await?,
            ws: TcpListener::bind(config.gateway.ws_addr).await?,
            admin,
        })
    }
}

/// The most request headers, and their total size, any route accepts.
pub const REQUEST_HEADERS_COUNT_MAX: usize = 64;
pub const REQUEST_HEADERS_BYTES_MAX: usize = 16 * 1024;

async fn limit_headers(req: Request, next: Next) -> Response {
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers.len() > REQUEST_HEADERS_COUNT_MAX || bytes > REQUEST_HEADERS_BYTES_MAX {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::HeadersTooLarge,
            format!(
                "at most {REQUEST_HEADERS_COUNT_MAX} headers and {REQUEST_HEADERS_BYTES_MAX} bytes of them"
            ),
        )
        .into_response();
    }
    next.run(req).await
}

fn limits(state: &AppState) -> Limits {
    Limits {
        limiter: state.limiter.clone(),
        trusted_proxies: state.trusted_proxies.clone(),
    }
}

/// The admin routes, one group per [`Permission`]: each group's layer
/// authenticates the caller (root or an operator) and refuses a role
/// without that permission (`auth::operators`). A new admin route goes in
/// the group of the permission it needs.
pub fn admin_routes(state: AppState) -> Router {
    let gate = |permission: Permission| {
        from_fn_with_state((state.clone(), permission), operators::require)
    };
    // Every role: reads.
    let read = Router::new()
        .route("/admin/v1/audit", get(api::operators::list_audit))
        .route("/admin/v1/operators", get(api::operators::list_operators))
        .route(
            "/admin/v1/withdrawals",
            get(api::custody_admin::list_withdrawals),
        )
        .route(
            "/admin/v1/custody/deposits",
            get(api::custody_admin::list_deposits),
        )
        .route(
            "/admin/v1/custody/freezes",
            get(api::custody_admin::list_freezes),
        )
        .route_layer(gate(Permission::Read));
    // Support (and admin): the users' accounts.
    let support = Router::new()
        .route("/admin/v1/users/{id}/freeze", post(api::users::freeze))
        .route("/admin/v1/users/{id}/unfreeze", post(api::users::unfreeze))
        .route(
            "/admin/v1/users/{id}/2fa/reset",
            post(api::users::reset_second_factor),
        )
        .route_layer(gate(Permission::Support));
    // Finance (and admin): money in and out.
    let finance = Router::new()
        .route("/admin/v1/deposits", post(api::admin::deposit))
        .route("/admin/v1/assets/{symbol}", patch(api::admin::patch_asset))
        .route(
            "/admin/v1/withdrawals/{id}/approve",
            post(api::custody_admin::approve),
        )
        .route(
            "/admin/v1/withdrawals/{id}/reject",
            post(api::custody_admin::reject),
        )
        .route(
            "/admin/v1/withdrawals/{id}/broadcast",
            post(api::custody_admin::broadcast),
        )
        .route(
            "/admin/v1/withdrawals/{id}/confirm",
            post(api::custody_admin::confirm),
        )
        .route(
            "/admin/v1/withdrawals/{id}/fail",
            post(api::custody_admin::fail),
        )
        .route(
            "/admin/v1/custody/deposits",
            post(api::custody_admin::report_deposit),
        )
        .route(
            "/admin/v1/custody/deposit-addresses",
            post(api::custody_admin::load_deposit_addresses),
        )
        .route(
            "/admin/v1/custody/freezes/{id}/release",
            post(api::custody_admin::release_freeze),
        )
        .route_layer(gate(Permission::Finance));
    // Admin only: what is traded, and who operates.
    let admin = Router::new()
        .route("/admin/v1/assets", post(api::admin::create_asset))
        .route("/admin/v1/markets", post(api::admin::create_market))
        .route(
            "/admin/v1/markets/{symbol}",
            patch(api::admin::patch_market),
        )
        .route("/admin/v1/operators", post(api::operators::create_operator))
        .route(
            "/admin/v1/operators/{id}",
            delete(api::operators::delete_operator),
        )
        .route(
            "/admin/v1/operators/{id}/token",
            post(api::operators::rotate_operator_token),
        )
        .route_layer(gate(Permission::Admin));
    read.merge(support)
        .merge(finance)
        .merge(admin)
        .with_state(state)
}

/// The admin routes as served on their own listener (`ADMIN_HTTP_ADDR`),
/// with the same per-IP budget and header limits as the public port.
fn admin_listener_routes(state: AppState) -> Router {
    let limits = limits(&state);
    admin_routes(state)
        .layer(from_fn_with_state(limits, ratelimit::per_ip))
        .layer(from_fn(limit_headers))
}

/// The REST routes (without the skeleton and common layers), admin routes
/// included unless `admin_separate` (they are then on their own listener).
/// No CORS layer: browsers on other origins are refused by default.
pub fn routes(state: AppState, admin_separate: bool) -> Router {
    let limits = limits(&state);
    let public = Router::new()
        .route(
            "/api/v1/auth/register",
            post(api::accounts::register)
                .route_layer(from_fn_with_state(limits.clone(), ratelimit::register)),
        )
        .route(
            "/api/v1/auth/login",
            post(api::accounts::login)
                .route_layer(from_fn_with_state(limits.clone(), ratelimit::login)),
        )
        .route("/api/v1/assets", get(api::public::assets))
        .route("/api/v1/markets", get(api::public::markets))
        .route(
            "/api/v1/markets/{symbol}/depth",
            get(api::marketdata::depth),
        )
        .route(
            "/api/v1/markets/{symbol}/trades",
            get(api::marketdata::trades),
        )
        .route(
            "/api/v1/markets/{symbol}/klines",
            get(api::marketdata::klines),
        )
        .route(
            "/api/v1/markets/{symbol}/ticker",
            get(api::marketdata::ticker),
        );
    let user = Router::new()
        .route("/api/v1/account/balances", get(api::accounts::balances))
        .route("/api/v1/account/trades", get(api::orders::my_trades))
        .route(
            "/api/v1/account/deposit-address",
            get(api::custody::deposit_address),
        )
        .route("/api/v1/account/deposits", get(api::custody::list_deposits))
        .route("/api/v1/account/ledger", get(api::statement::ledger))
        .route(
            "/api/v1/account/statement.csv",
            get(api::statement::statement_csv),
        )
        .route(
            "/api/v1/account/withdrawal-addresses",
            post(api::custody::add_withdrawal_address).get(api::custody::list_withdrawal_addresses),
        )
        .route(
            "/api/v1/account/withdrawal-addresses/{id}",
            delete(api::custody::delete_withdrawal_address),
        )
        .route(
            "/api/v1/withdrawals",
            post(api::custody::request_withdrawal).get(api::custody::list_withdrawals),
        )
        .route(
            "/api/v1/withdrawals/{id}",
            get(api::custody::get_withdrawal).delete(api::custody::cancel_withdrawal),
        )
        .route(
            "/api/v1/orders",
            post(api::orders::place)
                .get(api::orders::list_orders)
                .delete(api::orders::cancel_all),
        )
        .route(
            "/api/v1/orders/{id}",
            get(api::orders::get_order)
                .delete(api::orders::cancel)
                .patch(api::orders::amend),
        )
        .route(
            "/api/v1/api-keys",
            post(api::accounts::create_api_key).get(api::accounts::list_api_keys),
        )
        .route(
            "/api/v1/api-keys/{id}",
            delete(api::accounts::delete_api_key),
        )
        .route("/api/v1/auth/logout", post(api::security::logout))
        .route("/api/v1/auth/logout-all", post(api::security::logout_all))
        .route(
            "/api/v1/account/password",
            post(api::security::change_password),
        )
        .route(
            "/api/v1/account/2fa/totp",
            post(api::security::enrol_totp).delete(api::security::disable_totp),
        )
        .route(
            "/api/v1/account/2fa/totp/confirm",
            post(api::security::confirm_totp),
        )
        .route_layer(from_fn_with_state(state.clone(), authn::require_user));
    let mut router = public.merge(user).with_state(state.clone());
    if !admin_separate {
        router = router.merge(admin_routes(state.clone()));
    }
    if state.base.config.gateway.enable_docs {
        router = router.merge(docs::router());
    }
    // Outermost first: header limits, then the per-IP budget (the
    // skeleton's /health, /ready, /metrics are merged later, outside both).
    router
        .layer(from_fn_with_state(limits, ratelimit::per_ip))
        .layer(from_fn(limit_headers))
        .merge(binance::router(state))
}

/// The private WebSocket port's routes.
pub fn ws_routes(state: AppState) -> Router {
    let limits = limits(&state);
    Router::new()
        .route("/ws/private", get(ws::private))
        .route("/ws/{listen_key}", get(binance::user_stream::connect))
        .with_state(state)
        .layer(from_fn_with_state(limits, ratelimit::per_ip))
        .layer(from_fn(limit_headers))
}

fn describe_metrics() {
    metrics::describe_counter!(
        "exchange_rate_limited_total",
        "Requests refused with 429, by service and budget kind"
    );
    metrics::describe_counter!(
        "exchange_gateway_upstream_errors_total",
        "Calls to an internal service that failed (down, timeout), by upstream"
    );
    metrics::describe_counter!(
        "exchange_gateway_upstream_busy_total",
        "Calls refused with 503 because every in-flight slot to the upstream stayed busy"
    );
    metrics::describe_counter!(
        "exchange_admin_auth_failures_total",
        "Admin calls refused: missing or unknown token, or a role without the permission, by reason"
    );
    metrics::describe_counter!(
        exchange_common::listen::REFUSED_METRIC,
        "Connections refused or cut by an abuse limit, by service and reason (per_ip_cap, header_timeout, idle_timeout)"
    );
    metrics::describe_counter!(
        "exchange_ws_slow_disconnects_total",
        "WebSocket connections closed because their send queue was full"
    );
}

/// Runs the gateway until `shutdown` is triggered.
pub async fn run(
    config: Arc<Config>,
    listeners: Listeners,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    // Order and fill history (Binance API) and the audit log may come from
    // DB_READ_URL's replica.
    let base = ServiceBase::new(config.clone(), SERVICE)?.with_read_replica(&shutdown)?;
    describe_metrics();
    let state = AppState::new(state::StateInner {
        passwords: password::Passwords::new(config.gateway.password_hash_queue_max).await?,
        tokens: Arc::new(tokens::Tokens::new(&config)),
        keys: keys::KeyCipher::new(&config),
        trusted_proxies: config.trusted_proxy_nets().into(),
        orders: upstream::Upstream::order_service(&config)?,
        marketdata: upstream::Upstream::marketdata(&config)?,
        wallet: upstream::Upstream::wallet(&config)?,
        limiter: ratelimit::RateLimiter::new(&config),
        login_failures: ratelimit::LoginFailures::new(&config),
        hub: hub::Hub::new(),
        shutdown: shutdown.clone(),
        base: base.clone(),
    });
    let heartbeat =
        base.heartbeats()
            .register(hub::CONSUMER_NAME, "pubsub", hub::PUBSUB_STALE_AFTER);
    tokio::spawn(hub::run_private_events(
        base.redis.clone(),
        state.hub.clone(),
        heartbeat,
        shutdown.clone(),
    ));
    let admin_separate = listeners.admin.is_some();
    let http = base.serve_public(
        listeners.http,
        routes(state.clone(), admin_separate),
        shutdown.clone(),
    );
    let admin = {
        let (base, routes, shutdown) = (
            base.clone(),
            admin_listener_routes(state.clone()),
            shutdown.clone(),
        );
        async move {
            match listeners.admin {
                Some(l) => base.serve_public(l, routes, shutdown).await,
                None => Ok(()),
            }
        }
    };
    let ws = base.serve_public(listeners.ws, ws_routes(state), shutdown);
    tokio::try_join!(http, ws, admin)?;
    Ok(())
}
