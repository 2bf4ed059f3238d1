//! Test harness (feature `test-support`): each test gets a fresh, migrated
//! database and a random Redis key prefix, so tests run in parallel.
//!
//! Needs `DB_URL` (a superuser URL, e.g. `postgres://postgres@127.0.0.1:5432/postgres`)
//! and `REDIS_URL`; `scripts/test.sh` provides both.

#![allow(clippy::expect_used, clippy::panic)]

use std::str::FromStr;

use sqlx::Connection;
use sqlx::postgres::PgConnectOptions;

use crate::config::Config;

/// One test's isolated environment.
#[derive(Debug, Clone)]
pub struct TestEnv {
    /// URL of this test's own database.
    pub db_url: String,
    pub db_name: String,
    pub redis_url: String,
    pub redis_prefix: String,
    /// A dev configuration pointing at the above.
    pub config: Config,
}

fn required_env(key: &str) -> String {
    match std::env::var(key) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{key} is not set: tests need a real PostgreSQL and Redis. Run scripts/test.sh, or export \
             DB_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379"
        ),
    }
}

/// Replaces the database name in a postgres URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

/// A random lowercase name with `prefix`.
pub fn random_name(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Creates a fresh database (migrated) and a random Redis prefix.
pub async fn test_env() -> TestEnv {
    let admin_url = required_env("DB_URL");
    let redis_url = required_env("REDIS_URL");
    let db_name = random_name("test_");
    let options = PgConnectOptions::from_str(&admin_url).expect("DB_URL is a valid postgres URL");
    let mut conn = sqlx::PgConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to DB_URL: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let _ = conn.close().await;
    let db_url = with_database(&admin_url, &db_name);
    crate::db::migrate(&db_url)
        .await
        .expect("migrations apply to a fresh database");
    let redis_prefix = random_name("test-");
    let config = Config::for_tests(&db_url, &redis_url, &redis_prefix);
    TestEnv {
        db_url,
        db_name,
        redis_url,
        redis_prefix,
        config,
    }
}

/// Like [`test_env`] without migrating (for migration tests).
pub async fn empty_database() -> String {
    let admin_url = required_env("DB_URL");
    let db_name = random_name("test_");
    let options = PgConnectOptions::from_str(&admin_url).expect("DB_URL is a valid postgres URL");
    let mut conn = sqlx::PgConnection::connect_with(&options)
        .await
        .expect("connect to DB_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    with_database(&admin_url, &db_name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            super::with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            super::with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(
            super::with_database("postgres://u@h", "x"),
            "postgres://u@h/x"
        );
    }
}
