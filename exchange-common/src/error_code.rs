//! Every machine code an error body may carry (`{"error":{"code",..}}`),
//! as one enum: the order rules, every service's [`crate::ApiError`] and
//! the gateway's Binance mapping name codes through it, so a misspelt code
//! does not compile. Codes are part of the API contract (docs/API.md): add
//! freely, never rename.

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it appears on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }

            /// The code of a wire name; `None` for one this version does
            /// not know (a newer service may send it: pass it on as text).
            pub fn parse(text: &str) -> Option<ErrorCode> {
                match text {
                    $($text => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    // Malformed input (400 unless noted).
    /// A body or query that does not have the documented shape.
    InvalidRequest = "INVALID_REQUEST",
    InvalidJson = "INVALID_JSON",
    InvalidPath = "INVALID_PATH",
    InvalidQuery = "INVALID_QUERY",
    /// 415: a JSON body without `Content-Type: application/json`.
    UnsupportedMediaType = "UNSUPPORTED_MEDIA_TYPE",
    /// 413.
    PayloadTooLarge = "PAYLOAD_TOO_LARGE",
    /// 431.
    HeadersTooLarge = "HEADERS_TOO_LARGE",
    /// 405.
    MethodNotAllowed = "METHOD_NOT_ALLOWED",
    InvalidAmount = "INVALID_AMOUNT",
    InvalidSymbol = "INVALID_SYMBOL",
    InvalidMarket = "INVALID_MARKET",
    InvalidScale = "INVALID_SCALE",
    InvalidFee = "INVALID_FEE",
    InvalidStatus = "INVALID_STATUS",
    InvalidLimit = "INVALID_LIMIT",
    InvalidInterval = "INVALID_INTERVAL",
    InvalidEmail = "INVALID_EMAIL",
    WeakPassword = "WEAK_PASSWORD",
    InvalidLabel = "INVALID_LABEL",
    InvalidPermissions = "INVALID_PERMISSIONS",
    InvalidIpAllowlist = "INVALID_IP_ALLOWLIST",
    InvalidTimestamp = "INVALID_TIMESTAMP",
    InvalidRecvWindow = "INVALID_RECV_WINDOW",
    MissingTimestamp = "MISSING_TIMESTAMP",
    MissingSignature = "MISSING_SIGNATURE",
    /// A WebSocket message that is not one of the documented ops.
    InvalidMessage = "INVALID_MESSAGE",
    InvalidOp = "INVALID_OP",
    InvalidChannel = "INVALID_CHANNEL",
    /// 426: a plain HTTP request on a WebSocket route.
    WebsocketRequired = "WEBSOCKET_REQUIRED",
    /// A deposit `reference` missing, empty or too long.
    InvalidReference = "INVALID_REFERENCE",
    /// An operator name outside `^[a-z0-9][a-z0-9._-]{0,63}$`, or reserved.
    InvalidOperatorName = "INVALID_OPERATOR_NAME",
    /// An operator role other than viewer, support, finance, admin.
    InvalidRole = "INVALID_ROLE",
    /// A malformed or wrong-checksum chain address for the asset's network.
    InvalidAddress = "INVALID_ADDRESS",
    /// The asset has no network (off-chain): no deposit address, no withdrawal.
    NoNetwork = "NO_NETWORK",
    /// A `cursor` that is not a `next_cursor` of this list and caller.
    InvalidCursor = "INVALID_CURSOR",
    /// A chain report for a network the asset is not on.
    NetworkMismatch = "NETWORK_MISMATCH",
    /// A chain report to an address no user was given.
    UnknownAddress = "UNKNOWN_ADDRESS",
    AmountBelowMinimum = "AMOUNT_BELOW_MINIMUM",
    DailyLimitExceeded = "DAILY_LIMIT_EXCEEDED",
    AddressCoolingDown = "ADDRESS_COOLING_DOWN",
    InvalidSettings = "INVALID_SETTINGS",

    // Orders (the order service's rules).
    InvalidOrder = "INVALID_ORDER",
    PriceNotOnTick = "PRICE_NOT_ON_TICK",
    QuantityNotOnStep = "QUANTITY_NOT_ON_STEP",
    QuantityTooSmall = "QUANTITY_TOO_SMALL",
    NotionalTooSmall = "NOTIONAL_TOO_SMALL",
    InsufficientBalance = "INSUFFICIENT_BALANCE",
    MarketNotTrading = "MARKET_NOT_TRADING",
    OrderNotAmendable = "ORDER_NOT_AMENDABLE",
    OrderNotOpen = "ORDER_NOT_OPEN",
    /// 503: an asset's scale is not loaded; nothing was applied, retry.
    AssetScaleUnknown = "ASSET_SCALE_UNKNOWN",
    /// 503: the order may or may not have been accepted; look it up by
    /// `client_order_id` before retrying.
    OutcomeUnknown = "OUTCOME_UNKNOWN",

    // Who is calling (401 / 403).
    Unauthorized = "UNAUTHORIZED",
    Forbidden = "FORBIDDEN",
    InvalidCredentials = "INVALID_CREDENTIALS",
    InvalidToken = "INVALID_TOKEN",
    TokenExpired = "TOKEN_EXPIRED",
    InvalidSignature = "INVALID_SIGNATURE",
    TimestampOutOfWindow = "TIMESTAMP_OUT_OF_WINDOW",
    PermissionDenied = "PERMISSION_DENIED",
    IpNotAllowed = "IP_NOT_ALLOWED",
    OriginNotAllowed = "ORIGIN_NOT_ALLOWED",
    AuthTimeout = "AUTH_TIMEOUT",

    // Account security (docs/API.md, "Account security").
    /// 401: two-factor authentication is on and the request has no code.
    TotpRequired = "TOTP_REQUIRED",
    /// 401 (400 when confirming an enrolment): a wrong, expired or
    /// already used code, or an unknown or used recovery code.
    InvalidTotp = "INVALID_TOTP",
    /// 409: enrolling while two-factor authentication is already on.
    TotpAlreadyEnabled = "TOTP_ALREADY_ENABLED",
    /// 409: confirming without an enrolment, or disabling while it is off.
    TotpNotEnabled = "TOTP_NOT_ENABLED",
    /// 429: too many wrong second-factor codes for this user; wait.
    TooManyAttempts = "TOO_MANY_ATTEMPTS",
    /// 403: an operator froze the account (login, orders, withdrawals).
    AccountFrozen = "ACCOUNT_FROZEN",
    /// 401: the API key's `expires_at` has passed.
    ApiKeyExpired = "API_KEY_EXPIRED",
    /// 401: the access token's session ended (logout, logout-all, a
    /// password or 2FA change, a freeze); log in again.
    SessionEnded = "SESSION_ENDED",
    /// 400: an API key's `expires_at` that is not in the future.
    InvalidExpiry = "INVALID_EXPIRY",
    /// 400: a freeze (or other operator action) reason that is empty, too
    /// long or holds a NUL.
    InvalidReason = "INVALID_REASON",
    /// 403: the asset's kill switch is off (`withdrawals_enabled: false`).
    WithdrawalsDisabled = "WITHDRAWALS_DISABLED",
    /// 403: a credited deposit of the asset left the chain; support must review.
    WithdrawalsFrozen = "WITHDRAWALS_FROZEN",

    // Existence and conflicts (404 / 409).
    NotFound = "NOT_FOUND",
    OrderNotFound = "ORDER_NOT_FOUND",
    MarketNotFound = "MARKET_NOT_FOUND",
    UserNotFound = "USER_NOT_FOUND",
    UnknownAsset = "UNKNOWN_ASSET",
    EmailTaken = "EMAIL_TAKEN",
    AssetExists = "ASSET_EXISTS",
    MarketExists = "MARKET_EXISTS",
    /// 409: a deposit reference already used with another body.
    ReferenceConflict = "REFERENCE_CONFLICT",
    OperatorExists = "OPERATOR_EXISTS",
    OperatorNotFound = "OPERATOR_NOT_FOUND",
    WithdrawalNotFound = "WITHDRAWAL_NOT_FOUND",
    AddressNotFound = "ADDRESS_NOT_FOUND",
    DepositNotFound = "DEPOSIT_NOT_FOUND",
    FreezeNotFound = "FREEZE_NOT_FOUND",
    /// 409: cancel once the payout is being signed or later.
    WithdrawalInProgress = "WITHDRAWAL_IN_PROGRESS",
    /// 409: approve/reject/report on a withdrawal in another state.
    WithdrawalNotPending = "WITHDRAWAL_NOT_PENDING",
    /// 409: the same operator approving a withdrawal twice.
    SameApprover = "SAME_APPROVER",
    /// 409: a chain report for a known (network, tx_hash, log_index) with
    /// another user, asset or amount.
    TransferConflict = "TRANSFER_CONFLICT",
    /// 409: a payout call for a network that is not paid out by operators.
    NotManualNetwork = "NOT_MANUAL_NETWORK",

    // Limits (429 unless noted).
    RateLimited = "RATE_LIMITED",
    TooManyApiKeys = "TOO_MANY_API_KEYS",
    TooManyConnections = "TOO_MANY_CONNECTIONS",
    TooManyChannels = "TOO_MANY_CHANNELS",
    TooManySubscriptions = "TOO_MANY_SUBSCRIPTIONS",
    /// 503: the service sheds load; retry later.
    Overloaded = "OVERLOADED",

    // The server.
    /// 503: a dependency is down or slow; nothing was applied.
    Unavailable = "UNAVAILABLE",
    /// 503: no free deposit address is loaded for the network.
    NoDepositAddress = "NO_DEPOSIT_ADDRESS",
    /// 500: a bug; the log has the details, the client none.
    Internal = "INTERNAL",
    /// A WebSocket the server closed.
    Closed = "CLOSED",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_is_unique_screaming_snake() {
        let mut seen = std::collections::BTreeSet::new();
        for &code in ErrorCode::ALL {
            let text = code.as_str();
            assert_eq!(ErrorCode::parse(text), Some(code));
            assert!(seen.insert(text), "{text} twice");
            assert!(
                text.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{text} is not SCREAMING_SNAKE_CASE"
            );
        }
        assert_eq!(ErrorCode::parse("INSUFICIENT_BALANCE"), None);
    }
}
