//! Test harness (feature `test-support`): each test gets a fresh, migrated
//! database and a random Redis key prefix, so tests run in parallel.
//!
//! Reference data (assets, markets) is seeded with [`seed_market`], so the
//! tests share one column list for them instead of each writing its own SQL.
//!
//! Needs `DB_URL` (a superuser URL, e.g. `postgres://postgres@127.0.0.1:5432/postgres`)
//! and `REDIS_URL`; `scripts/test.sh` provides both.

#![allow(clippy::expect_used, clippy::panic)]

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Acquire, Connection, PgConnection, Postgres};

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

/// A market and its two assets, as a test seeds them. The rules are decimal
/// text, as the admin API takes them. [`Default`] is the market most tests
/// trade: BTC (scale 8) / USDT (scale 6), tick 0.01, step 0.0001, min qty
/// 0.0001, min notional 1, fees 0.1 % maker / 0.2 % taker, trading.
#[derive(Debug, Clone)]
pub struct TestMarket {
    pub base: String,
    pub base_scale: u8,
    pub quote: String,
    pub quote_scale: u8,
    pub price_tick: &'static str,
    pub qty_step: &'static str,
    pub min_qty: &'static str,
    pub min_notional: &'static str,
    pub maker_fee: &'static str,
    pub taker_fee: &'static str,
    pub status: &'static str,
}

impl TestMarket {
    /// `base`-`quote` with the default rules; change them with struct update
    /// syntax (`TestMarket { min_notional: "0", ..TestMarket::new(..) }`).
    pub fn new(base: &str, base_scale: u8, quote: &str, quote_scale: u8) -> Self {
        Self {
            base: base.to_owned(),
            base_scale,
            quote: quote.to_owned(),
            quote_scale,
            price_tick: "0.01",
            qty_step: "0.0001",
            min_qty: "0.0001",
            min_notional: "1",
            maker_fee: "0.001",
            taker_fee: "0.002",
            status: "trading",
        }
    }

    /// `BASE-QUOTE`, the only symbol the schema accepts for the pair.
    pub fn symbol(&self) -> String {
        format!("{}-{}", self.base, self.quote)
    }
}

impl Default for TestMarket {
    fn default() -> Self {
        Self::new("BTC", 8, "USDT", 6)
    }
}

/// Inserts `market` and its assets. An asset already there (tests seed
/// several markets sharing one) is kept, but must have the same scale.
pub async fn seed_market<'c>(db: impl Acquire<'c, Database = Postgres>, market: &TestMarket) {
    let mut conn = db.acquire().await.expect("a database connection");
    seed_asset(&mut conn, &market.base, market.base_scale).await;
    seed_asset(&mut conn, &market.quote, market.quote_scale).await;
    sqlx::query(
        "INSERT INTO markets (symbol, base, quote, price_tick, qty_step, min_qty, min_notional,
                              maker_fee, taker_fee, status)
         VALUES ($1, $2, $3, $4::numeric, $5::numeric, $6::numeric, $7::numeric,
                 $8::numeric, $9::numeric, $10)",
    )
    .bind(market.symbol())
    .bind(&market.base)
    .bind(&market.quote)
    .bind(market.price_tick)
    .bind(market.qty_step)
    .bind(market.min_qty)
    .bind(market.min_notional)
    .bind(market.maker_fee)
    .bind(market.taker_fee)
    .bind(market.status)
    .execute(&mut *conn)
    .await
    .unwrap_or_else(|e| panic!("seeding market {}: {e}", market.symbol()));
}

async fn seed_asset(conn: &mut PgConnection, symbol: &str, scale: u8) {
    sqlx::query(
        "INSERT INTO assets (symbol, scale) VALUES ($1, $2) ON CONFLICT (symbol) DO NOTHING",
    )
    .bind(symbol)
    .bind(i16::from(scale))
    .execute(&mut *conn)
    .await
    .unwrap_or_else(|e| panic!("seeding asset {symbol}: {e}"));
    let stored: i16 = sqlx::query_scalar("SELECT scale FROM assets WHERE symbol = $1")
        .bind(symbol)
        .fetch_one(&mut *conn)
        .await
        .expect("the asset just seeded");
    assert_eq!(
        stored,
        i16::from(scale),
        "asset {symbol} is already seeded with another scale"
    );
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
