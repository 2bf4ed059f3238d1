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
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use crate::api::schema::{ErrorBody, field};
use crate::api::{
    accounts, admin, custody, custody_admin, marketdata, operators, orders, public, security,
    statement, users,
};
use crate::binance::openapi::BinancePaths;

#[derive(OpenApi)]
#[openapi(
    info(title = "Exchange API", version = "1"),
    paths(
        accounts::register, accounts::login, accounts::balances,
        accounts::create_api_key, accounts::list_api_keys, accounts::delete_api_key,
        security::logout, security::logout_all, security::change_password,
        security::enrol_totp, security::confirm_totp, security::disable_totp,
        public::assets, public::markets,
        marketdata::depth, marketdata::trades, marketdata::klines, marketdata::ticker,
        admin::create_asset, admin::create_market, admin::patch_market, admin::deposit,
        users::freeze, users::unfreeze, users::reset_second_factor,
        operators::create_operator, operators::list_operators, operators::delete_operator,
        operators::rotate_operator_token, operators::list_audit,
        orders::place, orders::get_order, orders::list_orders, orders::cancel,
        orders::cancel_all, orders::amend, orders::my_trades,
        admin::patch_asset,
        custody::deposit_address, custody::list_deposits, custody::add_withdrawal_address,
        custody::list_withdrawal_addresses, custody::delete_withdrawal_address,
        custody::request_withdrawal, custody::list_withdrawals, custody::get_withdrawal,
        custody::cancel_withdrawal,
        custody_admin::list_withdrawals, custody_admin::approve, custody_admin::reject,
        custody_admin::broadcast, custody_admin::confirm, custody_admin::fail,
        custody_admin::report_deposit, custody_admin::list_deposits,
        custody_admin::load_deposit_addresses, custody_admin::list_freezes,
        custody_admin::release_freeze,
        statement::ledger, statement::statement_csv,
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
        "Credentials that may not do this: FORBIDDEN (an admin token that is neither ADMIN_TOKEN \
         nor a live operator's, or an operator whose role lacks the permission), PERMISSION_DENIED \
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
/// `/api/v3` and `/sapi/v1` operations answer in Binance's shapes; see
/// binance/openapi.rs).
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
            // Binance's shapes (binance/openapi.rs).
            if path.starts_with("/api/v3/") || path.starts_with("/sapi/") {
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
        assert!(seen >= 28, "{seen}");
    }

    #[test]
    fn every_account_security_operators_audit_and_custody_route_is_documented() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        for (path, method) in [
            ("/admin/v1/operators", "get"),
            ("/admin/v1/operators", "post"),
            ("/admin/v1/operators/{id}", "delete"),
            ("/admin/v1/operators/{id}/token", "post"),
            ("/admin/v1/audit", "get"),
            ("/admin/v1/deposits", "post"),
            ("/admin/v1/users/{id}/freeze", "post"),
            ("/admin/v1/users/{id}/unfreeze", "post"),
            ("/admin/v1/users/{id}/2fa/reset", "post"),
        ] {
            let op = &doc["paths"][path][method];
            assert!(
                op["security"][0]["admin"].is_array(),
                "{method} {path}: {op}"
            );
        }
        for (path, method) in [
            ("/api/v1/auth/logout", "post"),
            ("/api/v1/auth/logout-all", "post"),
            ("/api/v1/account/password", "post"),
            ("/api/v1/account/2fa/totp", "post"),
            ("/api/v1/account/2fa/totp", "delete"),
            ("/api/v1/account/2fa/totp/confirm", "post"),
        ] {
            let op = &doc["paths"][path][method];
            assert!(
                op["security"][0]["bearer"].is_array(),
                "{method} {path}: {op}"
            );
        }
        // Custody (API.md "Custody").
        for (path, method, scheme) in [
            ("/api/v1/account/deposit-address", "get", "bearer"),
            ("/api/v1/account/deposits", "get", "bearer"),
            ("/api/v1/account/withdrawal-addresses", "post", "bearer"),
            ("/api/v1/account/withdrawal-addresses", "get", "bearer"),
            (
                "/api/v1/account/withdrawal-addresses/{id}",
                "delete",
                "bearer",
            ),
            ("/api/v1/withdrawals", "post", "bearer"),
            ("/api/v1/withdrawals", "get", "bearer"),
            ("/api/v1/withdrawals/{id}", "get", "bearer"),
            ("/api/v1/withdrawals/{id}", "delete", "bearer"),
            ("/admin/v1/assets/{symbol}", "patch", "admin"),
            ("/admin/v1/withdrawals", "get", "admin"),
            ("/admin/v1/withdrawals/{id}/approve", "post", "admin"),
            ("/admin/v1/withdrawals/{id}/reject", "post", "admin"),
            ("/admin/v1/withdrawals/{id}/broadcast", "post", "admin"),
            ("/admin/v1/withdrawals/{id}/confirm", "post", "admin"),
            ("/admin/v1/withdrawals/{id}/fail", "post", "admin"),
            ("/admin/v1/custody/deposits", "post", "admin"),
            ("/admin/v1/custody/deposits", "get", "admin"),
            ("/admin/v1/custody/deposit-addresses", "post", "admin"),
            ("/admin/v1/custody/freezes", "get", "admin"),
            ("/admin/v1/custody/freezes/{id}/release", "post", "admin"),
        ] {
            let op = &doc["paths"][path][method];
            assert!(
                op["security"][0][scheme].is_array(),
                "{method} {path}: {op}"
            );
        }
        let deposit = &doc["components"]["schemas"]["NewDeposit"];
        let required = deposit["required"].as_array().cloned().unwrap_or_default();
        assert!(required.contains(&"reference".into()), "{deposit}");
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
