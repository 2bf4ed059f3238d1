//! `exchange admin audit verify|export` against a real Postgres: the
//! command an operator runs on a chain written by the application, intact
//! (exit 0, how many entries) and after a superuser edited a row (non-zero,
//! naming it).

use std::process::{Command, Output};

use exchange_common::testing::{TestEnv, test_env};
use exchange_store::audit::{self, AuditContext};

fn audit_cli(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("admin")
        .arg("audit")
        .args(args)
        .env("DB_URL", &env.db_url)
        .output()
        .expect("run exchange admin audit")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn verify_counts_an_intact_chain_and_names_the_row_a_superuser_edited() {
    let env = test_env().await;
    let db = sqlx::PgPool::connect(&env.db_url).await.expect("db");
    let empty = audit_cli(&env, &["verify"]);
    assert_eq!(empty.status.code(), Some(0), "{}", text(&empty.stderr));
    assert!(text(&empty.stdout).contains("0 entries"));

    let who = AuditContext {
        actor: "alice".to_owned(),
        request_id: "req-1".to_owned(),
        ip: Some("198.51.100.4".to_owned()),
    };
    let mut ids = Vec::new();
    for n in 0..3 {
        let mut tx = db.begin().await.expect("begin");
        let entry = who.entry(
            "asset.create",
            &format!("COIN{n}"),
            serde_json::json!({ "scale": n, "note": "ünïcode \"quoted\"" }),
        );
        ids.push(audit::append(&mut tx, &entry).await.expect("append"));
        tx.commit().await.expect("commit");
    }
    // A rolled-back change leaves no entry (and no hole in the chain).
    let mut tx = db.begin().await.expect("begin");
    audit::append(
        &mut tx,
        &who.entry("asset.create", "GHOST", serde_json::json!({})),
    )
    .await
    .expect("append");
    tx.rollback().await.expect("rollback");

    let ok = audit_cli(&env, &["verify"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).contains(&format!("3 entries, last id {}", ids[2])),
        "{}",
        text(&ok.stdout)
    );
    let exported = audit_cli(&env, &["export", "--after-id", &ids[0].to_string()]);
    assert_eq!(exported.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = text(&exported.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], ids[1]);
    assert_eq!(lines[1]["target"], "COIN2");

    let mut conn = db.acquire().await.expect("conn");
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .expect("replica");
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE id = $1")
        .bind(ids[1])
        .execute(&mut *conn)
        .await
        .expect("tamper");
    drop(conn);
    let broken = audit_cli(&env, &["verify"]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        text(&broken.stderr).contains(&format!("broken at entry {}", ids[1])),
        "{}",
        text(&broken.stderr)
    );

    assert_eq!(audit_cli(&env, &["bogus"]).status.code(), Some(64));
    let no_db = Command::new(env!("CARGO_BIN_EXE_exchange"))
        .args(["admin", "audit", "verify"])
        .env_remove("DB_URL")
        .output()
        .expect("run");
    assert_eq!(no_db.status.code(), Some(2));
}
