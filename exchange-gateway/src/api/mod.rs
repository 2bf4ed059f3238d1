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

/// An integer JSON field that also reads `1.0`: the OpenAPI document says
/// `integer`, which in JSON Schema includes integral numbers written with
/// a fraction, and clients generated from it may send them. Anything else
/// that is not an integer in range is refused as before.
pub fn integer<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
{
    use serde::Deserialize;
    use serde::de::Error;
    let text = serde_json::Number::deserialize(d)?.to_string();
    let whole = match text.split_once('.') {
        Some((int, frac)) if frac.bytes().all(|b| b == b'0') => int,
        _ => text.as_str(),
    };
    whole.parse().map_err(|_| {
        D::Error::custom(format_args!(
            "invalid value: {text}, expected an integer in range"
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

    #[test]
    fn integers_may_be_written_with_a_zero_fraction() {
        let read = |json: &str| serde_json::from_str::<Scale>(json).map(|s| s.scale).ok();
        assert_eq!(read(r#"{"scale": 8}"#), Some(8));
        assert_eq!(read(r#"{"scale": 8.0}"#), Some(8));
        assert_eq!(read(r#"{"scale": 8.5}"#), None);
        assert_eq!(read(r#"{"scale": 256}"#), None);
        assert_eq!(read(r#"{"scale": -1}"#), None);
        assert_eq!(read(r#"{"scale": 1e3}"#), None);
        assert_eq!(read(r#"{"scale": "8"}"#), None);
    }
}
