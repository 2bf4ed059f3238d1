//! The internal HTTP API (the gateway is its only caller; every route needs
//! `Authorization: Bearer $INTERNAL_TOKEN`). The gateway authenticates the
//! user or operator, checks the second factor and the operator's role, and
//! passes the user id in the path or the operator's audit context in the
//! body. Handlers parse and translate; the rules live in [`crate::rules`].
//!
//! | route | answer |
//! |---|---|
//! | `GET /internal/v1/users/{uid}/deposit-address?asset=` | 200 `{asset, network, address}`; 400 `NO_NETWORK`, `UNKNOWN_ASSET`; 503 `NO_DEPOSIT_ADDRESS` |
//! | `GET /internal/v1/users/{uid}/deposits?asset=&status=&limit=` | 200 `[deposit]`, newest first |
//! | `POST /internal/v1/users/{uid}/withdrawal-addresses` `{asset, address, label?}` | 201 address; 400 `INVALID_ADDRESS`, `INVALID_LABEL`, `NO_NETWORK` |
//! | `GET /internal/v1/users/{uid}/withdrawal-addresses` | 200 `[address]` |
//! | `DELETE /internal/v1/users/{uid}/withdrawal-addresses/{id}` | 200 the deleted address; 404 `ADDRESS_NOT_FOUND` |
//! | `POST /internal/v1/users/{uid}/withdrawals` `{asset, address_id, amount, client_withdrawal_id?}` | 201 withdrawal; 200 the existing one for a known `client_withdrawal_id`; 400/403/404 with a code (nothing held) |
//! | `GET /internal/v1/users/{uid}/withdrawals?asset=&status=&limit=` | 200 `[withdrawal]`, newest first |
//! | `GET`, `DELETE /internal/v1/users/{uid}/withdrawals/{id}` | 200 withdrawal (cancel: funds back); 404; 409 `WITHDRAWAL_IN_PROGRESS` |
//! | `GET /internal/v1/admin/withdrawals?status=&user_id=&limit=` | 200 `[admin withdrawal]`, oldest first |
//! | `POST /internal/v1/admin/withdrawals/{id}/approve` `{audit}` | 200; 409 `SAME_APPROVER`, `WITHDRAWAL_NOT_PENDING` |
//! | `POST /internal/v1/admin/withdrawals/{id}/reject` `{reason, audit}` | 200 (funds back); 409 |
//! | `POST /internal/v1/admin/withdrawals/{id}/broadcast` `{tx_hash, audit}` | 200; 409 `NOT_MANUAL_NETWORK`, `WITHDRAWAL_NOT_PENDING` |
//! | `POST /internal/v1/admin/withdrawals/{id}/confirm` `{network_fee?, audit}` | 200 (paid out) |
//! | `POST /internal/v1/admin/withdrawals/{id}/fail` `{reason, audit}` | 200 (funds back) |
//! | `POST /internal/v1/admin/deposits` `{network, tx_hash, log_index, address, asset, amount, confirmations, block_number?, block_hash?, removed?, audit}` | 200 admin deposit; 400 `UNKNOWN_ADDRESS`, `NETWORK_MISMATCH`, `INVALID_ADDRESS`; 409 `TRANSFER_CONFLICT` |
//! | `GET /internal/v1/admin/deposits?status=&user_id=&limit=` | 200 `[admin deposit]`, newest first |
//! | `POST /internal/v1/admin/deposit-addresses` `{network, addresses, audit}` | 200 `{network, added, present, free}` |
//! | `GET /internal/v1/admin/custody-freezes?open=` | 200 `[freeze]` |
//! | `POST /internal/v1/admin/custody-freezes/{id}/release` `{reason, audit}` | 200 freeze |

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use exchange_common::auth::require_internal_token;
use exchange_common::error::{Json, Path, Query};
use exchange_common::{ApiError, ErrorCode};
use exchange_store::audit::AuditContext;
use exchange_store::page::{self, Page, PageQuery, Position};
use serde::Deserialize;

