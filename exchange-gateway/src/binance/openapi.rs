//! The `/api/v3` and `/sapi/v1/capital` endpoints in the gateway's
//! OpenAPI document (tag `binance`): each path, method, security and parameter we accept.
//! Responses are Binance's shapes; docs/BINANCE.md lists their fields and
//! how ours differ. Kept beside the router so both change together
//! (a test checks every routed path is described).

use utoipa::Modify;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{OpenApi, Required};

/// How an endpoint is authenticated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    None,
    /// `X-MBX-APIKEY` only (USER_STREAM).
    ApiKey,
    /// `X-MBX-APIKEY` + `timestamp` + `signature` (TRADE / USER_DATA).
    Signed,
}

const SYMBOL: (&str, bool, &str) = ("symbol", true, "e.g. BTCUSDT (our BTC-USDT)");
const SYMBOL_OPT: (&str, bool, &str) = ("symbol", false, "e.g. BTCUSDT");
const SYMBOLS: (&str, bool, &str) = (
    "symbols",
    false,
    r#"JSON list, e.g. ["BTCUSDT","ETHUSDT"]; duplicates are dropped; more than 100 distinct symbols: 400 -1101. The request weight depends on the count (docs/BINANCE.md)"#,
);
const LIMIT: (&str, bool, &str) = ("limit", false, "page size");
const ORDER_REF: [(&str, bool, &str); 3] = [
    SYMBOL,
    ("orderId", false, "our order id"),
    ("origClientOrderId", false, "the client order id"),
];
const LISTEN_KEY: (&str, bool, &str) = ("listenKey", true, "from POST userDataStream");
const COIN: (&str, bool, &str) = ("coin", true, "an asset, e.g. ETH");
const COIN_OPT: (&str, bool, &str) = ("coin", false, "an asset, e.g. ETH");
const NETWORK: (&str, bool, &str) = (
    "network",
    false,
    "our network name (e.g. ethereum); must be the coin's",
);

type Param = (&'static str, bool, &'static str);
/// (methods, path, auth, summary, parameters).
type Endpoint = (
    Vec<HttpMethod>,
    &'static str,
    Auth,
    &'static str,
    Vec<Param>,
);

