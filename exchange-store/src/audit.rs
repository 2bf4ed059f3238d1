//! The audit log (`audit_log`, migration 0015): who changed what, when and
//! from where, for every state-changing admin call (gateway admin routes,
//! the order service's market status change, `exchange admin dlq`).
//!
//! Invariants:
//! - a row is appended by [`append`] inside the transaction of the change
//!   it records, so both commit or neither does;
//! - rows form one hash chain in id order: each row's `prev_hash` is the
//!   previous row's `hash` ([`GENESIS_HASH`] for the first), and
//!   `hash = hex(sha256(prev_hash || canonical_json(entry)))` where
//!   [`canonical_json`] is the entry as `GET /admin/v1/audit` shows it
//!   without `prev_hash` and `hash`, object keys sorted (recursively), no
//!   whitespace, non-ASCII characters written as they are (UTF-8). A
//!   client can recompute it from the API's output alone (docs/API.md,
//!   "This server");
//! - appenders are serialised by a transaction-scoped advisory lock, and
//!   the table's `UNIQUE (prev_hash)` makes a fork impossible anyway;
//! - the table refuses UPDATE, DELETE and TRUNCATE (a trigger); what gets
//!   past it (a superuser disabling triggers) breaks the chain, which
//!   [`verify`] reports with the first bad id.
//!
//! Lock order: [`append`] takes the audit lock, so callers append as the
//! **last** write of their transaction (after every row lock they take):
//! no transaction then waits for a row while holding the audit lock, and
//! appenders cannot deadlock each other.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

/// The `prev_hash` of the first row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The advisory lock (`pg_advisory_xact_lock`) that serialises appenders:
/// "audit_lg" in ASCII, a key no other part of the system uses.
const APPEND_LOCK_KEY: i64 = 0x6175_6469_745f_6c67;

/// Rows [`verify`] fetches per query: its memory stays bounded whatever
/// the log's length.
pub const VERIFY_PAGE_LEN: i64 = 1_000;

/// The longest request id an entry keeps (clients may send their own
/// `x-request-id`; the header limits bound it, this bounds the row).
pub const REQUEST_ID_LEN_MAX: usize = 128;

/// The columns every audit query selects, in [`AuditEntry`]'s order.
pub const AUDIT_COLUMNS: &str =
    "id, time, actor, action, target, details::text AS details, request_id, ip, prev_hash, hash";

/// Who asked for a change and through which request: what every audit row
/// of that request carries. The gateway sends it to the order service with
/// a market status change, so the row written there names the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditContext {
    /// `root` (the break-glass `ADMIN_TOKEN`), an operator's name,
    /// `cli:<user>` (the `exchange` command line) or `unknown` (a failed
    /// authentication).
    pub actor: String,
    /// The request's `x-request-id` (a fresh UUID for the command line).
    pub request_id: String,
    /// The client's address (behind `TRUSTED_PROXIES`, the forwarded one);
    /// none for the command line.
    pub ip: Option<String>,
}

impl AuditContext {
    /// An entry of this caller: `action` (e.g. `market.status`) on `target`
    /// (e.g. `BTC-USDT`), with `details` (a JSON object).
    pub fn entry(&self, action: &str, target: &str, details: Value) -> NewAuditEntry {
        NewAuditEntry {
            actor: self.actor.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            details,
            request_id: self.request_id.clone(),
            ip: self.ip.clone(),
        }
    }
}

/// An entry to append; the id, time and hashes are the log's.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEntry {
    pub actor: String,
    pub action: String,
    pub target: String,
    /// A JSON object whose numbers are integers: the hash must be
    /// recomputable by any JSON library, and floats print differently in
    /// each.
    pub details: Value,
    pub request_id: String,
    pub ip: Option<String>,
}

/// One row, as `GET /admin/v1/audit` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// Unix milliseconds.
    pub time: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    #[schema(value_type = Object)]
    pub details: Value,
    pub request_id: String,
    pub ip: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    time: i64,
    actor: String,
    action: String,
    target: String,
    details: String,
    request_id: String,
    ip: Option<String>,
    prev_hash: String,
    hash: String,
}

