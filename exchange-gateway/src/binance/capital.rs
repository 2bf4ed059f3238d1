//! Binance's wallet endpoints (`/sapi/v1/capital/...`: what ccxt's
//! `fetch_deposit_address`, `fetch_deposits`, `withdraw` and
//! `fetch_withdrawals` call), translated onto our custody service: the
//! same wallet upstream calls as `/api/v1/account/deposit-address`,
//! `/api/v1/account/deposits` and `/api/v1/withdrawals`, always with the
//! key owner's user id, and the same checks (withdrawals go through
//! [`crate::api::custody::withdraw_for`], the one withdrawal path). No
//! custody table is read here.
//!
//! Where the shapes differ:
//! - Binance withdraws to a raw address; we withdraw to an entry of the
//!   user's address book (managed with a login session only, with a
//!   cooldown). `withdraw/apply` finds `address` among the book's entries
//!   for `coin`; one that is not there is refused with -4035, one still
//!   cooling down with -4036 (our code is kept in `msg`).
//! - With 2FA on, a withdrawal needs a TOTP code: `withdraw/apply` takes
//!   an extra `totp` parameter (Binance has none).
//! - `network` is our network name (e.g. `ethereum`), not Binance's
//!   (`ETH`); no address tags (`addressTag` is refused, answered as `""`).
//! - `id`s are our ids as strings; `withdrawOrderId` is our
//!   `client_withdrawal_id` (the same one again answers the same
//!   withdrawal, never a second one).
//! - The histories are searched among the newest [`WALLET_PAGE_MAX`]
//!   entries (of the coin, when given); Binance's 90-day default window is
//!   not applied.
//!
//! Status mappings (Binance's numbers; ccxt's unified status after `→`):
//! - deposits: `pending` 0 (→ pending), `credited` 1 (success → ok),
//!   `reorged` 2 (rejected: left the chain before its confirmations, never
//!   credited).
//! - withdrawals: `pending_approval` 2 (awaiting approval → pending);
//!   `approved`, `signing`, `broadcast` 4 (processing → pending);
//!   `confirmed` 6 (completed → ok); `rejected` 3 (→ failed); `canceled` 1
//!   (→ canceled); `failed` 5 (failure → failed).

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use exchange_common::{ApiError, ErrorCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::custody::{AssetQuery, CustodyListQuery, NewWithdrawal, withdraw_for};
use crate::upstream::Relayed;

use super::error::{Action, BnError, MSG_INSUFFICIENT};
use super::signed::{Need, authenticate};
use super::trade::{decimal, i64_param};
use super::{BnState, Params};

/// Default and largest page of `deposit/hisrec` and `withdraw/history`
/// (Binance's: 1000 both).
pub const HISTORY_LIMIT_DEFAULT: u64 = 1_000;
pub const HISTORY_LIMIT_MAX: u64 = 1_000;
/// The wallet's largest page (exchange-wallet `LIST_LIMIT_MAX`): the
/// histories are filtered among the newest this many.
pub const WALLET_PAGE_MAX: i64 = 1_000;

/// Binance's deposit status of ours.
pub fn deposit_status(ours: &str) -> i64 {
    match ours {
        "credited" => 1,
        "reorged" => 2,
        _ => 0,
    }
}

/// Our deposit status of Binance's `status` filter; `None`: a status we
/// never have (6 credited but locked, 7 wrong deposit, 8 waiting for the
/// user), so nothing matches.
pub fn deposit_status_filter(binance: u64) -> Option<&'static str> {
    match binance {
        0 => Some("pending"),
        1 => Some("credited"),
        2 => Some("reorged"),
        _ => None,
    }
}

/// Binance's withdrawal status of ours.
pub fn withdrawal_status(ours: &str) -> i64 {
    match ours {
        "pending_approval" => 2,
        "confirmed" => 6,
        "rejected" => 3,
        "canceled" => 1,
        "failed" => 5,
        // approved, signing, broadcast: on its way.
        _ => 4,
    }
}

