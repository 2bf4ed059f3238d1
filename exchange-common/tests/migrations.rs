//! Migrations against a real PostgreSQL (DB_URL): idempotent, and the
//! ledger refuses unbalanced journal entries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use exchange_common::testing;
use sqlx::Connection as _;

/// The build embeds `migrations/*.sql`; a build script that did not re-run
/// after a file was added or edited would ship an old schema silently.
#[test]
fn the_binary_embeds_every_migration_file_exactly_as_on_disk() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut on_disk: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    on_disk.sort();
    let embedded: Vec<(String, String)> = exchange_common::db::migrations()
        .iter()
        .map(|(name, sql)| ((*name).to_owned(), (*sql).to_owned()))
        .collect();
    let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&embedded),
        names(&on_disk),
        "stale build: run `touch exchange-common/build.rs` and rebuild"
    );
    assert!(
        embedded == on_disk,
        "an embedded migration differs from its file: `touch exchange-common/build.rs` and rebuild"
    );
}

#[tokio::test]
async fn migrating_twice_changes_nothing_the_second_time() {
    let url = testing::empty_database().await;
    let first = exchange_common::db::migrate(&url).await.unwrap();
    assert_eq!(first.len(), exchange_common::db::migrations().len());
    assert!(first.contains(&"0001_accounts.sql"));
    let second = exchange_common::db::migrate(&url).await.unwrap();
    assert!(second.is_empty(), "{second:?}");
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let versions: Vec<String> =
        sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        versions,
        first.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn ledger_refuses_unbalanced_journal_entries_and_rewrites() {
    let env = testing::test_env().await;
    let mut conn = sqlx::PgConnection::connect(&env.db_url).await.unwrap();
    sqlx::raw_sql("INSERT INTO assets (symbol, scale) VALUES ('BTC', 8); INSERT INTO users (email, password_hash) VALUES ('a@b.c', 'x')")
        .execute(&mut conn)
        .await
        .unwrap();
    let unbalanced = sqlx::raw_sql(
        "BEGIN;
         INSERT INTO ledger_journal (id, kind) VALUES (1, 'deposit');
         INSERT INTO ledger_postings (journal_id, account_kind, user_id, asset, amount) VALUES (1, 'user', 1, 'BTC', 1.5);
         INSERT INTO ledger_postings (journal_id, account_kind, asset, amount) VALUES (1, 'deposits', 'BTC', -1.4);
         COMMIT;",
    )
    .execute(&mut conn)
    .await;
    let err = unbalanced
        .expect_err("an unbalanced entry must not commit")
        .to_string();
    assert!(err.contains("unbalanced"), "{err}");
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
    sqlx::raw_sql(
        "BEGIN;
         INSERT INTO ledger_journal (id, kind) VALUES (2, 'deposit');
         INSERT INTO ledger_postings (journal_id, account_kind, user_id, asset, amount) VALUES (2, 'user', 1, 'BTC', 1.5);
         INSERT INTO ledger_postings (journal_id, account_kind, asset, amount) VALUES (2, 'deposits', 'BTC', -1.5);
         COMMIT;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let rewrite = sqlx::raw_sql("UPDATE ledger_postings SET amount = 2 WHERE journal_id = 2")
        .execute(&mut conn)
        .await;
    assert!(rewrite.is_err(), "postings are append-only");
}

/// 0011 replaced the per-row foreign keys of the order path's tables by
/// per-statement checks: a reference to a missing market, asset or user
/// must still fail (23503), in a multi-row insert too, and so must an
/// update of a reference column to a missing row.
#[tokio::test]
async fn order_path_tables_refuse_references_to_missing_rows() {
    let env = testing::test_env().await;
    let mut conn = sqlx::PgConnection::connect(&env.db_url).await.unwrap();
    testing::seed_market(&mut conn, &testing::TestMarket::default()).await;
    sqlx::raw_sql("INSERT INTO users (id, email, password_hash) VALUES (1, 'a@b.c', 'x')")
        .execute(&mut conn)
        .await
        .unwrap();
    let order = |id: i64, user: i64, market: &str, asset: &str| {
        format!(
            "INSERT INTO orders (id, user_id, market, side, type, time_in_force, price, quantity,
                 reserve_asset, reserved, locked_remaining, seq)
             VALUES ({id}, 1, 'BTC-USDT', 'buy', 'limit', 'GTC', 1, 1, 'USDT', 1, 1, {id}),
                    ({id} + 1, {user}, '{market}', 'buy', 'limit', 'GTC', 1, 1, '{asset}', 1, 1, {id} + 1)"
        )
    };
    let code = |r: Result<sqlx::postgres::PgQueryResult, sqlx::Error>| {
        r.expect_err("must be refused")
            .as_database_error()
            .and_then(|d| d.code().map(|c| c.into_owned()))
    };
    let fk = Some("23503".to_owned());
    for (what, sql) in [
        ("market", order(10, 1, "ETH-USDT", "USDT")),
        ("asset", order(20, 1, "BTC-USDT", "XXX")),
        ("user", order(30, 99, "BTC-USDT", "USDT")),
        (
            "command market",
            "INSERT INTO order_commands (market, seq, time_ms, command) VALUES ('ETH-USDT', 1, 0, '{}')".to_owned(),
        ),
        (
            "event market",
            "INSERT INTO event_batches (market, seq, time_ms, events) VALUES ('ETH-USDT', 1, 0, '[]')".to_owned(),
        ),
        (
            "trade market",
            "INSERT INTO trades (market, id, seq, price, quantity, quote_amount, taker_side, maker_order_id,
                 taker_order_id, maker_user_id, taker_user_id, maker_fee, taker_fee, time_ms)
             VALUES ('ETH-USDT', 1, 1, 1, 1, 1, 'buy', 1, 2, 1, 1, 0, 0, 0)".to_owned(),
        ),
        (
            "fill user",
            "INSERT INTO fills (user_id, order_id, market, trade_id, side, price, quantity, quote_amount,
                 fee, fee_asset, liquidity, time_ms)
             VALUES (99, 1, 'BTC-USDT', 1, 'buy', 1, 1, 1, 0, 'BTC', 'maker', 0)".to_owned(),
        ),
    ] {
        assert_eq!(code(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await), fk, "{what}");
    }
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(none, 0, "a refused multi-row insert leaves no row behind");

    sqlx::raw_sql(sqlx::AssertSqlSafe(order(40, 1, "BTC-USDT", "USDT")))
        .execute(&mut conn)
        .await
        .unwrap();
    let moved = sqlx::raw_sql("UPDATE orders SET market = 'ETH-USDT' WHERE id = 40")
        .execute(&mut conn)
        .await;
    assert_eq!(code(moved), fk, "an update to a missing market is refused");
    let moved = sqlx::raw_sql("UPDATE orders SET reserve_asset = 'XXX' WHERE id = 40")
        .execute(&mut conn)
        .await;
    assert_eq!(code(moved), fk, "an update to a missing asset is refused");
    sqlx::raw_sql("UPDATE orders SET status = 'canceled', reserve_asset = 'BTC' WHERE id = 40")
        .execute(&mut conn)
        .await
        .expect("an update to existing references is allowed");
}
