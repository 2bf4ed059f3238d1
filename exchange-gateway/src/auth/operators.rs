//! Who may call the admin API, and with which permissions.
//!
//! Two kinds of caller: `ADMIN_TOKEN`, the break-glass root (actor `root`,
//! every permission), and named operators (`operators` table), each with a
//! role and a token of their own ([`new_token`]) of which only the SHA-256
//! is stored. Each request's caller is looked up afresh, so a deleted
//! operator's token stops working at once.
//!
//! [`require`] is the one middleware of every admin route: the routes are
//! grouped by the [`Permission`] they need (see `routes` in lib.rs), and
//! the caller, as an [`AdminCaller`], goes into the request extensions for
//! the handlers' audit rows. Missing credentials answer 401 `UNAUTHORIZED`;
//! an unknown or deleted token, or a role without the permission, 403
//! `FORBIDDEN`. Every refusal is logged (warn, with the client's address
//! and request id) and counted (`exchange_admin_auth_failures_total`); a
//! refused token, and a role refused, also append an audit row (actor
//! `unknown` or the operator) — the per-IP rate limit bounds how many.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use exchange_common::ApiError;
use exchange_common::ErrorCode;
use exchange_common::auth::{bearer_token, constant_time_eq};
use exchange_common::net::client_ip;
use exchange_store::audit::{self, AuditContext, NewAuditEntry};

use crate::state::AppState;

/// The actor of the break-glass `ADMIN_TOKEN`.
pub const ROOT_ACTOR: &str = "root";
/// The actor of an audit row about a token nobody owns.
pub const UNKNOWN_ACTOR: &str = "unknown";
/// Operator tokens: this prefix, then 64 hex digits (32 random bytes).
pub const TOKEN_PREFIX: &str = "exop_";
/// Random bytes in an operator token.
const TOKEN_BYTES: usize = 32;

/// What an operator may do; each admin route needs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Every GET.
    Read,
    /// Freezing and unfreezing users.
    Support,
    /// Deposits, approving and rejecting withdrawals.
    Finance,
    /// Assets, markets, market status, operators.
    Admin,
}

/// An operator's role: the permissions it grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Viewer,
    Support,
    Finance,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Support, Role::Finance, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Support => "support",
            Role::Finance => "finance",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Every role reads; support and finance each add their own duty (a
    /// support operator cannot move money, a finance one cannot freeze
    /// accounts); admin may do everything.
    pub fn allows(self, permission: Permission) -> bool {
        matches!(
            (self, permission),
            (Role::Admin, _)
                | (_, Permission::Read)
                | (Role::Support, Permission::Support)
                | (Role::Finance, Permission::Finance)
        )
    }
}

/// The authenticated admin caller, in the request extensions.
#[derive(Debug, Clone)]
pub struct AdminCaller {
    /// Actor, request id and client address: what its audit rows carry.
    pub context: AuditContext,
    pub role: Role,
}

impl AdminCaller {
    /// An audit entry of this caller's request.
    pub fn entry(&self, action: &str, target: &str, details: Value) -> NewAuditEntry {
        self.context.entry(action, target, details)
    }

    pub fn actor(&self) -> &str {
        &self.context.actor
    }
}

