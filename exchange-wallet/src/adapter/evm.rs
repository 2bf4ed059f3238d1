//! Addresses of Ethereum and its kin: `0x` and 40 hex digits; a mixed-case
//! address must carry a valid EIP-55 checksum (a typo in one is then found
//! before money leaves). The canonical form is the checksummed one.

use sha3::{Digest as _, Keccak256};

/// Networks whose addresses are EVM addresses.
pub const EVM_NETWORKS: &[&str] = &[
    "ethereum",
    "sepolia",
    "holesky",
    "arbitrum",
    "optimism",
    "base",
    "polygon",
    "bsc",
    "avalanche",
];

pub fn is_evm_network(network: &str) -> bool {
    EVM_NETWORKS.contains(&network)
}

/// The EIP-55 form of 40 lowercase hex digits.
fn checksum(lower_hex: &str) -> String {
    let hash = Keccak256::digest(lower_hex.as_bytes());
    let mut out = String::with_capacity(42);
    out.push_str("0x");
    for (i, c) in lower_hex.chars().enumerate() {
        let nibble = (hash[i / 2] >> if i % 2 == 0 { 4 } else { 0 }) & 0x0f;
        out.push(if nibble >= 8 {
            c.to_ascii_uppercase()
        } else {
            c
        });
    }
    out
}

/// The checksummed address, or why `address` is not a valid one.
pub fn checksummed(address: &str) -> Result<String, String> {
    let hex = address
        .strip_prefix("0x")
        .ok_or("an Ethereum address starts with 0x")?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("an Ethereum address is 0x and 40 hex digits".into());
    }
    let lower = hex.to_ascii_lowercase();
    let expected = checksum(&lower);
    let mixed = hex != lower && hex != hex.to_ascii_uppercase();
    if mixed && expected[2..] != *hex {
        return Err("the address's EIP-55 checksum is wrong (a mistyped character?)".into());
    }
    Ok(expected)
}

/// A transaction hash: `0x` and 64 hex digits, lowercased.
pub fn tx_hash(hash: &str) -> Result<String, String> {
    let hex = hash
        .strip_prefix("0x")
        .ok_or("an Ethereum transaction hash starts with 0x")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("an Ethereum transaction hash is 0x and 64 hex digits".into());
    }
    Ok(format!("0x{}", hex.to_ascii_lowercase()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn eip55_examples_check_and_a_changed_letter_is_refused() {
        // The test vectors of EIP-55.
        for a in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ] {
            assert_eq!(checksummed(a).unwrap(), a);
            assert_eq!(checksummed(&a.to_ascii_lowercase()).unwrap(), a);
        }
        assert!(checksummed("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD").is_err());
        assert!(checksummed("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeA").is_err());
        assert!(checksummed("5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed").is_err());
        assert!(checksummed("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg").is_err());
    }

    #[test]
    fn a_transaction_hash_has_one_spelling() {
        let upper = format!("0x{}", "AB".repeat(32));
        assert_eq!(tx_hash(&upper).unwrap(), format!("0x{}", "ab".repeat(32)));
        assert!(tx_hash(&"ab".repeat(32)).is_err(), "no 0x");
        assert!(tx_hash("0xabc").is_err());
    }
}
