//! The binary refuses a bad configuration before binding any port: every
//! problem listed at once, exit code 64.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn exchange(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_exchange"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run the exchange binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_variables_are_all_reported_with_exit_code_64() {
    let (code, stderr) = exchange(&["gateway"], &[]);
    assert_eq!(code, Some(64), "{stderr}");
    for key in [
        "DB_URL",
        "REDIS_URL",
        "INTERNAL_TOKEN",
        "AUTH_TOKEN_SECRET",
        "ADMIN_TOKEN",
    ] {
        assert!(stderr.contains(key), "{key} not reported: {stderr}");
    }
}

#[test]
fn prod_refuses_dev_defaults_and_invalid_values_without_leaking_secrets() {
    let (code, stderr) = exchange(
        &["all"],
        &[
            ("APP_ENV", "prod"),
            ("DB_URL", "mysql://nope"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("INTERNAL_TOKEN", "dev-internal-token-change-me-please-000"),
            ("AUTH_TOKEN_SECRET", "too-short"),
            ("ADMIN_TOKEN", "dev-admin-token-change-me-please-00000"),
            ("GATEWAY_HTTP_ADDR", "not-an-address"),
            // Would collide with anything listening if the binary bound first.
            ("ORDER_HTTP_ADDR", "127.0.0.1:1"),
        ],
    );
    assert_eq!(code, Some(64), "{stderr}");
    for needle in [
        "APP_VERSION",
        "DB_URL must start with",
        "INTERNAL_TOKEN is a development default",
        "AUTH_TOKEN_SECRET is shorter than 32",
        "ADMIN_TOKEN is a development default",
        "GATEWAY_HTTP_ADDR",
        "MARKETDATA_WS_ALLOW_ORIGINS",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not reported: {stderr}");
    }
    assert!(
        !stderr.contains("too-short"),
        "secret values never printed: {stderr}"
    );
}

#[test]
fn a_bad_read_replica_is_reported_with_the_rest_before_any_port_is_bound() {
    let (code, stderr) = exchange(
        &["order"],
        &[
            ("APP_ENV", "prod"),
            ("APP_VERSION", "1.0.0"),
            (
                "DB_URL",
                "postgres://app:pw@db.internal/x?sslmode=verify-full",
            ),
            (
                "DB_READ_URL",
                "postgres://ro:s3cret-replica@replica.internal/x",
            ),
            ("DB_READ_MAX_LAG_MS", "10"),
            ("REDIS_URL", "rediss://cache.internal"),
            ("INTERNAL_TOKEN", "dev-internal-token-change-me-please-000"),
            ("ORDER_HTTP_ADDR", "127.0.0.1:1"),
        ],
    );
    assert_eq!(code, Some(64), "{stderr}");
    for needle in [
        "DB_READ_URL (host replica.internal) has no sslmode=",
        "DB_READ_MAX_LAG_MS must be between 500 and",
        "INTERNAL_TOKEN is a development default",
        "AUTH_TOKEN_SECRET is required",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not reported: {stderr}");
    }
    assert!(!stderr.contains("s3cret"), "a password leaked: {stderr}");
}

#[test]
fn unknown_command_is_a_usage_error() {
    let (code, stderr) = exchange(&["frobnicate"], &[]);
    assert_eq!(code, Some(64));
    assert!(stderr.contains("usage: exchange"), "{stderr}");
}

#[test]
fn migrate_without_db_url_is_a_usage_error() {
    let (code, stderr) = exchange(&["migrate"], &[]);
    assert_eq!(code, Some(64));
    assert!(stderr.contains("DB_URL"), "{stderr}");
}

#[test]
fn prod_refuses_plaintext_backends_off_this_machine_naming_the_host_not_the_password() {
    let (code, stderr) = exchange(
        &["all"],
        &[
            ("APP_ENV", "prod"),
            ("APP_VERSION", "1.0.0"),
            (
                "DB_URL",
                "postgres://app:pg-s3cret@db.internal.example:5432/exchange",
            ),
            (
                "REDIS_URL",
                "redis://app:redis-s3cret@cache.internal.example:6379/0",
            ),
            (
                "INTERNAL_TOKEN",
                "0123456789abcdef0123456789abcdef-internal",
            ),
            ("AUTH_TOKEN_SECRET", "fedcba9876543210fedcba9876543210-auth"),
            ("ADMIN_TOKEN", "00112233445566778899aabbccddeeff-admin"),
            ("MARKETDATA_WS_ALLOW_ORIGINS", "https://exchange.example"),
            ("ORDER_HTTP_ADDR", "127.0.0.1:1"),
        ],
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("DB_URL (host db.internal.example) has no sslmode="),
        "{stderr}"
    );
    assert!(
        stderr.contains("REDIS_URL (host cache.internal.example) is not rediss://"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "a password leaked: {stderr}");
}
