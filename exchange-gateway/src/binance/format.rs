//! Pure translation between our vocabulary and Binance's: symbols
//! (`BTC-USDT` ↔ `BTCUSDT`), statuses, order types, decimals (padded to 8
//! places like Binance), and the small decimal arithmetic the responses
//! need (quote quantities, price changes, averages) on exact integers.

/// Binance pads decimals to this many places ("0.10000000").
pub const DECIMALS_PADDED: usize = 8;

/// `BTC-USDT` → `BTCUSDT`.
pub fn to_binance_symbol(market: &str) -> String {
    market.replace('-', "")
}

/// A Binance symbol may only hold upper-case letters and digits.
pub fn valid_binance_symbol(symbol: &str) -> bool {
    !symbol.is_empty()
        && symbol.len() <= 20
        && symbol
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// `trading`/`cancel_only`/`halted` → `TRADING`/`BREAK`/`HALT`.
pub fn market_status(status: &str) -> &'static str {
    match status {
        "trading" => "TRADING",
        "cancel_only" => "BREAK",
        _ => "HALT",
    }
}

/// Our order status → Binance's.
pub fn order_status(status: &str) -> &'static str {
    match status {
        "new" => "NEW",
        "partially_filled" => "PARTIALLY_FILLED",
        "filled" => "FILLED",
        "canceled" => "CANCELED",
        "expired" => "EXPIRED",
        "rejected" => "REJECTED",
        _ => "NEW",
    }
}

/// Our stored order type (and post-only flag) → Binance's type.
pub fn order_type(order_type: &str, post_only: bool) -> &'static str {
    match (order_type, post_only) {
        ("limit", true) => "LIMIT_MAKER",
        ("limit", false) => "LIMIT",
        ("market", _) => "MARKET",
        ("stop_limit", _) => "STOP_LOSS_LIMIT",
        ("stop_market", _) => "STOP_LOSS",
        ("take_profit_limit", _) => "TAKE_PROFIT_LIMIT",
        ("take_profit_market", _) => "TAKE_PROFIT",
        _ => "LIMIT",
    }
}

pub fn stp_mode(stp: &str) -> &'static str {
    match stp {
        "expire_taker" => "EXPIRE_TAKER",
        "expire_maker" => "EXPIRE_MAKER",
        "expire_both" => "EXPIRE_BOTH",
        _ => "NONE",
    }
}

/// Binance's `selfTradePreventionMode` → ours; `None` when unsupported.
pub fn parse_stp(mode: &str) -> Option<&'static str> {
    match mode {
        "NONE" => Some("none"),
        "EXPIRE_TAKER" => Some("expire_taker"),
        "EXPIRE_MAKER" => Some("expire_maker"),
        "EXPIRE_BOTH" => Some("expire_both"),
        _ => None,
    }
}

/// What a Binance order `type` becomes on our side: (type, post_only).
/// `STOP_LOSS*` buys when the price rises to `stopPrice` and sells when it
/// falls to it; `TAKE_PROFIT*` the other way round — our stop and
/// take-profit types trigger exactly so.
pub fn parse_order_type(t: &str) -> Option<(&'static str, bool)> {
    match t {
        "LIMIT" => Some(("limit", false)),
        "LIMIT_MAKER" => Some(("limit", true)),
        "MARKET" => Some(("market", false)),
        "STOP_LOSS_LIMIT" => Some(("stop_limit", false)),
        "STOP_LOSS" => Some(("stop_market", false)),
        "TAKE_PROFIT_LIMIT" => Some(("take_profit_limit", false)),
        "TAKE_PROFIT" => Some(("take_profit_market", false)),
        _ => None,
    }
}

/// The order types every symbol lists in `exchangeInfo`.
pub const ORDER_TYPES: [&str; 7] = [
    "LIMIT",
    "LIMIT_MAKER",
    "MARKET",
    "STOP_LOSS",
    "STOP_LOSS_LIMIT",
    "TAKE_PROFIT",
    "TAKE_PROFIT_LIMIT",
];

/// Is our stored type a conditional one (waits for `stop_price`)?
pub fn is_conditional(order_type: &str) -> bool {
    matches!(
        order_type,
        "stop_limit" | "stop_market" | "take_profit_limit" | "take_profit_market"
    )
}

/// Is this a stop or take-profit still waiting for its stop price (not
/// working yet, as Binance says)? `filled` is the filled quantity as
/// decimal text: one that filled something triggered, also when it did so
/// before the row recorded triggers (migration 0013).
pub fn waits_for_trigger(order_type: &str, triggered: bool, filled: &str) -> bool {
    is_conditional(order_type) && !triggered && filled.bytes().all(|b| b == b'0' || b == b'.')
}

/// A plain decimal (`-?digits(.digits)?`), or `None`.
fn split_decimal(text: &str) -> Option<(bool, &str, &str)> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (body.contains('.') && frac.is_empty()) {
        return None;
    }
    Some((neg, int, frac))
}

