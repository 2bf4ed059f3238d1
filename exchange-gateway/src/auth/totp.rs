//! The second factor: TOTP (RFC 6238 with SHA-1, 6 digits, a 30 s step,
//! one step of clock skew either way) on the `totp-rs` crate, and
//! single-use recovery codes. Pure: storing secrets, replay protection and
//! attempt limits live with the handlers (`crate::api::security`).

use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Secret, TOTP};

pub const TOTP_DIGITS: usize = 6;
pub const TOTP_STEP_SECS: u64 = 30;
/// Steps accepted either side of the current one (clock skew).
pub const TOTP_SKEW_STEPS: u8 = 1;
/// 160-bit secrets, as RFC 4226 recommends.
pub const TOTP_SECRET_BYTES: usize = 20;
pub const RECOVERY_CODES_COUNT: usize = 10;
/// Base32 characters of a recovery code (80 bits), shown in groups of four.
const RECOVERY_CODE_CHARS: usize = 16;

/// A user's TOTP generator.
pub struct Totp(TOTP);

impl Totp {
    /// From the raw secret bytes; `None` when it is shorter than 128 bits.
    pub fn new(secret: &[u8]) -> Option<Self> {
        TOTP::new(
            Algorithm::SHA1,
            TOTP_DIGITS,
            TOTP_SKEW_STEPS,
            TOTP_STEP_SECS,
            secret.to_vec(),
        )
        .ok()
        .map(Self)
    }

    /// The time step `code` belongs to, when it is right for one of the
    /// steps around `now_unix`. The caller accepts a step only once.
    pub fn step_of(&self, code: &str, now_unix: u64) -> Option<u64> {
        if code.len() != TOTP_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now_step = now_unix / TOTP_STEP_SECS;
        let skew = u64::from(TOTP_SKEW_STEPS);
        (now_step.saturating_sub(skew)..=now_step + skew).find(|step| {
            let expected = self.0.generate(step * TOTP_STEP_SECS);
            // Constant time: a partly right code must not answer faster.
            subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), code.as_bytes()).into()
        })
    }

    /// The code for the step of `unix` (tests and tools).
    pub fn code_at(&self, unix: u64) -> String {
        self.0.generate(unix)
    }
}

/// A new random secret: its raw bytes and its base32 form (what the user
/// types into an authenticator app).
pub fn new_secret() -> (Vec<u8>, String) {
    let raw: [u8; TOTP_SECRET_BYTES] = rand::random();
    (raw.to_vec(), base32(&raw))
}

/// The raw bytes of a base32 secret.
pub fn decode_secret(base32: &str) -> Option<Vec<u8>> {
    Secret::Encoded(base32.to_owned()).to_bytes().ok()
}

fn base32(raw: &[u8]) -> String {
    match Secret::Raw(raw.to_vec()).to_encoded() {
        Secret::Encoded(s) => s,
        Secret::Raw(_) => unreachable!("to_encoded returns the encoded form"),
    }
}

/// The `otpauth://` URI authenticator apps read from a QR code.
pub fn otpauth_uri(issuer: &str, account: &str, secret_base32: &str) -> String {
    let issuer_enc = percent_encode(issuer);
    format!(
        "otpauth://totp/{issuer_enc}:{}?secret={secret_base32}&issuer={issuer_enc}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP_SECS}",
        percent_encode(account)
    )
}

/// RFC 3986: everything but the unreserved characters is %XX-encoded.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Ten new recovery codes, `XXXX-XXXX-XXXX-XXXX` (base32).
pub fn new_recovery_codes() -> Vec<String> {
    (0..RECOVERY_CODES_COUNT)
        .map(|_| {
            let raw: [u8; 10] = rand::random();
            let chars = base32(&raw);
            let chars: Vec<char> = chars.chars().take(RECOVERY_CODE_CHARS).collect();
            chars
                .chunks(4)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// What is stored of a recovery code: the SHA-256 of its canonical form
/// (upper case, without separators), so `abcd efgh...` matches too.
pub fn recovery_code_hash(code: &str) -> String {
    let canonical: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// RFC 6238, appendix B: the SHA-1 vectors (8 digits, seed
    /// "12345678901234567890").
    #[test]
    fn rfc_6238_sha1_vectors() {
        let rfc = TOTP::new_unchecked(Algorithm::SHA1, 8, 0, 30, b"12345678901234567890".to_vec());
        for (time, code) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(rfc.generate(time), code, "T = {time}");
        }
        // Our 6-digit codes are the last six digits of the same values.
        let ours = Totp::new(b"12345678901234567890").unwrap();
        assert_eq!(ours.code_at(59), "287082");
        assert_eq!(ours.code_at(1_111_111_109), "081804");
    }

    #[test]
    fn a_code_is_accepted_one_step_either_side_and_names_its_step() {
        let (raw, b32) = new_secret();
        assert_eq!(decode_secret(&b32).unwrap(), raw);
        let t = Totp::new(&raw).unwrap();
        let now = 1_700_000_015; // step 56_666_667
        let step = now / TOTP_STEP_SECS;
        assert_eq!(t.step_of(&t.code_at(now), now), Some(step));
        assert_eq!(t.step_of(&t.code_at(now - 30), now), Some(step - 1));
        assert_eq!(t.step_of(&t.code_at(now + 30), now), Some(step + 1));
        assert_eq!(t.step_of(&t.code_at(now - 60), now), None);
        assert_eq!(t.step_of(&t.code_at(now + 60), now), None);
        assert_eq!(t.step_of("12345", now), None);
        assert_eq!(t.step_of("12345a", now), None);
    }

    #[test]
    fn recovery_codes_are_distinct_and_hash_by_their_canonical_form() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES_COUNT);
        let unique: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), RECOVERY_CODES_COUNT);
        let c = &codes[0];
        assert_eq!(c.len(), 19);
        assert_eq!(
            recovery_code_hash(c),
            recovery_code_hash(&c.to_lowercase().replace('-', " "))
        );
        assert_ne!(recovery_code_hash(c), recovery_code_hash(&codes[1]));
    }

    #[test]
    fn otpauth_uri_encodes_the_label() {
        assert_eq!(
            otpauth_uri("My Exchange", "a+b@x.io", "JBSWY3DP"),
            "otpauth://totp/My%20Exchange:a%2Bb%40x.io?secret=JBSWY3DP&issuer=My%20Exchange&algorithm=SHA1&digits=6&period=30"
        );
    }
}