/// Binance's `applyTime`/`completeTime`: `YYYY-MM-DD HH:MM:SS`, UTC.
pub fn utc_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Whether `sent` names the book's `stored` address: the same text, or, for
/// a `0x` hex address (EVM), the same address written without a checksum
/// (all lower or all upper case; the book keeps the EIP-55 form). A
/// mixed-case address must match exactly: its case is its checksum.
pub fn same_address(stored: &str, sent: &str) -> bool {
    if stored == sent {
        return true;
    }
    let hex40 = |a: &str| {
        a.strip_prefix("0x")
            .filter(|h| h.len() == 40 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned)
    };
    match (hex40(stored), hex40(sent)) {
        (Some(s), Some(t)) => {
            let no_checksum = t == t.to_ascii_lowercase() || t == t.to_ascii_uppercase();
            no_checksum && s.eq_ignore_ascii_case(&t)
        }
        _ => false,
    }
}

fn bad(code: i32, text: &str, ours: &str, message: &str) -> BnError {
    BnError::new(
        StatusCode::BAD_REQUEST,
        code,
        format!("{text} ({ours}: {message})"),
    )
}

/// One of our refusals in Binance's wallet terms: the codes and texts of
/// Binance's -4xxx wallet errors, with our code and message after the text
/// in `msg` (clients map Binance's codes to their exception classes; ccxt
/// 4.5 maps most -4xxx codes to BadRequest or a plain ExchangeError).
pub fn capital_error(status: StatusCode, code: &str, message: &str) -> BnError {
    let b = |bn: i32, text: &str| bad(bn, text, code, message);
    match ErrorCode::parse(code) {
        // Binance's own words for it on spot, which ccxt raises as
        // InsufficientFunds (it knows the message, not this code).
        Some(ErrorCode::InsufficientBalance) => {
            BnError::new(StatusCode::BAD_REQUEST, -4026, MSG_INSUFFICIENT)
        }
        Some(ErrorCode::AmountBelowMinimum) => {
            b(-4022, "Not less than the minimum pick-up quantity.")
        }
        Some(ErrorCode::DailyLimitExceeded) => b(
            -4023,
            "Within 24 hours, the withdrawal exceeds the maximum amount.",
        ),
        Some(ErrorCode::AddressCoolingDown) => b(
            -4036,
            "The new address needs to wait before it can be withdrawn to.",
        ),
        Some(ErrorCode::AddressNotFound | ErrorCode::UnknownAddress) => b(
            -4035,
            "This address is not on the whitelist. Please join and try again.",
        ),
        Some(ErrorCode::InvalidAddress) => b(-4033, "Illegal address."),
        Some(ErrorCode::WithdrawalsDisabled) => {
            b(-4019, "Current asset is not open for withdrawal.")
        }
        Some(ErrorCode::WithdrawalsFrozen | ErrorCode::AccountFrozen) => {
            b(-4015, "Withdraw is limited.")
        }
        Some(ErrorCode::UnknownAsset | ErrorCode::NoNetwork) => {
            b(-4018, "We don't have this asset.")
        }
        Some(ErrorCode::NetworkMismatch) => b(-4001, "Invalid operation."),
        Some(ErrorCode::TotpRequired) => b(
            -1102,
            "Mandatory parameter 'totp' was not sent, was empty/null, or malformed.",
        ),
        Some(ErrorCode::InvalidTotp) => b(-4032, "Withdraw verification exception."),
        Some(ErrorCode::TooManyAttempts) => {
            let mut e = b(-4005, "Too many new requests.");
            e.status = StatusCode::TOO_MANY_REQUESTS;
            e.retry_after = Some(1);
            e
        }
        Some(ErrorCode::InvalidAmount) => {
            b(-1100, "Illegal characters found in parameter 'amount'.")
        }
        Some(ErrorCode::WithdrawalNotFound) => b(-4029, "The withdrawal record does not exist."),
        Some(ErrorCode::NoDepositAddress) => {
            let mut e = b(-4041, "Please try again in one minute.");
            e.status = StatusCode::SERVICE_UNAVAILABLE;
            e
        }
        Some(ErrorCode::InvalidRequest | ErrorCode::InvalidStatus | ErrorCode::InvalidLimit) => {
            b(-4001, "Invalid operation.")
        }
        _ if status == StatusCode::SERVICE_UNAVAILABLE => BnError::unavailable(),
        _ if status.is_server_error() => BnError::internal(),
        _ => BnError::from_code(code, message, Action::Query),
    }
}