impl AuditRow {
    fn into_entry(self) -> Result<AuditEntry, serde_json::Error> {
        Ok(AuditEntry {
            details: serde_json::from_str(&self.details)?,
            id: self.id,
            time: self.time,
            actor: self.actor,
            action: self.action,
            target: self.target,
            request_id: self.request_id,
            ip: self.ip,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

/// `value` as canonical JSON: object keys sorted by their UTF-8 bytes (the
/// same order as by code point), recursively; no whitespace; strings
/// escaped as serde_json (and Python's `json.dumps(..., ensure_ascii=False)`)
/// escape them: `"`, `\` and control characters only.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(&Value::String(key.clone()), out);
                out.push(':');
                write_canonical(&map[key.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        // Scalars: serde_json's compact form, which cannot fail for them.
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

/// The entry as the API shows it, without `prev_hash` and `hash`: what is hashed.
fn hashed_view(id: i64, time: i64, e: (&str, &str, &str, &Value, &str, Option<&str>)) -> Value {
    let (actor, action, target, details, request_id, ip) = e;
    serde_json::json!({
        "id": id,
        "time": time,
        "actor": actor,
        "action": action,
        "target": target,
        "details": details,
        "request_id": request_id,
        "ip": ip,
    })
}

/// `hex(sha256(prev_hash || canonical_json))`.
pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

impl AuditEntry {
    /// The hash this entry must have after `prev_hash`.
    pub fn expected_hash(&self, prev_hash: &str) -> String {
        let view = hashed_view(
            self.id,
            self.time,
            (
                &self.actor,
                &self.action,
                &self.target,
                &self.details,
                &self.request_id,
                self.ip.as_deref(),
            ),
        );
        chain_hash(prev_hash, &canonical_json(&view))
    }
}

/// Why an entry cannot be appended (a caller's bug, never user input).
#[derive(Debug, thiserror::Error)]
pub enum InvalidEntry {
    #[error("audit details must be a JSON object")]
    DetailsNotObject,
    #[error("audit details may hold integers only, not {0}")]
    FloatInDetails(serde_json::Number),
}

fn check_details(details: &Value) -> Result<(), InvalidEntry> {
    fn integers_only(v: &Value) -> Result<(), InvalidEntry> {
        match v {
            Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
                Err(InvalidEntry::FloatInDetails(n.clone()))
            }
            Value::Array(items) => items.iter().try_for_each(integers_only),
            Value::Object(map) => map.values().try_for_each(integers_only),
            _ => Ok(()),
        }
    }
    if !details.is_object() {
        return Err(InvalidEntry::DetailsNotObject);
    }
    integers_only(details)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Appends `entry` inside the caller's transaction (`conn` is the
/// transaction's connection) and returns its id. Call it as the last
/// write of the transaction (module docs, "Lock order"): it holds the
/// log's append lock until the transaction ends.
pub async fn append(conn: &mut PgConnection, entry: &NewAuditEntry) -> sqlx::Result<i64> {
    check_details(&entry.details).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK_KEY)
        .execute(&mut *conn)
        .await?;
    // Under the lock, in READ COMMITTED, this statement sees every row
    // committed by the appenders before us.
    let prev_hash: String =
        sqlx::query_scalar("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or_else(|| GENESIS_HASH.to_owned());
    let id: i64 = sqlx::query_scalar("SELECT nextval(pg_get_serial_sequence('audit_log', 'id'))")
        .fetch_one(&mut *conn)
        .await?;
    let time = now_ms();
    let request_id = truncate(&entry.request_id, REQUEST_ID_LEN_MAX);
    let view = hashed_view(
        id,
        time,
        (
            &entry.actor,
            &entry.action,
            &entry.target,
            &entry.details,
            request_id,
            entry.ip.as_deref(),
        ),
    );
    let hash = chain_hash(&prev_hash, &canonical_json(&view));
    sqlx::query(
        "INSERT INTO audit_log (id, time, actor, action, target, details, request_id, ip, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6::json, $7, $8, $9, $10)",
    )
    .bind(id)
    .bind(time)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.target)
    // Stored exactly as hashed (`json` keeps its text).
    .bind(canonical_json(&entry.details))
    .bind(request_id)
    .bind(&entry.ip)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    Ok(id)
}

/// At most `len_max` characters of `s` (on a character boundary).
fn truncate(s: &str, len_max: usize) -> &str {
    s.char_indices().nth(len_max).map_or(s, |(i, _)| &s[..i])
}

/// The entries after `after_id`, ascending, at most `limit`.
pub async fn list(db: &PgPool, after_id: i64, limit: i64) -> sqlx::Result<Vec<AuditEntry>> {
    let rows: Vec<AuditRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2"
    )))
    .bind(after_id)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|r| r.into_entry().map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .collect()
}

/// A page of the log newest first (the paginated form): ids below
/// `before_id`, `time` in `[start_ms, end_ms)`; at most `limit` entries.
pub async fn list_newest(
    db: &PgPool,
    before_id: Option<i64>,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<AuditEntry>> {
    let rows: Vec<AuditRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_log
         WHERE ($1::int8 IS NULL OR id < $1)
           AND ($2::int8 IS NULL OR time >= $2) AND ($3::int8 IS NULL OR time < $3)
         ORDER BY id DESC LIMIT $4"
    )))
    .bind(before_id)
    .bind(start_ms)
    .bind(end_ms)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|r| r.into_entry().map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .collect()
}

/// A chain [`verify`] walked to its end without a fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// Entries checked.
    pub entries: u64,
    /// The last entry's id and hash: record them elsewhere (the RUNBOOK's
    /// anchor), and a later run shows whether rows were cut off the end,
    /// which the chain alone cannot reveal.
    pub last: Option<(i64, String)>,
}

