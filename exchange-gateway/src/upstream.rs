//! The internal HTTP client: calls to the order service (with
//! `INTERNAL_TOKEN`) and to marketdata (public data, no token), each with
//! a timeout. The order service's routes are typed methods here
//! ([`Upstream::place`], [`Upstream::get_order`], …): handlers of both
//! the v1 and the Binance API call them, and no path is written elsewhere.
//!
//! The gateway is a thin proxy here: a 2xx/4xx answer from upstream is
//! passed to the client unchanged (status and JSON body). An upstream that
//! is down, slow, or answers something that is not our JSON is a 503
//! `UNAVAILABLE`, never a 500: the gateway itself is fine. Except when a
//! call that changes state (anything but `GET`) may have reached the
//! service: a timeout or a connection cut after the request went out, or an
//! answer we cannot read, leaves its outcome unknown, and saying "nothing
//! happened" could make a client place twice. That is 503 `OUTCOME_UNKNOWN`
//! (as the order service answers for a lost commit): retrying with the same
//! `client_order_id` is safe.
//!
//! Placements are coalesced ([`Upstream::place`]): concurrent `POST
//! /api/v1/orders` go to the order service together as one `POST
//! /internal/v1/orders/batch` (up to [`PLACE_BATCH_LEN_MAX`], up to
//! [`PLACE_CALLS_IN_FLIGHT`] calls at once, no added delay), and each
//! client gets the status and body the single route would have given.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc, oneshot};

use exchange_common::ErrorCode;
use exchange_common::{ApiError, Config, Secret};

/// Time to open a TCP connection to an internal service.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time for a whole internal call (request, upstream work, response).
pub const UPSTREAM_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call waits for one of marketdata's in-flight slots before
/// 503 `UNAVAILABLE`.
pub const IN_FLIGHT_WAIT_MAX: Duration = Duration::from_millis(500);
/// The largest upstream response body relayed to a client.
pub const UPSTREAM_RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Idle keep-alive connections kept per internal host.
pub const UPSTREAM_IDLE_CONNECTIONS_PER_HOST_MAX: usize = 64;

/// A relayed upstream answer: status and JSON body bytes.
#[derive(Debug, Clone)]
pub struct Relayed {
    pub status: StatusCode,
    /// The raw JSON bytes (checked to parse).
    pub body: Vec<u8>,
}