/// Every `/api/v3` and `/sapi/v1/capital` endpoint.
fn endpoints() -> Vec<Endpoint> {
    use HttpMethod::{Delete, Get, Post, Put};
    vec![
        (
            vec![Get],
            "/api/v3/ping",
            Auth::None,
            "Connectivity",
            vec![],
        ),
        (vec![Get], "/api/v3/time", Auth::None, "Server time", vec![]),
        (
            vec![Get],
            "/api/v3/exchangeInfo",
            Auth::None,
            "Symbols, precisions, filters",
            vec![SYMBOL_OPT, SYMBOLS],
        ),
        (
            vec![Get],
            "/api/v3/depth",
            Auth::None,
            "Order book; lastUpdateId = our depth seq (the U/u of depth streams)",
            vec![SYMBOL, ("limit", false, "default 100, max 1000")],
        ),
        (
            vec![Get],
            "/api/v3/trades",
            Auth::None,
            "Recent trades",
            vec![SYMBOL, LIMIT],
        ),
        (
            vec![Get],
            "/api/v3/historicalTrades",
            Auth::None,
            "Older trades (what marketdata keeps)",
            vec![SYMBOL, LIMIT, ("fromId", false, "first trade id")],
        ),
        (
            vec![Get],
            "/api/v3/aggTrades",
            Auth::None,
            "Trades, one per aggregate",
            vec![
                SYMBOL,
                LIMIT,
                ("fromId", false, ""),
                ("startTime", false, "ms"),
                ("endTime", false, "ms"),
            ],
        ),
        (
            vec![Get],
            "/api/v3/klines",
            Auth::None,
            "Candles (1m 5m 15m 1h 4h 1d)",
            vec![
                SYMBOL,
                ("interval", true, "1m, 5m, 15m, 1h, 4h, 1d"),
                ("startTime", false, "ms"),
                ("endTime", false, "ms"),
                LIMIT,
            ],
        ),
        (
            vec![Get],
            "/api/v3/uiKlines",
            Auth::None,
            "Same as klines",
            vec![SYMBOL, ("interval", true, "1m, 5m, 15m, 1h, 4h, 1d"), LIMIT],
        ),
        (
            vec![Get],
            "/api/v3/ticker/24hr",
            Auth::None,
            "24h statistics",
            vec![SYMBOL_OPT, SYMBOLS],
        ),
        (
            vec![Get],
            "/api/v3/ticker/price",
            Auth::None,
            "Last price",
            vec![SYMBOL_OPT, SYMBOLS],
        ),
        (
            vec![Get],
            "/api/v3/ticker/bookTicker",
            Auth::None,
            "Best bid and ask",
            vec![SYMBOL_OPT, SYMBOLS],
        ),
        (
            vec![Get],
            "/api/v3/avgPrice",
            Auth::None,
            "5-minute volume-weighted price",
            vec![SYMBOL],
        ),
        (
            vec![Post],
            "/api/v3/order",
            Auth::Signed,
            "Place an order (through our order service)",
            vec![
                SYMBOL,
                ("side", true, "BUY | SELL"),
                (
                    "type",
                    true,
                    "LIMIT | LIMIT_MAKER | MARKET | STOP_LOSS | STOP_LOSS_LIMIT | TAKE_PROFIT | TAKE_PROFIT_LIMIT",
                ),
                ("timeInForce", false, "GTC | IOC | FOK"),
                ("quantity", false, ""),
                (
                    "quoteOrderQty",
                    false,
                    "MARKET by quote amount; required instead of quantity for STOP_LOSS and TAKE_PROFIT buys",
                ),
                (
                    "price",
                    false,
                    "LIMIT, LIMIT_MAKER, STOP_LOSS_LIMIT, TAKE_PROFIT_LIMIT",
                ),
                (
                    "stopPrice",
                    false,
                    "STOP_LOSS*: BUY triggers when the last price rises to it, SELL when it falls to it; TAKE_PROFIT*: the other way round. Refused if already reached",
                ),
                ("newClientOrderId", false, "idempotency key"),
                ("newOrderRespType", false, "ACK | RESULT | FULL"),
                (
                    "selfTradePreventionMode",
                    false,
                    "NONE | EXPIRE_TAKER | EXPIRE_MAKER | EXPIRE_BOTH",
                ),
            ],
        ),
        (
            vec![Post],
            "/api/v3/order/test",
            Auth::Signed,
            "Validate an order without placing it",
            vec![
                SYMBOL,
                ("computeCommissionRates", false, "true for the fee rates"),
            ],
        ),
        (
            vec![Get],
            "/api/v3/order",
            Auth::Signed,
            "One order",
            ORDER_REF.to_vec(),
        ),
        (
            vec![Delete],
            "/api/v3/order",
            Auth::Signed,
            "Cancel an order",
            ORDER_REF.to_vec(),
        ),
        (
            vec![Get],
            "/api/v3/openOrders",
            Auth::Signed,
            "Open orders",
            vec![SYMBOL_OPT],
        ),
        (
            vec![Delete],
            "/api/v3/openOrders",
            Auth::Signed,
            "Cancel all open orders of a symbol",
            vec![SYMBOL],
        ),
        (
            vec![Get],
            "/api/v3/allOrders",
            Auth::Signed,
            "Orders of a symbol",
            vec![
                SYMBOL,
                ("orderId", false, "from this id"),
                ("startTime", false, "ms"),
                ("endTime", false, "ms"),
                LIMIT,
            ],
        ),
        (
            vec![Get],
            "/api/v3/account",
            Auth::Signed,
            "Balances and permissions",
            vec![("omitZeroBalances", false, "true | false")],
        ),
        (
            vec![Get],
            "/api/v3/myTrades",
            Auth::Signed,
            "My fills",
            vec![
                SYMBOL,
                ("orderId", false, ""),
                ("fromId", false, ""),
                ("startTime", false, "ms"),
                ("endTime", false, "ms"),
                LIMIT,
            ],
        ),
        (
            vec![Post],
            "/api/v3/userDataStream",
            Auth::ApiKey,
            "Create (or renew) the user's listenKey; stream at ws://<gateway WS port>/ws/<listenKey>",
            vec![],
        ),
        (
            vec![Put],
            "/api/v3/userDataStream",
            Auth::ApiKey,
            "Keep a listenKey alive for 60 more minutes",
            vec![LISTEN_KEY],
        ),
        (
            vec![Delete],
            "/api/v3/userDataStream",
            Auth::ApiKey,
            "Close a listenKey",
            vec![LISTEN_KEY],
        ),
        (
            vec![Get],
            "/sapi/v1/capital/deposit/address",
            Auth::Signed,
            "My deposit address of a coin (our custody; the same every time): {coin, address, tag, url}",
            vec![COIN, NETWORK],
        ),
        (
            vec![Get],
            "/sapi/v1/capital/deposit/hisrec",
            Auth::Signed,
            "My chain deposits, newest first; status 0 pending, 1 credited, 2 left the chain before its confirmations",
            vec![
                COIN_OPT,
                ("status", false, "0 | 1 | 2"),
                ("startTime", false, "ms"),
                ("endTime", false, "ms"),
                ("txId", false, ""),
                ("offset", false, ""),
                ("limit", false, "default and max 1000"),
            ],
        ),
        (
            vec![Post],
            "/sapi/v1/capital/withdraw/apply",
            Auth::Signed,
            "Withdraw to an address of my withdrawal address book (past its cooldown); needs the key's withdraw permission: {id}",
            vec![
                COIN,
                (
                    "address",
                    true,
                    "an address of my address book for this coin (POST /api/v1/account/withdrawal-addresses)",
                ),
                (
                    "amount",
                    true,
                    "what reaches the address; the fee is charged on top",
                ),
                NETWORK,
                (
                    "withdrawOrderId",
                    false,
                    "idempotency key: the same one again answers the same withdrawal",
                ),
                (
                    "totp",
                    false,
                    "our addition: the TOTP code, required when 2FA is on",
                ),
                ("walletType", false, "0 (spot) only"),
                ("transactionFeeFlag", false, "false only"),
                ("name", false, "ignored"),
            ],
        ),
        (
            vec![Get],
            "/sapi/v1/capital/withdraw/history",
            Auth::Signed,
            "My withdrawals, newest first; status 2 awaiting approval, 4 processing, 6 completed, 3 rejected, 1 canceled, 5 failed",
            vec![
                COIN_OPT,
                ("withdrawOrderId", false, ""),
                ("status", false, "0 to 6"),
                ("idList", false, "ids, comma-separated"),
                ("startTime", false, "ms"),
                ("endTime", false, "ms"),
                ("offset", false, ""),
                ("limit", false, "default and max 1000"),
            ],
        ),
    ]
}

