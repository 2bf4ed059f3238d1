//! The custody decisions, without I/O: whether a withdrawal may be
//! requested and what it holds, which status may follow which, what a
//! chain observation does to a deposit, and the ledger postings of every
//! movement. [`crate::store`] and the handlers execute what these decide.
//!
//! Amounts are integer units of the asset's scale.

use axum::http::StatusCode;
use exchange_common::{ApiError, ErrorCode};
use exchange_store::ledger::{Account, Posting};

/// A withdrawal's life (API.md "Custody"): funds are held from the request
/// until it ends; `confirmed` pays them out, the other final states return
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithdrawalStatus {
    PendingApproval,
    Approved,
    Signing,
    Broadcast,
    Confirmed,
    Rejected,
    Canceled,
    Failed,
}

impl WithdrawalStatus {
    pub const ALL: [WithdrawalStatus; 8] = [
        WithdrawalStatus::PendingApproval,
        WithdrawalStatus::Approved,
        WithdrawalStatus::Signing,
        WithdrawalStatus::Broadcast,
        WithdrawalStatus::Confirmed,
        WithdrawalStatus::Rejected,
        WithdrawalStatus::Canceled,
        WithdrawalStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WithdrawalStatus::PendingApproval => "pending_approval",
            WithdrawalStatus::Approved => "approved",
            WithdrawalStatus::Signing => "signing",
            WithdrawalStatus::Broadcast => "broadcast",
            WithdrawalStatus::Confirmed => "confirmed",
            WithdrawalStatus::Rejected => "rejected",
            WithdrawalStatus::Canceled => "canceled",
            WithdrawalStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<WithdrawalStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Still holding `amount + fee`.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            WithdrawalStatus::PendingApproval
                | WithdrawalStatus::Approved
                | WithdrawalStatus::Signing
                | WithdrawalStatus::Broadcast
        )
    }
}

/// An asset's custody settings, in units of its scale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetCustody {
    pub symbol: String,
    pub scale: u8,
    pub network: Option<String>,
    pub contract: Option<String>,
    pub confirmations: i32,
    pub withdraw_fee: u128,
    pub withdraw_min: u128,
    pub auto_approve_limit: u128,
    pub daily_withdraw_limit: Option<u128>,
    pub withdrawals_enabled: bool,
}

impl AssetCustody {
    /// The asset's network, or 400 `NO_NETWORK` for an off-chain asset.
    pub fn network(&self) -> Result<&str, ApiError> {
        self.network.as_deref().ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::NoNetwork,
                format!(
                    "{} has no network: it cannot be deposited or withdrawn on chain",
                    self.symbol
                ),
            )
        })
    }
}

/// What a withdrawal request is checked against, read in the transaction
/// that holds it (the user's balance row locked first, so concurrent
/// requests are checked one after the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFacts {
    pub amount: u128,
    pub available: u128,
    /// Amounts of the user's withdrawals of this asset requested in the
    /// last 24 hours that were not rejected, canceled or failed.
    pub withdrawn_24h: u128,
    pub address_usable: bool,
    pub user_frozen: bool,
    /// A credited deposit of the user left the chain: an operator must look
    /// first.
    pub custody_frozen: bool,
}

/// What an accepted request holds and how many approvals it then needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub amount: u128,
    pub fee: u128,
    pub approvals_required: i16,
}

impl Hold {
    pub fn total(self) -> u128 {
        self.amount + self.fee
    }

    pub fn status(self) -> WithdrawalStatus {
        if self.approvals_required == 0 {
            WithdrawalStatus::Approved
        } else {
            WithdrawalStatus::PendingApproval
        }
    }
}

/// The largest amount (in units) any custody movement may carry: far above
/// any real one, and far below where sums of them could overflow.
pub const AMOUNT_UNITS_MAX: u128 = 10u128.pow(30);

/// Approvals a withdrawal above `auto_approve_limit` needs, from different
/// operators.
pub const APPROVALS_ABOVE_LIMIT: i16 = 2;