/// An error of ours (the checks, or the call to the wallet) in Binance's
/// terms: a withdrawal whose outcome is unknown stays -1007.
fn from_api(e: &ApiError) -> BnError {
    if e.status.is_server_error() {
        return BnError::from_api(e, Action::Place);
    }
    capital_error(e.status, e.code.as_str(), &e.message)
}

/// The wallet's JSON answer, or its refusal in Binance's terms.
fn answer(r: Result<Relayed, ApiError>) -> Result<Value, BnError> {
    let r = r.map_err(|e| from_api(&e))?;
    let body = r.json().unwrap_or(Value::Null);
    if r.status.is_success() {
        return Ok(body);
    }
    let code = body["error"]["code"].as_str().unwrap_or("");
    let msg = body["error"]["message"].as_str().unwrap_or("");
    Err(capital_error(r.status, code, msg))
}

/// `network`, when sent, must be the coin's (ours, e.g. `ethereum`).
fn check_network(p: &Params, coin: &str, ours: &str) -> Result<(), BnError> {
    match p.get("network") {
        Some(n) if !n.eq_ignore_ascii_case(ours) => Err(bad(
            -4001,
            "Invalid operation.",
            ErrorCode::NetworkMismatch.as_str(),
            &format!("{coin} is on network {ours}, not {n}"),
        )),
        _ => Ok(()),
    }
}

/// `offset` then `limit` of what matched.
fn page(rows: Vec<Value>, p: &Params) -> Result<Value, BnError> {
    let offset = usize::try_from(p.u64("offset")?.unwrap_or(0)).unwrap_or(usize::MAX);
    let limit =
        usize::try_from(p.limit(HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX)?).unwrap_or(usize::MAX);
    Ok(Value::Array(
        rows.into_iter().skip(offset).take(limit).collect(),
    ))
}

/// `startTime`..=`endTime` (ms), each optional.
fn in_window(t: i64, start: Option<i64>, end: Option<i64>) -> bool {
    start.is_none_or(|s| t >= s) && end.is_none_or(|e| t <= e)
}

/// `GET /sapi/v1/capital/deposit/address`: `{coin, address, tag, url}`.
pub async fn deposit_address(
    State(s): State<BnState>,
    req: Request,
) -> Result<Json<Value>, BnError> {
    let (user, p) = authenticate(&s, req, Need::Read).await?;
    let coin = p.require("coin")?.to_owned();
    let q = AssetQuery {
        asset: coin.clone(),
    };
    let v = answer(s.app.wallet.deposit_address(user.user_id, &q).await)?;
    let network = v["network"].as_str().unwrap_or("");
    check_network(&p, &coin, network)?;
    Ok(Json(json!({
        "coin": v["asset"].as_str().unwrap_or(&coin),
        "address": v["address"],
        "tag": "",
        "url": "",
    })))
}

/// The history query to the wallet: the coin, the newest page.
fn wallet_query(p: &Params, status: Option<&str>) -> CustodyListQuery {
    CustodyListQuery {
        asset: p.get("coin").map(str::to_owned),
        status: status.map(str::to_owned),
        limit: Some(WALLET_PAGE_MAX),
    }
}

#[derive(Deserialize)]
struct Deposit {
    id: i64,
    asset: String,
    network: String,
    address: String,
    amount: String,
    tx_hash: String,
    confirmations: i64,
    required_confirmations: i64,
    status: String,
    time: i64,
}