use crate::Wallet;
use crate::adapter::Transfer;
use crate::deposits;
use crate::rules::{PayoutReport, WithdrawalStatus};
use crate::views::{
    ADDRESS_COLUMNS, AddressJson, DEPOSIT_COLUMNS, DepositRow, FREEZE_COLUMNS, FreezeJson,
    WITHDRAWAL_COLUMNS, WithdrawalRow,
};
use crate::withdrawals::{self, Request};

/// Items per list page at most (`exchange_store::page`).
pub const LIST_LIMIT_MAX: i64 = page::PAGE_LIMIT_MAX;
/// Entries in one user's address book at most.
pub const ADDRESS_BOOK_LEN_MAX: i64 = 200;
/// The longest address label.
pub const LABEL_LEN_MAX: usize = 64;

pub fn routes(w: Wallet) -> Router {
    let config = w.config.clone();
    Router::new()
        .route(
            "/internal/v1/users/{uid}/deposit-address",
            get(deposit_address),
        )
        .route("/internal/v1/users/{uid}/deposits", get(list_deposits))
        .route(
            "/internal/v1/users/{uid}/withdrawal-addresses",
            post(add_address).get(list_addresses),
        )
        .route(
            "/internal/v1/users/{uid}/withdrawal-addresses/{id}",
            delete(delete_address),
        )
        .route(
            "/internal/v1/users/{uid}/withdrawals",
            post(request_withdrawal).get(list_withdrawals),
        )
        .route(
            "/internal/v1/users/{uid}/withdrawals/{id}",
            get(get_withdrawal).delete(cancel_withdrawal),
        )
        .route("/internal/v1/admin/withdrawals", get(admin_withdrawals))
        .route("/internal/v1/admin/withdrawals/{id}/approve", post(approve))
        .route("/internal/v1/admin/withdrawals/{id}/reject", post(reject))
        .route(
            "/internal/v1/admin/withdrawals/{id}/broadcast",
            post(broadcast),
        )
        .route("/internal/v1/admin/withdrawals/{id}/confirm", post(confirm))
        .route("/internal/v1/admin/withdrawals/{id}/fail", post(fail))
        .route(
            "/internal/v1/admin/deposits",
            post(report_deposit).get(admin_deposits),
        )
        .route("/internal/v1/admin/deposit-addresses", post(load_addresses))
        .route("/internal/v1/admin/custody-freezes", get(list_freezes))
        .route(
            "/internal/v1/admin/custody-freezes/{id}/release",
            post(release_freeze),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            config,
            require_internal_token,
        ))
        .with_state(w)
}

fn withdrawal_status(s: Option<&str>) -> Result<Option<&str>, ApiError> {
    s.map(|t| {
        WithdrawalStatus::parse(t).map(WithdrawalStatus::as_str).ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidStatus,
                "status is pending_approval, approved, signing, broadcast, confirmed, rejected, canceled or failed",
            )
        })
    })
    .transpose()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssetQuery {
    asset: String,
}

