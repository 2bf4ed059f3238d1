//! Keyset pagination of every list (API.md "History and statements"):
//! `limit`, `start_time` (inclusive) and `end_time` (exclusive) in Unix ms,
//! and an opaque `cursor`. Items come newest first by `(key, id)`, where
//! `key` is the row's time (in the unit its table keeps) and `id` breaks
//! ties; a page is `WHERE (key, id) < cursor ORDER BY key DESC, id DESC
//! LIMIT n + 1` on an index of the owner's `(key DESC, id DESC)`, so page
//! 10,000 costs what page 1 costs and rows added meanwhile (newer than the
//! cursor) never shift a later page.
//!
//! A cursor is `base64url("v1|<scope>|<owner>|<key>|<id>")`: harmlessly
//! validated rather than signed. Every page is also filtered by its owner,
//! so an edited position only moves within the caller's own rows; a cursor
//! of another list or another owner is refused (400 `INVALID_CURSOR`).
//!
//! Clients that send neither `cursor` nor `paginate=true` get the bare array
//! of v1; the others get `{"items": [...], "next_cursor": "..." | null}`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// The most items of one page, and the default.
pub const PAGE_LIMIT_MAX: i64 = 1_000;
pub const PAGE_LIMIT_DEFAULT: i64 = 100;
/// The longest cursor accepted (one is ~60 characters).
pub const CURSOR_LEN_MAX: usize = 256;
/// The latest time a query may name: 9999-12-31T23:59:59.999Z in Unix ms
/// (PostgreSQL's timestamps end soon after; beyond, arithmetic would fail).
pub const TIME_MS_MAX: i64 = 253_402_300_799_999;
/// The largest key or id a cursor may carry (a time in µs fits).
pub const CURSOR_VALUE_MAX: i64 = TIME_MS_MAX * 1_000;

/// Whether `[start, end)` is a range a query may name: each time 0 to
/// [`TIME_MS_MAX`], the start before the end.
pub fn valid_range(start: Option<i64>, end: Option<i64>) -> bool {
    let ok = |t: Option<i64>| t.is_none_or(|t| (0..=TIME_MS_MAX).contains(&t));
    ok(start) && ok(end) && !matches!((start, end), (Some(s), Some(e)) if s >= e)
}

/// A row's place in its list: newest first by `(key, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub key: i64,
    pub id: i64,
}

/// Why a page request is refused (each a 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageError {
    /// `INVALID_LIMIT`.
    Limit,
    /// `INVALID_QUERY`: a negative time, or `start_time` not before `end_time`.
    TimeRange,
    /// `INVALID_CURSOR`: not ours, or another list's or owner's.
    Cursor,
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PageError::Limit => "limit must be 1 to 1000",
            PageError::TimeRange => {
                "start_time and end_time are Unix milliseconds, start_time before end_time"
            }
            PageError::Cursor => {
                "cursor is not a next_cursor this list gave you (start again without it)"
            }
        })
    }
}

impl From<PageError> for exchange_common::ApiError {
    fn from(e: PageError) -> Self {
        use exchange_common::ErrorCode;
        let code = match e {
            PageError::Limit => ErrorCode::InvalidLimit,
            PageError::TimeRange => ErrorCode::InvalidQuery,
            PageError::Cursor => ErrorCode::InvalidCursor,
        };
        exchange_common::ApiError::bad_request(code, e.to_string())
    }
}

/// The paging parameters of a list request, as every list takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct PageQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paginate: Option<bool>,
}

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    /// Inclusive, Unix ms.
    pub start_ms: Option<i64>,
    /// Exclusive, Unix ms.
    pub end_ms: Option<i64>,
    /// Rows strictly older than this (the previous page's last).
    pub before: Option<Position>,
    /// Answer `{"items", "next_cursor"}` rather than the bare array.
    pub envelope: bool,
}

impl PageQuery {
    /// Validates the query for the list `scope` of `owner`.
    pub fn page(&self, scope: &str, owner: i64) -> Result<Page, PageError> {
        let limit = self.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
        if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
            return Err(PageError::Limit);
        }
        if !valid_range(self.start_time, self.end_time) {
            return Err(PageError::TimeRange);
        }
        let before = self
            .cursor
            .as_deref()
            .map(|c| decode(c, scope, owner))
            .transpose()?;
        Ok(Page {
            limit,
            start_ms: self.start_time,
            end_ms: self.end_time,
            before,
            envelope: self.cursor.is_some() || self.paginate == Some(true),
        })
    }
}

