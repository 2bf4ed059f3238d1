//! The admin API: assets, markets, market status, deposits. Who may call
//! each route: [`crate::auth::operators`]; every change appends its audit
//! row ([`exchange_store::audit`]) in the change's own transaction (the
//! market status change in the order service's).

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use exchange_common::ApiError;
use exchange_common::ErrorCode;
use exchange_common::error::{Json, Path};
use exchange_domain::market::{Asset, FeeRate, MarketSpec, MarketSpecFields};
use exchange_domain::money::{SCALE_MAX, format_units, parse_positive_units, parse_units};
use exchange_domain::symbol::{AssetSymbol, MarketSymbol};
use exchange_store::audit::{self, AuditContext};

use super::public::{AssetView, MARKET_COLUMNS, MarketView};
use super::schema::{DEPOSIT_REFERENCE_LEN_MAX, ErrorBody, field};
use crate::auth::operators::AdminCaller;
use crate::state::AppState;

/// Tries of a market status change while the order service does not know
/// the market yet, and the pause between them (its cache lives ~2 s).
const MARKET_STATUS_ATTEMPTS_MAX: u32 = 12;
const MARKET_STATUS_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// Decimal places of a fee rate string ("0.001"): parts per million.
const FEE_SCALE: u8 = 6;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAsset {
    #[schema(schema_with = field::asset_symbol)]
    pub symbol: String,
    #[serde(deserialize_with = "super::integer")]
    #[schema(schema_with = field::scale)]
    pub scale: u8,
}

#[utoipa::path(post, path = "/admin/v1/assets", request_body = NewAsset,
    responses((status = 201, body = AssetView),
              (status = 400, description = "INVALID_SYMBOL, INVALID_SCALE, or malformed input", body = ErrorBody),
              (status = 409, description = "ASSET_EXISTS", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn create_asset(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Json(req): Json<NewAsset>,
) -> Result<impl IntoResponse, ApiError> {
    let symbol = AssetSymbol::parse(&req.symbol)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidSymbol, e.to_string()))?;
    if req.scale > SCALE_MAX {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidScale,
            format!("scale must be 0 to {SCALE_MAX}"),
        ));
    }
    let mut tx = s.db().begin().await?;
    let result = sqlx::query("INSERT INTO assets (symbol, scale) VALUES ($1, $2)")
        .bind(symbol.as_str())
        .bind(i16::from(req.scale))
        .execute(&mut *tx)
        .await;
    match result {
        Ok(_) => {
            let entry = caller.entry(
                "asset.create",
                symbol.as_str(),
                json!({ "scale": req.scale }),
            );
            audit::append(&mut tx, &entry).await?;
            tx.commit().await?;
            Ok((
                StatusCode::CREATED,
                Json(AssetView {
                    symbol: symbol.to_string(),
                    scale: i16::from(req.scale),
                }),
            ))
        }
        Err(e) if super::is_unique_violation(&e) => Err(ApiError::conflict(
            ErrorCode::AssetExists,
            "this asset already exists",
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMarket {
    #[schema(schema_with = field::market_symbol)]
    pub symbol: String,
    #[schema(schema_with = field::asset_symbol)]
    pub base: String,
    #[schema(schema_with = field::asset_symbol)]
    pub quote: String,
    #[schema(schema_with = field::positive_decimal)]
    pub price_tick: String,
    #[schema(schema_with = field::positive_decimal)]
    pub qty_step: String,
    /// Defaults to `qty_step`.
    #[serde(default)]
    #[schema(schema_with = field::optional_positive_decimal)]
    pub min_qty: Option<String>,
    #[schema(schema_with = field::decimal)]
    pub min_notional: String,
    #[schema(schema_with = field::fee_rate)]
    pub maker_fee: String,
    #[schema(schema_with = field::fee_rate)]
    pub taker_fee: String,
}

async fn asset_scale(s: &AppState, symbol: &str) -> Result<u8, ApiError> {
    let scale: Option<i16> = sqlx::query_scalar("SELECT scale FROM assets WHERE symbol = $1")
        .bind(symbol)
        .fetch_optional(s.db())
        .await?;
    let scale = scale.ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::UnknownAsset,
            format!("asset {symbol} does not exist"),
        )
    })?;
    u8::try_from(scale).map_err(ApiError::internal)
}

