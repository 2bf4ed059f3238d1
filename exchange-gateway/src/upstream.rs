//! The internal HTTP client: calls to the order service (with
//! `INTERNAL_TOKEN`) and to marketdata (public data, no token), each with
//! a timeout.
//!
//! The gateway is a thin proxy here: a 2xx/4xx answer from upstream is
//! passed to the client unchanged (status and JSON body). An upstream that
//! is down, slow, or answers something that is not our JSON is a 503
//! `UNAVAILABLE`, never a 500: the gateway itself is fine.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use reqwest::Method;
use serde::Serialize;

use exchange_common::{ApiError, Config, Secret};

/// Time to open a TCP connection to an internal service.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time for a whole internal call (request, upstream work, response).
pub const UPSTREAM_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
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

/// One internal service: its base URL and (for the order service) the token.
#[derive(Clone)]
pub struct Upstream {
    name: &'static str,
    base_url: String,
    token: Option<Secret>,
    client: reqwest::Client,
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
    Ok(reqwest::Client::builder()
        .connect_timeout(UPSTREAM_CONNECT_TIMEOUT)
        .timeout(UPSTREAM_REQUEST_TIMEOUT)
        .pool_max_idle_per_host(UPSTREAM_IDLE_CONNECTIONS_PER_HOST_MAX)
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

impl Upstream {
    pub fn order_service(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            name: "order",
            base_url: config.order_service_url.trim_end_matches('/').to_owned(),
            token: Some(config.internal_token.clone()),
            client: client()?,
        })
    }

    pub fn marketdata(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            name: "marketdata",
            base_url: config.marketdata_url.trim_end_matches('/').to_owned(),
            // Public data: no reason to hand it the internal token.
            token: None,
            client: client()?,
        })
    }

    fn unavailable(&self) -> ApiError {
        ApiError::unavailable(format!("the {} service is unavailable, retry", self.name))
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
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base_url));
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
            self.unavailable()
        })?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            // Our own token was refused: a deployment mistake, not the client's.
            tracing::error!(
                upstream = self.name,
                "upstream refused the internal token (INTERNAL_TOKEN differs?)"
            );
            return Err(self.unavailable());
        }
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > UPSTREAM_RESPONSE_BYTES_MAX {
                        tracing::warn!(upstream = self.name, "upstream response too large");
                        return Err(self.unavailable());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(upstream = self.name, error = %e, "upstream response cut");
                    return Err(self.unavailable());
                }
            }
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            tracing::warn!(
                upstream = self.name,
                status = status.as_u16(),
                "upstream answered non-JSON"
            );
            return Err(self.unavailable());
        }
        Ok(Relayed { status, body })
    }
}
