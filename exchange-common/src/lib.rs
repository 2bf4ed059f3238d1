//! Runtime shared by every service: configuration, telemetry, the HTTP
//! skeleton (`/health`, `/ready`, `/metrics`, the error body), Postgres,
//! Redis, the Redis Streams consumer runtime and auth primitives.
//!
//! Invariants: configuration is validated completely before any port is
//! bound; secrets never reach logs (`Secret`'s `Debug` is redacted); every
//! external await here carries a timeout, except the one blocking stream read
//! which uses a dedicated connection and a bounded `BLOCK`.

pub mod auth;
pub mod config;
pub mod consumer_name;
pub mod db;
pub mod error;
pub mod error_code;
pub mod http;
pub mod listen;
pub mod net;
pub mod ready;
pub mod redis;
pub mod replica;
pub mod service;
pub mod shutdown;
pub mod streams;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testing;

pub use config::{Config, Secret};
pub use error::ApiError;
pub use error_code::ErrorCode;
pub use shutdown::Shutdown;