fn amount(field: &str, text: &str, scale: u8, positive: bool) -> Result<u128, ApiError> {
    let parsed = if positive {
        parse_positive_units(text, scale)
    } else {
        parse_units(text, scale)
    };
    parsed.map_err(|e| ApiError::bad_request(ErrorCode::InvalidAmount, format!("{field} {e}")))
}

fn fee(field: &str, text: &str) -> Result<FeeRate, ApiError> {
    let ppm = amount(field, text, FEE_SCALE, false)?;
    u32::try_from(ppm)
        .ok()
        .and_then(|p| FeeRate::from_ppm(p).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidFee,
                format!("{field} must be between 0 and 1"),
            )
        })
}

async fn market_view(s: &AppState, symbol: &str) -> Result<Option<MarketView>, ApiError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MARKET_COLUMNS} FROM markets WHERE symbol = $1"
    )))
    .bind(symbol)
    .fetch_optional(s.db())
    .await?)
}

#[utoipa::path(post, path = "/admin/v1/markets", request_body = NewMarket,
    responses((status = 201, body = MarketView),
              (status = 400, description = "UNKNOWN_ASSET (base or quote does not exist), INVALID_MARKET (e.g. the symbol is not BASE-QUOTE of the two assets, \
                or a minimum below the step), INVALID_AMOUNT (more decimal places than the asset's scale, or too large), INVALID_FEE, or malformed input", body = ErrorBody),
              (status = 409, description = "MARKET_EXISTS", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn create_market(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Json(req): Json<NewMarket>,
) -> Result<impl IntoResponse, ApiError> {
    let invalid = |e: String| ApiError::bad_request(ErrorCode::InvalidMarket, e);
    let symbol = MarketSymbol::parse(&req.symbol).map_err(|e| invalid(e.to_string()))?;
    let base_sym = AssetSymbol::parse(&req.base).map_err(|e| invalid(e.to_string()))?;
    let quote_sym = AssetSymbol::parse(&req.quote).map_err(|e| invalid(e.to_string()))?;
    let base = Asset {
        symbol: base_sym,
        scale: asset_scale(&s, base_sym.as_str()).await?,
    };
    let quote = Asset {
        symbol: quote_sym,
        scale: asset_scale(&s, quote_sym.as_str()).await?,
    };
    let qty_step = amount("qty_step", &req.qty_step, base.scale, true)?;
    let fields = MarketSpecFields {
        symbol,
        base,
        quote,
        price_tick: amount("price_tick", &req.price_tick, quote.scale, true)?,
        qty_step,
        min_qty: match &req.min_qty {
            Some(t) => amount("min_qty", t, base.scale, true)?,
            None => qty_step,
        },
        min_notional: amount("min_notional", &req.min_notional, quote.scale, false)?,
        maker_fee: fee("maker_fee", &req.maker_fee)?,
        taker_fee: fee("taker_fee", &req.taker_fee)?,
    };
    let spec = MarketSpec::new(fields).map_err(|e| invalid(e.to_string()))?;
    let f = spec.fields();
    let fee_text = |r: FeeRate| format_units(u128::from(r.ppm()), FEE_SCALE);
    let mut tx = s.db().begin().await?;
    let result = sqlx::query(
        "INSERT INTO markets (symbol, base, quote, price_tick, qty_step, min_qty, min_notional, maker_fee, taker_fee)
         VALUES ($1, $2, $3, $4::numeric, $5::numeric, $6::numeric, $7::numeric, $8::numeric, $9::numeric)",
    )
    .bind(symbol.to_string())
    .bind(base_sym.as_str())
    .bind(quote_sym.as_str())
    .bind(format_units(f.price_tick, quote.scale))
    .bind(format_units(f.qty_step, base.scale))
    .bind(format_units(f.min_qty, base.scale))
    .bind(format_units(f.min_notional, quote.scale))
    .bind(fee_text(f.maker_fee))
    .bind(fee_text(f.taker_fee))
    .execute(&mut *tx)
    .await;
    match result {
        Ok(_) => {
            let entry = caller.entry(
                "market.create",
                &symbol.to_string(),
                json!({
                    "base": base_sym.as_str(),
                    "quote": quote_sym.as_str(),
                    "price_tick": format_units(f.price_tick, quote.scale),
                    "qty_step": format_units(f.qty_step, base.scale),
                    "min_qty": format_units(f.min_qty, base.scale),
                    "min_notional": format_units(f.min_notional, quote.scale),
                    "maker_fee": fee_text(f.maker_fee),
                    "taker_fee": fee_text(f.taker_fee),
                }),
            );
            audit::append(&mut tx, &entry).await?;
            tx.commit().await?;
            metrics::gauge!("exchange_market_halted", "market" => symbol.to_string()).set(0.0);
            let view = market_view(&s, &symbol.to_string())
                .await?
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("market vanished")))?;
            Ok((StatusCode::CREATED, Json(view)))
        }
        Err(e) if super::is_unique_violation(&e) => Err(ApiError::conflict(
            ErrorCode::MarketExists,
            "this market already exists",
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarketPatch {
    /// `trading`, `cancel_only` or `halted`.
    #[schema(schema_with = field::market_status)]
    pub status: String,
}

/// What the order service's status change receives: the new status, and
/// who asked (its audit row is written in the order service's transaction).
#[derive(Serialize)]
struct StatusChange<'a> {
    status: &'a str,
    audit: &'a AuditContext,
}

/// Changes a market's status through the order service, which journals it
/// in the market's command sequence (so matching applies it in order with
/// the orders around it) and updates the table in the same transaction.
#[utoipa::path(patch, path = "/admin/v1/markets/{symbol}", request_body = MarketPatch, params(("symbol" = String, Path)),
    responses((status = 200, body = MarketView),
              (status = 400, description = "INVALID_STATUS, or malformed input", body = ErrorBody),
              (status = 404, description = "MARKET_NOT_FOUND", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn patch_market(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Path(symbol): Path<String>,
    Json(req): Json<MarketPatch>,
) -> Result<axum::response::Response, ApiError> {
    if !matches!(req.status.as_str(), "trading" | "cancel_only" | "halted") {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidStatus,
            "status is \"trading\", \"cancel_only\" or \"halted\"",
        ));
    }
    if market_view(&s, &symbol).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::MarketNotFound,
            "no such market",
        ));
    }
    // The order service caches markets for a moment: one created just now
    // may be unknown to it yet, so a MARKET_NOT_FOUND for a market that is
    // in the table is retried (bounded).
    let change = StatusChange {
        status: &req.status,
        audit: &caller.context,
    };
    let mut attempts = 0;
    let relayed = loop {
        let r = s.orders.set_market_status(&symbol, &change).await?;
        let unknown = r.status == StatusCode::NOT_FOUND
            && r.json()
                .is_some_and(|v| v["error"]["code"] == ErrorCode::MarketNotFound.as_str());
        attempts += 1;
        if !unknown || attempts >= MARKET_STATUS_ATTEMPTS_MAX {
            break r;
        }
        tokio::time::sleep(MARKET_STATUS_RETRY_DELAY).await;
    };
    if !relayed.status.is_success() {
        return Ok(relayed.into_response());
    }
    tracing::info!(market = %symbol, status = %req.status, by = caller.actor(), "market status changed");
    metrics::gauge!("exchange_market_halted", "market" => symbol.clone())
        .set(if req.status == "halted" { 1.0 } else { 0.0 });
    let view = market_view(&s, &symbol)
        .await?
        .ok_or_else(|| ApiError::not_found("no such market"))?;
    Ok(Json(view).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDeposit {
    #[serde(deserialize_with = "super::integer")]
    pub user_id: i64,
    #[schema(schema_with = field::asset_symbol)]
    pub asset: String,
    #[schema(schema_with = field::positive_decimal)]
    pub amount: String,
    /// Required. The same reference with the same body credits once (200
    /// with the first deposit); with another body it is 409.
    #[serde(default)]
    #[schema(schema_with = field::deposit_reference, required = true)]
    pub reference: Option<String>,
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct DepositView {
    pub id: i64,
    pub user_id: i64,
    pub asset: String,
    pub amount: String,
    pub reference: Option<String>,
    pub journal_id: i64,
}

/// The reference of a deposit request: present, 1 to 128 characters, no NUL.
fn check_reference(reference: Option<&str>) -> Result<&str, ApiError> {
    let invalid = |why: &str| ApiError::bad_request(ErrorCode::InvalidReference, why);
    let r = reference
        .ok_or_else(|| invalid("reference is required (e.g. the chain transaction id)"))?;
    let len = r.chars().count();
    if len == 0 || len > DEPOSIT_REFERENCE_LEN_MAX {
        return Err(invalid(&format!(
            "reference must be 1 to {DEPOSIT_REFERENCE_LEN_MAX} characters"
        )));
    }
    if r.contains('\0') {
        return Err(invalid("reference must not contain NUL characters"));
    }
    Ok(r)
}

async fn existing_deposit(
    db: impl sqlx::PgExecutor<'_>,
    reference: &str,
) -> Result<Option<DepositView>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT id, user_id, asset, trim_scale(amount)::text AS amount, reference, journal_id FROM deposits WHERE reference = $1",
    )
    .bind(reference)
    .fetch_optional(db)
    .await?)
}

