//! Auth primitives shared by services: constant-time comparison, bearer
//! parsing, and the one middleware guarding every internal route.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::ApiError;
use crate::config::{Config, Secret};

/// Compares two byte strings in time independent of where they differ.
/// (The length is not secret: tokens have public, fixed formats.)
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// True when `presented` equals the current secret or, during a rotation,
/// the previous one. Both comparisons always run.
pub fn matches_secret(presented: &str, current: &Secret, previous: Option<&Secret>) -> bool {
    let now = constant_time_eq(presented.as_bytes(), current.expose().as_bytes());
    let before =
        previous.is_some_and(|p| constant_time_eq(presented.as_bytes(), p.expose().as_bytes()));
    now | before
}

/// The token of an `Authorization: Bearer <token>` header, if well formed.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token.trim())
}

/// Middleware of every internal route (services calling services): it
/// requires `Authorization: Bearer $INTERNAL_TOKEN`, or
/// `INTERNAL_TOKEN_PREVIOUS` during a rotation, compared in constant time;
/// anything else is 401 `UNAUTHORIZED`. Layer it with
/// `axum::middleware::from_fn_with_state(config, require_internal_token)`.
pub async fn require_internal_token(
    State(config): State<Arc<Config>>,
    req: Request,
    next: Next,
) -> Response {
    let ok = bearer_token(req.headers()).is_some_and(|t| {
        matches_secret(
            t,
            &config.internal_token,
            config.internal_token_previous.as_ref(),
        )
    });
    if !ok {
        return ApiError::unauthorized("a valid internal token is required").into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq_and_rotation() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        let cur = Secret::new("new");
        let prev = Secret::new("old");
        assert!(matches_secret("new", &cur, Some(&prev)));
        assert!(matches_secret("old", &cur, Some(&prev)));
        assert!(!matches_secret("old", &cur, None));
    }
}
