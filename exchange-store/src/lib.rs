//! The shared schema: what several services read and write in PostgreSQL,
//! in one place. The markets and their cache, the `orders`, `fills` and
//! `balances` rows with the one column list each is read by, and the JSON
//! each is shown as (REST answers and private pushes alike), and the
//! audit log every admin writer appends to ([`audit`]).
//!
//! The tables themselves are created by `exchange-common/migrations`; a
//! service that needs a row type of another service's table takes it from
//! here, never from that service's crate, so no service crate depends on
//! another.

pub mod audit;
pub mod balances;
pub mod fills;
pub mod ledger;
pub mod markets;
pub mod numeric;
pub mod orders;
pub mod page;
pub mod statement;
pub mod transport;

pub use balances::BalanceJson;
pub use fills::{FILL_COLUMNS, FillJson, FillRow};
pub use markets::{MarketInfo, Markets};
pub use numeric::{Scales, db_text, db_units};
pub use orders::{ORDER_COLUMNS, OrderJson, OrderRow};

/// The JSON name of a serde enum value (`"GTC"`, `"expire_taker"`,
/// `"POST_ONLY_WOULD_TAKE"`): how the enums without an `as_str` of their
/// own are stored in text columns.
pub fn wire_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}