/// What a repeated reference answers: the first deposit (200) when the
/// request asks for the same credit, else 409 `REFERENCE_CONFLICT`.
fn repeated(
    done: DepositView,
    user_id: i64,
    asset: AssetSymbol,
    units: u128,
    scale: u8,
) -> Result<axum::response::Response, ApiError> {
    let same = done.user_id == user_id
        && done.asset == asset.as_str()
        && parse_units(&done.amount, scale).is_ok_and(|u| u == units);
    if !same {
        return Err(ApiError::conflict(
            ErrorCode::ReferenceConflict,
            format!(
                "reference already credited deposit {} with another user, asset or amount",
                done.id
            ),
        ));
    }
    Ok((StatusCode::OK, Json(done)).into_response())
}

/// A deposit to credit, validated.
struct Credit<'a> {
    user_id: i64,
    asset: AssetSymbol,
    amount_text: String,
    reference: &'a str,
}

/// Books the credit in `tx`: the ledger journal and its two postings, the
/// balance, the deposit row. Returns `(deposit id, journal id)`, or the
/// unique violation when a concurrent request took the reference first.
async fn book_credit(
    tx: &mut sqlx::PgConnection,
    c: &Credit<'_>,
) -> Result<Result<(i64, i64), sqlx::Error>, ApiError> {
    let journal_id: i64 = sqlx::query_scalar(
        "INSERT INTO ledger_journal (kind, reference) VALUES ('deposit', $1) RETURNING id",
    )
    .bind(c.reference)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO ledger_postings (journal_id, account_kind, user_id, asset, amount)
         VALUES ($1, 'user', $2, $3, $4::numeric), ($1, 'deposits', NULL, $3, -($4::numeric))",
    )
    .bind(journal_id)
    .bind(c.user_id)
    .bind(c.asset.as_str())
    .bind(&c.amount_text)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO balances (user_id, asset, available) VALUES ($1, $2, $3::numeric)
         ON CONFLICT (user_id, asset) DO UPDATE SET available = balances.available + EXCLUDED.available, updated_at = now()",
    )
    .bind(c.user_id)
    .bind(c.asset.as_str())
    .bind(&c.amount_text)
    .execute(&mut *tx)
    .await?;
    // The reference's UNIQUE index makes a concurrent duplicate wait here
    // for the first one's commit, then fail: credited once.
    let inserted = sqlx::query_scalar::<_, i64>(
        "INSERT INTO deposits (user_id, asset, amount, reference, journal_id) VALUES ($1, $2, $3::numeric, $4, $5) RETURNING id",
    )
    .bind(c.user_id)
    .bind(c.asset.as_str())
    .bind(&c.amount_text)
    .bind(c.reference)
    .bind(journal_id)
    .fetch_one(&mut *tx)
    .await;
    match inserted {
        Ok(id) => Ok(Ok((id, journal_id))),
        Err(e) if super::is_unique_violation(&e) => Ok(Err(e)),
        Err(e) => Err(e.into()),
    }
}