async fn deposit_address(
    State(w): State<Wallet>,
    Path(uid): Path<i64>,
    Query(q): Query<AssetQuery>,
) -> Result<Response, ApiError> {
    Ok(Json(deposits::address(&w, uid, &q.asset).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    asset: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    user_id: Option<i64>,
    start_time: Option<i64>,
    end_time: Option<i64>,
    cursor: Option<String>,
    paginate: Option<bool>,
}

impl ListQuery {
    /// The page asked for, in the list `scope` of `owner` (a user, or 0 for
    /// an operator's list of everyone's).
    fn page(&self, scope: &str, owner: i64) -> Result<Page, ApiError> {
        let q = PageQuery {
            limit: self.limit,
            start_time: self.start_time,
            end_time: self.end_time,
            cursor: self.cursor.clone(),
            paginate: self.paginate,
        };
        Ok(q.page(scope, owner)?)
    }
}

/// A row with its page key (`created_at` in microseconds).
#[derive(sqlx::FromRow)]
struct Keyed<T> {
    #[sqlx(flatten)]
    row: T,
    page_key: i64,
}

/// The `WHERE` terms and order of a page of the table aliased `t` keyed by
/// `(created_at, id)` (`DESC`: newest first); binds `$2` start, `$3` end
/// (ms), `$4`, `$5` the cursor's key (µs) and id, `$6` the limit.
fn page_terms(t: &str, order: &str) -> String {
    let (older, newer) = if order == "DESC" {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    format!(
        "AND ($2::int8 IS NULL OR {t}.created_at >= timestamptz 'epoch' + $2 * interval '1 millisecond')
         AND ($3::int8 IS NULL OR {t}.created_at < timestamptz 'epoch' + $3 * interval '1 millisecond')
         AND ($4::int8 IS NULL OR ({t}.created_at, {t}.id) {older} (timestamptz 'epoch' + $4 * interval '1 microsecond', $5))
         ORDER BY {t}.created_at {newer}, {t}.id {newer} LIMIT $6"
    )
}

/// The page key column of the table aliased `t`.
fn page_key(t: &str) -> String {
    format!("(extract(epoch FROM {t}.created_at) * 1000000)::int8 AS page_key")
}

/// A page of chain deposits (of `user_id`, or everyone's), newest first.
async fn deposits_page(
    w: &Wallet,
    user_id: Option<i64>,
    q: &ListQuery,
    scope: &str,
) -> Result<Response, ApiError> {
    let owner = user_id.unwrap_or(0);
    let page = q.page(scope, owner)?;
    let status = q
        .status
        .as_deref()
        .map(deposits::parse_status)
        .transpose()?
        .map(|s| s.as_str());
    let sql = format!(
        "SELECT {DEPOSIT_COLUMNS}, {} FROM chain_deposits d
         WHERE ($1::int8 IS NULL OR d.user_id = $1) AND ($7::text IS NULL OR d.asset = $7)
           AND ($8::text IS NULL OR d.status = $8) {}",
        page_key("d"),
        page_terms("d", "DESC")
    );
    let rows: Vec<Keyed<DepositRow>> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user_id.or(q.user_id))
        .bind(page.start_ms)
        .bind(page.end_ms)
        .bind(page.before.map(|p| p.key))
        .bind(page.before.map(|p| p.id))
        .bind(page.limit + 1)
        .bind(&q.asset)
        .bind(status)
        .fetch_all(&w.db)
        .await?;
    let (rows, next) = page::finish(rows, &page, scope, owner, |r| Position {
        key: r.page_key,
        id: r.row.id,
    });
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| match user_id {
            Some(_) => serde_json::to_value(r.row.user_view()),
            None => serde_json::to_value(r.row.admin_view()),
        })
        .collect::<Result<_, _>>()
        .map_err(ApiError::internal)?;
    Ok(Json(page::answer(items, next, &page)).into_response())
}

async fn list_deposits(
    State(w): State<Wallet>,
    Path(uid): Path<i64>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    deposits_page(&w, Some(uid), &q, "deposits").await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAddress {
    asset: String,
    address: String,
    #[serde(default)]
    label: Option<String>,
}

async fn add_address(
    State(w): State<Wallet>,
    Path(uid): Path<i64>,
    Json(req): Json<NewAddress>,
) -> Result<Response, ApiError> {
    let label = req.label.unwrap_or_default();
    if label.chars().count() > LABEL_LEN_MAX || label.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidLabel,
            format!("label is at most {LABEL_LEN_MAX} printable characters"),
        ));
    }
    let mut conn = w.db.acquire().await?;
    let asset = crate::store::asset(&mut conn, &req.asset, false)
        .await
        .map_err(ApiError::from_anyhow)?
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::UnknownAsset,
                format!("asset {} does not exist", req.asset),
            )
        })?;
    let network = asset.network()?.to_owned();
    let address = w
        .adapters
        .get(&network)
        .validate_address(&req.address)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidAddress, e))?;
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM withdrawal_addresses WHERE user_id = $1")
            .bind(uid)
            .fetch_one(&mut *conn)
            .await?;
    if count >= ADDRESS_BOOK_LEN_MAX {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            format!(
                "the address book holds at most {ADDRESS_BOOK_LEN_MAX} addresses; delete one first"
            ),
        ));
    }
    let cooldown = w.config.wallet.address_cooldown.as_secs_f64();
    let row: AddressJson = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO withdrawal_addresses (user_id, asset, network, address, label, usable_from)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) RETURNING {ADDRESS_COLUMNS}"
    )))
    .bind(uid)
    .bind(&asset.symbol)
    .bind(&network)
    .bind(&address)
    .bind(&label)
    .bind(cooldown)
    .fetch_one(&mut *conn)
    .await?;
    tracing::info!(user_id = uid, address_id = row.id, asset = %asset.symbol, "withdrawal address added");
    Ok((StatusCode::CREATED, Json(row)).into_response())
}

