//! Binance's SIGNED endpoint security: `X-MBX-APIKEY`, `timestamp`,
//! `recvWindow`, and `signature` = hex HMAC-SHA256 of the query string
//! followed by the request body (without the `signature` parameter, which
//! may sit in either). Built on the gateway's own scheme ([`crate::auth::keys`],
//! [`crate::auth::authn::api_key_user`]); only the answers are Binance's.

use axum::extract::Request;
use exchange_common::ErrorCode;

use crate::auth::authn::{AuthUser, Credential, api_key_user};
use crate::auth::keys;
use crate::ratelimit::request_ip;
use crate::state::now_ms;

use super::error::BnError;
use super::{BnState, Params, query_and_body};

/// What the endpoint needs the key to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Trade,
    /// Requesting a withdrawal (the key's `withdraw` permission).
    Withdraw,
}

/// Removes the `signature=` parameter from `text`; returns the rest and the
/// signature.
pub fn strip_signature(text: &str) -> (String, Option<String>) {
    let mut signature = None;
    let kept: Vec<&str> = text
        .split('&')
        .filter(|p| {
            if let Some(sig) = p.strip_prefix("signature=") {
                signature.get_or_insert_with(|| sig.to_owned());
                false
            } else {
                !p.is_empty()
            }
        })
        .collect();
    (kept.join("&"), signature)
}

/// The signed payload (query string, then body, both without `signature`)
/// and the signature, wherever it was sent. A signature in the query keeps
/// the body byte-for-byte (Binance's "mixed" case).
pub fn signed_payload(query: &str, body: &str) -> (String, Option<String>) {
    let (q, sig_q) = strip_signature(query);
    if sig_q.is_some() {
        return (format!("{q}{body}"), sig_q);
    }
    let (b, sig_b) = strip_signature(body);
    (format!("{q}{b}"), sig_b)
}

/// Checks `timestamp` against `recvWindow` at `now`, Binance's way.
pub fn check_window(params: &Params, now: u64) -> Result<(), BnError> {
    let timestamp = params
        .u64("timestamp")
        .map_err(|_| BnError::missing("timestamp"))?
        .ok_or_else(|| BnError::missing("timestamp"))?;
    let window = match params.get("recvWindow") {
        None => keys::RECV_WINDOW_DEFAULT_MS,
        Some(w) => {
            // Binance accepts a decimal recvWindow (microsecond precision).
            let whole = w.split_once('.').map_or(w, |(i, _)| i);
            match whole.parse::<u64>() {
                Ok(n) if n > 0 && n <= keys::RECV_WINDOW_MAX_MS => n,
                _ => return Err(BnError::bad_recv_window()),
            }
        }
    };
    match keys::check_timestamp(timestamp, window, now) {
        Ok(()) => Ok(()),
        Err(_) if timestamp > now => Err(BnError::ahead_of_server()),
        Err(_) => Err(BnError::outside_window()),
    }
}

