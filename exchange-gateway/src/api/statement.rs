//! The user's statement: `GET /api/v1/account/ledger` (pages) and
//! `GET /api/v1/account/statement.csv` (streamed), both from
//! [`exchange_store::statement`]: one entry per movement of the balance with
//! its `balance_after` and the object behind it.
//!
//! `balance_after` runs backwards from the balance: the first page reads the
//! balances and its entries in one snapshot; the cursor carries each asset's
//! running balance onwards, so it is signed (HMAC-SHA256 under a key derived
//! from `AUTH_TOKEN_SECRET`): an edited one is 400 `INVALID_CURSOR`. The CSV
//! is written from one snapshot, page by page through a bounded channel, so
//! a year of a busy account costs a page of memory.

use std::collections::BTreeMap;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::IntoParams;

use exchange_common::error::{Json, Query};
use exchange_common::{ApiError, ErrorCode};
use exchange_domain::money::format_signed_units;
use exchange_store::page::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, PageError};
use exchange_store::statement::{self, Entry, Filter, Walk};

use super::schema::{ErrorBody, field};
use crate::auth::authn::AuthUser;
use crate::state::AppState;

/// The longest range one CSV covers (a year, and a leap day).
pub const CSV_RANGE_MS_MAX: i64 = 366 * 24 * 3_600 * 1_000;
/// Entries the CSV writer reads at once, and lines it keeps queued.
const CSV_PAGE_LEN: i64 = 1_000;
const CSV_QUEUE_LEN: usize = 4;

#[derive(Debug, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LedgerQuery {
    /// Only this asset's entries.
    #[serde(default)]
    pub asset: Option<String>,
    /// Unix ms, inclusive.
    #[serde(default)]
    #[param(minimum = 0)]
    pub start_time: Option<i64>,
    /// Unix ms, exclusive.
    #[serde(default)]
    #[param(minimum = 0)]
    pub end_time: Option<i64>,
    #[serde(default)]
    #[param(schema_with = ledger_limit)]
    pub limit: Option<i64>,
    /// The previous page's `next_cursor` (the walk keeps its asset and range).
    #[serde(default)]
    #[param(max_length = 16384)]
    pub cursor: Option<String>,
    /// `true`: `{items, next_cursor}` from the first page on.
    #[serde(default)]
    pub paginate: Option<bool>,
}

fn ledger_limit() -> utoipa::openapi::schema::Object {
    field::limit(PAGE_LIMIT_MAX)
}

/// What a cursor carries: whose walk, over what, and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WalkCursor {
    user_id: i64,
    asset: Option<String>,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
    walk: Walk,
}

/// A statement read's error as the API answers it (database errors as every
/// handler maps them: 503 when unreachable or timed out, 400 for bad text).
fn store_error(e: anyhow::Error) -> ApiError {
    match e.downcast::<sqlx::Error>() {
        Ok(db) => ApiError::from(db),
        Err(other) => ApiError::internal(other),
    }
}

fn cursor_key(s: &AppState) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"exchange ledger cursor\0");
    h.update(s.base.config.gateway.auth_token_secret.expose().as_bytes());
    h.finalize().into()
}

fn sign(key: &[u8; 32], body: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

fn encode(s: &AppState, state: &WalkCursor) -> Result<String, ApiError> {
    let body = serde_json::to_vec(state).map_err(ApiError::internal)?;
    let mac = sign(&cursor_key(s), &body);
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&body),
        URL_SAFE_NO_PAD.encode(mac)
    ))
}

fn decode(s: &AppState, text: &str, user_id: i64) -> Result<WalkCursor, ApiError> {
    let bad = || ApiError::from(PageError::Cursor);
    let (body, mac) = text.split_once('.').ok_or_else(bad)?;
    let body = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
    let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| bad())?;
    let mut check = <Hmac<Sha256> as Mac>::new_from_slice(&cursor_key(s)).map_err(|_| bad())?;
    check.update(&body);
    check.verify_slice(&mac).map_err(|_| bad())?;
    let state: WalkCursor = serde_json::from_slice(&body).map_err(|_| bad())?;
    if state.user_id != user_id {
        return Err(bad());
    }
    Ok(state)
}

async fn scales(conn: &mut sqlx::PgConnection) -> Result<BTreeMap<String, u8>, ApiError> {
    let rows: Vec<(String, i16)> = sqlx::query_as("SELECT symbol, scale FROM assets")
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(a, s)| (a, u8::try_from(s).unwrap_or(18)))
        .collect())
}

