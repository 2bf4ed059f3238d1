//! Binance's error body `{"code":-NNNN,"msg":"..."}` and the translation
//! of our services' error codes into it. Clients (ccxt, python-binance)
//! map `code` and the exact `msg` to exception classes, so both are
//! Binance's own words.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use exchange_common::ApiError;
use exchange_common::ErrorCode;

/// What the failing call was doing: the same "not found" is -2011 on a
/// cancel and -2013 on a query, as Binance answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Place,
    Cancel,
    Query,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BnError {
    pub status: StatusCode,
    pub code: i32,
    pub msg: Cow<'static, str>,
    /// `Retry-After` seconds (429 only).
    pub retry_after: Option<u64>,
}

pub const MSG_INSUFFICIENT: &str = "Account has insufficient balance for requested action.";
pub const MSG_UNKNOWN_ORDER: &str = "Unknown order sent.";
pub const MSG_NO_ORDER: &str = "Order does not exist.";
pub const MSG_BAD_KEY: &str = "Invalid API-key, IP, or permissions for action.";

impl BnError {
    pub fn new(status: StatusCode, code: i32, msg: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            msg: msg.into(),
            retry_after: None,
        }
    }

    fn bad(code: i32, msg: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, msg)
    }

    /// -1100: a parameter with an illegal value.
    pub fn illegal(name: &str) -> Self {
        Self::bad(
            -1100,
            format!(
                "Illegal characters found in parameter '{name}'; legal range is '^[A-Z0-9-_.]{{1,20}}$'."
            ),
        )
    }

    /// A stop or take-profit whose condition the last price already meets
    /// (our engine rejects it; placement reports it once settled). Binance
    /// spot answers -2010 with this message (-2021 "Order would immediately
    /// trigger." is its futures API); ccxt maps the message to
    /// OrderImmediatelyFillable.
    pub fn would_trigger() -> Self {
        Self::bad(-2010, "Order would trigger immediately.")
    }

    /// A `LIMIT_MAKER` that would cross the book.
    pub fn would_take() -> Self {
        Self::bad(-2010, "Order would immediately match and take.")
    }

    /// -1102: a mandatory parameter is missing.
    pub fn missing(name: &str) -> Self {
        Self::bad(
            -1102,
            format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed."),
        )
    }

    /// -1104 / -1106 style: a parameter that is not used with this request.
    pub fn not_required(name: &str) -> Self {
        Self::bad(-1106, format!("Parameter '{name}' sent when not required."))
    }

    pub fn invalid_symbol() -> Self {
        Self::bad(-1121, "Invalid symbol.")
    }

    pub fn invalid_interval() -> Self {
        Self::bad(-1120, "Invalid interval.")
    }

    pub fn unsupported() -> Self {
        Self::bad(-1014, "Unsupported order combination.")
    }

    pub fn filter(name: &str) -> Self {
        Self::bad(-1013, format!("Filter failure: {name}"))
    }

    pub fn insufficient_balance() -> Self {
        Self::bad(-2010, MSG_INSUFFICIENT)
    }

    pub fn unknown_order() -> Self {
        Self::bad(-2011, MSG_UNKNOWN_ORDER)
    }

    pub fn no_such_order() -> Self {
        Self::bad(-2013, MSG_NO_ORDER)
    }

    pub fn bad_api_key_format() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, -2014, "API-key format invalid.")
    }

    pub fn rejected_key() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, -2015, MSG_BAD_KEY)
    }

    pub fn bad_signature() -> Self {
        Self::bad(-1022, "Signature for this request is not valid.")
    }

    pub fn outside_window() -> Self {
        Self::bad(
            -1021,
            "Timestamp for this request is outside of the recvWindow.",
        )
    }

    pub fn ahead_of_server() -> Self {
        Self::bad(
            -1021,
            "Timestamp for this request was 1000ms ahead of the server's time.",
        )
    }

    pub fn bad_recv_window() -> Self {
        Self::bad(-1131, "recvWindow must be less than 60000")
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            -1008,
            "Server is currently overloaded with other requests. Please try again in a few minutes.",
        )
    }

    /// The request reached the order service but its outcome is unknown
    /// (our `OUTCOME_UNKNOWN`): Binance's -1007, which clients (ccxt:
    /// `RequestTimeout`) know not to treat as a failure.
    pub fn outcome_unknown() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            -1007,
            "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            -1001,
            "Internal error; unable to process your request. Please try again.",
        )
    }

    /// 429 on the request budget (-1003) or the order budget (-1015).
    pub fn too_many(code: i32, retry_after_secs: u64) -> Self {
        let msg = if code == -1015 {
            "Too many new orders."
        } else {
            "Too many requests; please use the websocket for live updates."
        };
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            code,
            msg: msg.into(),
            retry_after: Some(retry_after_secs.max(1)),
        }
    }

    /// Our error codes (order service, gateway) in Binance's terms.
    pub fn from_code(code: &str, message: &str, action: Action) -> Self {
        match ErrorCode::parse(code) {
            Some(ErrorCode::InsufficientBalance) => Self::insufficient_balance(),
            Some(ErrorCode::PriceNotOnTick) => Self::filter("PRICE_FILTER"),
            Some(ErrorCode::QuantityNotOnStep | ErrorCode::QuantityTooSmall) => {
                Self::filter("LOT_SIZE")
            }
            Some(ErrorCode::NotionalTooSmall) => Self::filter("NOTIONAL"),
            Some(ErrorCode::MarketNotTrading) => Self::bad(-1013, "Market is closed."),
            Some(ErrorCode::MarketNotFound) => Self::invalid_symbol(),
            Some(ErrorCode::OrderNotFound | ErrorCode::OrderNotOpen) => match action {
                Action::Cancel => Self::unknown_order(),
                _ => Self::no_such_order(),
            },
            Some(ErrorCode::InvalidAmount) => Self::bad(
                -1100,
                format!("Illegal characters found in a parameter: {message}"),
            ),
            Some(ErrorCode::InvalidOrder | ErrorCode::OrderNotAmendable) => {
                Self::bad(-1013, message.to_owned())
            }
            Some(ErrorCode::RateLimited) => Self::too_many(-1015, 1),
            Some(
                ErrorCode::PermissionDenied | ErrorCode::IpNotAllowed | ErrorCode::ApiKeyExpired,
            ) => Self::rejected_key(),
            // Binance's answer for an account whose trading is disabled.
            Some(ErrorCode::AccountFrozen) => {
                Self::bad(-2010, "This action is disabled on this account.")
            }
            Some(ErrorCode::Overloaded | ErrorCode::Unavailable) => Self::unavailable(),
            _ if message.is_empty() => Self::internal(),
            _ => Self::bad(-1013, message.to_owned()),
        }
    }

    pub fn from_api(e: &ApiError, action: Action) -> Self {
        if e.status.is_server_error() {
            if e.code == ErrorCode::OutcomeUnknown {
                return Self::outcome_unknown();
            }
            if e.status == StatusCode::SERVICE_UNAVAILABLE {
                return Self::unavailable();
            }
            return Self::internal();
        }
        Self::from_code(e.code.as_str(), &e.message, action)
    }
}