/// Authenticates a signed request; returns its user and its parameters.
pub async fn authenticate(
    s: &BnState,
    req: Request,
    need: Need,
) -> Result<(AuthUser, Params), BnError> {
    let ip = request_ip(&req, &s.app.trusted_proxies);
    let api_key = req
        .headers()
        .get("x-mbx-apikey")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|k| !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or_else(BnError::bad_api_key_format)?;
    let (query, body) = query_and_body(req).await?;
    let params = Params::parse(&query, &body)?;
    let (payload, signature) = signed_payload(&query, &body);
    let signature = signature
        .filter(|s| !s.is_empty())
        .ok_or_else(|| BnError::missing("signature"))?;
    check_window(&params, now_ms())?;
    // Binance tells an unknown key (-2015) from a bad signature (-1022);
    // clients rely on it to say which one to fix. Keys are 64 random
    // characters, so this reveals nothing guessable.
    let known: Option<i64> = sqlx::query_scalar("SELECT id FROM api_keys WHERE api_key = $1")
        .bind(&api_key)
        .fetch_optional(s.app.db())
        .await?;
    if known.is_none() {
        return Err(BnError::rejected_key());
    }
    let user = api_key_user(&s.app, &api_key, payload.as_bytes(), &signature, ip)
        .await
        .map_err(|e| match e.code {
            ErrorCode::InvalidSignature => BnError::bad_signature(),
            ErrorCode::IpNotAllowed | ErrorCode::ApiKeyExpired => BnError::rejected_key(),
            _ => BnError::from_api(&e, super::error::Action::Query),
        })?;
    let allowed = match (&user.credential, need) {
        (Credential::ApiKey { can_read, .. }, Need::Read) => *can_read,
        (Credential::ApiKey { can_trade, .. }, Need::Trade) => *can_trade,
        (Credential::ApiKey { can_withdraw, .. }, Need::Withdraw) => *can_withdraw,
        (Credential::AccessToken { .. }, _) => false,
    };
    if !allowed {
        return Err(BnError::rejected_key());
    }
    // A frozen account's orders are refused by the order service (Binance's
    // -2010); its cancels go through.
    Ok((user, params))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECRET: &str = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";
    const PAYLOAD: &str = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559";
    const EXPECTED: &str = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71";

    #[test]
    fn binance_documented_vector_in_query_body_or_both() {
        assert_eq!(keys::sign(SECRET, PAYLOAD.as_bytes()), EXPECTED);
        // Everything in the query string.
        let (p, sig) = signed_payload(&format!("{PAYLOAD}&signature={EXPECTED}"), "");
        assert_eq!(p, PAYLOAD);
        assert!(keys::verify_signature(SECRET, p.as_bytes(), &sig.unwrap()));
        // Everything in the body (what ccxt does for POST).
        let (p, sig) = signed_payload("", &format!("{PAYLOAD}&signature={EXPECTED}"));
        assert_eq!(p, PAYLOAD);
        assert!(keys::verify_signature(SECRET, p.as_bytes(), &sig.unwrap()));
        // Mixed: query then body, concatenated without a separator.
        let (p, _) = signed_payload(
            "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&signature=00",
            "quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559",
        );
        assert_eq!(
            p,
            "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTCquantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
        );
        // A changed parameter breaks the signature.
        let tampered = PAYLOAD.replace("quantity=1", "quantity=2");
        assert!(!keys::verify_signature(
            SECRET,
            tampered.as_bytes(),
            EXPECTED
        ));
    }

    #[test]
    fn timestamp_window_binance_codes() {
        let p = |q: &str| Params::parse(q, "").unwrap();
        let now = 1_700_000_000_000;
        assert!(check_window(&p(&format!("timestamp={now}")), now).is_ok());
        assert!(check_window(&p(&format!("timestamp={}", now + 1_000)), now).is_ok());
        let ahead = check_window(&p(&format!("timestamp={}", now + 1_001)), now).unwrap_err();
        assert_eq!(ahead.code, -1021);
        // A replay of a once-valid request after its window: refused.
        let old = check_window(&p(&format!("timestamp={}", now - 5_001)), now).unwrap_err();
        assert_eq!(old.code, -1021);
        assert_eq!(
            old.msg,
            "Timestamp for this request is outside of the recvWindow."
        );
        // A longer window, up to 60000, admits it.
        assert!(
            check_window(
                &p(&format!("timestamp={}&recvWindow=60000", now - 59_000)),
                now
            )
            .is_ok()
        );
        let big = check_window(&p(&format!("timestamp={now}&recvWindow=60001")), now).unwrap_err();
        assert_eq!(big.code, -1131);
        assert_eq!(check_window(&p(""), now).unwrap_err().code, -1102);
        assert_eq!(
            check_window(&p("timestamp=abc"), now).unwrap_err().code,
            -1102
        );
    }
}
