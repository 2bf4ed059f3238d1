//! Auth primitives shared by services: constant-time comparison and bearer parsing.

use subtle::ConstantTimeEq;

use crate::config::Secret;

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