fn forbidden(code: ErrorCode, message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

/// Decides a withdrawal request: the hold, or the first rule it breaks
/// (nothing is held then).
pub fn check_request(asset: &AssetCustody, f: &RequestFacts) -> Result<Hold, ApiError> {
    let show = |units: u128| exchange_domain::money::format_units(units, asset.scale);
    if f.user_frozen {
        return Err(forbidden(
            ErrorCode::AccountFrozen,
            "this account is frozen: withdrawals are disabled".into(),
        ));
    }
    if !asset.withdrawals_enabled {
        return Err(forbidden(
            ErrorCode::WithdrawalsDisabled,
            format!("withdrawals of {} are stopped for now", asset.symbol),
        ));
    }
    if f.custody_frozen {
        return Err(forbidden(
            ErrorCode::WithdrawalsFrozen,
            "withdrawals are on hold for this account until support reviews a deposit".into(),
        ));
    }
    if !f.address_usable {
        return Err(ApiError::bad_request(
            ErrorCode::AddressCoolingDown,
            "this withdrawal address is new and not usable yet (see its usable_from)",
        ));
    }
    if f.amount > AMOUNT_UNITS_MAX {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidAmount,
            "amount is too large",
        ));
    }
    if f.amount < asset.withdraw_min || f.amount == 0 {
        return Err(ApiError::bad_request(
            ErrorCode::AmountBelowMinimum,
            format!(
                "the smallest withdrawal of {} is {}",
                asset.symbol,
                show(asset.withdraw_min)
            ),
        ));
    }
    if let Some(limit) = asset.daily_withdraw_limit {
        let after = f.withdrawn_24h.saturating_add(f.amount);
        if after > limit {
            return Err(ApiError::bad_request(
                ErrorCode::DailyLimitExceeded,
                format!(
                    "this would withdraw {} {} in 24 hours; the limit is {} ({} left)",
                    show(after),
                    asset.symbol,
                    show(limit),
                    show(limit.saturating_sub(f.withdrawn_24h))
                ),
            ));
        }
    }
    let total = f.amount.saturating_add(asset.withdraw_fee);
    if total > f.available {
        return Err(ApiError::bad_request(
            ErrorCode::InsufficientBalance,
            format!(
                "amount + fee is {} {}; available is {}",
                show(total),
                asset.symbol,
                show(f.available)
            ),
        ));
    }
    // The auto-approval limit bounds what leaves without a person looking
    // over 24 hours, not each request: splitting a large withdrawal into
    // small ones does not bypass the four eyes.
    let auto = f.withdrawn_24h.saturating_add(f.amount) <= asset.auto_approve_limit;
    Ok(Hold {
        amount: f.amount,
        fee: asset.withdraw_fee,
        approvals_required: if auto { 0 } else { APPROVALS_ABOVE_LIMIT },
    })
}

/// The status after `approver` approves, or why they may not.
pub fn approve(
    status: WithdrawalStatus,
    approvals_required: i16,
    approvers: &[String],
    approver: &str,
) -> Result<WithdrawalStatus, ApiError> {
    if status != WithdrawalStatus::PendingApproval {
        return Err(ApiError::conflict(
            ErrorCode::WithdrawalNotPending,
            format!(
                "the withdrawal is {}: only pending_approval ones are approved",
                status.as_str()
            ),
        ));
    }
    if approvers.iter().any(|a| a == approver) {
        return Err(ApiError::conflict(
            ErrorCode::SameApprover,
            "you approved this withdrawal already: a second operator must approve it",
        ));
    }
    let given = i16::try_from(approvers.len()).unwrap_or(i16::MAX) + 1;
    Ok(if given >= approvals_required {
        WithdrawalStatus::Approved
    } else {
        WithdrawalStatus::PendingApproval
    })
}

/// A user may cancel until the payout is being signed.
pub fn check_cancel(status: WithdrawalStatus) -> Result<(), ApiError> {
    match status {
        WithdrawalStatus::PendingApproval | WithdrawalStatus::Approved => Ok(()),
        WithdrawalStatus::Signing | WithdrawalStatus::Broadcast => Err(ApiError::conflict(
            ErrorCode::WithdrawalInProgress,
            "the payout is being sent: it can no longer be canceled",
        )),
        done => Err(ApiError::conflict(
            ErrorCode::WithdrawalInProgress,
            format!("the withdrawal is already {}", done.as_str()),
        )),
    }
}

/// An operator may reject until the payout is being signed.
pub fn check_reject(status: WithdrawalStatus) -> Result<(), ApiError> {
    match status {
        WithdrawalStatus::PendingApproval | WithdrawalStatus::Approved => Ok(()),
        other => Err(ApiError::conflict(
            ErrorCode::WithdrawalNotPending,
            format!(
                "the withdrawal is {}: only pending_approval or approved ones are rejected \
                 (a payout being sent is failed instead)",
                other.as_str()
            ),
        )),
    }
}

/// What a chain (an adapter, or an operator for the manual one) reports
/// about a payout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayoutReport {
    /// Sent: the transaction is on its way under this hash.
    Broadcast { tx_hash: String },
    /// Final on chain; `network_fee` is what it cost, in the asset.
    Confirmed { network_fee: u128 },
    /// Dropped or reverted: the funds return to the user.
    Failed { reason: String },
}

