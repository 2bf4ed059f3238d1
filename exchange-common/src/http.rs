//! The HTTP skeleton every service reuses: `/health`, `/ready`, `/metrics`,
//! JSON 404/405, request ids, access logs, request metrics, body limit, and
//! serving with a bounded drain on shutdown.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::{ListenerExt, TapIo};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::auth::{bearer_token, constant_time_eq};
use crate::config::Secret;
use crate::error::ApiError;
use crate::ready::Readiness;
use crate::shutdown::Shutdown;
use crate::telemetry::metrics_handle;

/// The largest request body any endpoint accepts.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;

/// How often the background probe refreshes `exchange_ready` and the
/// report `/ready` answers from (at most
/// [`crate::ready::REPORT_MAX_AGE`] old).
pub const READY_REFRESH_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Clone)]
struct SkeletonState {
    readiness: Readiness,
    metrics_token: Option<Secret>,
}

/// `/health`, `/ready` and `/metrics` for one service.
pub fn skeleton(readiness: Readiness, metrics_token: Option<Secret>) -> Router {
    // Make sure the recorder exists before anything records.
    let _ = metrics_handle();
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(SkeletonState {
            readiness,
            metrics_token,
        })
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Whether `/ready` may say why a backend is down (its host and the
/// error). With `METRICS_TOKEN` configured, only to a caller presenting
/// it: a proxy on the same host (a TCP-mode one adds no forwarding
/// header) would otherwise make every internet client look local.
/// Without it (dev), to a loopback peer whose request no proxy forwarded
/// (no `Forwarded` or `X-Forwarded-For`); without a known peer, nobody.
fn may_see_errors(s: &SkeletonState, req: &Request) -> bool {
    if let Some(expected) = &s.metrics_token {
        return bearer_token(req.headers())
            .is_some_and(|t| constant_time_eq(t.as_bytes(), expected.expose().as_bytes()));
    }
    let forwarded =
        req.headers().contains_key("forwarded") || req.headers().contains_key("x-forwarded-for");
    !forwarded
        && req
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .is_some_and(|peer| peer.0.ip().is_loopback())
}

/// Answers from the latest backend probe ([`Readiness::current`]): no
/// database or Redis work per hit.
async fn ready(State(s): State<SkeletonState>, req: Request) -> Response {
    let report = s.readiness.current().await;
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if report.ok { "ok" } else { "degraded" };
    let mut body = json!({"status": word, "dependencies": report.dependencies});
    if !report.non_critical.is_empty() {
        body["non_critical"] = json!(report.non_critical);
    }
    if !report.errors.is_empty() && may_see_errors(&s, &req) {
        body["errors"] = json!(report.errors);
    }
    (status, axum::Json(body)).into_response()
}

async fn render_metrics(
    State(s): State<SkeletonState>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(expected) = &s.metrics_token {
        let presented = bearer_token(&headers).unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), expected.expose().as_bytes()) {
            return ApiError::unauthorized("metrics require Authorization: Bearer $METRICS_TOKEN")
                .into_response();
        }
    }
    // Refresh consumer liveness so a scrape sees stale loops even when
    // nobody polls /ready.
    for (name, up) in s.readiness.heartbeats.snapshot() {
        metrics::gauge!("exchange_consumer_up", "service" => s.readiness.service, "consumer" => name)
            .set(if up { 1.0 } else { 0.0 });
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        metrics_handle().render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        crate::ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

async fn track_metrics(State(service): State<&'static str>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "service" => service, "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "service" => service, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Adds JSON 404/405, request metrics, request ids, access logs and the
/// body limit to a service's full router (call after merging every route).
pub fn finish(router: Router, service: &'static str) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(service, track_metrics))
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |req: &Request| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                    // The route template, not the raw path: a path can carry a
                    // credential (`/ws/<listenKey>`), and logs are read widely.
                    let path = req
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map_or_else(|| req.uri().path().to_owned(), |m| m.as_str().to_owned());
                    tracing::info_span!("request", service, method = %req.method(), path = %path, request_id = %id)
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(SetRequestIdLayer::new(request_id, RandomRequestId))
}

/// A random (v4) UUID for each request without an `x-request-id`, drawn
/// from the thread's seeded generator: `MakeRequestUuid` asks the kernel
/// for 16 random bytes on every request, a system call per order.
#[derive(Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        axum::http::HeaderValue::from_str(&id.to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// `listener` with TCP_NODELAY set on every accepted connection. With
/// Nagle's algorithm, a small write that follows another before the peer
/// has acknowledged it waits for that ACK, and a peer that only reads (a
/// WebSocket client taking pushes) delays its ACKs by up to 40 ms: the
/// second push of a burst would arrive that much later.
fn without_nagle(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    fn set_nodelay(tcp: &mut TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
    }
    listener.tap_io(set_nodelay)
}

/// Serves `router` until `shutdown`, then lets in-flight requests finish for
/// at most `drain` before returning.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    drain: Duration,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    let signal = shutdown.clone();
    let server = axum::serve(
        without_nagle(listener),
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { signal.wait().await })
    .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result,
        () = async { shutdown.wait().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(%addr, drain_seconds = drain.as_secs(), "drain timeout reached, closing remaining connections");
            Ok(())
        }
    }
}

/// Refreshes `exchange_ready{service}` every [`READY_REFRESH_INTERVAL`] until shutdown.
pub fn spawn_ready_refresher(readiness: Readiness, shutdown: Shutdown) {
    tokio::spawn(async move {
        // Each backend's error is logged when it appears or changes (a
        // wrong CA, a refused password), not every round.
        let mut logged: std::collections::BTreeMap<String, String> = Default::default();
        loop {
            let report = readiness.check().await;
            for (backend, error) in &report.errors {
                if logged.get(backend) != Some(error) {
                    tracing::warn!(service = readiness.service, backend, error, "backend down");
                }
            }
            for backend in logged.keys() {
                if !report.errors.contains_key(backend) {
                    tracing::info!(service = readiness.service, backend, "backend up again");
                }
            }
            logged = report.errors;
            tokio::select! {
                () = shutdown.wait() => break,
                () = tokio::time::sleep(READY_REFRESH_INTERVAL) => {}
            }
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::serve::Listener;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = without_nagle(listener);
        let client = TcpStream::connect(addr).await.unwrap();
        let (accepted, peer) = listener.accept().await;
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY is not set");
    }
}
