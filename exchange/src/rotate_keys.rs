//! `exchange admin rotate-api-key-encryption`: re-encrypts every stored
//! API-key and TOTP secret under `API_KEY_ENCRYPTION_KEY`
//! (`exchange_gateway::auth::keys::rotate_stored_secrets`).
//!
//! Run it with the gateway's configuration after setting the new key and
//! moving the old one to `API_KEY_ENCRYPTION_KEY_PREVIOUS` (docs/RUNBOOK.md).
//! It reads in bounded batches, writes each row only over the ciphertext it
//! read, and may be re-run at any time (a second run finds every secret
//! current). Prints counts; a secret no configured key opens is named by
//! its id (never its content) and makes the exit code 1. Exit 64 for a
//! configuration error, 2 when it could not run, 3 when secrets kept
//! changing under it for several passes.

use std::process::ExitCode;

use exchange_common::config::{Config, EXIT_CONFIG};
use exchange_gateway::auth::keys::{self, KeyCipher};

const USAGE: &str = "usage: exchange admin rotate-api-key-encryption [--batch N]

Re-encrypts every stored API-key and TOTP secret under API_KEY_ENCRYPTION_KEY; secrets under
API_KEY_ENCRYPTION_KEY_PREVIOUS (or, from older versions, under AUTH_TOKEN_SECRET) are rewritten,
N rows per read (default 500). Safe to re-run. Exit 0: every secret is under the current key;
1: some secret no configured key opens (named by id); 2: could not run; 3: secrets kept changing
while it ran (restart every gateway with the new key, run again); 64: bad configuration.

env: the gateway's (DB_URL, API_KEY_ENCRYPTION_KEY, API_KEY_ENCRYPTION_KEY_PREVIOUS, AUTH_TOKEN_SECRET, ...)";

const EXIT_UNREADABLE: u8 = 1;
const EXIT_CANNOT_RUN: u8 = 2;
const EXIT_STILL_CHANGING: u8 = 3;

/// Passes over the table while rows change under the run (a secret
/// written meanwhile, perhaps under the old key by a gateway not yet
/// restarted, is read again in the next pass).
const ROTATE_PASSES_MAX: u32 = 5;

/// Runs passes until one skips nothing (or [`ROTATE_PASSES_MAX`]); the
/// counts are summed, `skipped_concurrent` is the last pass's.
async fn rotate_until_settled(
    db: &sqlx::PgPool,
    cipher: &KeyCipher,
    batch: i64,
) -> anyhow::Result<keys::RotationReport> {
    let mut total = keys::rotate_stored_secrets(db, cipher, batch).await?;
    for _ in 1..ROTATE_PASSES_MAX {
        if total.skipped_concurrent == 0 {
            break;
        }
        let pass = keys::rotate_stored_secrets(db, cipher, batch).await?;
        total.re_encrypted += pass.re_encrypted;
        total.re_encrypted_from_token_secret += pass.re_encrypted_from_token_secret;
        total.unreadable = pass.unreadable;
        total.skipped_concurrent = pass.skipped_concurrent;
    }
    Ok(total)
}

pub async fn run_cli(args: &[String]) -> ExitCode {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let batch = match args.as_slice() {
        [] => keys::ROTATE_BATCH_DEFAULT,
        ["--batch", n] => match n.parse::<i64>() {
            Ok(n) if (1..=100_000).contains(&n) => n,
            _ => {
                eprintln!("rotate-api-key-encryption: --batch takes 1 to 100000\n\n{USAGE}");
                return ExitCode::from(64);
            }
        },
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(errors) => {
            eprint!("rotate-api-key-encryption: {errors}");
            return ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(64));
        }
    };
    exchange_common::telemetry::init_logging(&config.log_level);
    let db = match exchange_common::db::pool(&config, "exchange-rotate-api-key-encryption") {
        Ok(db) => db,
        Err(e) => {
            eprintln!("rotate-api-key-encryption: DB_URL: {e}");
            return ExitCode::from(64);
        }
    };
    let cipher = KeyCipher::new(&config);
    match rotate_until_settled(&db, &cipher, batch).await {
        Ok(report) if report.skipped_concurrent > 0 => {
            eprintln!(
                "rotate-api-key-encryption: {} secret(s) kept changing during {ROTATE_PASSES_MAX} passes (a gateway still on the old configuration?); restart every gateway with the new key and run it again",
                report.skipped_concurrent
            );
            ExitCode::from(EXIT_STILL_CHANGING)
        }
        Ok(report) => {
            println!(
                "rotate-api-key-encryption: {} re-encrypted ({} of them from AUTH_TOKEN_SECRET), {} already current, {} unreadable, {} changed meanwhile (skipped)",
                report.re_encrypted,
                report.re_encrypted_from_token_secret,
                report.already_current,
                report.unreadable.len(),
                report.skipped_concurrent,
            );
            if report.unreadable.is_empty() {
                return ExitCode::SUCCESS;
            }
            for name in &report.unreadable {
                println!("unreadable: {name} (no configured key opens it)");
            }
            eprintln!(
                "rotate-api-key-encryption: {} secret(s) cannot be read with API_KEY_ENCRYPTION_KEY, API_KEY_ENCRYPTION_KEY_PREVIOUS or AUTH_TOKEN_SECRET(_PREVIOUS); see docs/RUNBOOK.md",
                report.unreadable.len()
            );
            ExitCode::from(EXIT_UNREADABLE)
        }
        Err(e) => {
            eprintln!("rotate-api-key-encryption: {e:#}");
            ExitCode::from(EXIT_CANNOT_RUN)
        }
    }
}
