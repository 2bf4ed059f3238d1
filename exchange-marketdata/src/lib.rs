//! exchange-marketdata service