/// The first entry that does not fit the chain, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit log entry {id}: {why}")]
pub struct BrokenAt {
    pub id: i64,
    pub why: String,
}

/// Walks the whole chain in id order, a page at a time. The outer error is
/// the database's; the inner one the first entry that breaks the chain.
pub async fn verify(db: &PgPool) -> sqlx::Result<Result<VerifiedChain, BrokenAt>> {
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut after_id = 0;
    let mut checked = VerifiedChain {
        entries: 0,
        last: None,
    };
    loop {
        let rows: Vec<AuditRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after_id)
        .bind(VERIFY_PAGE_LEN)
        .fetch_all(db)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(Ok(checked));
        };
        after_id = last.id;
        for row in rows {
            let id = row.id;
            let entry = match row.into_entry() {
                Ok(e) => e,
                Err(e) => {
                    return Ok(Err(BrokenAt {
                        id,
                        why: format!("details are not JSON: {e}"),
                    }));
                }
            };
            if let Err(why) = check_link(&entry, &prev_hash) {
                return Ok(Err(BrokenAt { id, why }));
            }
            prev_hash = entry.hash;
            checked.entries += 1;
            checked.last = Some((id, prev_hash.clone()));
        }
    }
}

/// Whether `entry` follows a row whose hash is `prev_hash`.
pub fn check_link(entry: &AuditEntry, prev_hash: &str) -> Result<(), String> {
    if entry.prev_hash != prev_hash {
        return Err(format!(
            "prev_hash {} is not the previous entry's hash {prev_hash} (an entry before it was changed, removed or inserted)",
            entry.prev_hash
        ));
    }
    let expected = entry.expected_hash(prev_hash);
    if entry.hash != expected {
        return Err(format!(
            "hash {} does not match its content (expected {expected}): the entry was changed",
            entry.hash
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> AuditEntry {
        AuditEntry {
            id: 1,
            time: 1_700_000_000_000,
            actor: "root".into(),
            action: "asset.create".into(),
            target: "BTC".into(),
            details: json!({"scale": 8, "symbol": "BTC", "note": "é \"q\" \n",
                            "a": {"z": 1, "b": [true, null]}}),
            request_id: "req-1".into(),
            ip: Some("203.0.113.7".into()),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn canonical_json_sorts_keys_recursively_without_whitespace_or_ascii_escapes() {
        let e = sample();
        let view = hashed_view(
            e.id,
            e.time,
            (
                &e.actor,
                &e.action,
                &e.target,
                &e.details,
                &e.request_id,
                e.ip.as_deref(),
            ),
        );
        assert_eq!(
            canonical_json(&view),
            r#"{"action":"asset.create","actor":"root","details":{"a":{"b":[true,null],"z":1},"note":"é \"q\" \n","scale":8,"symbol":"BTC"},"id":1,"ip":"203.0.113.7","request_id":"req-1","target":"BTC","time":1700000000000}"#
        );
    }

    /// The vectors were computed independently, with Python:
    /// `hashlib.sha256((prev + json.dumps(e, sort_keys=True,
    /// separators=(",", ":"), ensure_ascii=False)).encode()).hexdigest()`.
    #[test]
    fn the_chain_hash_matches_an_independent_computation() {
        let first = sample();
        let h1 = first.expected_hash(GENESIS_HASH);
        assert_eq!(
            h1,
            "160e45248e37f6902271351fe516c684c61b50a9db43c2284539eb16cd4694a7"
        );
        let second = AuditEntry {
            id: 2,
            ip: None,
            details: json!({}),
            ..sample()
        };
        assert_eq!(
            second.expected_hash(&h1),
            "24b6f14618e5ad8a3f19c095e2e48b781582d558eeadff7b8d105ba893015c7a"
        );
    }

    #[test]
    fn a_changed_field_or_a_wrong_link_is_reported() {
        let mut e = sample();
        e.hash = e.expected_hash(GENESIS_HASH);
        assert_eq!(check_link(&e, GENESIS_HASH), Ok(()));
        let other_prev = "1".repeat(64);
        assert!(
            check_link(&e, &other_prev)
                .unwrap_err()
                .contains("prev_hash")
        );
        let mut changed = e.clone();
        changed.details["scale"] = json!(9);
        assert!(
            check_link(&changed, GENESIS_HASH)
                .unwrap_err()
                .contains("changed")
        );
    }

    #[test]
    fn details_must_be_an_object_of_integers() {
        assert!(check_details(&json!({"a": [1, -2, {"b": "x"}]})).is_ok());
        assert!(matches!(
            check_details(&json!([1])),
            Err(InvalidEntry::DetailsNotObject)
        ));
        assert!(matches!(
            check_details(&json!({"a": {"b": 0.5}})),
            Err(InvalidEntry::FloatInDetails(_))
        ));
    }

    #[test]
    fn long_request_ids_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 2), "éé");
    }
}
