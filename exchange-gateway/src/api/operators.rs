//! The admin API's operators (`/admin/v1/operators`) and audit log
//! (`GET /admin/v1/audit`). Who may call what: [`crate::auth::operators`].

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use exchange_common::ApiError;
use exchange_common::ErrorCode;
use exchange_common::error::{Json, Path, Query};
use exchange_store::audit::{self, AuditEntry};
use exchange_store::page::{PageQuery, Position};

use super::schema::{ErrorBody, field};
use crate::auth::operators::{AdminCaller, ROOT_ACTOR, Role, UNKNOWN_ACTOR, new_token, token_hash};
use crate::state::AppState;

/// The longest operator name.
pub const OPERATOR_NAME_LEN_MAX: usize = 64;
/// Audit entries one page holds at most, and by default.
pub const AUDIT_PAGE_LEN_MAX: i64 = exchange_store::page::PAGE_LIMIT_MAX;
/// Operators `GET /admin/v1/operators` lists at most (deleted ones included).
const OPERATOR_LIST_LEN_MAX: i64 = 1_000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    #[schema(schema_with = field::operator_name)]
    pub name: String,
    #[schema(schema_with = field::operator_role)]
    pub role: String,
}

/// An operator with its token: the only time the token is shown.
#[derive(Serialize, ToSchema)]
pub struct OperatorWithToken {
    pub id: i64,
    pub name: String,
    pub role: String,
    /// `exop_` and 64 hex digits; send it as `Authorization: Bearer <token>`.
    pub token: String,
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct OperatorView {
    pub id: i64,
    pub name: String,
    pub role: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// The actor who created it.
    pub created_by: String,
    /// Unix milliseconds; null while the operator's token works.
    pub deleted_at: Option<i64>,
}

const OPERATOR_COLUMNS: &str = "id, name, role, \
    floor(extract(epoch FROM created_at) * 1000)::bigint AS created_at, created_by, \
    floor(extract(epoch FROM deleted_at) * 1000)::bigint AS deleted_at";

/// `^[a-z0-9][a-z0-9._-]{0,63}$`, and not an actor the server writes itself.
fn check_operator_name(name: &str) -> Result<(), ApiError> {
    let bytes = name.as_bytes();
    let well_formed = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.len() <= OPERATOR_NAME_LEN_MAX
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if !well_formed {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidOperatorName,
            "name is 1 to 64 of a-z 0-9 . _ -, starting with a letter or digit",
        ));
    }
    if name == ROOT_ACTOR || name == UNKNOWN_ACTOR {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidOperatorName,
            format!("{name:?} is reserved"),
        ));
    }
    Ok(())
}

fn operator_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::OperatorNotFound,
        "no such operator (or it was deleted)",
    )
}

