//! Login limits against a real gateway: the per-account failure budget
//! (guesses spread over many addresses are stopped, the right password is
//! refused too until the window passes, an unknown email answers the same)
//! and the bounded Argon2 wait queue (503 `OVERLOADED`, never an unbounded
//! queue).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{App, PASSWORD, error_code, read};

/// A login as if from `ip` (the gateway trusts the loopback proxy).
async fn login_from(app: &App, ip: &str, email: &str, password: &str) -> (u16, Value, Option<u64>) {
    let r = app
        .client
        .post(format!("{}/api/v1/auth/login", app.url))
        .header("x-forwarded-for", ip)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let (s, v) = read(r).await;
    (s, v, retry)
}

#[tokio::test]
async fn failed_logins_from_many_addresses_lock_the_account_known_or_not() {
    let app = support::spawn_with(|c| {
        c.gateway.trusted_proxies = vec!["127.0.0.1".to_owned()];
        c.gateway.rate_limit_login_per_minute = 1_000;
        c.gateway.login_failures_per_account = 3;
        c.gateway.login_failure_window = Duration::from_secs(3);
    })
    .await;
    app.register("victim@example.com").await;
    let mut n = 0;
    let mut next_ip = || {
        n += 1;
        format!("198.51.100.{n}")
    };
    // The same sequence for an account that exists and one that does not.
    for email in ["Victim@Example.com", "nobody@example.com"] {
        for _ in 0..3 {
            let (s, v, _) = login_from(&app, &next_ip(), email, "wrong password!").await;
            assert_eq!((s, error_code(&v)), (401, "INVALID_CREDENTIALS"), "{email}");
        }
        // A fourth guess, from yet another address: refused before checking.
        let (s, v, retry) = login_from(&app, &next_ip(), email, "wrong password!").await;
        assert_eq!(
            (s, error_code(&v)),
            (429, "TOO_MANY_ATTEMPTS"),
            "{email}: {v}"
        );
        let retry = retry.expect("Retry-After");
        assert!((1..=3).contains(&retry), "{retry}");
    }
    // The right password is refused too, from any address, until the window passes.
    let (s, v, _) = login_from(&app, &next_ip(), "victim@example.com", PASSWORD).await;
    assert_eq!((s, error_code(&v)), (429, "TOO_MANY_ATTEMPTS"), "{v}");
    // Another account is not affected.
    app.register("bystander@example.com").await;
    let (s, _, _) = login_from(&app, &next_ip(), "bystander@example.com", PASSWORD).await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let (s, v, _) = login_from(&app, &next_ip(), "victim@example.com", PASSWORD).await;
    assert_eq!(s, 200, "{v}");
    // Success forgets the count: three more wrong ones are 401 again.
    for _ in 0..3 {
        let (s, _, _) = login_from(&app, &next_ip(), "victim@example.com", "wrong password!").await;
        assert_eq!(s, 401);
    }
}

#[tokio::test]
async fn a_flood_of_logins_is_shed_with_503_overloaded_not_queued() {
    let app = support::spawn_with(|c| {
        c.gateway.rate_limit_login_per_minute = 10_000;
        c.gateway.rate_limit_ip_per_second = 10_000;
        // No waiting at all: beyond the hashing slots, refuse.
        c.gateway.password_hash_queue_max = 0;
    })
    .await;
    let logins = (0..48).map(|i| {
        let app = &app;
        async move {
            let r = app
                .client
                .post(format!("{}/api/v1/auth/login", app.url))
                .json(&json!({"email": format!("u{i}@example.com"), "password": "wrong password!"}))
                .send()
                .await
                .unwrap();
            let retry = r.headers().get("retry-after").is_some();
            let (s, v) = read(r).await;
            (s, error_code(&v).to_owned(), retry)
        }
    });
    let answers = futures_util::future::join_all(logins).await;
    let overloaded = answers
        .iter()
        .filter(|(s, code, retry)| *s == 503 && code == "OVERLOADED" && *retry)
        .count();
    let checked = answers
        .iter()
        .filter(|(s, code, _)| *s == 401 && code == "INVALID_CREDENTIALS")
        .count();
    assert_eq!(overloaded + checked, answers.len(), "{answers:?}");
    assert!(overloaded > 0, "nothing shed: {answers:?}");
    assert!(checked >= 4, "the hashing slots still work: {answers:?}");
    // Overloaded attempts were not counted against those accounts, and once
    // the flood is over logins are checked again.
    app.register("after@example.com").await;
    app.login("after@example.com").await;
}
