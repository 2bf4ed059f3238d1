//! OpenAPI description and Swagger UI at `/docs` (only with `ENABLE_DOCS=true`).
//!
//! Each handler's annotation lists the answers it gives itself (its 404s,
//! 409s and 400 codes). The error answers of the layers every route passes
//! through (body extraction, authentication, rate and header limits, an
//! unreachable dependency) are added here, once, by [`LayerErrors`]: they
//! are shared response definitions, so a generated client sees one error
//! type everywhere. tests/ops/live.sh runs schemathesis against the served
//! document to keep it and the server in agreement.

use axum::Router;
use serde::Serialize;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use crate::api::{accounts, admin, marketdata, orders, public};
use crate::binance::openapi::BinancePaths;

#[derive(OpenApi)]
#[openapi(
    info(title = "Exchange API", version = "1"),
    paths(
        accounts::register, accounts::login, accounts::balances,
        accounts::create_api_key, accounts::list_api_keys, accounts::delete_api_key,
        public::assets, public::markets,
        marketdata::depth, marketdata::trades, marketdata::klines, marketdata::ticker,
        admin::create_asset, admin::create_market, admin::patch_market, admin::deposit,
        orders::place, orders::get_order, orders::list_orders, orders::cancel,
        orders::cancel_all, orders::amend, orders::my_trades,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security, &LayerErrors, &BinancePaths)
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer =
            || SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        components.add_security_scheme("bearer", bearer());
        components.add_security_scheme("admin", bearer());
    }
}

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

/// A handler's own error answer: `description` names its codes.
pub fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                .build(),
        )
        .build()
}

/// Which operations a layer's error reaches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Every v1 and admin operation.
    All,
    /// Operations that read a JSON body, query string or path parameter.
    Input,
    /// Operations that read a JSON body.
    Body,
    /// Operations that need a user or the admin token.
    Secured,
}

/// The layers' error answers: (status, shared response name, reach, what it means).
const LAYER_ERRORS: [(&str, &str, Reach, &str); 8] = [
    (
        "400",
        "BadRequest",
        Reach::Input,
        "Malformed input: INVALID_JSON, INVALID_REQUEST (wrong shape, unknown field, or text \
         the database cannot store), INVALID_QUERY, INVALID_PATH; on signed API-key requests \
         MISSING_TIMESTAMP, INVALID_TIMESTAMP, INVALID_RECV_WINDOW, MISSING_SIGNATURE. \
         Operations list their own codes besides.",
    ),
    (
        "401",
        "Unauthorized",
        Reach::Secured,
        "No or bad credentials: UNAUTHORIZED, INVALID_TOKEN, INVALID_SIGNATURE, \
         TIMESTAMP_OUT_OF_WINDOW.",
    ),
    (
        "403",
        "Forbidden",
        Reach::Secured,
        "Credentials that may not do this: FORBIDDEN (a wrong admin token), PERMISSION_DENIED \
         (an API key without the permission), IP_NOT_ALLOWED.",
    ),
    (
        "413",
        "PayloadTooLarge",
        Reach::Body,
        "PAYLOAD_TOO_LARGE: the body is over the limit.",
    ),
    (
        "415",
        "UnsupportedMediaType",
        Reach::Body,
        "UNSUPPORTED_MEDIA_TYPE: the body is not sent as application/json.",
    ),
    (
        "429",
        "RateLimited",
        Reach::All,
        "RATE_LIMITED: over a request budget; Retry-After says when to retry.",
    ),
    (
        "431",
        "HeadersTooLarge",
        Reach::All,
        "HEADERS_TOO_LARGE: too many request headers, or too large.",
    ),
    (
        "503",
        "Unavailable",
        Reach::All,
        "UNAVAILABLE: a dependency (database, order or market-data service) is unreachable or \
         busy; nothing was applied, retry.",
    ),
];

/// Adds the layers' error answers to every v1 and admin operation (the
/// `/api/v3` operations answer in Binance's shapes; see binance/openapi.rs).
struct LayerErrors;

impl Modify for LayerErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (_, name, _, description) in LAYER_ERRORS {
            components
                .responses
                .insert(name.to_owned(), RefOr::T(error_response(description)));
        }
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in operations.into_iter().flatten() {
                add_layer_errors(op);
                type_path_parameters(op);
            }
        }
    }
}