/// `GET /sapi/v1/capital/deposit/hisrec`: my chain deposits, newest first.
pub async fn deposit_history(
    State(s): State<BnState>,
    req: Request,
) -> Result<Json<Value>, BnError> {
    let (user, p) = authenticate(&s, req, Need::Read).await?;
    let status = match p.u64("status")? {
        None => None,
        Some(n) => match deposit_status_filter(n) {
            Some(ours) => Some(ours),
            None => return Ok(Json(json!([]))),
        },
    };
    let start = i64_param(&p, "startTime")?;
    let end = i64_param(&p, "endTime")?;
    let tx_id = p.get("txId");
    let q = wallet_query(&p, status);
    let v = answer(s.app.wallet.list_deposits(user.user_id, &q).await)?;
    let rows: Vec<Deposit> = serde_json::from_value(v).map_err(|e| {
        tracing::warn!(error = %e, "wallet deposits not in the expected shape");
        BnError::internal()
    })?;
    let out: Vec<Value> = rows
        .into_iter()
        .filter(|d| in_window(d.time, start, end) && tx_id.is_none_or(|t| t == d.tx_hash))
        .map(|d| {
            json!({
                "id": d.id.to_string(),
                "amount": d.amount,
                "coin": d.asset,
                "network": d.network,
                "status": deposit_status(&d.status),
                "address": d.address,
                "addressTag": "",
                "txId": d.tx_hash,
                "insertTime": d.time,
                "transferType": 0,
                "confirmTimes": format!("{}/{}", d.confirmations, d.required_confirmations),
                "unlockConfirm": d.required_confirmations,
                "walletType": 0,
            })
        })
        .collect();
    Ok(Json(page(out, &p)?))
}

#[derive(Deserialize)]
struct BookEntry {
    id: i64,
    asset: String,
    network: String,
    address: String,
    usable_from: i64,
}

/// The address book entry `withdraw/apply` withdraws to: `address` among
/// the entries for `coin`; of several, the one usable first (the wallet
/// refuses it while it cools down). `network`, when sent, must be the
/// entry's.
async fn book_entry(
    s: &BnState,
    user_id: i64,
    coin: &str,
    address: &str,
    p: &Params,
) -> Result<i64, BnError> {
    let v = answer(s.app.wallet.list_withdrawal_addresses(user_id).await)?;
    let book: Vec<BookEntry> = serde_json::from_value(v).map_err(|e| {
        tracing::warn!(error = %e, "wallet address book not in the expected shape");
        BnError::internal()
    })?;
    let entry = book
        .iter()
        .filter(|e| e.asset == coin && same_address(&e.address, address))
        .min_by_key(|e| (e.usable_from, e.id))
        .ok_or_else(|| {
            bad(
                -4035,
                "This address is not on the whitelist. Please join and try again.",
                ErrorCode::AddressNotFound.as_str(),
                &format!(
                    "{address} is not in your {coin} withdrawal address book; add it with \
                     POST /api/v1/account/withdrawal-addresses (a login session), then wait for its cooldown"
                ),
            )
        })?;
    check_network(p, coin, &entry.network)?;
    Ok(entry.id)
}

/// `POST /sapi/v1/capital/withdraw/apply`: `{id}`.
pub async fn withdraw_apply(
    State(s): State<BnState>,
    req: Request,
) -> Result<Json<Value>, BnError> {
    let (user, p) = authenticate(&s, req, Need::Withdraw).await?;
    let coin = p.require("coin")?.to_owned();
    let address = p.require("address")?.to_owned();
    let amount = decimal(&p, "amount")?.ok_or_else(|| BnError::missing("amount"))?;
    if p.get("addressTag").is_some() {
        return Err(BnError::not_required("addressTag"));
    }
    // Only the spot wallet (0); the fee is always on top of the amount.
    if p.get("walletType").is_some_and(|w| w != "0") {
        return Err(BnError::illegal("walletType"));
    }
    if p.get("transactionFeeFlag").is_some_and(|f| f != "false") {
        return Err(BnError::illegal("transactionFeeFlag"));
    }
    user.require_withdraw().map_err(|e| from_api(&e))?;
    let address_id = book_entry(&s, user.user_id, &coin, &address, &p).await?;
    let body = NewWithdrawal {
        asset: coin,
        address_id,
        amount,
        totp: p.get("totp").map(str::to_owned),
        client_withdrawal_id: p.get("withdrawOrderId").map(str::to_owned),
    };
    let w = answer(withdraw_for(&s.app, &user, &body).await)?;
    let id = w["id"].as_i64().ok_or_else(BnError::internal)?;
    Ok(Json(json!({"id": id.to_string()})))
}

