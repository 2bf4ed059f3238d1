//! HTTP handlers: thin translation between JSON and the database.

pub mod accounts;
pub mod admin;
pub mod marketdata;
pub mod orders;
pub mod public;

/// True when `e` is a unique-constraint violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "23505")
}
