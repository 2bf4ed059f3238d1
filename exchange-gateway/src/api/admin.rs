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

use super::public::{ASSET_COLUMNS, AssetView, MARKET_COLUMNS, MarketView};
use super::schema::{DEPOSIT_REFERENCE_LEN_MAX, ErrorBody, field};
use crate::auth::operators::{AdminCaller, Role};
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
    /// Custody settings, as in `PATCH /admin/v1/assets/{symbol}` (all optional).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub network: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub contract: Option<Option<String>>,
    #[serde(default)]
    pub confirmations: Option<i32>,
    #[serde(default)]
    #[schema(schema_with = field::optional_decimal)]
    pub withdraw_fee: Option<String>,
    #[serde(default)]
    #[schema(schema_with = field::optional_decimal)]
    pub withdraw_min: Option<String>,
    #[serde(default)]
    #[schema(schema_with = field::optional_decimal)]
    pub auto_approve_limit: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub daily_withdraw_limit: Option<Option<String>>,
    #[serde(default)]
    pub withdrawals_enabled: Option<bool>,
}

impl NewAsset {
    fn custody(&self) -> CustodySettings {
        CustodySettings {
            network: self.network.clone(),
            contract: self.contract.clone(),
            confirmations: self.confirmations,
            withdraw_fee: self.withdraw_fee.clone(),
            withdraw_min: self.withdraw_min.clone(),
            auto_approve_limit: self.auto_approve_limit.clone(),
            daily_withdraw_limit: self.daily_withdraw_limit.clone(),
            withdrawals_enabled: self.withdrawals_enabled,
        }
    }
}

/// An absent field stays `None`; `null` is `Some(None)` (clear it).
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// An asset's custody settings as an operator sends them (API.md
/// "Custody"); an absent field keeps its value (its default on creation).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustodySettings {
    /// The chain (`ethereum`, …: lowercase letters, digits, `_`, `-`);
    /// `null`: an off-chain asset. Fixed once it has chain deposits or
    /// withdrawals.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub network: Option<Option<String>>,
    /// The token contract; `null` for the chain's own coin.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub contract: Option<Option<String>>,
    /// Confirmations before a deposit is credited (1 to 10,000; default 1).
    #[serde(default)]
    pub confirmations: Option<i32>,
    #[serde(default)]
    #[schema(schema_with = field::optional_decimal)]
    pub withdraw_fee: Option<String>,
    #[serde(default)]
    #[schema(schema_with = field::optional_decimal)]
    pub withdraw_min: Option<String>,
    /// At or below it a withdrawal is approved at once; above it two
    /// different operators approve (default 0: every withdrawal).
    #[serde(default)]
    #[schema(schema_with = field::optional_decimal)]
    pub auto_approve_limit: Option<String>,
    /// Per user over a rolling 24 hours; `null`: no limit.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub daily_withdraw_limit: Option<Option<String>>,
    /// The kill switch: `false` stops new withdrawals and payouts at once.
    #[serde(default)]
    pub withdrawals_enabled: Option<bool>,
}

/// An asset as operators see it: the public view and the approval limit.
#[derive(Serialize, ToSchema)]
pub struct AdminAssetView {
    #[serde(flatten)]
    pub asset: AssetView,
    pub auto_approve_limit: String,
}

#[derive(sqlx::FromRow)]
struct CustodyRow {
    scale: i16,
    network: Option<String>,
    contract: Option<String>,
    confirmations: i32,
    withdraw_fee: String,
    withdraw_min: String,
    auto_approve_limit: String,
    daily_withdraw_limit: Option<String>,
    withdrawals_enabled: bool,
    in_use: bool,
}

fn invalid_settings(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidSettings, message)
}

fn check_network(network: &str) -> Result<(), ApiError> {
    let ok = (1..=32).contains(&network.len())
        && network.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && (b == b'_' || b == b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(invalid_settings(
            "network is 1 to 32 lowercase letters, digits, '_' or '-' (e.g. \"ethereum\")",
        ))
    }
}

fn check_contract(contract: &str) -> Result<(), ApiError> {
    if (1..=128).contains(&contract.len()) && contract.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(invalid_settings("contract is 1 to 128 letters and digits"))
    }
}

