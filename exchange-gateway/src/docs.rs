//! OpenAPI description and Swagger UI at `/docs` (only with `ENABLE_DOCS=true`).

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::api::{accounts, admin, orders, public};
use crate::binance::openapi::BinancePaths;

#[derive(OpenApi)]
#[openapi(
    info(title = "Exchange API", version = "1"),
    paths(
        accounts::register, accounts::login, accounts::balances,
        accounts::create_api_key, accounts::list_api_keys, accounts::delete_api_key,
        public::assets, public::markets,
        admin::create_asset, admin::create_market, admin::patch_market, admin::deposit,
        orders::place, orders::get_order, orders::list_orders, orders::cancel,
        orders::cancel_all, orders::amend, orders::my_trades,
    ),
    modifiers(&Security, &BinancePaths)
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

pub fn router() -> Router {
    SwaggerUi::new("/docs")
        .url("/docs/openapi.json", ApiDoc::openapi())
        .into()
}