impl Relayed {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

impl IntoResponse for Relayed {
    fn into_response(self) -> Response {
        (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.body,
        )
            .into_response()
    }
}

/// Placements waiting for a coalesced call to the order service; beyond
/// this a placement is sent on its own.
pub const PLACE_QUEUE_LEN_MAX: usize = 10_000;
/// Placements in one `POST /internal/v1/orders/batch` (the order service
/// takes up to 1,000).
pub const PLACE_BATCH_LEN_MAX: usize = 256;
/// Longest a placement waits in the gateway's queue before being sent; past
/// it the client gets 503 `OVERLOADED` (nothing was sent) rather than an
/// order placed long after it may have given up and placed again.
pub const PLACE_QUEUE_WAIT_MAX: Duration = Duration::from_secs(2);
/// Coalesced calls in flight at once: the order service runs two batch
/// workers, and a call waiting on the network should not stall the next.
pub const PLACE_CALLS_IN_FLIGHT: usize = 4;

/// One internal service: its base URL and (for the order service) the token.
#[derive(Clone)]
pub struct Upstream {
    name: &'static str,
    base_url: String,
    token: Option<Secret>,
    client: reqwest::Client,
    /// Placement coalescing, started on first use (inside the runtime).
    placer: Arc<OnceLock<Placer>>,
    /// Placements per coalesced call; 1 sends each alone (the behaviour
    /// before coalescing, kept for A/B benchmarks).
    place_batch_len_max: usize,
    /// Calls in flight at once, when bounded (marketdata: see
    /// [`Upstream::marketdata`]); a call beyond it waits for one to end.
    in_flight: Option<Arc<tokio::sync::Semaphore>>,
}

struct PlaceJob {
    body: serde_json::Value,
    reply: oneshot::Sender<Result<Relayed, ApiError>>,
    queued_at: Instant,
}

#[derive(Clone)]
struct Placer {
    tx: mpsc::Sender<PlaceJob>,
}

/// One placement's outcome in the order service's batch answer.
#[derive(Deserialize)]
struct PlaceResult {
    status: u16,
    #[serde(default)]
    order: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    client_builder().build().map_err(Into::into)
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(UPSTREAM_CONNECT_TIMEOUT)
        .timeout(UPSTREAM_REQUEST_TIMEOUT)
        .pool_max_idle_per_host(UPSTREAM_IDLE_CONNECTIONS_PER_HOST_MAX)
        .redirect(reqwest::redirect::Policy::none())
}

impl Upstream {
    pub fn order_service(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            name: "order",
            base_url: config
                .gateway
                .order_service_url
                .trim_end_matches('/')
                .to_owned(),
            token: Some(config.internal_token.clone()),
            client: client()?,
            placer: Arc::default(),
            // `GATEWAY_PLACE_BATCH_MAX`, validated at start (1..=256).
            place_batch_len_max: config.gateway.place_batch_max,
            in_flight: None,
        })
    }

    pub fn wallet(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            name: "wallet",
            base_url: config
                .gateway
                .wallet_service_url
                .trim_end_matches('/')
                .to_owned(),
            token: Some(config.internal_token.clone()),
            client: client()?,
            placer: Arc::default(),
            place_batch_len_max: 1,
            in_flight: None,
        })
    }

    /// Marketdata's port is public (`listen`'s limits): the gateway
    /// presents `INTERNAL_TOKEN` so its calls (on behalf of clients it has
    /// already rate-limited) are not counted against marketdata's per-IP
    /// REST budget; it keeps at most half of `HTTP_CONNECTIONS_PER_IP_MAX`
    /// calls in flight, so its connections stay under marketdata's
    /// per-peer cap; and it drops an idle pooled connection before
    /// marketdata's header-read timeout would (a request sent on a
    /// connection the server is just closing fails).
    pub fn marketdata(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            name: "marketdata",
            base_url: config
                .gateway
                .marketdata_url
                .trim_end_matches('/')
                .to_owned(),
            token: Some(config.internal_token.clone()),
            client: client_builder()
                .pool_idle_timeout(config.http.header_read_timeout / 2)
                .build()?,
            placer: Arc::default(),
            place_batch_len_max: 1,
            in_flight: Some(Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(config.http.connections_per_ip_max / 2)
                    .unwrap_or(1)
                    .max(1),
            ))),
        })
    }

    fn unavailable(&self) -> ApiError {
        ApiError::unavailable(format!("the {} service is unavailable, retry", self.name))
    }

    /// The failure of a call after the request may have reached the
    /// service: unknown outcome for a state-changing call, else unavailable.
    fn failed_after_sending(&self, method: &Method) -> ApiError {
        if *method == Method::GET {
            return self.unavailable();
        }
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::OutcomeUnknown,
            format!(
                "no answer from the {} service: the request may or may not have been applied; \
                 retry with the same client_order_id or client_withdrawal_id (safe), or check before \
                 trying again",
                self.name
            ),
        )
    }

    /// Calls `method path` with an optional query and JSON body, and relays
    /// the answer. `path` starts with `/`.
    pub async fn call<Q: Serialize + ?Sized, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        query: Option<&Q>,
        body: Option<&B>,
    ) -> Result<Relayed, ApiError> {
        // Held until the answer is read (the connection is busy until then).
        // The wait for one is bounded: past it, 503 `UNAVAILABLE` (nothing
        // was sent), not a queue that grows with every client.
        let _permit = match &self.in_flight {
            Some(s) => {
                match tokio::time::timeout(IN_FLIGHT_WAIT_MAX, s.clone().acquire_owned()).await {
                    Ok(Ok(p)) => Some(p),
                    Ok(Err(_)) => return Err(self.unavailable()),
                    Err(_) => {
                        metrics::counter!("exchange_gateway_upstream_busy_total", "upstream" => self.name)
                            .increment(1);
                        return Err(self.unavailable());
                    }
                }
            }
            None => None,
        };
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base_url));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.expose());
        }
        if let Some(q) = query {
            req = req.query(q);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let mut resp = req.send().await.map_err(|e| {
            tracing::warn!(upstream = self.name, error = %e, "upstream call failed");
            metrics::counter!("exchange_gateway_upstream_errors_total", "upstream" => self.name)
                .increment(1);
            // No connection means nothing was sent; anything later (a
            // timeout, a cut connection) may have reached the service.
            if e.is_connect() {
                self.unavailable()
            } else {
                self.failed_after_sending(&method)
            }
        })?;
        let status = resp.status();
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > UPSTREAM_RESPONSE_BYTES_MAX {
                        tracing::warn!(upstream = self.name, "upstream response too large");
                        return Err(self.failed_after_sending(&method));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(upstream = self.name, error = %e, "upstream response cut");
                    return Err(self.failed_after_sending(&method));
                }
            }
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            tracing::warn!(
                upstream = self.name,
                status = status.as_u16(),
                "upstream answered non-JSON"
            );
            return Err(self.failed_after_sending(&method));
        }
        let relayed = Relayed { status, body };
        // Our own token refused (the only 401 an internal service gives):
        // a deployment mistake, not the client's. A 403 is a business
        // answer (`ACCOUNT_FROZEN`, `WITHDRAWALS_DISABLED`, …) and is relayed.
        if status == StatusCode::UNAUTHORIZED {
            tracing::error!(
                upstream = self.name,
                "upstream refused the internal token (INTERNAL_TOKEN differs?)"
            );
            return Err(self.unavailable());
        }
        Ok(relayed)
    }

    /// Places one order (`POST /internal/v1/orders` with `body`), coalesced
    /// with the placements of other requests in flight into one `POST
    /// /internal/v1/orders/batch`: a free worker takes everything waiting
    /// (up to [`PLACE_BATCH_LEN_MAX`]) at once, so batches form while the
    /// previous call is out and no fixed delay is added — a lone request
    /// goes out alone, as before. Each caller gets exactly the status and
    /// JSON body the single route would have answered.
    pub async fn place<B: Serialize + ?Sized>(&self, body: &B) -> Result<Relayed, ApiError> {
        let body = serde_json::to_value(body).map_err(ApiError::internal)?;
        if self.place_batch_len_max <= 1 {
            return self.place_one(&body).await;
        }
        let placer = self.placer.get_or_init(|| self.start_placer());
        let (reply, rx) = oneshot::channel();
        let job = PlaceJob {
            body,
            reply,
            queued_at: Instant::now(),
        };
        match placer.tx.try_send(job) {
            // A reply dropped unanswered means the worker stopped mid-call:
            // the placement may have been sent.
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err(self.failed_after_sending(&Method::POST))),
            // Queue full or stopped: go alone (the order service's own
            // queue bounds the load).
            Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) => {
                self.place_one(&job.body).await
            }
        }
    }

    // The rest of the order service's internal API, one method per route:
    // its paths are written here and nowhere else.

    /// `GET /internal/v1/orders/{id}` (the query names the user).
    pub async fn get_order<Q: Serialize + ?Sized>(
        &self,
        id: i64,
        query: &Q,
    ) -> Result<Relayed, ApiError> {
        let path = format!("/internal/v1/orders/{id}");
        self.call::<_, ()>(Method::GET, &path, Some(query), None)
            .await
    }

    /// `GET /internal/v1/orders`: a user's orders.
    pub async fn list_orders<Q: Serialize + ?Sized>(&self, query: &Q) -> Result<Relayed, ApiError> {
        self.call::<_, ()>(Method::GET, "/internal/v1/orders", Some(query), None)
            .await
    }

    /// `DELETE /internal/v1/orders/{id}` (the query names the user).
    pub async fn cancel_order<Q: Serialize + ?Sized>(
        &self,
        id: i64,
        query: &Q,
    ) -> Result<Relayed, ApiError> {
        let path = format!("/internal/v1/orders/{id}");
        self.call::<_, ()>(Method::DELETE, &path, Some(query), None)
            .await
    }

    /// `POST /internal/v1/orders/cancel-all`.
    pub async fn cancel_all<B: Serialize + ?Sized>(&self, body: &B) -> Result<Relayed, ApiError> {
        self.call::<(), _>(
            Method::POST,
            "/internal/v1/orders/cancel-all",
            None,
            Some(body),
        )
        .await
    }

    /// `PATCH /internal/v1/orders/{id}`: an amend.
    pub async fn amend_order<B: Serialize + ?Sized>(
        &self,
        id: i64,
        body: &B,
    ) -> Result<Relayed, ApiError> {
        let path = format!("/internal/v1/orders/{id}");
        self.call::<(), _>(Method::PATCH, &path, None, Some(body))
            .await
    }

    /// `GET /internal/v1/fills`: a user's fills.
    pub async fn list_fills<Q: Serialize + ?Sized>(&self, query: &Q) -> Result<Relayed, ApiError> {
        self.call::<_, ()>(Method::GET, "/internal/v1/fills", Some(query), None)
            .await
    }

    /// `PATCH /internal/v1/markets/{symbol}/status`.
    pub async fn set_market_status<B: Serialize + ?Sized>(
        &self,
        symbol: &str,
        body: &B,
    ) -> Result<Relayed, ApiError> {
        let path = format!("/internal/v1/markets/{symbol}/status");
        self.call::<(), _>(Method::PATCH, &path, None, Some(body))
            .await
    }

    // The wallet's internal API (exchange-wallet's `api` module), one
    // method per route.

    /// `GET /internal/v1/users/{uid}/deposit-address?asset=`.
    pub async fn deposit_address<Q: Serialize + ?Sized>(
        &self,
        uid: i64,
        q: &Q,
    ) -> Result<Relayed, ApiError> {
        let path = format!("/internal/v1/users/{uid}/deposit-address");
        self.call::<_, ()>(Method::GET, &path, Some(q), None).await
    }

    /// `GET /internal/v1/users/{uid}/deposits`.
    pub async fn list_deposits<Q: Serialize + ?Sized>(
        &self,
        uid: i64,
        q: &Q,
    ) -> Result<Relayed, ApiError> {
        let path = format!("/internal/v1/users/{uid}/deposits");
        self.call::<_, ()>(Method::GET, &path, Some(q), None).await
    }

    /// `POST /internal/v1/users/{uid}/withdrawal-addresses`.
    pub async fn add_withdrawal_address<B: Serialize + ?Sized>(
        &self,
        uid: i64,
        body: &B,
    ) -> Result<Relayed, ApiError> {
        let path = format!("/internal/v1/users/{uid}/withdrawal-addresses");
        self.call::<(), _>(Method::POST, &path, None, Some(body))
            .await
    }

    /// `GET /internal/v1/users/{uid}/withdrawal-addresses`.
    pub async fn list_withdrawal_addresses(&self, uid: i64) -> Result<Relayed, ApiError> {
        let path = format!("/internal/v1/users/{uid}/withdrawal-addresses");
        self.call::<(), ()>(Method::GET, &path, None, None).await
    }

    /// `DELETE /internal/v1/users/{uid}/withdrawal-addresses/{id}`.
    pub async fn delete_withdrawal_address(&self, uid: i64, id: i64) -> Result<Relayed, ApiError> {
        let path = format!("/internal/v1/users/{uid}/withdrawal-addresses/{id}");
        self.call::<(), ()>(Method::DELETE, &path, None, None).await
    }

    /// `POST /internal/v1/users/{uid}/withdrawals`.
    pub async fn request_withdrawal<B: Serialize + ?Sized>(
        &self,
        uid: i64,
        body: &B,
    ) -> Result<Relayed, ApiError> {
        let path = format!("/internal/v1/users/{uid}/withdrawals");
        self.call::<(), _>(Method::POST, &path, None, Some(body))
            .await
    }

    /// `GET /internal/v1/users/{uid}/withdrawals`.
    pub async fn list_withdrawals<Q: Serialize + ?Sized>(
        &self,
        uid: i64,
        q: &Q,
    ) -> Result<Relayed, ApiError> {
        let path = format!("/internal/v1/users/{uid}/withdrawals");
        self.call::<_, ()>(Method::GET, &path, Some(q), None).await
    }

    /// `GET /internal/v1/users/{uid}/withdrawals/{id}`.
    pub async fn get_withdrawal(&self, uid: i64, id: i64) -> Result<Relayed, ApiError> {
        let path = format!("/internal/v1/users/{uid}/withdrawals/{id}");
        self.call::<(), ()>(Method::GET, &path, None, None).await
    }

    /// `DELETE /internal/v1/users/{uid}/withdrawals/{id}`: cancel.
    pub async fn cancel_withdrawal(&self, uid: i64, id: i64) -> Result<Relayed, ApiError> {
        let path = format!("/internal/v1/users/{uid}/withdrawals/{id}");
        self.call::<(), ()>(Method::DELETE, &path, None, None).await
    }

    /// `GET /internal/v1/admin/withdrawals`.
    pub async fn admin_withdrawals<Q: Serialize + ?Sized>(
        &self,
        q: &Q,
    ) -> Result<Relayed, ApiError> {
        self.call::<_, ()>(Method::GET, "/internal/v1/admin/withdrawals", Some(q), None)
            .await
    }

    /// `POST /internal/v1/admin/withdrawals/{id}/{approve|reject|broadcast|confirm|fail}`.
    pub async fn withdrawal_action<B: Serialize + ?Sized>(
        &self,
        id: i64,
        action: WithdrawalAction,
        body: &B,
    ) -> Result<Relayed, ApiError> {
        let path = format!("/internal/v1/admin/withdrawals/{id}/{}", action.as_str());
        self.call::<(), _>(Method::POST, &path, None, Some(body))
            .await
    }

    /// `POST /internal/v1/admin/deposits`: a chain transfer reported.
    pub async fn report_chain_deposit<B: Serialize + ?Sized>(
        &self,
        body: &B,
    ) -> Result<Relayed, ApiError> {
        self.call::<(), _>(
            Method::POST,
            "/internal/v1/admin/deposits",
            None,
            Some(body),
        )
        .await
    }

    /// `GET /internal/v1/admin/deposits`.
    pub async fn admin_chain_deposits<Q: Serialize + ?Sized>(
        &self,
        q: &Q,
    ) -> Result<Relayed, ApiError> {
        self.call::<_, ()>(Method::GET, "/internal/v1/admin/deposits", Some(q), None)
            .await
    }

    /// `POST /internal/v1/admin/deposit-addresses`.
    pub async fn load_deposit_addresses<B: Serialize + ?Sized>(
        &self,
        body: &B,
    ) -> Result<Relayed, ApiError> {
        self.call::<(), _>(
            Method::POST,
            "/internal/v1/admin/deposit-addresses",
            None,
            Some(body),
        )
        .await
    }

    /// `GET /internal/v1/admin/custody-freezes`.
    pub async fn custody_freezes<Q: Serialize + ?Sized>(&self, q: &Q) -> Result<Relayed, ApiError> {
        self.call::<_, ()>(
            Method::GET,
            "/internal/v1/admin/custody-freezes",
            Some(q),
            None,
        )
        .await
    }

    /// `POST /internal/v1/admin/custody-freezes/{id}/release`.
    pub async fn release_custody_freeze<B: Serialize + ?Sized>(
        &self,
        id: i64,
        body: &B,
    ) -> Result<Relayed, ApiError> {
        let path = format!("/internal/v1/admin/custody-freezes/{id}/release");
        self.call::<(), _>(Method::POST, &path, None, Some(body))
            .await
    }

    fn start_placer(&self) -> Placer {
        let (tx, rx) = mpsc::channel(PLACE_QUEUE_LEN_MAX);
        let rx = Arc::new(Mutex::new(rx));
        let len_max = self.place_batch_len_max;
        for _ in 0..PLACE_CALLS_IN_FLIGHT {
            let (up, rx) = (self.clone(), rx.clone());
            tokio::spawn(async move {
                let mut jobs = Vec::with_capacity(len_max);
                loop {
                    if rx.lock().await.recv_many(&mut jobs, len_max).await == 0 {
                        return;
                    }
                    metrics::histogram!("exchange_gateway_place_batch_len")
                        .record(jobs.len() as f64);
                    up.place_jobs(std::mem::take(&mut jobs)).await;
                }
            });
        }
        Placer { tx }
    }

    async fn place_one(&self, body: &serde_json::Value) -> Result<Relayed, ApiError> {
        self.call::<(), _>(Method::POST, "/internal/v1/orders", None, Some(body))
            .await
    }

    async fn place_jobs(&self, jobs: Vec<PlaceJob>) {
        // Nothing is sent for a client that is gone (it may place again
        // after its own timeout) or that waited too long in the queue.
        let now = Instant::now();
        let jobs: Vec<PlaceJob> = jobs
            .into_iter()
            .filter_map(|job| {
                if job.reply.is_closed() {
                    return None;
                }
                if now.duration_since(job.queued_at) > PLACE_QUEUE_WAIT_MAX {
                    metrics::counter!("exchange_gateway_place_queue_expired_total").increment(1);
                    let _ = job.reply.send(Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::Overloaded,
                        "too many placements waiting for the order service; this one was not sent: retry",
                    )));
                    return None;
                }
                Some(job)
            })
            .collect();
        if jobs.is_empty() {
            return;
        }
        if jobs.len() == 1 {
            for job in jobs {
                let _ = job.reply.send(self.place_one(&job.body).await);
            }
            return;
        }
        let (bodies, replies): (Vec<_>, Vec<_>) =
            jobs.into_iter().map(|j| (j.body, j.reply)).unzip();
        let batch = serde_json::json!({ "orders": bodies });
        let outcome = self
            .call::<(), _>(
                Method::POST,
                "/internal/v1/orders/batch",
                None,
                Some(&batch),
            )
            .await;
        let results = match outcome {
            Ok(r) if r.status == StatusCode::OK => {
                match serde_json::from_slice::<Vec<PlaceResult>>(&r.body) {
                    Ok(results) if results.len() == replies.len() => results,
                    _ => {
                        // A 200 means the batch was committed: whatever we
                        // cannot read, "nothing applied" would be false.
                        tracing::warn!(upstream = self.name, "unexpected batch answer");
                        for reply in replies {
                            let _ = reply.send(Err(self.failed_after_sending(&Method::POST)));
                        }
                        return;
                    }
                }
            }
            Ok(r) if r.status.is_client_error() => {
                // The batch as a whole was refused before anything was
                // applied (e.g. one placement's JSON shape): each goes
                // alone and gets its own answer.
                let BatchBody { orders } = match serde_json::from_value(batch) {
                    Ok(b) => b,
                    Err(_) => BatchBody { orders: Vec::new() },
                };
                let calls = orders.iter().map(|b| self.place_one(b));
                let answers = futures_util::future::join_all(calls).await;
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
                return;
            }
            // The same for everyone as for a single call that failed.
            other => {
                for reply in replies {
                    let _ = reply.send(other.clone());
                }
                return;
            }
        };
        for (reply, r) in replies.into_iter().zip(results) {
            let body = match (r.order, r.error) {
                (Some(order), _) => serde_json::to_vec(&order),
                (None, Some(error)) => serde_json::to_vec(&serde_json::json!({ "error": error })),
                (None, None) => serde_json::to_vec(&serde_json::Value::Null),
            };
            let answer = match (StatusCode::from_u16(r.status), body) {
                (Ok(status), Ok(body)) => Ok(Relayed { status, body }),
                _ => Err(self.failed_after_sending(&Method::POST)),
            };
            let _ = reply.send(answer);
        }
    }
}