/// Applies `c` to the asset's custody settings in `tx` and returns what
/// changed (for the audit row).
async fn apply_custody(
    tx: &mut sqlx::PgConnection,
    symbol: &str,
    c: &CustodySettings,
) -> Result<serde_json::Value, ApiError> {
    let row: Option<CustodyRow> = sqlx::query_as(
        "SELECT scale, network, contract, confirmations, withdraw_fee::text AS withdraw_fee,
                withdraw_min::text AS withdraw_min, auto_approve_limit::text AS auto_approve_limit,
                daily_withdraw_limit::text AS daily_withdraw_limit, withdrawals_enabled,
                EXISTS (SELECT 1 FROM chain_deposits WHERE asset = $1)
                OR EXISTS (SELECT 1 FROM withdrawals WHERE asset = $1)
                OR EXISTS (SELECT 1 FROM withdrawal_addresses WHERE asset = $1) AS in_use
         FROM assets WHERE symbol = $1 FOR NO KEY UPDATE",
    )
    .bind(symbol)
    .fetch_optional(&mut *tx)
    .await?;
    let mut row = row.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownAsset,
            format!("no asset {symbol}"),
        )
    })?;
    let scale = u8::try_from(row.scale).map_err(ApiError::internal)?;
    let mut changed = serde_json::Map::new();
    let decimal =
        |name: &str, text: &str| amount(name, text, scale, false).map(|u| format_units(u, scale));
    if let Some(network) = &c.network {
        if let Some(n) = network {
            check_network(n)?;
        }
        if row.in_use && *network != row.network {
            return Err(invalid_settings(
                "network cannot change once the asset has chain deposits, withdrawals or withdrawal addresses",
            ));
        }
        row.network.clone_from(network);
        changed.insert("network".into(), json!(network));
    }
    if let Some(contract) = &c.contract {
        if let Some(k) = contract {
            check_contract(k)?;
        }
        if row.in_use && *contract != row.contract {
            return Err(invalid_settings(
                "contract cannot change once the asset has chain deposits, withdrawals or withdrawal addresses",
            ));
        }
        row.contract.clone_from(contract);
        changed.insert("contract".into(), json!(contract));
    }
    if row.contract.is_some() && row.network.is_none() {
        return Err(invalid_settings("a contract needs a network"));
    }
    if let Some(n) = c.confirmations {
        if !(1..=10_000).contains(&n) {
            return Err(invalid_settings("confirmations is 1 to 10000"));
        }
        row.confirmations = n;
        changed.insert("confirmations".into(), json!(n));
    }
    for (name, value, slot) in [
        ("withdraw_fee", &c.withdraw_fee, &mut row.withdraw_fee),
        ("withdraw_min", &c.withdraw_min, &mut row.withdraw_min),
        (
            "auto_approve_limit",
            &c.auto_approve_limit,
            &mut row.auto_approve_limit,
        ),
    ] {
        if let Some(text) = value {
            *slot = decimal(name, text)?;
            changed.insert(name.into(), json!(slot));
        }
    }
    if let Some(limit) = &c.daily_withdraw_limit {
        row.daily_withdraw_limit = limit
            .as_deref()
            .map(|t| decimal("daily_withdraw_limit", t))
            .transpose()?;
        changed.insert(
            "daily_withdraw_limit".into(),
            json!(row.daily_withdraw_limit),
        );
    }
    if let Some(on) = c.withdrawals_enabled {
        row.withdrawals_enabled = on;
        changed.insert("withdrawals_enabled".into(), json!(on));
    }
    let updated = sqlx::query(
        "UPDATE assets SET network = $2, contract = $3, confirmations = $4, withdraw_fee = $5::numeric,
                withdraw_min = $6::numeric, auto_approve_limit = $7::numeric,
                daily_withdraw_limit = $8::numeric, withdrawals_enabled = $9
         WHERE symbol = $1",
    )
    .bind(symbol)
    .bind(&row.network)
    .bind(&row.contract)
    .bind(row.confirmations)
    .bind(&row.withdraw_fee)
    .bind(&row.withdraw_min)
    .bind(&row.auto_approve_limit)
    .bind(&row.daily_withdraw_limit)
    .bind(row.withdrawals_enabled)
    .execute(&mut *tx)
    .await;
    match updated {
        Ok(_) => Ok(serde_json::Value::Object(changed)),
        Err(e) if super::is_unique_violation(&e) => Err(invalid_settings(
            "another asset is already this network and contract",
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(sqlx::FromRow)]
struct AdminAssetRow {
    #[sqlx(flatten)]
    asset: AssetView,
    auto_approve_limit: String,
}

async fn admin_asset_view(
    db: impl sqlx::PgExecutor<'_>,
    symbol: &str,
) -> Result<AdminAssetView, ApiError> {
    let row: AdminAssetRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ASSET_COLUMNS}, trim_scale(auto_approve_limit)::text AS auto_approve_limit
         FROM assets WHERE symbol = $1"
    )))
    .bind(symbol)
    .fetch_one(db)
    .await?;
    Ok(AdminAssetView {
        asset: row.asset,
        auto_approve_limit: row.auto_approve_limit,
    })
}

impl CustodySettings {
    /// Only the kill switch turned off: what a finance operator may do
    /// alone. Everything else loosens or reshapes the controls and needs an
    /// admin.
    fn only_stops_withdrawals(&self) -> bool {
        self.withdrawals_enabled == Some(false)
            && self.network.is_none()
            && self.contract.is_none()
            && self.confirmations.is_none()
            && self.withdraw_fee.is_none()
            && self.withdraw_min.is_none()
            && self.auto_approve_limit.is_none()
            && self.daily_withdraw_limit.is_none()
    }
}