async fn list_addresses(
    State(w): State<Wallet>,
    Path(uid): Path<i64>,
) -> Result<Response, ApiError> {
    let rows: Vec<AddressJson> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ADDRESS_COLUMNS} FROM withdrawal_addresses WHERE user_id = $1 ORDER BY id"
    )))
    .bind(uid)
    .fetch_all(&w.db)
    .await?;
    Ok(Json(rows).into_response())
}

async fn delete_address(
    State(w): State<Wallet>,
    Path((uid, id)): Path<(i64, i64)>,
) -> Result<Response, ApiError> {
    let row: Option<AddressJson> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "DELETE FROM withdrawal_addresses WHERE id = $1 AND user_id = $2 RETURNING {ADDRESS_COLUMNS}"
    )))
    .bind(id)
    .bind(uid)
    .fetch_optional(&w.db)
    .await?;
    let row = row.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::AddressNotFound,
            "no such withdrawal address",
        )
    })?;
    Ok(Json(row).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWithdrawal {
    asset: String,
    address_id: i64,
    amount: String,
    #[serde(default)]
    client_withdrawal_id: Option<String>,
}

async fn request_withdrawal(
    State(w): State<Wallet>,
    Path(uid): Path<i64>,
    Json(req): Json<NewWithdrawal>,
) -> Result<Response, ApiError> {
    let (created, row) = withdrawals::request(
        &w,
        Request {
            user_id: uid,
            asset: req.asset,
            address_id: req.address_id,
            amount: req.amount,
            client_withdrawal_id: req.client_withdrawal_id,
        },
    )
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(row.user_view())).into_response())
}

/// A page of withdrawals (of `user_id`, or everyone's for operators),
/// newest first. Operators' bare list (no cursor, no `paginate`) stays
/// oldest first: the approval queue in the order it arrived.
async fn withdrawals_page(
    w: &Wallet,
    user_id: Option<i64>,
    q: &ListQuery,
    scope: &str,
) -> Result<Response, ApiError> {
    let owner = user_id.unwrap_or(0);
    let page = q.page(scope, owner)?;
    let queue = user_id.is_none() && !page.envelope;
    let sql = format!(
        "SELECT {WITHDRAWAL_COLUMNS}, {} FROM withdrawals w
         WHERE ($1::int8 IS NULL OR w.user_id = $1) AND ($7::text IS NULL OR w.asset = $7)
           AND ($8::text IS NULL OR w.status = $8) {}",
        page_key("w"),
        page_terms("w", if queue { "ASC" } else { "DESC" })
    );
    let rows: Vec<Keyed<WithdrawalRow>> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user_id.or(q.user_id))
        .bind(page.start_ms)
        .bind(page.end_ms)
        .bind(page.before.map(|p| p.key))
        .bind(page.before.map(|p| p.id))
        .bind(page.limit + 1)
        .bind(&q.asset)
        .bind(withdrawal_status(q.status.as_deref())?)
        .fetch_all(&w.db)
        .await?;
    let (rows, next) = page::finish(rows, &page, scope, owner, |r| Position {
        key: r.page_key,
        id: r.row.id,
    });
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| match user_id {
            Some(_) => serde_json::to_value(r.row.user_view()),
            None => serde_json::to_value(r.row.admin_view()),
        })
        .collect::<Result<_, _>>()
        .map_err(ApiError::internal)?;
    Ok(Json(page::answer(items, next, &page)).into_response())
}

