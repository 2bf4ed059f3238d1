//! What the API's documents say about its bodies and fields: the one
//! error body, and each field rule the server enforces, as a schema
//! (`schema_with`), so a generated client refuses what the server would.
//! The handlers enforce the same limits, named here once.

use serde::Serialize;
use utoipa::ToSchema;

/// The longest API key label and the most allow-list entries per key.
pub const API_KEY_LABEL_LEN_MAX: usize = 64;
pub const API_KEY_IP_ALLOWLIST_LEN_MAX: usize = 32;
/// The longest email, in characters (the `users_email_length` check).
pub const EMAIL_LEN_MAX: usize = 254;
/// Characters of the reason an operator gives for a freeze or a 2FA reset.
pub const REASON_LEN_MAX: usize = 512;
/// The longest deposit reference, in characters (the
/// `deposits_reference_length` check).
pub const DEPOSIT_REFERENCE_LEN_MAX: usize = 128;

/// The body of every 4xx and 5xx answer of the v1 and admin APIs (API.md
/// "Errors"); `code` is stable, `message` is for people.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    #[schema(example = "INVALID_REQUEST")]
    pub code: String,
    pub message: String,
}

/// The rules the server enforces on a field, as schemas (`schema_with`):
/// a generated client refuses what the server would refuse.
pub mod field {
    use serde_json::Value;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{
        Array, ArrayBuilder, Object, ObjectBuilder, Schema, SchemaType, Type,
    };

    use super::{API_KEY_IP_ALLOWLIST_LEN_MAX, API_KEY_LABEL_LEN_MAX, EMAIL_LEN_MAX};
    use exchange_domain::money::SCALE_MAX;
    use exchange_domain::symbol::ASSET_SYMBOL_LEN_MAX;

    // Rules the order and marketdata services enforce on what the gateway
    // relays (the tests below check these copies against them).
    pub const CLIENT_ORDER_ID_LEN_MAX: usize = 64;
    pub const ORDER_LIST_LIMIT_MAX: i64 = 1_000;
    pub const DEPTH_LIMIT_MAX: usize = 1_000;
    pub const TRADES_LIMIT_MAX: usize = 1_000;
    pub const KLINES_LIMIT_MAX: usize = 1_000;

    /// A string, or `null` (read as absent) when `nullable`.
    fn string(nullable: bool) -> ObjectBuilder {
        let ty = if nullable {
            SchemaType::from_iter([Type::String, Type::Null])
        } else {
            SchemaType::from(Type::String)
        };
        ObjectBuilder::new().schema_type(ty)
    }

    fn text(nullable: bool, pattern: &str, description: &str) -> Object {
        string(nullable)
            .pattern(Some(pattern))
            .description(Some(description))
            .build()
    }

    fn one_of(nullable: bool, values: &[&str]) -> Object {
        let mut all: Vec<Value> = values.iter().map(|v| Value::from(*v)).collect();
        if nullable {
            all.push(Value::Null);
        }
        string(nullable).enum_values(Some(all)).build()
    }

    fn asset_pattern() -> String {
        format!("[A-Z0-9]{{1,{ASSET_SYMBOL_LEN_MAX}}}")
    }

    /// An asset symbol: `BTC` (domain `AssetSymbol`).
    pub fn asset_symbol() -> Object {
        text(
            false,
            &format!("^{}$", asset_pattern()),
            "an asset symbol, e.g. BTC",
        )
    }

    /// A market symbol: `BTC-USDT` (domain `MarketSymbol`).
    pub fn market_symbol() -> Object {
        let asset = asset_pattern();
        text(
            false,
            &format!("^{asset}-{asset}$"),
            "a market symbol, e.g. BTC-USDT",
        )
    }

    const POSITIVE_DECIMAL: &str = r"^(0\.[0-9]*[1-9][0-9]*|[1-9][0-9]*(\.[0-9]+)?)$";
    const DECIMAL: &str = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$";
    const PRECISION: &str =
        "; at most the asset's scale of decimal places (else 400 INVALID_AMOUNT)";

    /// A decimal string greater than zero, `"0.5"` (domain `parse_positive_units`).
    pub fn positive_decimal() -> Object {
        text(
            false,
            POSITIVE_DECIMAL,
            &format!("a decimal string above zero{PRECISION}"),
        )
    }