fn check_range(start: Option<i64>, end: Option<i64>) -> Result<(), ApiError> {
    if !exchange_store::page::valid_range(start, end) {
        return Err(PageError::TimeRange.into());
    }
    Ok(())
}

/// A read-only transaction on one snapshot. Its statements may take
/// [`STATEMENT_QUERY_TIMEOUT`] (a first page sums what came after its
/// range), and it is ended by the server when it idles for
/// [`STATEMENT_IDLE_TIMEOUT`] (a CSV reader that stopped reading).
async fn snapshot(s: &AppState) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, ApiError> {
    let mut tx = s.db().begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    for (setting, limit) in [
        ("statement_timeout", STATEMENT_QUERY_TIMEOUT),
        (
            "idle_in_transaction_session_timeout",
            STATEMENT_IDLE_TIMEOUT,
        ),
    ] {
        sqlx::query("SELECT set_config($1, $2, true)")
            .bind(setting)
            .bind(format!("{}s", limit.as_secs()))
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}

/// The longest one statement query may run.
pub const STATEMENT_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The longest a statement's snapshot may wait for its reader.
pub const STATEMENT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// CSV statements written at once by one gateway: each holds a database
/// connection for its whole download, so they must not take the pool.
pub const CSV_STREAMS_MAX: usize = 2;
static CSV_STREAMS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CSV_STREAMS_MAX);

fn item(e: &Entry, after: i128, scales: &BTreeMap<String, u8>) -> serde_json::Value {
    let scale = scales.get(&e.asset).copied().unwrap_or(18);
    serde_json::json!({
        "id": e.id(),
        "time": e.time_ms(),
        "asset": e.asset,
        "amount": e.amount,
        "balance_after": format_signed_units(after, scale),
        "kind": e.kind,
        "reference": e.reference(),
    })
}

#[utoipa::path(get, path = "/api/v1/account/ledger", params(LedgerQuery),
    responses((status = 200, description = "my statement, newest first: `[{id, time, asset, amount, balance_after, kind, reference}]`, or `{items, next_cursor}` with `cursor` or `paginate=true`"),
              (status = 400, description = "INVALID_LIMIT, INVALID_QUERY (a time range that is not start < end), INVALID_CURSOR (not a next_cursor this walk gave you)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn ledger(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Query<LedgerQuery>,
) -> Result<Response, ApiError> {
    user.require_read()?;
    let limit = q.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
    if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
        return Err(PageError::Limit.into());
    }
    let envelope = q.cursor.is_some() || q.paginate == Some(true);
    let mut tx = snapshot(&s).await?;
    let scales = scales(&mut tx).await?;
    let mut state = match &q.cursor {
        Some(c) => {
            let state = decode(&s, c, user.user_id)?;
            fn same<T: PartialEq>(given: &Option<T>, kept: &Option<T>) -> bool {
                given.is_none() || given == kept
            }
            if !same(&q.asset, &state.asset)
                || !same(&q.start_time, &state.start_ms)
                || !same(&q.end_time, &state.end_ms)
            {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidCursor,
                    "a cursor continues its own asset and range: send it alone (with limit)",
                ));
            }
            state
        }
        None => {
            check_range(q.start_time, q.end_time)?;
            let mut running =
                statement::balances_before(&mut tx, user.user_id, q.end_time, &scales)
                    .await
                    .map_err(store_error)?;
            // The cursor carries the running balances it needs, no more.
            if let Some(asset) = &q.asset {
                running.retain(|a, _| a == asset);
            }
            WalkCursor {
                user_id: user.user_id,
                asset: q.asset.clone(),
                start_ms: q.start_time,
                end_ms: q.end_time,
                walk: Walk {
                    before: None,
                    running,
                },
            }
        }
    };
    let filter = Filter {
        user_id: user.user_id,
        asset: state.asset.as_deref(),
        start_ms: state.start_ms,
        end_ms: state.end_ms,
        before: state.walk.before,
    };
    let mut entries = statement::entries(&mut tx, &filter, limit + 1).await?;
    drop(tx);
    let more = entries.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    entries.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let afters = state
        .walk
        .step(&entries, &scales)
        .map_err(ApiError::internal)?;
    let items: Vec<serde_json::Value> = entries
        .iter()
        .zip(afters)
        .map(|(e, a)| item(e, a, &scales))
        .collect();
    if !envelope {
        return Ok(Json(items).into_response());
    }
    let next = if more {
        Some(encode(&s, &state)?)
    } else {
        None
    };
    Ok(Json(serde_json::json!({ "items": items, "next_cursor": next })).into_response())
}