/// Changes an asset's custody settings (API.md "Custody"); `{"withdrawals_enabled": false}`
/// is the kill switch: new withdrawals are refused and no payout not yet
/// claimed leaves, from the commit on. The asset row is locked `FOR NO KEY
/// UPDATE`: the wallet's requests and payout claims read it `FOR SHARE`, so
/// the change waits for those in flight and every later one sees it.
#[utoipa::path(patch, path = "/admin/v1/assets/{symbol}", request_body = CustodySettings, params(("symbol" = String, Path)),
    responses((status = 200, body = AdminAssetView),
              (status = 400, description = "INVALID_SETTINGS, INVALID_AMOUNT (more decimal places than the asset's scale), or malformed input", body = ErrorBody),
              (status = 403, description = "FORBIDDEN: a finance operator changing anything but withdrawals_enabled to false", body = ErrorBody),
              (status = 404, description = "UNKNOWN_ASSET", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn patch_asset(
    State(s): State<AppState>,
    Extension(caller): Extension<AdminCaller>,
    Path(symbol): Path<String>,
    Json(req): Json<CustodySettings>,
) -> Result<Json<AdminAssetView>, ApiError> {
    if caller.role != Role::Admin && !req.only_stops_withdrawals() {
        return Err(ApiError::forbidden(
            "a finance operator may only stop withdrawals ({\"withdrawals_enabled\":false}); other settings need an admin",
        ));
    }
    let mut tx = s.db().begin().await?;
    let changed = apply_custody(&mut tx, &symbol, &req).await?;
    let entry = caller.entry("asset.update", &symbol, changed);
    audit::append(&mut tx, &entry).await?;
    let view = admin_asset_view(&mut *tx, &symbol).await?;
    tx.commit().await?;
    tracing::info!(asset = %symbol, by = caller.actor(), withdrawals_enabled = view.asset.withdrawals_enabled, "asset settings changed");
    Ok(Json(view))
}

#[utoipa::path(post, path = "/admin/v1/assets", request_body = NewAsset,
    responses((status = 201, body = AdminAssetView),
              (status = 400, description = "INVALID_SYMBOL, INVALID_SCALE, INVALID_SETTINGS, INVALID_AMOUNT, or malformed input", body = ErrorBody),
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
            let custody = apply_custody(&mut tx, symbol.as_str(), &req.custody()).await?;
            let entry = caller.entry(
                "asset.create",
                symbol.as_str(),
                json!({ "scale": req.scale, "custody": custody }),
            );
            audit::append(&mut tx, &entry).await?;
            let view = admin_asset_view(&mut *tx, symbol.as_str()).await?;
            tx.commit().await?;
            Ok((StatusCode::CREATED, Json(view)))
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
    units: u128,
    scale: u8,
    reference: &'a str,
}

impl Credit<'_> {
    fn amount_text(&self) -> String {
        format_units(self.units, self.scale)
    }
}

/// Books the credit in `tx`: the ledger journal (`+amount` to the user,
/// `-amount` to the `deposits` account), the balance, the deposit row.
/// Returns `(deposit id, journal id)`, or the unique violation when a
/// concurrent request took the reference first.
async fn book_credit(
    tx: &mut sqlx::PgConnection,
    c: &Credit<'_>,
) -> Result<Result<(i64, i64), sqlx::Error>, ApiError> {
    use exchange_store::ledger::{self, Account, JournalKind, Posting};
    let units = i128::try_from(c.units)
        .map_err(|_| ApiError::bad_request(ErrorCode::InvalidAmount, "amount is too large"))?;
    let journal_id = ledger::book(
        tx,
        JournalKind::Deposit,
        c.reference,
        c.asset.as_str(),
        c.scale,
        &[
            Posting {
                account: Account::User(c.user_id),
                units,
            },
            Posting {
                account: Account::Deposits,
                units: -units,
            },
        ],
    )
    .await
    .map_err(ApiError::from_anyhow)?;
    let amount_text = c.amount_text();
    exchange_store::balances::credit_available(tx, c.user_id, c.asset.as_str(), &amount_text)
        .await?;
    // The reference's UNIQUE index makes a concurrent duplicate wait here
    // for the first one's commit, then fail: credited once.
    let inserted = sqlx::query_scalar::<_, i64>(
        "INSERT INTO deposits (user_id, asset, amount, reference, journal_id) VALUES ($1, $2, $3::numeric, $4, $5) RETURNING id",
    )
    .bind(c.user_id)
    .bind(c.asset.as_str())
    .bind(&amount_text)
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
        units,
        scale,
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
            "amount": credit.amount_text(),
            "reference": reference,
        }),
    );
    audit::append(&mut tx, &entry).await?;
    tx.commit().await?;
    tracing::info!(user_id = req.user_id, asset = %asset, amount = %credit.amount_text(), journal_id, by = caller.actor(), "deposit credited");
    let view = DepositView {
        id,
        user_id: req.user_id,
        asset: asset.to_string(),
        amount: credit.amount_text(),
        reference: Some(reference.to_owned()),
        journal_id,
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}
