//! The manual adapter: for an operator who runs an external custody system.
//! Deposit addresses are loaded by the operator and handed out one per user;
//! deposits and payout outcomes arrive through the admin API (reported by
//! that system or a person); payouts wait in `signing` for the operator.

use futures_util::future::{BoxFuture, FutureExt as _};

use super::{ChainAdapter, Payout, Scan, Sent, evm};
use crate::rules::PayoutReport;

pub struct Manual {
    evm: bool,
}

/// The longest address accepted on a network without a known format.
pub const ADDRESS_LEN_MAX: usize = 128;

impl Manual {
    pub fn new(network: &str) -> Self {
        Self {
            evm: evm::is_evm_network(network),
        }
    }
}

/// An address on a network of unknown format: 1 to 128 printable ASCII
/// letters, digits and `:._-` (no spaces, nothing that could hide).
fn validate_generic(address: &str) -> Result<String, String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '-');
    if address.is_empty() || address.len() > ADDRESS_LEN_MAX {
        return Err(format!("an address is 1 to {ADDRESS_LEN_MAX} characters"));
    }
    if !address.chars().all(ok_char) {
        return Err("an address holds only letters, digits and : . _ -".into());
    }
    Ok(address.to_owned())
}

/// A transaction id on a network of unknown format: 1 to 128 letters,
/// digits, `:`, `-` or `_`, kept as given (some chains' ids are
/// case-sensitive).
fn generic_tx_hash(hash: &str) -> Result<String, String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_');
    if hash.is_empty() || hash.len() > ADDRESS_LEN_MAX || !hash.chars().all(ok_char) {
        return Err(format!(
            "a transaction hash is 1 to {ADDRESS_LEN_MAX} letters, digits, ':', '-' or '_'"
        ));
    }
    Ok(hash.to_owned())
}

impl ChainAdapter for Manual {
    fn kind(&self) -> &'static str {
        "manual"
    }

    fn is_manual(&self) -> bool {
        true
    }

    fn validate_address(&self, address: &str) -> Result<String, String> {
        if self.evm {
            evm::checksummed(address)
        } else {
            validate_generic(address)
        }
    }

    fn canonical_tx_hash(&self, hash: &str) -> Result<String, String> {
        if self.evm {
            evm::tx_hash(hash)
        } else {
            generic_tx_hash(hash)
        }
    }

    fn derive_address(&self, _index: i64) -> BoxFuture<'_, anyhow::Result<Option<String>>> {
        async { Ok(None) }.boxed()
    }

    fn scan(&self, cursor: Option<String>) -> BoxFuture<'_, anyhow::Result<Scan>> {
        async move {
            Ok(Scan {
                transfers: Vec::new(),
                cursor,
            })
        }
        .boxed()
    }

    fn send_payout(&self, _payout: Payout) -> BoxFuture<'_, anyhow::Result<Sent>> {
        async { Ok(Sent::AwaitingOperator) }.boxed()
    }

    fn payout_status(
        &self,
        _payout: Payout,
    ) -> BoxFuture<'_, anyhow::Result<Option<PayoutReport>>> {
        async { Ok(None) }.boxed()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generic_addresses_are_printable_and_bounded() {
        let m = Manual::new("bitcoin");
        assert!(
            m.validate_address("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq")
                .is_ok()
        );
        assert!(m.validate_address("").is_err());
        assert!(m.validate_address("bc1q with space").is_err());
        assert!(m.validate_address(&"a".repeat(129)).is_err());
    }
}