impl From<sqlx::Error> for BnError {
    fn from(e: sqlx::Error) -> Self {
        tracing::warn!(error = %e, "binance api database error");
        Self::unavailable()
    }
}

impl IntoResponse for BnError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.code, "msg": self.msg});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn our_codes_become_binance_codes() {
        let c = |code, action| BnError::from_code(code, "x", action);
        assert_eq!(c("INSUFFICIENT_BALANCE", Action::Place).code, -2010);
        assert_eq!(
            c("INSUFFICIENT_BALANCE", Action::Place).msg,
            "Account has insufficient balance for requested action."
        );
        assert_eq!(c("ORDER_NOT_FOUND", Action::Cancel).code, -2011);
        assert_eq!(
            c("ORDER_NOT_FOUND", Action::Cancel).msg,
            "Unknown order sent."
        );
        assert_eq!(c("ORDER_NOT_FOUND", Action::Query).code, -2013);
        assert_eq!(
            c("ORDER_NOT_FOUND", Action::Query).msg,
            "Order does not exist."
        );
        assert_eq!(
            c("PRICE_NOT_ON_TICK", Action::Place).msg,
            "Filter failure: PRICE_FILTER"
        );
        assert_eq!(
            c("QUANTITY_TOO_SMALL", Action::Place).msg,
            "Filter failure: LOT_SIZE"
        );
        assert_eq!(
            c("NOTIONAL_TOO_SMALL", Action::Place).msg,
            "Filter failure: NOTIONAL"
        );
        assert_eq!(c("MARKET_NOT_FOUND", Action::Place).code, -1121);
        assert_eq!(c("PERMISSION_DENIED", Action::Place).code, -2015);
        assert_eq!(
            c("RATE_LIMITED", Action::Place).status,
            StatusCode::TOO_MANY_REQUESTS
        );
        let down = ApiError::unavailable("down");
        assert_eq!(BnError::from_api(&down, Action::Place).code, -1008);
        let unknown = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::OutcomeUnknown,
            "?",
        );
        let bn = BnError::from_api(&unknown, Action::Place);
        assert_eq!(
            (bn.status, bn.code),
            (StatusCode::SERVICE_UNAVAILABLE, -1007)
        );
        assert_eq!(BnError::missing("symbol").code, -1102);
        assert_eq!(BnError::illegal("quantity").code, -1100);
        assert_eq!(BnError::outside_window().code, -1021);
        assert_eq!(BnError::bad_signature().code, -1022);
    }

    #[test]
    fn body_and_retry_after() {
        let r = BnError::too_many(-1003, 0).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "1");
    }
}
