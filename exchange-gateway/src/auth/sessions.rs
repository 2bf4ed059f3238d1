//! Login sessions: each login opens a row in `user_sessions`, and its
//! access token (claim `sid`) works only while that row is open. Ending a
//! session is one UPDATE, seen by every gateway at once, because every
//! authenticated request reads the row (one primary-key lookup, joined to
//! the user for the freeze flag).
//!
//! Ending all of a user's sessions (logout-all, a password or 2FA change, a
//! freeze) also bumps `users.session_epoch`, which ends the private
//! WebSocket sessions opened with an API key before it. Open WebSockets
//! learn of it from [`announce`]: the local hub at once, other gateways
//! through Redis, and every session re-checks its credential every
//! [`crate::ws::WS_CREDENTIAL_RECHECK_INTERVAL`] in any case, so a lost
//! Pub/Sub message delays a close, never prevents it.

use std::net::IpAddr;
use std::time::Duration;

use sqlx::PgConnection;

use crate::hub::CREDENTIALS_CHANGED;
use crate::state::AppState;

/// Why sessions end, as stored in `user_sessions.end_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Logout,
    LogoutAll,
    PasswordChanged,
    SecondFactorChanged,
    Frozen,
}

impl EndReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            EndReason::Logout => "logout",
            EndReason::LogoutAll => "logout_all",
            EndReason::PasswordChanged => "password_changed",
            EndReason::SecondFactorChanged => "second_factor_changed",
            EndReason::Frozen => "frozen",
        }
    }
}

/// How long ended or expired sessions are kept (for support questions)
/// before a later login of the same user deletes them.
const ENDED_SESSIONS_KEPT: &str = "30 days";

/// Opens a session for `user_id` lasting `ttl`, if the user's sessions
/// were not all ended and the account not frozen since the caller read
/// `epoch` (with the password it checked): a login racing a password
/// change, logout-all or freeze must not outlive it. `None` then. Deletes
/// the user's sessions that expired long ago, so the table stays bounded.
///
/// Race-free with [`end_all`]: the insert share-locks the user row, and
/// `end_all` bumps the epoch (updating that row) before ending sessions, so
/// either this insert waits and sees the new epoch, or `end_all` waits and
/// then ends the session inserted here.
pub async fn start(
    db: &sqlx::PgPool,
    user_id: i64,
    epoch: i64,
    ttl: Duration,
    ip: Option<IpAddr>,
) -> sqlx::Result<Option<i64>> {
    sqlx::query(
        "DELETE FROM user_sessions WHERE user_id = $1 AND expires_at < now() - $2::interval",
    )
    .bind(user_id)
    .bind(ENDED_SESSIONS_KEPT)
    .execute(db)
    .await?;
    sqlx::query_scalar(
        "INSERT INTO user_sessions (user_id, expires_at, ip)
         SELECT id, now() + make_interval(secs => $3), $4 FROM users
         WHERE id = $1 AND session_epoch = $2 AND frozen_at IS NULL
         FOR SHARE
         RETURNING id",
    )
    .bind(user_id)
    .bind(epoch)
    .bind(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
    .bind(ip.map(|ip| ip.to_string()))
    .fetch_optional(db)
    .await
}

/// An open session's user state.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct Open {
    pub frozen: bool,
}

/// The session if it is still open (not ended, not expired).
pub async fn check(db: &sqlx::PgPool, user_id: i64, session_id: i64) -> sqlx::Result<Option<Open>> {
    sqlx::query_as(
        "SELECT u.frozen_at IS NOT NULL AS frozen
         FROM user_sessions s JOIN users u ON u.id = s.user_id
         WHERE s.id = $1 AND s.user_id = $2 AND s.ended_at IS NULL AND s.expires_at > now()",
    )
    .bind(session_id)
    .bind(user_id)
    .fetch_optional(db)
    .await
}

/// Ends one session; false when it was not open.
pub async fn end(db: &sqlx::PgPool, user_id: i64, session_id: i64) -> sqlx::Result<bool> {
    let ended = sqlx::query(
        "UPDATE user_sessions SET ended_at = now(), end_reason = $3
         WHERE id = $1 AND user_id = $2 AND ended_at IS NULL",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(EndReason::Logout.as_str())
    .execute(db)
    .await?;
    Ok(ended.rows_affected() > 0)
}

/// Ends every session of `user_id` but `keep` (the caller's own, when it
/// stays), and the API-key WebSocket sessions opened before now. Runs in
/// the caller's transaction, with the change that causes it.
pub async fn end_all(
    conn: &mut PgConnection,
    user_id: i64,
    reason: EndReason,
    keep: Option<i64>,
) -> sqlx::Result<()> {
    // The epoch first: see `start`.
    sqlx::query("UPDATE users SET session_epoch = session_epoch + 1 WHERE id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE user_sessions SET ended_at = now(), end_reason = $2
         WHERE user_id = $1 AND ended_at IS NULL AND id IS DISTINCT FROM $3",
    )
    .bind(user_id)
    .bind(reason.as_str())
    .bind(keep)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// After a commit that ended sessions or changed a credential of
/// `user_id`: the user's open WebSockets on every gateway re-check theirs.
/// Best effort over Redis (bounded by its response timeout); the periodic
/// re-check covers a message that does not arrive.
pub async fn announce(s: &AppState, user_id: i64) {
    s.hub.recheck_user(user_id);
    let channel = s.base.redis.key(&format!("private:{user_id}"));
    let mut conn = s.base.redis.conn();
    let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(CREDENTIALS_CHANGED)
        .query_async(&mut conn)
        .await;
    if let Err(e) = published {
        tracing::warn!(user_id, error = %e, "could not announce a credential change to other gateways; their sessions re-check within the interval");
    }
}