    pub fn optional_positive_decimal() -> Object {
        text(
            true,
            POSITIVE_DECIMAL,
            &format!("a decimal string above zero{PRECISION}"),
        )
    }

    /// A decimal string, zero allowed (domain `parse_units`).
    pub fn decimal() -> Object {
        text(
            false,
            DECIMAL,
            &format!("a decimal string, zero or more{PRECISION}"),
        )
    }

    pub fn optional_decimal() -> Object {
        text(
            true,
            DECIMAL,
            &format!("a decimal string, zero or more{PRECISION}"),
        )
    }

    /// A fee rate from 0 to 1 with at most 6 decimal places (admin `FEE_SCALE`).
    pub fn fee_rate() -> Object {
        text(
            false,
            r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$",
            "a fraction of the amount received, 0 to 1, e.g. 0.001",
        )
    }

    /// Text the database stores: anything but NUL.
    pub fn stored_text() -> Object {
        text(false, r"^[^\x00]*$", "text without NUL characters")
    }

    pub fn optional_stored_text() -> Object {
        text(true, r"^[^\x00]*$", "text without NUL characters")
    }

    /// An operator's name (`crate::api::operators`).
    pub fn operator_name() -> Object {
        text(
            false,
            "^[a-z0-9][a-z0-9._-]{0,63}$",
            "1 to 64 of a-z 0-9 . _ -, starting with a letter or digit; not root or unknown",
        )
    }

    pub fn operator_role() -> Object {
        one_of(false, &["viewer", "support", "finance", "admin"])
    }

    /// A deposit's reference: its idempotency key.
    pub fn deposit_reference() -> Object {
        string(false)
            .pattern(Some(r"^[^\x00]*$"))
            .min_length(Some(1))
            .max_length(Some(super::DEPOSIT_REFERENCE_LEN_MAX))
            .description(Some(
                "an external id (e.g. a chain transaction); the same reference with the same body credits once",
            ))
            .build()
    }

