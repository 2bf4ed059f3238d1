//! Writing to the double-entry ledger: one journal entry and its postings,
//! which per asset sum to zero (the database refuses the commit otherwise,
//! migrations 0001 and 0007). Every writer outside clearing's hot path books
//! through [`book`], so the account names live here once.

use sqlx::PgConnection;

/// A ledger account (`ledger_postings.account_kind`, with its user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    /// A user's holdings: available + locked.
    User(i64),
    /// What a user's open withdrawals hold (amount + fee).
    WithdrawalPending(i64),
    /// Minus what the exchange holds on chain (custody).
    Custody,
    /// The outside world of operator credits: minus all of them.
    Deposits,
    /// The exchange's fee income.
    Fees,
}

impl Account {
    pub fn kind(self) -> &'static str {
        match self {
            Account::User(_) => "user",
            Account::WithdrawalPending(_) => "withdrawal_pending",
            Account::Custody => "custody",
            Account::Deposits => "deposits",
            Account::Fees => "fees",
        }
    }

    pub fn user_id(self) -> Option<i64> {
        match self {
            Account::User(u) | Account::WithdrawalPending(u) => Some(u),
            Account::Custody | Account::Deposits | Account::Fees => None,
        }
    }
}

/// One line of a journal: a signed amount in units of the asset's scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posting {
    pub account: Account,
    pub units: i128,
}

/// What a journal entry records (`ledger_journal.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalKind {
    Deposit,
    Withdrawal,
    WithdrawalHold,
    WithdrawalRelease,
}

impl JournalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JournalKind::Deposit => "deposit",
            JournalKind::Withdrawal => "withdrawal",
            JournalKind::WithdrawalHold => "withdrawal_hold",
            JournalKind::WithdrawalRelease => "withdrawal_release",
        }
    }
}

/// Whether postings balance: what the database checks at commit, checked
/// before anything is written so a bug is an error, not a rollback later.
pub fn balanced(postings: &[Posting]) -> bool {
    postings.iter().map(|p| p.units).sum::<i128>() == 0
}

/// Books one journal entry of `asset` (at `scale`) in `tx`; zero postings
/// are left out. Returns the journal id.
pub async fn book(
    tx: &mut PgConnection,
    kind: JournalKind,
    reference: &str,
    asset: &str,
    scale: u8,
    postings: &[Posting],
) -> anyhow::Result<i64> {
    anyhow::ensure!(
        balanced(postings),
        "journal {} {reference} does not balance: {postings:?}",
        kind.as_str()
    );
    let journal_id: i64 = sqlx::query_scalar(
        "INSERT INTO ledger_journal (kind, reference) VALUES ($1, $2) RETURNING id",
    )
    .bind(kind.as_str())
    .bind(reference)
    .fetch_one(&mut *tx)
    .await?;
    let lines: Vec<&Posting> = postings.iter().filter(|p| p.units != 0).collect();
    let kinds: Vec<&str> = lines.iter().map(|p| p.account.kind()).collect();
    let users: Vec<Option<i64>> = lines.iter().map(|p| p.account.user_id()).collect();
    let amounts: Vec<String> = lines
        .iter()
        .map(|p| exchange_domain::money::format_signed_units(p.units, scale))
        .collect();
    sqlx::query(
        "INSERT INTO ledger_postings (journal_id, account_kind, user_id, asset, amount)
         SELECT $1, k, u, $2, a::numeric FROM unnest($3::text[], $4::int8[], $5::text[]) AS t(k, u, a)",
    )
    .bind(journal_id)
    .bind(asset)
    .bind(&kinds)
    .bind(&users)
    .bind(&amounts)
    .execute(&mut *tx)
    .await?;
    Ok(journal_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postings_balance_only_when_they_sum_to_zero() {
        let hold = [
            Posting {
                account: Account::User(7),
                units: -105,
            },
            Posting {
                account: Account::WithdrawalPending(7),
                units: 105,
            },
        ];
        assert!(balanced(&hold));
        assert!(!balanced(&hold[..1]));
        assert_eq!(Account::WithdrawalPending(7).user_id(), Some(7));
        assert_eq!(Account::Custody.user_id(), None);
    }
}