/// A new operator token (shown once; only [`token_hash`] is stored).
pub fn new_token() -> String {
    let bytes: [u8; TOKEN_BYTES] = rand::random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// What the `operators` table keeps of a token: its SHA-256, in hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The request's audit context for `actor`: its `x-request-id` (set by the
/// common layers when the client sent none) and the client's address.
fn request_context(state: &AppState, req: &Request, actor: &str) -> AuditContext {
    let request_id = req
        .headers()
        .get("x-request-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| client_ip(c.0.ip(), req.headers(), &state.trusted_proxies).to_string());
    AuditContext {
        actor: actor.to_owned(),
        request_id,
        ip,
    }
}

/// The route a refusal is about (its template: paths may carry anything).
fn route_of(req: &Request) -> String {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    format!("{} {path}", req.method())
}

/// Looks the caller of `token` up: root, a live operator, or nobody.
async fn caller_of(state: &AppState, token: &str) -> Result<Option<(String, Role)>, ApiError> {
    let root = state.base.config.gateway.admin_token.expose();
    if constant_time_eq(token.as_bytes(), root.as_bytes()) {
        return Ok(Some((ROOT_ACTOR.to_owned(), Role::Admin)));
    }
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT name, role FROM operators WHERE token_hash = $1 AND deleted_at IS NULL",
    )
    .bind(token_hash(token))
    .fetch_optional(state.db())
    .await?;
    Ok(row.and_then(|(name, role)| Role::parse(&role).map(|r| (name, r))))
}

/// The middleware of every admin route: requires a caller whose role has
/// `permission`, and puts it in the request extensions as [`AdminCaller`].
pub async fn require(
    State((state, permission)): State<(AppState, Permission)>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(token) = bearer_token(req.headers()).map(str::to_owned) else {
        refused(&state, Refusal::of(&state, &req, "missing_token", None)).await;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "admin calls need Authorization: Bearer <ADMIN_TOKEN or an operator token>",
        ));
    };
    let Some((actor, role)) = caller_of(&state, &token).await? else {
        // Logged and counted, not audited: anyone can send a wrong token,
        // and the append-only log (one lock for every writer) must not grow
        // at an attacker's pace.
        let refusal = Refusal::of(&state, &req, "unknown_token", None);
        refused(&state, refusal).await;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "wrong admin token",
        ));
    };
    if !role.allows(permission) {
        refused(
            &state,
            Refusal::of(&state, &req, "role_not_allowed", Some(&actor)),
        )
        .await;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!("the {} role may not do this", role.as_str()),
        ));
    }
    let context = request_context(&state, &req, &actor);
    req.extensions_mut().insert(AdminCaller { context, role });
    Ok(next.run(req).await)
}

/// A refused admin call, read from its request (which is not `Sync`, so
/// no reference to it may live across an await).
struct Refusal {
    reason: &'static str,
    /// The actor of its audit row; none: log and count only.
    audit_actor: Option<String>,
    context: AuditContext,
    route: String,
}

impl Refusal {
    fn of(
        state: &AppState,
        req: &Request,
        reason: &'static str,
        audit_actor: Option<&str>,
    ) -> Self {
        Self {
            reason,
            audit_actor: audit_actor.map(str::to_owned),
            context: request_context(state, req, audit_actor.unwrap_or(UNKNOWN_ACTOR)),
            route: route_of(req),
        }
    }
}

/// Logs and counts a refused admin call; for a known operator refused by
/// role, also appends an `admin.forbidden` audit row in a transaction of
/// its own. A failure to write it is logged, never the caller's answer.
async fn refused(state: &AppState, refusal: Refusal) {
    let Refusal {
        reason,
        audit_actor,
        context,
        route,
    } = refusal;
    tracing::warn!(
        reason,
        actor = audit_actor.as_deref(),
        route = %route,
        ip = context.ip.as_deref().unwrap_or(""),
        request_id = %context.request_id,
        "admin call refused"
    );
    metrics::counter!("exchange_admin_auth_failures_total", "reason" => reason).increment(1);
    if audit_actor.is_none() {
        return;
    }
    let entry = context.entry("admin.forbidden", &route, json!({ "reason": reason }));
    let written = async {
        let mut tx = state.db().begin().await?;
        audit::append(&mut tx, &entry).await?;
        tx.commit().await
    };
    if let Err(e) = written.await {
        tracing::error!(error = %e, "cannot append the audit row of a refused admin call");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_has_exactly_its_permissions() {
        use Permission::*;
        let table = [
            (Role::Viewer, [true, false, false, false]),
            (Role::Support, [true, true, false, false]),
            (Role::Finance, [true, false, true, false]),
            (Role::Admin, [true, true, true, true]),
        ];
        for (role, expected) in table {
            let got = [Read, Support, Finance, Admin].map(|p| role.allows(p));
            assert_eq!(got, expected, "{role:?}");
        }
    }

    #[test]
    fn roles_round_trip_and_tokens_are_prefixed_random_hex() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        let hex_part = a.strip_prefix(TOKEN_PREFIX).unwrap_or_default();
        assert_eq!(hex_part.len(), 2 * TOKEN_BYTES);
        assert!(hex_part.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), token_hash(&b));
    }
}