/// Pads a decimal to at least 8 places and trims zeros beyond them:
/// `"0.1"` → `"0.10000000"`, `"5"` → `"5.00000000"`,
/// `"0.123456789000"` → `"0.123456789"`. Text that is not a plain decimal
/// is returned unchanged.
pub fn pad8(text: &str) -> String {
    let Some((neg, int, frac)) = split_decimal(text) else {
        return text.to_owned();
    };
    let mut frac = frac.trim_end_matches('0').to_owned();
    while frac.len() < DECIMALS_PADDED {
        frac.push('0');
    }
    let sign = if neg && (int.bytes().any(|b| b != b'0') || frac.bytes().any(|b| b != b'0')) {
        "-"
    } else {
        ""
    };
    format!("{sign}{int}.{frac}")
}

/// `"0.10000000"` → `"0.1"`, `"1.0"` → `"1"`, `"007"` → `"7"`: what clients
/// send, in the shortest form our strict parser takes. Anything that is not
/// a plain non-negative decimal is returned unchanged (and refused later).
pub fn normalize_decimal(text: &str) -> String {
    let Some((false, int, frac)) = split_decimal(text) else {
        return text.to_owned();
    };
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        int.to_owned()
    } else {
        format!("{int}.{frac}")
    }
}

/// An exact decimal: `units × 10^-scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dec {
    pub units: i128,
    pub scale: u32,
}

/// The most fractional digits kept by [`Dec`].
const DEC_SCALE_MAX: u32 = 30;

impl Dec {
    pub const ZERO: Dec = Dec { units: 0, scale: 0 };

    pub fn parse(text: &str) -> Option<Dec> {
        let (neg, int, frac) = split_decimal(text)?;
        let frac = frac.trim_end_matches('0');
        let scale = u32::try_from(frac.len())
            .ok()
            .filter(|s| *s <= DEC_SCALE_MAX)?;
        let mut units: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            units = units.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
        }
        Some(Dec {
            units: if neg { -units } else { units },
            scale,
        })
    }

    fn rescale(self, scale: u32) -> Option<Dec> {
        if scale < self.scale {
            return None;
        }
        Some(Dec {
            units: self
                .units
                .checked_mul(10i128.checked_pow(scale - self.scale)?)?,
            scale,
        })
    }

    pub fn checked_add(self, o: Dec) -> Option<Dec> {
        let s = self.scale.max(o.scale);
        let (a, b) = (self.rescale(s)?, o.rescale(s)?);
        Some(Dec {
            units: a.units.checked_add(b.units)?,
            scale: s,
        })
    }

    pub fn checked_sub(self, o: Dec) -> Option<Dec> {
        self.checked_add(Dec {
            units: o.units.checked_neg()?,
            scale: o.scale,
        })
    }

    pub fn checked_mul(self, o: Dec) -> Option<Dec> {
        let scale = self.scale + o.scale;
        if scale > DEC_SCALE_MAX {
            return None;
        }
        Some(Dec {
            units: self.units.checked_mul(o.units)?,
            scale,
        })
    }

    /// `self / o` truncated to `scale` places; `None` for a zero divisor.
    pub fn checked_div(self, o: Dec, scale: u32) -> Option<Dec> {
        if o.units == 0 {
            return None;
        }
        // self.u/10^a / (o.u/10^b) = self.u * 10^(scale + b - a) / o.u / 10^scale
        let exp = i64::from(scale) + i64::from(o.scale) - i64::from(self.scale);
        let units = if exp >= 0 {
            self.units
                .checked_mul(10i128.checked_pow(u32::try_from(exp).ok()?)?)?
                / o.units
        } else {
            self.units / 10i128.checked_pow(u32::try_from(-exp).ok()?)? / o.units
        };
        Some(Dec { units, scale })
    }

    pub fn is_zero(self) -> bool {
        self.units == 0
    }
}

impl std::fmt::Display for Dec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.units.unsigned_abs().to_string();
        let scale = self.scale as usize;
        let sign = if self.units < 0 { "-" } else { "" };
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

/// `a × b` padded, or `"0.00000000"` when either is not a decimal.
pub fn mul8(a: &str, b: &str) -> String {
    match (Dec::parse(a), Dec::parse(b)) {
        (Some(x), Some(y)) => x
            .checked_mul(y)
            .map_or_else(|| pad8("0"), |d| pad8(&d.to_string())),
        _ => pad8("0"),
    }
}

