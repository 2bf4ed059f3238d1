//! `exchange admin dlq` against real Redis and Postgres: an operator lists
//! the dead letters, reads one, replays it onto its stream, drops another,
//! and every replay/drop leaves an audit record.

use std::process::{Command, Output};

use exchange_common::testing::test_env;
use redis::AsyncCommands;

/// action, dlq_entry, original_id, error, operator
type AuditRow = (String, String, Option<String>, Option<String>, String);

fn admin(env: &exchange_common::testing::TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("admin")
        .arg("dlq")
        .args(args)
        .env("REDIS_URL", &env.redis_url)
        .env("REDIS_KEY_PREFIX", &env.redis_prefix)
        .env("DB_URL", &env.db_url)
        .env("EXCHANGE_OPERATOR", "test-operator")
        .output()
        .expect("run exchange admin dlq")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn operator_lists_shows_replays_and_drops_dead_letters_with_an_audit_trail() {
    let env = test_env().await;
    let stream = format!("{}:events", env.redis_prefix);
    let dlq = format!("{stream}:dlq");
    let client = redis::Client::open(env.redis_url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");

    let first: String = conn
        .xadd(
            &dlq,
            "*",
            &[
                ("batch", "{\"seq\":7}"),
                ("dlq.id", "1-0"),
                ("dlq.error", "boom"),
            ],
        )
        .await
        .expect("xadd");
    let second: String = conn
        .xadd(
            &dlq,
            "*",
            &[
                ("batch", "{\"seq\":8}"),
                ("dlq.id", "2-0"),
                ("dlq.error", "bad"),
            ],
        )
        .await
        .expect("xadd");

    let listed = stdout(&admin(&env, &["list"]));
    assert!(listed.contains(&format!("{dlq}\t2")), "{listed}");

    let shown = stdout(&admin(&env, &["show", &stream, &first]));
    assert!(
        shown.contains("dlq.error: boom") && shown.contains("batch: {\"seq\":7}"),
        "{shown}"
    );

    let replayed = stdout(&admin(&env, &["replay", &stream, &first]));
    assert!(replayed.contains("replayed"), "{replayed}");
    let back: redis::streams::StreamRangeReply = conn.xrange_all(&stream).await.expect("xrange");
    assert_eq!(back.ids.len(), 1, "the entry is back on its stream");
    assert_eq!(
        back.ids[0].get::<String>("batch").as_deref(),
        Some("{\"seq\":7}")
    );
    assert!(
        back.ids[0].get::<String>("dlq.error").is_none(),
        "dead-letter bookkeeping is not replayed"
    );

    stdout(&admin(&env, &["drop", &stream, &second]));
    let left: u64 = conn.xlen(&dlq).await.expect("xlen");
    assert_eq!(left, 0, "both entries left the dead letters");

    // A second drop of the same entry fails: nothing silently "succeeds".
    assert!(!admin(&env, &["drop", &stream, &second]).status.success());

    let db = sqlx::PgPool::connect(&env.db_url).await.expect("db");
    let audit: Vec<AuditRow> = sqlx::query_as(
        "SELECT action, dlq_entry, original_id, error, operator FROM dlq_audit ORDER BY id",
    )
    .fetch_all(&db)
    .await
    .expect("audit");
    assert_eq!(audit.len(), 2, "a failed drop leaves no record: {audit:?}");
    assert_eq!(
        audit[0],
        (
            "replay".into(),
            first.clone(),
            Some("1-0".into()),
            Some("boom".into()),
            "test-operator".into()
        )
    );
    assert_eq!(audit[1].0, "drop");
    assert_eq!(audit[1].1, second);
    // The same two, in the audit log, by the command line's operator.
    let logged: Vec<(String, String, String)> =
        sqlx::query_as("SELECT actor, action, target FROM audit_log ORDER BY id")
            .fetch_all(&db)
            .await
            .expect("audit log");
    assert_eq!(
        logged,
        [
            (
                "cli:test-operator".to_owned(),
                "dlq.replay".to_owned(),
                format!("{stream} {first}")
            ),
            (
                "cli:test-operator".to_owned(),
                "dlq.drop".to_owned(),
                format!("{stream} {second}")
            ),
        ]
    );

    // Usage errors exit 64.
    assert_eq!(admin(&env, &["bogus"]).status.code(), Some(64));
}