    /// The asset scale (decimal places) of a new asset.
    pub fn scale() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .maximum(Some(SCALE_MAX))
            .build()
    }

    pub fn side() -> Object {
        one_of(false, &["buy", "sell"])
    }

    pub fn order_type() -> Object {
        one_of(
            false,
            &[
                "limit",
                "market",
                "stop_limit",
                "stop_market",
                "take_profit_limit",
                "take_profit_market",
            ],
        )
    }

    pub fn time_in_force() -> Object {
        one_of(true, &["GTC", "IOC", "FOK"])
    }

    pub fn self_trade_prevention() -> Object {
        one_of(
            true,
            &["none", "expire_taker", "expire_maker", "expire_both"],
        )
    }

    pub fn market_status() -> Object {
        one_of(false, &["trading", "cancel_only", "halted"])
    }

    pub fn deposit_status() -> Object {
        one_of(true, &["pending", "credited", "reorged"])
    }

    pub fn withdrawal_status() -> Object {
        one_of(
            true,
            &[
                "pending_approval",
                "approved",
                "signing",
                "broadcast",
                "confirmed",
                "rejected",
                "canceled",
                "failed",
            ],
        )
    }

    /// A chain's name as assets carry it (`ethereum`).
    pub fn network() -> Object {
        text(
            false,
            "^[a-z0-9][a-z0-9_-]{0,31}$",
            "a network name: lowercase letters, digits, '_' or '-' (e.g. ethereum)",
        )
    }

    /// A transaction hash as a network writes it (`0x` and 64 hex digits on
    /// Ethereum and its kin).
    pub fn tx_hash() -> Object {
        text(
            false,
            "^[A-Za-z0-9:_-]{1,128}$",
            "1 to 128 letters, digits, ':', '_' or '-'; on Ethereum networks 0x and 64 hex digits",
        )
    }

    pub fn order_list_status() -> Object {
        one_of(false, &["open", "closed"])
    }

    pub fn kline_interval() -> Object {
        one_of(false, &["1m", "5m", "15m", "1h", "4h", "1d"])
    }

    /// Parameter types for required parameters (`value_type = ..,
    /// inline`): utoipa drops `required` from a parameter with `schema_with`.
    pub struct MarketSymbol;
    pub struct KlineInterval;

    impl utoipa::PartialSchema for MarketSymbol {
        fn schema() -> RefOr<Schema> {
            market_symbol().into()
        }
    }
    impl utoipa::ToSchema for MarketSymbol {}

    impl utoipa::PartialSchema for KlineInterval {
        fn schema() -> RefOr<Schema> {
            kline_interval().into()
        }
    }
    impl utoipa::ToSchema for KlineInterval {}

    /// A page size from 1 to `max`.
    pub fn limit<N: Into<utoipa::Number>>(max: N) -> Object {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(max))
            .build()
    }

    /// `client_order_id`: printable ASCII (the order service's rule).
    pub fn client_order_id() -> Object {
        let max = CLIENT_ORDER_ID_LEN_MAX;
        text(
            true,
            &format!("^[!-~]{{1,{max}}}$"),
            &format!("1 to {max} printable ASCII characters"),
        )
    }

    /// An email as registration checks it: one `@`, a dotted domain, no
    /// spaces or control characters, at most 254 characters.
    pub fn email() -> Object {
        const C: &str = r"[^@\s\x00-\x1f\x7f-\x9f]";
        const D: &str = r"[^.@\s\x00-\x1f\x7f-\x9f]";
        string(false)
            .pattern(Some(format!("^{C}+@{D}{C}*\\.{C}*{D}$")))
            .max_length(Some(EMAIL_LEN_MAX))
            .build()
    }

    pub fn password() -> Object {
        string(false)
            .min_length(Some(crate::auth::password::PASSWORD_LEN_MIN))
            .max_length(Some(crate::auth::password::PASSWORD_LEN_MAX))
            .build()
    }

    pub fn api_key_label() -> Object {
        string(false)
            .pattern(Some(r"^[^\x00]*$"))
            .max_length(Some(API_KEY_LABEL_LEN_MAX))
            .build()
    }

    pub fn api_key_permissions() -> Array {
        ArrayBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
            .items(one_of(false, &["read", "trade", "withdraw"]))
            .min_items(Some(1))
            .description(Some(
                "read, trade and/or withdraw (withdraw needs an ip_allowlist); absent or null: [\"read\"]",
            ))
            .build()
    }

    /// IPv4 addresses and networks (`10.0.0.0/8`) by pattern, IPv6
    /// addresses by format; IPv6 networks are accepted too.
    pub fn ip_allowlist() -> Array {
        const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
        let v4 = format!(r"^{OCTET}(\.{OCTET}){{3}}(/(3[0-2]|[12]?[0-9]))?$");
        let entry = utoipa::openapi::schema::OneOfBuilder::new()
            .item(string(false).pattern(Some(v4)))
            .item(string(false).format(Some(utoipa::openapi::SchemaFormat::Custom("ipv6".into()))));
        ArrayBuilder::new()
            .items(entry)
            .max_items(Some(API_KEY_IP_ALLOWLIST_LEN_MAX))
            .description(Some(
                "IP addresses or CIDR networks (IPv6 networks like 2001:db8::/32 too); empty allows any",
            ))
            .build()
    }

    const TOTP_CODE: &str = "^[0-9]{6}$";

    /// A 6-digit TOTP code from the authenticator app.
    pub fn totp_code() -> Object {
        text(
            false,
            TOTP_CODE,
            "the 6-digit code from the authenticator app",
        )
    }

    pub fn optional_totp_code() -> Object {
        text(
            true,
            TOTP_CODE,
            "the 6-digit code from the authenticator app; required when 2FA is on",
        )
    }

    /// A recovery code as enrolment returned it (`XXXX-XXXX-XXXX-XXXX`;
    /// case, spaces and dashes do not matter).
    pub fn optional_recovery_code() -> Object {
        text(
            true,
            r"^[^\x00]{1,64}$",
            "a single-use recovery code, e.g. ABCD-EFGH-IJKL-MNOP",
        )
    }

    /// A time in Unix milliseconds that must be in the future.
    pub fn optional_expires_at() -> Object {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
            .minimum(Some(1))
            .description(Some(
                "when the key stops working, Unix ms (in the future); absent: never",
            ))
            .build()
    }

    /// Why an operator froze an account.
    pub fn freeze_reason() -> Object {
        string(false)
            .pattern(Some(r"^[^\x00]*\S[^\x00]*$"))
            .min_length(Some(1))
            .max_length(Some(super::REASON_LEN_MAX))
            .description(Some("why, for the account's record and the audit log"))
            .build()
    }
}
