//! exchange-order service