/// Credits a user through the ledger: one journal entry, `+amount` to the
/// user and `-amount` to the `deposits` system account, the balance, the
/// deposit and its audit row, in one transaction. Idempotent on `reference`.
#[utoipa::path(post, path = "/admin/v1/deposits", request_body = NewDeposit,
    responses((status = 201, body = DepositView), (status = 200, description = "already credited (same reference, same body)", body = DepositView),
              (status = 400, description = "INVALID_REFERENCE (missing, empty, over 128 characters), UNKNOWN_ASSET, INVALID_SYMBOL, INVALID_AMOUNT (more decimal places than the asset's scale, or too large), or malformed input", body = ErrorBody),
              (status = 404, description = "USER_NOT_FOUND", body = ErrorBody),
              (status = 409, description = "REFERENCE_CONFLICT: the reference credited another user, asset or amount", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn deposit(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Json(req): Json<NewDeposit>,
) -> Result<axum::response::Response, ApiError> {
    let reference = check_reference(req.reference.as_deref())?;
    let asset = AssetSymbol::parse(&req.asset)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidSymbol, e.to_string()))?;
    let scale = asset_scale(&s, asset.as_str()).await?;
    let units = amount("amount", &req.amount, scale, true)?;
    if let Some(done) = existing_deposit(s.db(), reference).await? {
        return repeated(done, req.user_id, asset, units, scale);
    }
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
        .bind(req.user_id)
        .fetch_one(s.db())
        .await?;
    if !exists {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UserNotFound,
            "no such user",
        ));
    }
    let credit = Credit {
        user_id: req.user_id,
        asset,
        amount_text: format_units(units, scale),
        reference,
    };
    let mut tx = s.db().begin().await?;
    let (id, journal_id) = match book_credit(&mut tx, &credit).await? {
        Ok(ids) => ids,
        Err(e) => {
            // A concurrent request with the same reference won: nothing of
            // ours is kept; answer as a repeat of theirs.
            drop(tx);
            let done = existing_deposit(s.db(), reference)
                .await?
                .ok_or_else(|| ApiError::internal(e))?;
            return repeated(done, req.user_id, asset, units, scale);
        }
    };
    let entry = caller.entry(
        "deposit.create",
        &format!("user:{}", req.user_id),
        json!({
            "deposit_id": id,
            "journal_id": journal_id,
            "asset": asset.as_str(),
            "amount": credit.amount_text,
            "reference": reference,
        }),
    );
    audit::append(&mut tx, &entry).await?;
    tx.commit().await?;
    tracing::info!(user_id = req.user_id, asset = %asset, amount = %credit.amount_text, journal_id, by = caller.actor(), "deposit credited");
    let view = DepositView {
        id,
        user_id: req.user_id,
        asset: asset.to_string(),
        amount: credit.amount_text,
        reference: Some(reference.to_owned()),
        journal_id,
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}