/// A confirmed payout's network fee, in the asset: at most what the
/// withdrawal holds (more is a typo, not a chain cost; for a token, whose gas
/// is paid in the chain's coin, it is 0).
pub fn check_network_fee(network_fee: u128, amount: u128, fee: u128) -> Result<(), ApiError> {
    if network_fee > amount + fee {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidAmount,
            "network_fee is more than the withdrawal's amount + fee",
        ));
    }
    Ok(())
}

/// The status a payout report leads to; `Ok(None)` when it repeats what is
/// already recorded (a retried call changes nothing).
pub fn apply_report(
    status: WithdrawalStatus,
    recorded_tx_hash: Option<&str>,
    report: &PayoutReport,
) -> Result<Option<WithdrawalStatus>, ApiError> {
    let wrong = |what: &str| {
        ApiError::conflict(
            ErrorCode::WithdrawalNotPending,
            format!("the withdrawal is {}: it cannot be {what}", status.as_str()),
        )
    };
    match (report, status) {
        (PayoutReport::Broadcast { .. }, WithdrawalStatus::Signing) => {
            Ok(Some(WithdrawalStatus::Broadcast))
        }
        (PayoutReport::Broadcast { tx_hash }, WithdrawalStatus::Broadcast)
            if recorded_tx_hash == Some(tx_hash.as_str()) =>
        {
            Ok(None)
        }
        (PayoutReport::Broadcast { .. }, _) => Err(wrong("marked broadcast")),
        (PayoutReport::Confirmed { .. }, WithdrawalStatus::Broadcast) => {
            Ok(Some(WithdrawalStatus::Confirmed))
        }
        (PayoutReport::Confirmed { .. }, WithdrawalStatus::Confirmed) => Ok(None),
        (PayoutReport::Confirmed { .. }, _) => Err(wrong("confirmed")),
        (PayoutReport::Failed { .. }, WithdrawalStatus::Signing | WithdrawalStatus::Broadcast) => {
            Ok(Some(WithdrawalStatus::Failed))
        }
        (PayoutReport::Failed { .. }, WithdrawalStatus::Failed) => Ok(None),
        (PayoutReport::Failed { .. }, _) => Err(wrong("failed")),
    }
}

/// Amounts reach the postings bounded by [`AMOUNT_UNITS_MAX`] (checked where
/// they enter), so they fit an `i128` and their sums cannot overflow.
fn units(u: u128) -> i128 {
    debug_assert!(u <= 3 * AMOUNT_UNITS_MAX);
    i128::try_from(u).unwrap_or(i128::MAX)
}

/// Request: `amount + fee` from the user's holdings to what their
/// withdrawals hold.
pub fn hold_postings(user_id: i64, total: u128) -> Vec<Posting> {
    vec![
        Posting {
            account: Account::User(user_id),
            units: -units(total),
        },
        Posting {
            account: Account::WithdrawalPending(user_id),
            units: units(total),
        },
    ]
}

/// Rejected, canceled or failed: the hold goes back.
pub fn release_postings(user_id: i64, total: u128) -> Vec<Posting> {
    hold_postings(user_id, total)
        .into_iter()
        .map(|p| Posting {
            units: -p.units,
            ..p
        })
        .collect()
}

/// Confirmed: the hold leaves; custody pays `amount + network_fee` out of
/// what it holds; the fee charged minus the network fee paid is the
/// exchange's (negative when the chain cost more than the fee).
pub fn payout_postings(user_id: i64, amount: u128, fee: u128, network_fee: u128) -> Vec<Posting> {
    vec![
        Posting {
            account: Account::WithdrawalPending(user_id),
            units: -units(amount + fee),
        },
        Posting {
            account: Account::Custody,
            units: units(amount + network_fee),
        },
        Posting {
            account: Account::Fees,
            units: units(fee) - units(network_fee),
        },
    ]
}

/// A chain deposit credited: the user owns it; custody holds it.
pub fn credit_postings(user_id: i64, amount: u128) -> Vec<Posting> {
    vec![
        Posting {
            account: Account::User(user_id),
            units: units(amount),
        },
        Posting {
            account: Account::Custody,
            units: -units(amount),
        },
    ]
}

/// A deposit's status (API.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepositStatus {
    Pending,
    Credited,
    Reorged,
}

