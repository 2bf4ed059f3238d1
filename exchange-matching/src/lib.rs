//! exchange-matching service