/// A `{symbol}` path segment is a market symbol on every route (one that
/// is not answers 404 MARKET_NOT_FOUND, like a market that does not exist).
fn type_path_parameters(op: &mut Operation) {
    for p in op.parameters.iter_mut().flatten() {
        if p.parameter_in == ParameterIn::Path && p.name == "symbol" {
            p.schema = Some(field::market_symbol().into());
        }
    }
}

fn add_layer_errors(op: &mut Operation) {
    let has_body = op.request_body.is_some();
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    for (status, name, reach, _) in LAYER_ERRORS {
        let reached = match reach {
            Reach::All => true,
            // A signed API-key request's own parameters can be malformed too.
            Reach::Input => has_body || has_params || secured,
            Reach::Body => has_body,
            Reach::Secured => secured,
        };
        if reached {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
        }
    }
}

/// The rules the server enforces on a field, as schemas (`schema_with`):
/// a generated client refuses what the server would refuse.
pub mod field {
    use serde_json::Value;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{
        Array, ArrayBuilder, Object, ObjectBuilder, Schema, SchemaType, Type,
    };

    use crate::api::accounts::{API_KEY_IP_ALLOWLIST_LEN_MAX, API_KEY_LABEL_LEN_MAX};
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
            .max_length(Some(crate::api::accounts::EMAIL_LEN_MAX))
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
            .items(one_of(false, &["read", "trade"]))
            .min_items(Some(1))
            .description(Some("read and/or trade; absent or null: [\"read\"]"))
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
}

pub fn router() -> Router {
    SwaggerUi::new("/docs")
        .url("/docs/openapi.json", ApiDoc::openapi())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_v1_operation_documents_the_layer_errors_with_the_error_body() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        let mut seen = 0;
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            if path.starts_with("/api/v3/") {
                continue;
            }
            for (method, op) in item.as_object().into_iter().flatten() {
                seen += 1;
                let responses = &op["responses"];
                for status in ["429", "503"] {
                    assert!(responses[status].is_object(), "{method} {path}: {status}");
                }
                if op["security"].is_array() {
                    for status in ["400", "401", "403"] {
                        assert!(responses[status].is_object(), "{method} {path}: {status}");
                    }
                }
                for (status, response) in responses.as_object().into_iter().flatten() {
                    if status.starts_with('2') {
                        continue;
                    }
                    let shared = response["$ref"].as_str().unwrap_or("");
                    let own = &response["content"]["application/json"]["schema"]["$ref"];
                    assert!(
                        shared.starts_with("#/components/responses/")
                            || own == "#/components/schemas/ErrorBody",
                        "{method} {path}: {status} without the error body: {response}"
                    );
                }
            }
        }
        assert!(seen >= 23, "{seen}");
    }

    #[test]
    fn the_relayed_rules_match_the_services_that_enforce_them() {
        assert_eq!(
            field::CLIENT_ORDER_ID_LEN_MAX,
            exchange_order::rules::CLIENT_ORDER_ID_LEN_MAX
        );
        assert_eq!(
            field::ORDER_LIST_LIMIT_MAX,
            exchange_order::api::LIST_LIMIT_MAX
        );
        assert_eq!(
            field::DEPTH_LIMIT_MAX,
            exchange_marketdata::rest::DEPTH_LIMIT_MAX
        );
        assert_eq!(
            field::TRADES_LIMIT_MAX,
            exchange_marketdata::rest::TRADES_LIMIT_MAX
        );
        assert_eq!(
            field::KLINES_LIMIT_MAX,
            exchange_marketdata::rest::KLINES_LIMIT_MAX
        );
    }

    /// Every value an enum schema lists is one the server reads.
    #[test]
    fn enum_schemas_list_what_the_domain_reads() {
        fn all_read<T: serde::de::DeserializeOwned>(schema: utoipa::openapi::schema::Object) {
            for v in schema.enum_values.unwrap_or_default() {
                if !v.is_null() {
                    assert!(serde_json::from_value::<T>(v.clone()).is_ok(), "{v}");
                }
            }
        }
        all_read::<exchange_domain::Side>(field::side());
        all_read::<exchange_domain::OrderType>(field::order_type());
        all_read::<exchange_domain::TimeInForce>(field::time_in_force());
        all_read::<exchange_domain::SelfTradePrevention>(field::self_trade_prevention());
        all_read::<exchange_domain::MarketStatus>(field::market_status());
    }
}