pub fn encode(scope: &str, owner: i64, p: Position) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1|{scope}|{owner}|{}|{}", p.key, p.id))
}

pub fn decode(text: &str, scope: &str, owner: i64) -> Result<Position, PageError> {
    if text.len() > CURSOR_LEN_MAX {
        return Err(PageError::Cursor);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| PageError::Cursor)?;
    let plain = String::from_utf8(bytes).map_err(|_| PageError::Cursor)?;
    let parts: Vec<&str> = plain.split('|').collect();
    let [version, s, o, key, id] = parts[..] else {
        return Err(PageError::Cursor);
    };
    if version != "v1" || s != scope || o.parse::<i64>() != Ok(owner) {
        return Err(PageError::Cursor);
    }
    let value = |t: &str| {
        t.parse::<i64>()
            .ok()
            .filter(|v| (0..=CURSOR_VALUE_MAX).contains(v))
            .ok_or(PageError::Cursor)
    };
    Ok(Position {
        key: value(key)?,
        id: value(id)?,
    })
}

/// A fetched page: `rows` were read with `LIMIT page.limit + 1`; the extra
/// one only says another page exists. Returns the page's rows and the next
/// cursor (of the last row kept).
pub fn finish<T>(
    mut rows: Vec<T>,
    page: &Page,
    scope: &str,
    owner: i64,
    position: impl Fn(&T) -> Position,
) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    if rows.len() <= limit {
        return (rows, None);
    }
    rows.truncate(limit);
    let next = rows.last().map(|r| encode(scope, owner, position(r)));
    (rows, next)
}

/// The answer: the bare array, or the envelope.
pub fn answer<T: Serialize>(items: Vec<T>, next: Option<String>, page: &Page) -> serde_json::Value {
    if page.envelope {
        serde_json::json!({ "items": items, "next_cursor": next })
    } else {
        serde_json::to_value(items).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_a_foreign_or_edited_one_is_refused() {
        let p = Position {
            key: 1_700_000_000_123_456,
            id: 42,
        };
        let c = encode("fills", 7, p);
        assert_eq!(decode(&c, "fills", 7), Ok(p));
        assert_eq!(
            decode(&c, "fills", 8),
            Err(PageError::Cursor),
            "another owner's"
        );
        assert_eq!(
            decode(&c, "orders", 7),
            Err(PageError::Cursor),
            "another list's"
        );
        assert_eq!(decode("not a cursor", "fills", 7), Err(PageError::Cursor));
        assert_eq!(
            decode(&URL_SAFE_NO_PAD.encode("v1|fills|7|x|1"), "fills", 7),
            Err(PageError::Cursor)
        );
        assert_eq!(decode(&"A".repeat(300), "fills", 7), Err(PageError::Cursor));
    }

    #[test]
    fn queries_are_checked_and_the_envelope_is_asked_for() {
        let q = PageQuery::default();
        let page = q.page("fills", 1).unwrap();
        assert_eq!((page.limit, page.envelope), (PAGE_LIMIT_DEFAULT, false));
        let q = PageQuery {
            paginate: Some(true),
            ..PageQuery::default()
        };
        assert!(q.page("fills", 1).unwrap().envelope);
        for bad in [
            PageQuery {
                limit: Some(0),
                ..PageQuery::default()
            },
            PageQuery {
                limit: Some(1_001),
                ..PageQuery::default()
            },
        ] {
            assert_eq!(bad.page("fills", 1), Err(PageError::Limit));
        }
        let inverted = PageQuery {
            start_time: Some(5),
            end_time: Some(5),
            ..PageQuery::default()
        };
        assert_eq!(inverted.page("fills", 1), Err(PageError::TimeRange));
    }

    #[test]
    fn a_full_page_names_its_last_row_and_a_short_one_ends_the_walk() {
        let page = PageQuery {
            limit: Some(2),
            ..PageQuery::default()
        }
        .page("x", 1)
        .unwrap();
        let pos = |r: &i64| Position { key: *r, id: *r };
        let (rows, next) = finish(vec![9, 8, 7], &page, "x", 1, pos);
        assert_eq!(rows, vec![9, 8]);
        assert_eq!(
            decode(&next.unwrap(), "x", 1),
            Ok(Position { key: 8, id: 8 })
        );
        let (rows, next) = finish(vec![9, 8], &page, "x", 1, pos);
        assert_eq!((rows.len(), next), (2, None));
    }
}
