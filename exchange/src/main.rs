//! The one binary: `exchange gateway|order|matching|clearing|marketdata|wallet|all|migrate`.
//!
//! `main` validates the whole configuration before binding any port (exit
//! code 64 listing every problem), installs JSON logs, binds, and runs the
//! service(s) until SIGTERM/SIGINT, then drains.

mod audit;
mod bench;
mod dlq;
mod rotate_keys;

use std::process::ExitCode;
use std::sync::Arc;

use exchange_common::config::{Config, EXIT_CONFIG};
use exchange_common::{Shutdown, telemetry};

/// Every service allocates per request and per message (JSON, HTTP, Redis
/// and Postgres buffers) from many threads; with glibc malloc about 30 % of
/// the process's CPU samples were in the allocator under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: exchange <command>

commands:
  gateway      public REST API (GATEWAY_HTTP_ADDR) and private WebSocket (GATEWAY_WS_ADDR)
  order        order service (ORDER_HTTP_ADDR)
  matching     matching engine (MATCHING_HTTP_ADDR)
  clearing     clearing and settlement (CLEARING_HTTP_ADDR)
  marketdata   market data (MARKETDATA_HTTP_ADDR)
  wallet       custody: deposits, withdrawals, chain adapters (WALLET_HTTP_ADDR)
  all          every service in one process (local use)
  migrate      apply exchange-common/migrations to DB_URL
  bench        load tool: users placing crossing orders over HTTP (exchange bench --help)
  admin reconcile            check every money invariant (DB_URL); non-zero exit on a violation
  admin dlq list|show|replay|drop   dead letters (exchange admin dlq --help)
  admin audit verify|export  the audit log's hash chain, and its entries as JSON lines (DB_URL)
  admin rotate-api-key-encryption   re-encrypt stored API-key and TOTP secrets under API_KEY_ENCRYPTION_KEY

configuration comes from the environment (and ENV_FILE when set); see docs/RUNBOOK.md";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first().map(String::as_str) else {
        eprintln!("{USAGE}");
        return ExitCode::from(64);
    };
    if matches!(command, "-h" | "--help" | "help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("exchange: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        "migrate" => runtime.block_on(migrate()),
        "bench" => runtime.block_on(bench::run_cli(&args[1..])),
        "admin" if args.get(1).map(String::as_str) == Some("dlq") => {
            runtime.block_on(dlq::run_cli(&args[2..]))
        }
        "admin" if args.get(1).map(String::as_str) == Some("audit") => {
            runtime.block_on(audit::run_cli(&args[2..]))
        }
        "admin" if args.get(1).map(String::as_str) == Some("rotate-api-key-encryption") => {
            runtime.block_on(rotate_keys::run_cli(&args[2..]))
        }
        "admin" if args.get(1).map(String::as_str) == Some("reconcile") => {
            runtime.block_on(exchange_clearing::reconcile::run_cli())
        }
        "gateway" | "order" | "matching" | "clearing" | "marketdata" | "wallet" | "all" => {
            runtime.block_on(serve(command))
        }
        other => {
            eprintln!("exchange: unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(64)
        }
    }
}

async fn migrate() -> ExitCode {
    let url = match std::env::var("DB_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            eprintln!("migrate: DB_URL is not set (postgres://user:password@host:5432/dbname)");
            return ExitCode::from(64);
        }
    };
    telemetry::init_logging(&std::env::var("LOG_LEVEL").unwrap_or_else(|_| "info".into()));
    match exchange_common::db::migrate(&url).await {
        Ok(applied) => {
            let total = exchange_common::db::migrations().len();
            println!(
                "migrate: done, {} applied, {} already present",
                applied.len(),
                total - applied.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("migrate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_or_exit() -> Result<Arc<Config>, ExitCode> {
    match Config::from_env() {
        Ok(c) => Ok(Arc::new(c)),
        Err(errors) => {
            eprint!("exchange: {errors}");
            Err(ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(64)))
        }
    }
}

async fn serve(command: &str) -> ExitCode {
    let config = match config_or_exit() {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init_logging(&config.log_level);
    let _ = telemetry::metrics_handle();
    tracing::info!(command, version = %config.app_version, env = ?config.app_env, "starting");
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    match run(command, config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exited with an error");
            eprintln!("exchange: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: &str, config: Arc<Config>, shutdown: Shutdown) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let all = command == "all";
    // Bind every port first so a conflict fails before anything runs.
    let gateway = if all || command == "gateway" {
        Some(
            exchange_gateway::Listeners::bind(&config)
                .await
                .context("cannot bind the gateway ports")?,
        )
    } else {
        None
    };
    let order = if all || command == "order" {
        Some(
            exchange_order::Listeners::bind(&config)
                .await
                .context("cannot bind ORDER_HTTP_ADDR")?,
        )
    } else {
        None
    };
    let matching = if all || command == "matching" {
        Some(
            exchange_matching::Listeners::bind(&config)
                .await
                .context("cannot bind MATCHING_HTTP_ADDR")?,
        )
    } else {
        None
    };
    let clearing = if all || command == "clearing" {
        Some(
            exchange_clearing::Listeners::bind(&config)
                .await
                .context("cannot bind CLEARING_HTTP_ADDR")?,
        )
    } else {
        None
    };
    let marketdata = if all || command == "marketdata" {
        Some(
            exchange_marketdata::Listeners::bind(&config)
                .await
                .context("cannot bind MARKETDATA_HTTP_ADDR")?,
        )
    } else {
        None
    };
    let wallet = if all || command == "wallet" {
        Some(
            exchange_wallet::Listeners::bind(&config)
                .await
                .context("cannot bind WALLET_HTTP_ADDR")?,
        )
    } else {
        None
    };

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(l) = gateway {
        tasks.spawn(exchange_gateway::run(config.clone(), l, shutdown.clone()));
    }
    if let Some(l) = order {
        tasks.spawn(exchange_order::run(config.clone(), l, shutdown.clone()));
    }
    if let Some(l) = matching {
        tasks.spawn(exchange_matching::run(config.clone(), l, shutdown.clone()));
    }
    if let Some(l) = clearing {
        tasks.spawn(exchange_clearing::run(config.clone(), l, shutdown.clone()));
    }
    if let Some(l) = marketdata {
        tasks.spawn(exchange_marketdata::run(
            config.clone(),
            l,
            shutdown.clone(),
        ));
    }
    if let Some(l) = wallet {
        tasks.spawn(exchange_wallet::run(config.clone(), l, shutdown.clone()));
    }
    // One service failing stops the others: a half-running `all` is worse
    // than a clear exit.
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = result {
            shutdown.trigger();
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