async fn list_withdrawals(
    State(w): State<Wallet>,
    Path(uid): Path<i64>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    withdrawals_page(&w, Some(uid), &q, "withdrawals").await
}

async fn get_withdrawal(
    State(w): State<Wallet>,
    Path((uid, id)): Path<(i64, i64)>,
) -> Result<Response, ApiError> {
    let mut conn = w.db.acquire().await?;
    let row = crate::store::withdrawal(&mut conn, id, Some(uid), false)
        .await?
        .ok_or_else(withdrawals::not_found)?;
    Ok(Json(row.user_view()).into_response())
}

async fn cancel_withdrawal(
    State(w): State<Wallet>,
    Path((uid, id)): Path<(i64, i64)>,
) -> Result<Response, ApiError> {
    let row = withdrawals::cancel(&w, uid, id).await?;
    Ok(Json(row.user_view()).into_response())
}

async fn admin_withdrawals(
    State(w): State<Wallet>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    withdrawals_page(&w, None, &q, "admin-withdrawals").await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Audited {
    audit: AuditContext,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WithReason {
    reason: String,
    audit: AuditContext,
}

async fn approve(
    State(w): State<Wallet>,
    Path(id): Path<i64>,
    Json(req): Json<Audited>,
) -> Result<Response, ApiError> {
    let row = withdrawals::approve(&w, id, &req.audit).await?;
    Ok(Json(row.admin_view()).into_response())
}

async fn reject(
    State(w): State<Wallet>,
    Path(id): Path<i64>,
    Json(req): Json<WithReason>,
) -> Result<Response, ApiError> {
    let row = withdrawals::reject(&w, id, &req.reason, &req.audit).await?;
    Ok(Json(row.admin_view()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    tx_hash: String,
    audit: AuditContext,
}

async fn broadcast(
    State(w): State<Wallet>,
    Path(id): Path<i64>,
    Json(req): Json<Broadcast>,
) -> Result<Response, ApiError> {
    let network = {
        let mut conn = w.db.acquire().await?;
        crate::store::withdrawal(&mut conn, id, None, false)
            .await?
            .ok_or_else(withdrawals::not_found)?
            .network
    };
    let tx_hash = w
        .adapters
        .get(&network)
        .canonical_tx_hash(&req.tx_hash)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidRequest, e))?;
    let report = PayoutReport::Broadcast { tx_hash };
    let row = withdrawals::report(&w, id, &report, Some(&req.audit)).await?;
    Ok(Json(row.admin_view()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Confirm {
    #[serde(default)]
    network_fee: Option<String>,
    audit: AuditContext,
}

async fn confirm(
    State(w): State<Wallet>,
    Path(id): Path<i64>,
    Json(req): Json<Confirm>,
) -> Result<Response, ApiError> {
    let scale = {
        let mut conn = w.db.acquire().await?;
        let row = crate::store::withdrawal(&mut conn, id, None, false)
            .await?
            .ok_or_else(withdrawals::not_found)?;
        crate::store::asset(&mut conn, &row.asset, false)
            .await
            .map_err(ApiError::from_anyhow)?
            .map_or(0, |a| a.scale)
    };
    let network_fee = withdrawals::parse_network_fee(req.network_fee.as_deref(), scale)?;
    let row = withdrawals::report(
        &w,
        id,
        &PayoutReport::Confirmed { network_fee },
        Some(&req.audit),
    )
    .await?;
    Ok(Json(row.admin_view()).into_response())
}

async fn fail(
    State(w): State<Wallet>,
    Path(id): Path<i64>,
    Json(req): Json<WithReason>,
) -> Result<Response, ApiError> {
    withdrawals::check_reason(&req.reason)?;
    let report = PayoutReport::Failed { reason: req.reason };
    let row = withdrawals::report(&w, id, &report, Some(&req.audit)).await?;
    Ok(Json(row.admin_view()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportedTransfer {
    network: String,
    tx_hash: String,
    log_index: i32,
    address: String,
    asset: String,
    amount: String,
    confirmations: i32,
    #[serde(default)]
    block_number: Option<i64>,
    #[serde(default)]
    block_hash: Option<String>,
    #[serde(default)]
    removed: bool,
    audit: AuditContext,
}

async fn report_deposit(
    State(w): State<Wallet>,
    Json(req): Json<ReportedTransfer>,
) -> Result<Response, ApiError> {
    let transfer = Transfer {
        network: req.network,
        tx_hash: req.tx_hash,
        log_index: req.log_index,
        address: req.address,
        asset: req.asset,
        amount: req.amount,
        block_number: req.block_number,
        block_hash: req.block_hash,
        confirmations: req.confirmations,
        removed: req.removed,
    };
    let row = deposits::observe(&w, &transfer, Some(&req.audit)).await?;
    Ok(Json(row.admin_view()).into_response())
}

async fn admin_deposits(
    State(w): State<Wallet>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    deposits_page(&w, None, &q, "admin-deposits").await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadAddresses {
    network: String,
    addresses: Vec<String>,
    audit: AuditContext,
}

async fn load_addresses(
    State(w): State<Wallet>,
    Json(req): Json<LoadAddresses>,
) -> Result<Response, ApiError> {
    let loaded = deposits::load_addresses(&w, &req.network, &req.addresses, &req.audit).await?;
    Ok(Json(loaded).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FreezeQuery {
    #[serde(default)]
    open: Option<bool>,
    limit: Option<i64>,
    start_time: Option<i64>,
    end_time: Option<i64>,
    cursor: Option<String>,
    paginate: Option<bool>,
}

/// Custody freezes, newest first (operators' list: cursor owner 0).
async fn list_freezes(
    State(w): State<Wallet>,
    Query(q): Query<FreezeQuery>,
) -> Result<Response, ApiError> {
    const SCOPE: &str = "admin-freezes";
    let page = PageQuery {
        limit: q.limit,
        start_time: q.start_time,
        end_time: q.end_time,
        cursor: q.cursor.clone(),
        paginate: q.paginate,
    }
    .page(SCOPE, 0)?;
    let sql = format!(
        "SELECT {FREEZE_COLUMNS}, {} FROM custody_freezes f
         WHERE ($1::bool IS NULL OR (f.released_at IS NULL) = $1) {}",
        page_key("f"),
        page_terms("f", "DESC")
    );
    let rows: Vec<Keyed<FreezeJson>> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(q.open)
        .bind(page.start_ms)
        .bind(page.end_ms)
        .bind(page.before.map(|p| p.key))
        .bind(page.before.map(|p| p.id))
        .bind(page.limit + 1)
        .fetch_all(&w.db)
        .await?;
    let (rows, next) = page::finish(rows, &page, SCOPE, 0, |r| Position {
        key: r.page_key,
        id: r.row.id,
    });
    let items: Vec<FreezeJson> = rows.into_iter().map(|r| r.row).collect();
    Ok(Json(page::answer(items, next, &page)).into_response())
}

async fn release_freeze(
    State(w): State<Wallet>,
    Path(id): Path<i64>,
    Json(req): Json<WithReason>,
) -> Result<Response, ApiError> {
    let freeze = deposits::release_freeze(&w, id, &req.reason, &req.audit).await?;
    Ok(Json(freeze).into_response())
}