/// The number of decimals of a tick or step (`"0.01"` → 2, `"1"` → 0).
pub fn decimals_of(step: &str) -> u32 {
    Dec::parse(step).map_or(0, |d| d.scale)
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a
/// space, `%XX` a byte); `None` for a malformed escape or non-UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `a=1&b=x%20y` into decoded pairs; `None` if any part is malformed.
pub fn form_pairs(text: &str) -> Option<Vec<(String, String)>> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// `["BTCUSDT","ETHUSDT"]` (Binance's `symbols` parameter) into symbols.
pub fn parse_symbol_list(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('[')?.strip_suffix(']')?;
    inner
        .split(',')
        .map(|s| {
            let s = s.trim().trim_matches('"');
            valid_binance_symbol(s).then(|| s.to_owned())
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn symbols_map_both_ways() {
        assert_eq!(to_binance_symbol("BTC-USDT"), "BTCUSDT");
        assert!(valid_binance_symbol("BTCUSDT"));
        for bad in ["", "BTC-USDT", "btcusdt", "BTC USDT", "BTC%2D"] {
            assert!(!valid_binance_symbol(bad), "{bad}");
        }
        assert_eq!(
            parse_symbol_list("[\"BTCUSDT\",\"ETHUSDT\"]").unwrap(),
            vec!["BTCUSDT", "ETHUSDT"]
        );
        assert!(parse_symbol_list("BTCUSDT").is_none());
        assert!(parse_symbol_list("[\"BTC-USDT\"]").is_none());
    }

    #[test]
    fn statuses_and_types() {
        assert_eq!(market_status("trading"), "TRADING");
        assert_eq!(market_status("cancel_only"), "BREAK");
        assert_eq!(market_status("halted"), "HALT");
        assert_eq!(order_status("partially_filled"), "PARTIALLY_FILLED");
        assert_eq!(order_status("expired"), "EXPIRED");
        assert_eq!(order_type("limit", true), "LIMIT_MAKER");
        assert_eq!(order_type("stop_market", false), "STOP_LOSS");
        assert_eq!(order_type("take_profit_market", false), "TAKE_PROFIT");
        assert_eq!(order_type("take_profit_limit", false), "TAKE_PROFIT_LIMIT");
        for t in ORDER_TYPES {
            let (ours, po) = parse_order_type(t).unwrap();
            assert_eq!(order_type(ours, po), t, "round trip");
            // every name we send the order service is one the domain knows
            let known = exchange_domain::OrderType::parse(ours).unwrap();
            assert_eq!(is_conditional(ours), known.is_conditional(), "{t}");
        }
        assert_eq!(
            parse_order_type("TAKE_PROFIT"),
            Some(("take_profit_market", false))
        );
        assert_eq!(parse_order_type("TRAILING_STOP_MARKET"), None);
        assert_eq!(parse_stp("EXPIRE_BOTH"), Some("expire_both"));
        assert_eq!(stp_mode("expire_both"), "EXPIRE_BOTH");
        assert_eq!(parse_stp("DECREMENT"), None);
    }

    #[test]
    fn decimals_pad_and_normalize() {
        assert_eq!(pad8("0.1"), "0.10000000");
        assert_eq!(pad8("5"), "5.00000000");
        assert_eq!(pad8("0.123456789000"), "0.123456789");
        assert_eq!(pad8("-0"), "0.00000000");
        assert_eq!(pad8("-1.5"), "-1.50000000");
        assert_eq!(pad8("abc"), "abc");
        assert_eq!(normalize_decimal("0.10000000"), "0.1");
        assert_eq!(normalize_decimal("1.0"), "1");
        assert_eq!(normalize_decimal("007.50"), "7.5");
        assert_eq!(normalize_decimal("1e5"), "1e5");
        assert_eq!(normalize_decimal("-1"), "-1");
        assert_eq!(normalize_decimal("1."), "1.");
    }

    #[test]
    fn exact_arithmetic() {
        let d = |s| Dec::parse(s).unwrap();
        assert_eq!(mul8("50000.01", "0.001"), "50.00001000");
        assert_eq!(d("1.5").checked_sub(d("2")).unwrap().to_string(), "-0.5");
        assert_eq!(
            d("100").checked_div(d("3"), 8).unwrap().to_string(),
            "33.33333333"
        );
        assert_eq!(
            d("0.0001").checked_div(d("1000"), 8).unwrap().to_string(),
            "0.00000010"
        );
        assert_eq!(
            d("0.000001").checked_div(d("1000"), 8).unwrap().to_string(),
            "0.00000000"
        );
        assert!(d("1").checked_div(Dec::ZERO, 8).is_none());
        assert_eq!(decimals_of("0.01"), 2);
        assert_eq!(decimals_of("0.00001000"), 5);
        assert_eq!(decimals_of("1"), 0);
    }

    #[test]
    fn form_decoding() {
        assert_eq!(
            form_pairs("a=1&symbols=%5B%22BTCUSDT%22%5D&c=x+y").unwrap(),
            vec![
                ("a".into(), "1".into()),
                ("symbols".into(), "[\"BTCUSDT\"]".into()),
                ("c".into(), "x y".into())
            ]
        );
        assert!(form_pairs("a=%zz").is_none());
        assert!(form_pairs("a=%2").is_none());
    }
}