#[derive(Deserialize)]
struct Withdrawal {
    id: i64,
    client_withdrawal_id: Option<String>,
    asset: String,
    network: String,
    address: String,
    amount: String,
    fee: String,
    status: String,
    tx_hash: Option<String>,
    created_at: i64,
    updated_at: i64,
    reason: Option<String>,
}

/// A withdrawal as `withdraw/history` shows it: `amount` is what reaches
/// the address, `transactionFee` was charged on top.
fn withdrawal_json(w: Withdrawal) -> Value {
    let status = withdrawal_status(&w.status);
    let mut v = json!({
        "id": w.id.to_string(),
        "amount": w.amount,
        "transactionFee": w.fee,
        "coin": w.asset,
        "status": status,
        "address": w.address,
        "applyTime": utc_time(w.created_at),
        "network": w.network,
        "transferType": 0,
        "walletType": 0,
    });
    if let Some(o) = v.as_object_mut() {
        if let Some(cid) = w.client_withdrawal_id {
            o.insert("withdrawOrderId".into(), json!(cid));
        }
        if let Some(tx) = w.tx_hash {
            o.insert("txId".into(), json!(tx));
        }
        if let Some(reason) = w.reason {
            o.insert("info".into(), json!(reason));
        }
        if status == 6 {
            o.insert("completeTime".into(), json!(utc_time(w.updated_at)));
        }
    }
    v
}

