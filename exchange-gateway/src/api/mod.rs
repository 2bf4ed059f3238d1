//! HTTP handlers: thin translation between JSON and the database.

pub mod accounts;
pub mod admin;
pub mod custody;
pub mod custody_admin;
pub mod marketdata;
pub mod operators;
pub mod orders;
pub mod public;
pub mod schema;
pub mod security;
pub mod statement;
pub mod users;

/// A list's query struct: its own fields, then the paging fields every list
/// takes (API.md "History and statements"; `exchange_store::page`). A
/// macro rather than a flattened struct: query strings carry every value as
/// text, which serde's `flatten` cannot turn into numbers.
macro_rules! list_query {
    ($(#[$meta:meta])* pub struct $name:ident {
        $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)*
    }) => {
        $(#[$meta])*
        #[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::IntoParams)]
        #[serde(deny_unknown_fields)]
        #[into_params(parameter_in = Query)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// Unix ms, inclusive: items at or after it.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[param(minimum = 0)]
            pub start_time: Option<i64>,
            /// Unix ms, exclusive: items before it.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[param(minimum = 0)]
            pub end_time: Option<i64>,
            /// The previous page's `next_cursor` (answers `{items, next_cursor}`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[param(max_length = 256)]
            pub cursor: Option<String>,
            /// `true`: answer `{items, next_cursor}` from the first page on.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub paginate: Option<bool>,
        }
    };
}
pub(crate) use list_query;

/// True when `e` is a unique-constraint violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "23505")
}

/// The largest magnitude an integer written with a fraction (`8.0`) may
/// have. Such a number reaches us as an `f64`, whose digits beyond 2^53
/// (and whose fraction, well below that) are already rounded away, so a
/// large one could silently name another user; small ones are exact.
const FRACTION_WRITTEN_INTEGER_MAX: f64 = 2_147_483_648.0;

/// An integer JSON field that also reads `8.0` or `1e3`: the OpenAPI
/// document says `integer`, which in JSON Schema includes integral numbers
/// written with a fraction or an exponent, and clients generated from it
/// may send them. Written that way it must be at most 2^31 in magnitude;
/// anything else that is not an integer in range is refused.
pub fn integer<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i128>,
{
    use serde::Deserialize;
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    let whole: Option<i128> = match (n.as_i64(), n.as_u64()) {
        (Some(i), _) => Some(i128::from(i)),
        (None, Some(u)) => Some(i128::from(u)),
        #[allow(clippy::cast_possible_truncation)] // integral and at most 2^31: exact
        (None, None) => n
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() <= FRACTION_WRITTEN_INTEGER_MAX)
            .map(|f| f as i128),
    };
    whole.and_then(|w| T::try_from(w).ok()).ok_or_else(|| {
        D::Error::custom(format_args!(
            "invalid value: {n}, expected an integer in range"
        ))
    })
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct Scale {
        #[serde(deserialize_with = "super::integer")]
        scale: u8,
    }

    #[derive(serde::Deserialize)]
    struct User {
        #[serde(deserialize_with = "super::integer")]
        user_id: i64,
    }

    #[test]
    fn a_large_integer_written_with_a_fraction_is_refused_not_rounded() {
        let read = |json: &str| serde_json::from_str::<User>(json).map(|u| u.user_id).ok();
        assert_eq!(
            read(r#"{"user_id": 9007199254740993}"#),
            Some(9_007_199_254_740_993)
        );
        assert_eq!(read(r#"{"user_id": 9007199254740993.0}"#), None);
        assert_eq!(read(r#"{"user_id": 2147483648.0}"#), Some(2_147_483_648));
        assert_eq!(read(r#"{"user_id": 2147483649.0}"#), None);
        assert_eq!(read(r#"{"user_id": 42.0}"#), Some(42));
    }

    #[test]
    fn integers_may_be_written_with_a_zero_fraction() {
        let read = |json: &str| serde_json::from_str::<Scale>(json).map(|s| s.scale).ok();
        assert_eq!(read(r#"{"scale": 8}"#), Some(8));
        assert_eq!(read(r#"{"scale": 8.0}"#), Some(8));
        assert_eq!(read(r#"{"scale": 8.5}"#), None);
        assert_eq!(read(r#"{"scale": 256}"#), None);
        assert_eq!(read(r#"{"scale": -1}"#), None);
        assert_eq!(read(r#"{"scale": 1e3}"#), None, "1000 does not fit");
        assert_eq!(read(r#"{"scale": 8e0}"#), Some(8));
        assert_eq!(read(r#"{"scale": "8"}"#), None);
    }
}
