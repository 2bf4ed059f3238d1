//! exchange-clearing service