/// `GET /sapi/v1/capital/withdraw/history`: my withdrawals, newest first.
pub async fn withdraw_history(
    State(s): State<BnState>,
    req: Request,
) -> Result<Json<Value>, BnError> {
    let (user, p) = authenticate(&s, req, Need::Read).await?;
    let status = p.u64("status")?;
    let start = i64_param(&p, "startTime")?;
    let end = i64_param(&p, "endTime")?;
    let order_id = p.get("withdrawOrderId");
    let ids: Option<Vec<&str>> = p
        .get("idList")
        .map(|l| l.split(',').map(str::trim).collect());
    let q = wallet_query(&p, None);
    let v = answer(s.app.wallet.list_withdrawals(user.user_id, &q).await)?;
    let rows: Vec<Withdrawal> = serde_json::from_value(v).map_err(|e| {
        tracing::warn!(error = %e, "wallet withdrawals not in the expected shape");
        BnError::internal()
    })?;
    let out: Vec<Value> = rows
        .into_iter()
        .filter(|w| {
            in_window(w.created_at, start, end)
                && status
                    .is_none_or(|st| i64::try_from(st).ok() == Some(withdrawal_status(&w.status)))
                && order_id.is_none_or(|o| w.client_withdrawal_id.as_deref() == Some(o))
                && ids
                    .as_ref()
                    .is_none_or(|l| l.contains(&w.id.to_string().as_str()))
        })
        .map(withdrawal_json)
        .collect();
    Ok(Json(page(out, &p)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_binance_numbers() {
        assert_eq!(
            ["pending", "credited", "reorged"].map(deposit_status),
            [0, 1, 2]
        );
        assert_eq!(deposit_status_filter(1), Some("credited"));
        assert_eq!(deposit_status_filter(6), None);
        assert_eq!(
            [
                "pending_approval",
                "approved",
                "signing",
                "broadcast",
                "confirmed",
                "rejected",
                "canceled",
                "failed"
            ]
            .map(withdrawal_status),
            [2, 4, 4, 4, 6, 3, 1, 5]
        );
    }

    #[test]
    fn apply_time_is_utc_seconds() {
        assert_eq!(utc_time(1_618_488_556_123), "2021-04-15 12:09:16");
    }

    #[test]
    fn addresses_match_exactly_or_without_a_checksum() {
        let book = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
        assert!(same_address(book, book));
        assert!(same_address(book, &book.to_ascii_lowercase()));
        assert!(same_address(
            book,
            &format!("0x{}", book[2..].to_ascii_uppercase())
        ));
        // A wrong checksum is another spelling, not ours.
        assert!(!same_address(
            book,
            "0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
        ));
        assert!(!same_address(
            book,
            "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaee"
        ));
        // Other networks: case matters (base58).
        let sol = "7EcDhSYGxXyscszYEp35KHN8vvw3svAuLKTzXwCFLtV";
        assert!(same_address(sol, sol));
        assert!(!same_address(sol, &sol.to_ascii_lowercase()));
    }

    #[test]
    fn refusals_use_binance_wallet_codes_and_keep_ours() {
        let e = |code: &str| capital_error(StatusCode::BAD_REQUEST, code, "why");
        assert_eq!(e("INSUFFICIENT_BALANCE").code, -4026);
        assert_eq!(
            e("INSUFFICIENT_BALANCE").msg,
            "Account has insufficient balance for requested action."
        );
        assert_eq!(
            e("ADDRESS_NOT_FOUND").msg,
            "This address is not on the whitelist. Please join and try again. (ADDRESS_NOT_FOUND: why)"
        );
        assert_eq!(e("ADDRESS_COOLING_DOWN").code, -4036);
        assert_eq!(e("ADDRESS_NOT_FOUND").code, -4035);
        assert_eq!(e("AMOUNT_BELOW_MINIMUM").code, -4022);
        assert_eq!(e("DAILY_LIMIT_EXCEEDED").code, -4023);
        assert_eq!(e("WITHDRAWALS_DISABLED").code, -4019);
        assert_eq!(e("WITHDRAWALS_FROZEN").code, -4015);
        assert_eq!(e("ACCOUNT_FROZEN").code, -4015);
        assert_eq!(e("UNKNOWN_ASSET").code, -4018);
        assert_eq!(e("TOTP_REQUIRED").code, -1102);
        assert_eq!(e("INVALID_TOTP").code, -4032);
        assert_eq!(e("PERMISSION_DENIED").code, -2015);
        let busy = capital_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "NO_DEPOSIT_ADDRESS",
            "none",
        );
        assert_eq!(
            (busy.status, busy.code),
            (StatusCode::SERVICE_UNAVAILABLE, -4041)
        );
        let down = capital_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "down");
        assert_eq!(down.code, -1008);
        let unknown = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::OutcomeUnknown,
            "?",
        );
        assert_eq!(from_api(&unknown).code, -1007);
    }

    #[test]
    fn withdrawal_history_shape() {
        let w = Withdrawal {
            id: 7,
            client_withdrawal_id: Some("w-1".into()),
            asset: "ETH".into(),
            network: "ethereum".into(),
            address: "0xabc".into(),
            amount: "0.5".into(),
            fee: "0.001".into(),
            status: "confirmed".into(),
            tx_hash: Some("0xp1".into()),
            created_at: 1_618_488_556_000,
            updated_at: 1_618_488_560_000,
            reason: None,
        };
        let v = withdrawal_json(w);
        assert_eq!(v["id"], "7");
        assert_eq!(v["status"], 6);
        assert_eq!(v["transactionFee"], "0.001");
        assert_eq!(v["withdrawOrderId"], "w-1");
        assert_eq!(v["txId"], "0xp1");
        assert_eq!(v["applyTime"], "2021-04-15 12:09:16");
        assert_eq!(v["completeTime"], "2021-04-15 12:09:20");
        assert!(v.get("info").is_none());
    }
}