impl DepositStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DepositStatus::Pending => "pending",
            DepositStatus::Credited => "credited",
            DepositStatus::Reorged => "reorged",
        }
    }

    pub fn parse(text: &str) -> Option<DepositStatus> {
        [
            DepositStatus::Pending,
            DepositStatus::Credited,
            DepositStatus::Reorged,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A deposit as recorded before an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepositState {
    pub status: DepositStatus,
    pub reorged_after_credit: bool,
}

/// What an observation of a transfer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepositDecision {
    pub status: DepositStatus,
    /// Book the credit now (exactly once: only from a not-credited state).
    pub credit: bool,
    /// A credited deposit left the chain: freeze the user's withdrawals of
    /// the asset and alert; never debit on the chain's word alone.
    pub freeze: bool,
}

/// Decides an observation: `None` when a transfer never seen is reported
/// gone (nothing to record).
pub fn observe(
    before: Option<DepositState>,
    confirmations: i32,
    required: i32,
    removed: bool,
) -> Option<DepositDecision> {
    let confirmed = confirmations >= required;
    let keep = |status| DepositDecision {
        status,
        credit: false,
        freeze: false,
    };
    Some(match (before.map(|b| b.status), removed) {
        (None, true) => return None,
        (None | Some(DepositStatus::Pending | DepositStatus::Reorged), false) if confirmed => {
            DepositDecision {
                status: DepositStatus::Credited,
                credit: true,
                freeze: false,
            }
        }
        (None | Some(DepositStatus::Pending | DepositStatus::Reorged), false) => {
            keep(DepositStatus::Pending)
        }
        (Some(DepositStatus::Pending | DepositStatus::Reorged), true) => {
            keep(DepositStatus::Reorged)
        }
        (Some(DepositStatus::Credited), false) => keep(DepositStatus::Credited),
        (Some(DepositStatus::Credited), true) => DepositDecision {
            status: DepositStatus::Credited,
            credit: false,
            freeze: !before.is_some_and(|b| b.reorged_after_credit),
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use exchange_store::ledger::balanced;

    fn eth() -> AssetCustody {
        AssetCustody {
            symbol: "ETH".into(),
            scale: 8,
            network: Some("ethereum".into()),
            contract: None,
            confirmations: 12,
            withdraw_fee: 100,
            withdraw_min: 1_000,
            auto_approve_limit: 50_000,
            daily_withdraw_limit: Some(100_000),
            withdrawals_enabled: true,
        }
    }

    fn facts(amount: u128) -> RequestFacts {
        RequestFacts {
            amount,
            available: 1_000_000,
            withdrawn_24h: 0,
            address_usable: true,
            user_frozen: false,
            custody_frozen: false,
        }
    }

    fn code(r: Result<Hold, ApiError>) -> ErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn a_request_at_or_below_the_auto_limit_is_approved_at_once_and_holds_amount_plus_fee() {
        let h = check_request(&eth(), &facts(50_000)).unwrap();
        assert_eq!(
            (h.total(), h.status()),
            (50_100, WithdrawalStatus::Approved)
        );
        let h = check_request(&eth(), &facts(50_001)).unwrap();
        assert_eq!(h.status(), WithdrawalStatus::PendingApproval);
        assert_eq!(h.approvals_required, 2);
        let mut split = facts(30_000);
        split.withdrawn_24h = 30_000;
        let h = check_request(&eth(), &split).unwrap();
        assert_eq!(
            h.status(),
            WithdrawalStatus::PendingApproval,
            "split requests add up"
        );
    }

    #[test]
    fn each_broken_rule_refuses_with_its_code() {
        let a = eth();
        assert_eq!(
            code(check_request(&a, &facts(999))),
            ErrorCode::AmountBelowMinimum
        );
        let mut f = facts(60_000);
        f.withdrawn_24h = 40_001;
        assert_eq!(code(check_request(&a, &f)), ErrorCode::DailyLimitExceeded);
        f.withdrawn_24h = 40_000;
        assert!(
            check_request(&a, &f).is_ok(),
            "exactly the limit is allowed"
        );
        let mut f = facts(1_000);
        f.available = 1_099;
        assert_eq!(code(check_request(&a, &f)), ErrorCode::InsufficientBalance);
        f.available = 1_100;
        assert!(
            check_request(&a, &f).is_ok(),
            "amount + fee exactly available"
        );
        let mut f = facts(1_000);
        f.address_usable = false;
        assert_eq!(code(check_request(&a, &f)), ErrorCode::AddressCoolingDown);
        let mut f = facts(1_000);
        f.user_frozen = true;
        assert_eq!(code(check_request(&a, &f)), ErrorCode::AccountFrozen);
        let mut f = facts(1_000);
        f.custody_frozen = true;
        assert_eq!(code(check_request(&a, &f)), ErrorCode::WithdrawalsFrozen);
        let mut off = eth();
        off.withdrawals_enabled = false;
        assert_eq!(
            code(check_request(&off, &facts(1_000))),
            ErrorCode::WithdrawalsDisabled
        );
    }

    #[test]
    fn two_different_operators_approve_above_the_limit() {
        let s = WithdrawalStatus::PendingApproval;
        assert_eq!(approve(s, 2, &[], "alice").unwrap(), s);
        let alice = ["alice".to_owned()];
        assert_eq!(
            approve(s, 2, &alice, "alice").unwrap_err().code,
            ErrorCode::SameApprover
        );
        assert_eq!(
            approve(s, 2, &alice, "bob").unwrap(),
            WithdrawalStatus::Approved
        );
        assert_eq!(
            approve(WithdrawalStatus::Approved, 2, &alice, "bob")
                .unwrap_err()
                .code,
            ErrorCode::WithdrawalNotPending
        );
    }

    #[test]
    fn cancel_and_reject_stop_once_signing_starts() {
        assert!(check_cancel(WithdrawalStatus::Approved).is_ok());
        assert_eq!(
            check_cancel(WithdrawalStatus::Signing).unwrap_err().code,
            ErrorCode::WithdrawalInProgress
        );
        assert!(check_reject(WithdrawalStatus::PendingApproval).is_ok());
        assert!(check_reject(WithdrawalStatus::Broadcast).is_err());
    }

    #[test]
    fn payout_reports_follow_signing_broadcast_confirmed_and_repeat_harmlessly() {
        let sent = PayoutReport::Broadcast {
            tx_hash: "0xab".into(),
        };
        assert_eq!(
            apply_report(WithdrawalStatus::Signing, None, &sent).unwrap(),
            Some(WithdrawalStatus::Broadcast)
        );
        assert_eq!(
            apply_report(WithdrawalStatus::Broadcast, Some("0xab"), &sent).unwrap(),
            None
        );
        assert!(apply_report(WithdrawalStatus::Broadcast, Some("0xcd"), &sent).is_err());
        let done = PayoutReport::Confirmed { network_fee: 3 };
        assert!(apply_report(WithdrawalStatus::Signing, None, &done).is_err());
        assert_eq!(
            apply_report(WithdrawalStatus::Broadcast, Some("0xab"), &done).unwrap(),
            Some(WithdrawalStatus::Confirmed)
        );
        let failed = PayoutReport::Failed {
            reason: "reverted".into(),
        };
        assert!(apply_report(WithdrawalStatus::Confirmed, Some("0xab"), &failed).is_err());
        assert!(apply_report(WithdrawalStatus::Approved, None, &failed).is_err());
    }

    #[test]
    fn every_movement_balances_and_the_fee_difference_is_booked() {
        assert!(balanced(&hold_postings(1, 105)));
        assert!(balanced(&release_postings(1, 105)));
        assert!(balanced(&credit_postings(1, 7)));
        let p = payout_postings(1, 100, 5, 8);
        assert!(balanced(&p));
        assert_eq!(p[2].units, -3, "the chain cost 3 more than the fee charged");
    }

    #[test]
    fn a_deposit_is_credited_once_at_its_confirmations_and_never_debited_by_a_reorg() {
        let d = |status, after| {
            Some(DepositState {
                status,
                reorged_after_credit: after,
            })
        };
        let first = observe(None, 3, 12, false).unwrap();
        assert_eq!(
            (first.status, first.credit),
            (DepositStatus::Pending, false)
        );
        let now = observe(d(DepositStatus::Pending, false), 12, 12, false).unwrap();
        assert_eq!((now.status, now.credit), (DepositStatus::Credited, true));
        let again = observe(d(DepositStatus::Credited, false), 13, 12, false).unwrap();
        assert!(!again.credit, "credited once");
        let gone = observe(d(DepositStatus::Pending, false), 0, 12, true).unwrap();
        assert_eq!((gone.status, gone.credit), (DepositStatus::Reorged, false));
        let back = observe(d(DepositStatus::Reorged, false), 1, 12, false).unwrap();
        assert_eq!(back.status, DepositStatus::Pending);
        let late = observe(d(DepositStatus::Credited, false), 0, 12, true).unwrap();
        assert_eq!(
            (late.status, late.credit, late.freeze),
            (DepositStatus::Credited, false, true)
        );
        let late_again = observe(d(DepositStatus::Credited, true), 0, 12, true).unwrap();
        assert!(!late_again.freeze, "one freeze per deposit");
        assert_eq!(observe(None, 0, 12, true), None);
    }
}