/// The rule a parameter's value follows, by its name: the same name means
/// the same rule on every endpoint (Params::u64, ::limit, the parsers of
/// trade.rs). An empty value counts as absent: an optional parameter may
/// be empty, a required one may not (-1102).
fn param_schema(name: &str, required: bool) -> Object {
    // Ids and times: digits only, and within i64 (else -1100).
    const INTEGER: &str = "^[0-9]{1,18}$";
    let text = |pattern: &str| {
        let pattern = if required {
            pattern.to_owned()
        } else {
            format!("^$|{pattern}")
        };
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(pattern))
            .build()
    };
    let one_of = |values: &[&str]| {
        let empty = (!required).then_some("");
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(values.iter().copied().chain(empty)))
            .build()
    };
    // format::valid_binance_symbol.
    const SYMBOL_PATTERN: &str = "[A-Z0-9]{1,20}";
    match name {
        "symbol" => text(&format!("^{SYMBOL_PATTERN}$")),
        "symbols" => text(&format!(
            r#"^\["{SYMBOL_PATTERN}"(,"{SYMBOL_PATTERN}")*\]$"#
        )),
        "limit" => text("^[1-9][0-9]{0,17}$"),
        "orderId" | "fromId" | "startTime" | "endTime" | "timestamp" | "offset" => text(INTEGER),
        "status" => text("^[0-9]{1,18}$"),
        "amount" => text("^[0-9.]{1,40}$"),
        "walletType" => one_of(&["0"]),
        "transactionFeeFlag" => one_of(&["false"]),
        "recvWindow" => text("^([1-9][0-9]{0,3}|[1-5][0-9]{4}|60000)$"),
        "interval" => one_of(&["1m", "5m", "15m", "1h", "4h", "1d"]),
        "side" => one_of(&["BUY", "SELL"]),
        "type" => one_of(&super::format::ORDER_TYPES),
        "timeInForce" => one_of(&["GTC", "IOC", "FOK"]),
        "newOrderRespType" => one_of(&["ACK", "RESULT", "FULL"]),
        "selfTradePreventionMode" => {
            one_of(&["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"])
        }
        "omitZeroBalances" | "computeCommissionRates" => one_of(&["true", "false"]),
        "totp" => text("^[0-9]{6}$"),
        _ => ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(required.then_some(1))
            .build(),
    }
}