#[derive(Deserialize)]
struct BatchBody {
    orders: Vec<serde_json::Value>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    fn upstream_at(addr: std::net::SocketAddr) -> Upstream {
        Upstream {
            name: "order",
            base_url: format!("http://{addr}"),
            token: None,
            client: client().unwrap(),
            placer: Arc::default(),
            place_batch_len_max: 1,
            in_flight: None,
        }
    }

    #[tokio::test]
    async fn a_call_waits_a_bounded_time_for_a_free_slot() {
        // Every slot busy: the call is refused, not queued.
        let mut busy = upstream_at("127.0.0.1:1".parse().unwrap());
        busy.in_flight = Some(Arc::new(tokio::sync::Semaphore::new(0)));
        let e = tokio::time::timeout(
            IN_FLIGHT_WAIT_MAX * 4,
            busy.call::<(), ()>(Method::GET, "/api/v1/depth", None, None),
        )
        .await
        .expect("the wait is bounded")
        .unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
        );
    }

    #[tokio::test]
    async fn a_state_change_cut_after_sending_is_outcome_unknown_never_nothing_applied() {
        // A service that reads the request and drops the connection
        // without answering: it may have applied it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0_u8; 8192];
                let _ = socket.read(&mut buf).await;
            }
        });
        let cut = upstream_at(addr);
        let body = serde_json::json!({"market": "BTC-USDT"});
        let e = cut
            .call::<(), _>(Method::POST, "/internal/v1/orders", None, Some(&body))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "OUTCOME_UNKNOWN")
        );
        let e = cut
            .call::<(), _>(Method::DELETE, "/internal/v1/orders/1", None, None::<&()>)
            .await
            .unwrap_err();
        assert_eq!(e.code.as_str(), "OUTCOME_UNKNOWN");
        // A read changes nothing: plain unavailable.
        let e = cut
            .call::<(), ()>(Method::GET, "/internal/v1/orders/1", None, None)
            .await
            .unwrap_err();
        assert_eq!(e.code.as_str(), "UNAVAILABLE");
        // Nothing listening: nothing was sent, so nothing was applied.
        // (Port 1, tcpmux, is not served here; a port freed by dropping a
        // listener could be taken by a test running alongside.)
        let closed = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let e = upstream_at(closed)
            .call::<(), _>(Method::POST, "/internal/v1/orders", None, Some(&body))
            .await
            .unwrap_err();
        assert_eq!(e.code.as_str(), "UNAVAILABLE");
    }

    #[tokio::test]
    async fn a_placement_whose_client_left_or_that_waited_too_long_is_never_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = connections.clone();
        tokio::spawn(async move {
            while let Ok((_socket, _)) = listener.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let up = upstream_at(addr);
        let body = serde_json::json!({"market": "BTC-USDT"});
        // The client gave up: its receiver is gone.
        let (gone, rx) = oneshot::channel();
        drop(rx);
        // The client is still there, but its placement sat in the queue.
        let (stale, stale_rx) = oneshot::channel();
        let long_ago = Instant::now()
            .checked_sub(PLACE_QUEUE_WAIT_MAX + Duration::from_secs(1))
            .unwrap();
        up.place_jobs(vec![
            PlaceJob {
                body: body.clone(),
                reply: gone,
                queued_at: Instant::now(),
            },
            PlaceJob {
                body,
                reply: stale,
                queued_at: long_ago,
            },
        ])
        .await;
        let e = stale_rx.await.unwrap().unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "OVERLOADED")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            connections.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "nothing was sent to the order service"
        );
    }
}

/// What an operator does to a withdrawal (the wallet route's last segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithdrawalAction {
    Approve,
    Reject,
    /// Manual networks: the operator sent it under a tx hash.
    Broadcast,
    /// Manual networks: final on chain.
    Confirm,
    /// Manual networks: dropped or reverted (funds return).
    Fail,
}

impl WithdrawalAction {
    pub fn as_str(self) -> &'static str {
        match self {
            WithdrawalAction::Approve => "approve",
            WithdrawalAction::Reject => "reject",
            WithdrawalAction::Broadcast => "broadcast",
            WithdrawalAction::Confirm => "confirm",
            WithdrawalAction::Fail => "fail",
        }
    }
}
