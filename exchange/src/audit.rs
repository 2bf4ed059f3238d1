//! `exchange admin audit verify|export`: the operator's tools for the audit
//! log (`exchange_store::audit`).
//!
//! `verify` walks the whole hash chain: exit 0 printing how many entries
//! it checked and the last one's id and hash (keep them: a later run shows
//! whether entries were cut off the end, which the chain alone cannot),
//! 1 naming the first entry that breaks it, 2 when it could not check.
//! `export` prints the entries as JSON lines, as `GET /admin/v1/audit`
//! shows them, for archives and for checking the chain elsewhere.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use exchange_store::audit;

const USAGE: &str = "usage: exchange admin audit <command>

  verify                    check the whole hash chain; exit 0 (prints the entries checked and the
                            last id and hash), 1 naming the first bad entry, 2 if it cannot check
  export [--after-id N]     the entries after id N (default 0: all) as JSON lines on stdout

env: DB_URL";

/// Exit code of a chain that does not verify.
const EXIT_BROKEN: u8 = 1;
/// Exit code when the chain could not be checked (no database, bad usage of it).
const EXIT_CANNOT_CHECK: u8 = 2;
/// Entries `export` reads per query.
const EXPORT_PAGE_LEN: i64 = 1_000;
/// Bound on connecting to Postgres.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run_cli(args: &[String]) -> ExitCode {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let after_id = match args.as_slice() {
        ["export"] => Some(0),
        ["export", "--after-id", n] => match n.parse::<i64>() {
            Ok(n) if n >= 0 => Some(n),
            _ => {
                eprintln!("audit: --after-id takes an entry id (0 or more)\n\n{USAGE}");
                return ExitCode::from(64);
            }
        },
        _ => None,
    };
    let result = match (args.as_slice(), after_id) {
        (["verify"], _) => return verify().await,
        (_, Some(after_id)) => export(after_id).await,
        (["-h" | "--help" | "help"], _) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("audit: {e:#}");
            ExitCode::from(EXIT_CANNOT_CHECK)
        }
    }
}

async fn connect() -> anyhow::Result<sqlx::PgPool> {
    let url = match std::env::var("DB_URL") {
        Ok(v) if !v.is_empty() => v,
        _ => bail!("DB_URL is not set"),
    };
    let target = exchange_common::db::url_target(&url);
    tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgPool::connect(&url))
        .await
        .with_context(|| format!("connect to postgres at {target}: timed out"))?
        .map_err(|e| {
            anyhow::anyhow!(
                "connect to postgres: {}",
                exchange_common::db::describe_error(&target, &e)
            )
        })
}

async fn verify() -> ExitCode {
    let checked = match connect().await {
        Ok(db) => audit::verify(&db).await.context("read the audit log"),
        Err(e) => Err(e),
    };
    match checked {
        Ok(Ok(chain)) => {
            match chain.last {
                Some((id, hash)) => println!(
                    "audit log verified: {} entries, last id {id}, hash {hash}",
                    chain.entries
                ),
                None => println!("audit log verified: 0 entries (empty)"),
            }
            ExitCode::SUCCESS
        }
        Ok(Err(broken)) => {
            eprintln!("audit log broken at entry {}: {}", broken.id, broken.why);
            ExitCode::from(EXIT_BROKEN)
        }
        Err(e) => {
            eprintln!("audit: cannot verify: {e:#}");
            ExitCode::from(EXIT_CANNOT_CHECK)
        }
    }
}

async fn export(mut after_id: i64) -> anyhow::Result<()> {
    let db = connect().await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    loop {
        let page = audit::list(&db, after_id, EXPORT_PAGE_LEN)
            .await
            .context("read the audit log")?;
        let Some(last) = page.last() else {
            break;
        };
        after_id = last.id;
        for entry in &page {
            serde_json::to_writer(&mut out, entry)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}