/// Adds the `/api/v3` and `/sapi/v1/capital` paths and the `binanceApiKey` scheme.
pub struct BinancePaths;

impl Modify for BinancePaths {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "binanceApiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-MBX-APIKEY"))),
        );
        for (methods, path, auth, summary, params) in endpoints() {
            let mut op = OperationBuilder::new()
                .tag("binance")
                .summary(Some(summary))
                .response(
                    "200",
                    ResponseBuilder::new()
                        .description("Binance's response shape (docs/BINANCE.md)"),
                )
                .response(
                    "4XX",
                    ResponseBuilder::new()
                        .description(r#"{"code":-NNNN,"msg":"..."} (Binance's codes)"#),
                );
            let mut all: Vec<Param> = params;
            if auth == Auth::Signed {
                all.push((
                    "timestamp",
                    true,
                    "ms; within recvWindow of the server clock",
                ));
                all.push(("recvWindow", false, "ms, default 5000, at most 60000"));
                all.push((
                    "signature",
                    true,
                    "hex HMAC-SHA256 (key: API secret) of the query string followed by the body",
                ));
            }
            for (name, required, description) in all {
                op = op.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Query)
                        .required(if required {
                            Required::True
                        } else {
                            Required::False
                        })
                        .description((!description.is_empty()).then_some(description))
                        .schema(Some(param_schema(name, required))),
                );
            }
            if auth != Auth::None {
                op = op.security(SecurityRequirement::new(
                    "binanceApiKey",
                    Vec::<String>::new(),
                ));
            }
            openapi.paths.add_path_operation(path, methods, op);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_binance_route_is_described() {
        // The gateway's whole document, so the wiring in docs.rs counts too.
        let doc = <crate::docs::ApiDoc as utoipa::OpenApi>::openapi();
        let json = serde_json::to_value(&doc).unwrap_or_default();
        if let Ok(path) = std::env::var("OPENAPI_DUMP") {
            // For validators: OPENAPI_DUMP=/tmp/openapi.json cargo test ...
            let _ = std::fs::write(path, json.to_string());
        }
        let source = include_str!("mod.rs");
        let routed: Vec<&str> = ["\"/api/v3/", "\"/sapi/v1/"]
            .iter()
            .flat_map(|prefix| source.match_indices(prefix))
            .filter_map(|(i, _)| source[i + 1..].split('"').next())
            .filter(|p| !p.ends_with('/'))
            .collect();
        assert!(routed.len() >= 24, "{routed:?}");
        assert!(
            routed.contains(&"/sapi/v1/capital/withdraw/apply"),
            "{routed:?}"
        );
        for path in routed {
            assert!(
                json["paths"][path].is_object(),
                "{path} is routed but not described"
            );
        }
        let order = &json["paths"]["/api/v3/order"];
        assert!(
            order["post"].is_object() && order["get"].is_object() && order["delete"].is_object()
        );
        assert!(json["paths"]["/api/v3/userDataStream"]["put"].is_object());
        assert!(json["paths"]["/sapi/v1/capital/withdraw/apply"]["post"].is_object());
    }

    #[test]
    fn parameter_schemas_follow_the_parsers() {
        use super::super::format::{parse_symbol_list, valid_binance_symbol};
        let pattern = |name: &str, required: bool| {
            let schema =
                serde_json::to_value(super::param_schema(name, required)).unwrap_or_default();
            schema["pattern"].as_str().unwrap_or_default().to_owned()
        };
        assert_eq!(pattern("symbol", true), "^[A-Z0-9]{1,20}$");
        assert!(valid_binance_symbol(&"A".repeat(20)) && !valid_binance_symbol(&"A".repeat(21)));
        assert_eq!(
            pattern("symbols", true),
            r#"^\["[A-Z0-9]{1,20}"(,"[A-Z0-9]{1,20}")*\]$"#
        );
        assert!(parse_symbol_list(r#"["BTCUSDT","ETHUSDT"]"#).is_some());
        // Optional: empty is absent.
        assert_eq!(pattern("symbol", false), "^$|^[A-Z0-9]{1,20}$");
    }
}