#[derive(Debug, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatementQuery {
    #[serde(default)]
    pub asset: Option<String>,
    /// Unix ms, inclusive; default `end_time` minus 365 days.
    #[serde(default)]
    #[param(minimum = 0)]
    pub start_time: Option<i64>,
    /// Unix ms, exclusive; default now.
    #[serde(default)]
    #[param(minimum = 0)]
    pub end_time: Option<i64>,
}

/// One CSV field: quoted when it holds a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// The CSV line of an entry: `id,time,asset,amount,balance_after,kind,reference`
/// (the reference as `key=value` pairs joined by `;`).
fn csv_line(e: &Entry, after: i128, scales: &BTreeMap<String, u8>) -> String {
    let scale = scales.get(&e.asset).copied().unwrap_or(18);
    let reference = e
        .reference()
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";")
        })
        .unwrap_or_default();
    format!(
        "{},{},{},{},{},{},{}\n",
        csv_field(&e.id()),
        e.time_ms(),
        csv_field(&e.asset),
        e.amount,
        format_signed_units(after, scale),
        e.kind,
        csv_field(&reference)
    )
}

pub const CSV_HEADER: &str = "id,time,asset,amount,balance_after,kind,reference\n";

#[utoipa::path(get, path = "/api/v1/account/statement.csv", params(StatementQuery),
    responses((status = 200, description = "text/csv, streamed: a header line, then one entry a line, newest first (as the ledger)", content_type = "text/csv"),
              (status = 400, description = "INVALID_QUERY: a range that is not start < end, or longer than 366 days", body = ErrorBody),
              (status = 503, description = "OVERLOADED: other statements are being written (at most two at once per gateway)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn statement_csv(
    State(s): State<AppState>,
    Extension(user): Extension<AuthUser>,
    Query(q): Query<StatementQuery>,
) -> Result<Response, ApiError> {
    user.require_read()?;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX);
    let end = q.end_time.unwrap_or(now);
    let start = q
        .start_time
        .unwrap_or(end.saturating_sub(CSV_RANGE_MS_MAX - 86_400_000));
    check_range(Some(start), Some(end))?;
    if end - start > CSV_RANGE_MS_MAX {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            "a statement covers at most 366 days: ask for several",
        ));
    }
    let Ok(slot) = CSV_STREAMS.try_acquire() else {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            "other statements are being written right now; retry in a minute",
        ));
    };
    let mut tx = snapshot(&s).await?;
    let scales = scales(&mut tx).await?;
    let running = statement::balances_before(&mut tx, user.user_id, Some(end), &scales)
        .await
        .map_err(store_error)?;
    let (lines, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CSV_QUEUE_LEN);
    let (user_id, asset) = (user.user_id, q.asset.clone());
    tokio::spawn(async move {
        let _slot = slot;
        let mut walk = Walk {
            before: None,
            running,
        };
        if lines
            .send(Ok(Bytes::from_static(CSV_HEADER.as_bytes())))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let filter = Filter {
                user_id,
                asset: asset.as_deref(),
                start_ms: Some(start),
                end_ms: Some(end),
                before: walk.before,
            };
            let page = match statement::entries(&mut tx, &filter, CSV_PAGE_LEN).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, user_id, "statement CSV cut short");
                    let _ = lines
                        .send(Err(std::io::Error::other("statement read failed")))
                        .await;
                    return;
                }
            };
            let Ok(afters) = walk.step(&page, &scales) else {
                let _ = lines
                    .send(Err(std::io::Error::other("statement amounts")))
                    .await;
                return;
            };
            let chunk: String = page
                .iter()
                .zip(afters)
                .map(|(e, a)| csv_line(e, a, &scales))
                .collect();
            // A reader that stops reading ends the statement (and frees its
            // connection) rather than holding it.
            let sent =
                tokio::time::timeout(STATEMENT_IDLE_TIMEOUT, lines.send(Ok(Bytes::from(chunk))));
            if !matches!(sent.await, Ok(Ok(()))) {
                return;
            }
            if page.len() < usize::try_from(CSV_PAGE_LEN).unwrap_or(usize::MAX) {
                return;
            }
        }
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"statement.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// The receiving end of the writer's channel as a stream of chunks.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_with_commas_or_quotes_are_quoted() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