/// Creates an operator and its token; the token is in this answer only.
#[utoipa::path(post, path = "/admin/v1/operators", request_body = NewOperator,
    responses((status = 201, body = OperatorWithToken),
              (status = 400, description = "INVALID_OPERATOR_NAME, INVALID_ROLE, or malformed input", body = ErrorBody),
              (status = 409, description = "OPERATOR_EXISTS (names are never reused, even after a delete)", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn create_operator(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Json(req): Json<NewOperator>,
) -> Result<impl IntoResponse, ApiError> {
    check_operator_name(&req.name)?;
    let role = Role::parse(&req.role).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::InvalidRole,
            "role is viewer, support, finance or admin",
        )
    })?;
    let token = new_token();
    let mut tx = s.db().begin().await?;
    let inserted = sqlx::query_scalar::<_, i64>(
        "INSERT INTO operators (name, role, token_hash, created_by) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(&req.name)
    .bind(role.as_str())
    .bind(token_hash(&token))
    .bind(caller.actor())
    .fetch_one(&mut *tx)
    .await;
    let id = match inserted {
        Ok(id) => id,
        Err(e) if super::is_unique_violation(&e) => {
            return Err(ApiError::conflict(
                ErrorCode::OperatorExists,
                "an operator with this name exists or existed",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let entry = caller.entry(
        "operator.create",
        &req.name,
        json!({ "id": id, "role": role.as_str() }),
    );
    audit::append(&mut tx, &entry).await?;
    tx.commit().await?;
    tracing::info!(operator = %req.name, role = role.as_str(), by = caller.actor(), "operator created");
    Ok((
        StatusCode::CREATED,
        Json(OperatorWithToken {
            id,
            name: req.name,
            role: role.as_str().to_owned(),
            token,
        }),
    ))
}

super::list_query! {
    /// `GET /admin/v1/operators`'s query: the paging fields only.
    pub struct OperatorListQuery {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[param(schema_with = audit_limit)]
        pub limit: Option<i64>,
    }
}

/// What `GET /admin/v1/operators` answers: every operator by id, or a page
/// of them newest first.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum OperatorsAnswer {
    All(Vec<OperatorView>),
    Page {
        items: Vec<OperatorView>,
        next_cursor: Option<String>,
    },
}

#[utoipa::path(get, path = "/admin/v1/operators", params(OperatorListQuery),
    responses((status = 200, description = "every operator, deleted ones included, by id (at most 1,000); or, with `cursor` or `paginate=true`, `{items, next_cursor}` newest first", body = OperatorsAnswer),
              (status = 400, description = "INVALID_LIMIT, INVALID_CURSOR, INVALID_QUERY", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn list_operators(
    State(s): State<AppState>,
    Query(q): Query<OperatorListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    const SCOPE: &str = "operators";
    let page = PageQuery {
        limit: q.limit,
        start_time: q.start_time,
        end_time: q.end_time,
        cursor: q.cursor.clone(),
        paginate: q.paginate,
    }
    .page(SCOPE, 0)?;
    if !page.envelope {
        let rows: Vec<OperatorView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {OPERATOR_COLUMNS} FROM operators ORDER BY id LIMIT $1"
        )))
        .bind(OPERATOR_LIST_LEN_MAX)
        .fetch_all(s.db())
        .await?;
        return Ok(Json(
            serde_json::to_value(rows).map_err(ApiError::internal)?,
        ));
    }
    let rows: Vec<OperatorView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {OPERATOR_COLUMNS} FROM operators
         WHERE ($1::int8 IS NULL OR id < $1)
           AND ($2::int8 IS NULL OR created_at >= timestamptz 'epoch' + $2 * interval '1 millisecond')
           AND ($3::int8 IS NULL OR created_at < timestamptz 'epoch' + $3 * interval '1 millisecond')
         ORDER BY id DESC LIMIT $4"
    )))
    .bind(page.before.map(|p| p.id))
    .bind(page.start_ms)
    .bind(page.end_ms)
    .bind(page.limit + 1)
    .fetch_all(s.db())
    .await?;
    let (rows, next) = exchange_store::page::finish(rows, &page, SCOPE, 0, |o| Position {
        key: o.id,
        id: o.id,
    });
    Ok(Json(exchange_store::page::answer(rows, next, &page)))
}

