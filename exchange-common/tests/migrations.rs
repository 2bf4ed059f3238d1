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