/// Deletes an operator: its token stops working with the next request.
/// The row stays (deleted_at set), so audit rows keep naming someone known.
#[utoipa::path(delete, path = "/admin/v1/operators/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = OperatorView),
              (status = 404, description = "OPERATOR_NOT_FOUND (also an operator already deleted)", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn delete_operator(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Path(id): Path<i64>,
) -> Result<Json<OperatorView>, ApiError> {
    let mut tx = s.db().begin().await?;
    let view: OperatorView = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE operators SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL RETURNING {OPERATOR_COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(operator_not_found)?;
    let entry = caller.entry(
        "operator.delete",
        &view.name,
        json!({ "id": id, "role": view.role }),
    );
    audit::append(&mut tx, &entry).await?;
    tx.commit().await?;
    tracing::info!(operator = %view.name, by = caller.actor(), "operator deleted");
    Ok(Json(view))
}

/// Gives an operator a new token; the old one stops working at once.
#[utoipa::path(post, path = "/admin/v1/operators/{id}/token", params(("id" = i64, Path)),
    responses((status = 200, body = OperatorWithToken),
              (status = 404, description = "OPERATOR_NOT_FOUND (also a deleted operator)", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn rotate_operator_token(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Path(id): Path<i64>,
) -> Result<Json<OperatorWithToken>, ApiError> {
    let token = new_token();
    let mut tx = s.db().begin().await?;
    let (name, role): (String, String) = sqlx::query_as(
        "UPDATE operators SET token_hash = $2 WHERE id = $1 AND deleted_at IS NULL RETURNING name, role",
    )
    .bind(id)
    .bind(token_hash(&token))
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(operator_not_found)?;
    let entry = caller.entry("operator.rotate_token", &name, json!({ "id": id }));
    audit::append(&mut tx, &entry).await?;
    tx.commit().await?;
    tracing::info!(operator = %name, by = caller.actor(), "operator token rotated");
    Ok(Json(OperatorWithToken {
        id,
        name,
        role,
        token,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries with a larger id only (default 0: from the first).
    #[param(minimum = 0)]
    pub after_id: Option<i64>,
    /// Page size, 1 to 1000, default 100.
    #[param(schema_with = audit_limit)]
    pub limit: Option<i64>,
    /// Unix ms, inclusive (the paginated form).
    #[param(minimum = 0)]
    pub start_time: Option<i64>,
    /// Unix ms, exclusive (the paginated form).
    #[param(minimum = 0)]
    pub end_time: Option<i64>,
    /// The previous page's `next_cursor`: entries newest first, `{items, next_cursor}`.
    #[param(max_length = 256)]
    pub cursor: Option<String>,
    /// `true`: the paginated form (newest first) from the first page on.
    pub paginate: Option<bool>,
}

/// What `GET /admin/v1/audit` answers: the entries ascending from
/// `after_id`, or (paginated) a page of them newest first.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum AuditAnswer {
    Entries(Vec<AuditEntry>),
    Page {
        items: Vec<AuditEntry>,
        next_cursor: Option<String>,
    },
}

/// The cursor scope of the audit log (one list for every operator).
const AUDIT_SCOPE: &str = "audit";

fn audit_limit() -> utoipa::openapi::schema::Object {
    field::limit(AUDIT_PAGE_LEN_MAX)
}

/// The audit log, ascending by id: walk it with `after_id` = the last id
/// seen. Recompute the hash chain from these entries (docs/API.md). With
/// `cursor` or `paginate=true` (API.md "History and statements"): newest
/// first, `start_time`/`end_time` on the entry's time, `{items, next_cursor}`.
#[utoipa::path(get, path = "/admin/v1/audit", params(AuditQuery),
    responses((status = 200, body = AuditAnswer, description = "ascending from after_id; or, paginated, `{items, next_cursor}` newest first"),
              (status = 400, description = "INVALID_LIMIT, INVALID_QUERY (after_id negative or not an integer, or after_id with the paginated form, or a time range that is not start < end), INVALID_CURSOR", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn list_audit(
    State(s): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let page = PageQuery {
        limit: q.limit,
        start_time: q.start_time,
        end_time: q.end_time,
        cursor: q.cursor.clone(),
        paginate: q.paginate,
    }
    .page(AUDIT_SCOPE, 0)?;
    if page.envelope {
        if q.after_id.is_some() {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidQuery,
                "after_id walks the log oldest first; the paginated form walks it with cursor",
            ));
        }
        // The audit list is history (an operator's overview).
        let rows = s
            .reads()
            .history(|db| async move {
                audit::list_newest(
                    &db,
                    page.before.map(|p| p.id),
                    page.start_ms,
                    page.end_ms,
                    page.limit + 1,
                )
                .await
            })
            .await?;
        let (rows, next) =
            exchange_store::page::finish(rows, &page, AUDIT_SCOPE, 0, |e| Position {
                key: e.id,
                id: e.id,
            });
        return Ok(Json(exchange_store::page::answer(rows, next, &page)));
    }
    if q.start_time.is_some() || q.end_time.is_some() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            "start_time and end_time take the paginated form (paginate=true)",
        ));
    }
    let after_id = q.after_id.unwrap_or(0);
    if after_id < 0 {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            "after_id must be 0 or more",
        ));
    }
    let limit = page.limit;
    let entries = s
        .reads()
        .history(|db| async move { audit::list(&db, after_id, limit).await })
        .await?;
    Ok(Json(
        serde_json::to_value(entries).map_err(ApiError::internal)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_names_follow_the_pattern_and_skip_reserved_ones() {
        for ok in ["alice", "a", "0ps", "bob.smith_2-x", &"a".repeat(64)] {
            assert!(check_operator_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "-a",
            ".a",
            "a b",
            "a:b",
            "é",
            &"a".repeat(65),
            "root",
            "unknown",
        ] {
            assert!(check_operator_name(bad).is_err(), "{bad}");
        }
    }
}
