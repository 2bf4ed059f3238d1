//! Issue 4's concurrency test, end to end over HTTP against the real
//! services as separate processes: 20 users place and cancel random orders
//! in parallel for a bounded time; then every user cancels all, the
//! pipeline drains (no open order, nothing locked), `exchange admin
//! reconcile` passes, no balance is negative, and per asset the users'
//! balances plus the fees they paid equal what was deposited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use support::{Cluster, UNIT, User, fmt_units, units};

const USERS: usize = 20;
const RUN_FOR: Duration = Duration::from_secs(12);
const DRAIN_WITHIN: Duration = Duration::from_secs(90);
const BTC_EACH: i128 = 10 * UNIT;
const USDT_EACH: i128 = 500_000 * UNIT;
/// The largest fill list the API returns in one page.
const FILLS_PAGE_MAX: usize = 1_000;

/// A small deterministic generator (xorshift64*), seeded per user.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Default)]
struct Tally {
    placed: u64,
    rejected_4xx: u64,
    cancels: u64,
}

async fn trade_randomly(c: &Cluster, u: &User, seed: u64, until: Instant) -> Tally {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut mine: Vec<i64> = Vec::new();
    let mut t = Tally::default();
    while Instant::now() < until {
        if !mine.is_empty() && rng.below(10) < 3 {
            let i = usize::try_from(rng.below(mine.len() as u64)).unwrap();
            let id = mine.swap_remove(i);
            let (status, v) = c
                .call(
                    Method::DELETE,
                    &format!("/api/v1/orders/{id}"),
                    Some(&u.token),
                    None,
                )
                .await;
            assert_eq!(status, 200, "cancel {id}: {v}");
            t.cancels += 1;
            continue;
        }
        let side = if rng.below(2) == 0 { "buy" } else { "sell" };
        // Around 20000 so that orders cross often.
        let price = 19_990 + rng.below(21);
        let qty = format!("0.{:03}", 1 + rng.below(50));
        let mut order = json!({"market":"BTC-USDT","side":side,"type":"limit",
                               "price":price.to_string(),"quantity":qty});
        match rng.below(10) {
            0 => order["time_in_force"] = json!("IOC"),
            1 => order["post_only"] = json!(true),
            _ => {}
        }
        let (status, v) = c.place(u, &order).await;
        match status {
            201 => {
                mine.push(v["id"].as_i64().expect("an order id"));
                t.placed += 1;
            }
            400 => t.rejected_4xx += 1,
            other => panic!("placing {order}: {other} {v}"),
        }
    }
    t
}

async fn list(c: &Cluster, u: &User, path: &str) -> Vec<Value> {
    let (status, v) = c.call(Method::GET, path, Some(&u.token), None).await;
    assert_eq!(status, 200, "{path}: {v}");
    v.as_array().expect("a list").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_users_trading_in_parallel_leave_consistent_books() {
    let c = Cluster::start().await;
    c.setup_btc_usdt("0.001", "0.002").await;
    let users: Vec<User> = futures_util::future::join_all((0..USERS).map(|i| {
        let c = &c;
        async move { c.user(&format!("trader{i}@example.com")).await }
    }))
    .await;
    for u in &users {
        c.deposit(u, "BTC", &fmt_units(BTC_EACH)).await;
        c.deposit(u, "USDT", &fmt_units(USDT_EACH)).await;
    }

    let until = Instant::now() + RUN_FOR;
    let tallies = futures_util::future::join_all(
        users
            .iter()
            .enumerate()
            .map(|(i, u)| trade_randomly(&c, u, i as u64 + 1, until)),
    )
    .await;
    let placed: u64 = tallies.iter().map(|t| t.placed).sum();
    let cancels: u64 = tallies.iter().map(|t| t.cancels).sum();
    let rejected: u64 = tallies.iter().map(|t| t.rejected_4xx).sum();
    println!(
        "{USERS} users for {RUN_FOR:?}: {placed} orders accepted, {rejected} refused with 400, {cancels} cancels"
    );
    assert!(placed > 100, "the workload placed too few orders: {placed}");

    for u in &users {
        let (status, v) = c
            .call(
                Method::DELETE,
                "/api/v1/orders?market=BTC-USDT",
                Some(&u.token),
                None,
            )
            .await;
        assert_eq!(status, 200, "cancel-all: {v}");
    }

    // Drain: every order final and nothing locked, for every user.
    let started = Instant::now();
    'drain: loop {
        let mut pending = Vec::new();
        for u in &users {
            let open = list(
                &c,
                u,
                "/api/v1/orders?market=BTC-USDT&status=open&limit=1000",
            )
            .await;
            let locked: i128 = c.balances(u).await.values().map(|(_, l)| *l).sum();
            if !open.is_empty() || locked != 0 {
                pending.push((u.id, open.len(), fmt_units(locked)));
            }
        }
        if pending.is_empty() {
            break 'drain;
        }
        assert!(
            started.elapsed() < DRAIN_WITHIN,
            "not drained within {DRAIN_WITHIN:?}: (user, open orders, locked) {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("drained {:?} after the workload", started.elapsed());

    // Reconcile (its lag window lets the last batches settle).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = c.reconcile();
        if out.status.success() {
            println!("reconcile:\n{}", String::from_utf8_lossy(&out.stdout));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reconcile failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // No negative balance; conservation per asset (users' balances + fees
    // they paid = deposits), when every fill fits in one page.
    let (mut btc, mut usdt) = (0i128, 0i128);
    let mut fills_total = 0usize;
    let mut complete = true;
    for u in &users {
        for (asset, (avail, locked)) in c.balances(u).await {
            assert!(
                avail >= 0 && locked >= 0,
                "user {} {asset}: {avail} {locked}",
                u.id
            );
            match asset.as_str() {
                "BTC" => btc += avail + locked,
                "USDT" => usdt += avail + locked,
                _ => {}
            }
        }
        let fills = list(&c, u, "/api/v1/account/trades?market=BTC-USDT&limit=1000").await;
        fills_total += fills.len();
        complete &= fills.len() < FILLS_PAGE_MAX;
        for f in &fills {
            let fee = units(f["fee"].as_str().unwrap());
            assert!(fee >= 0, "{f}");
            match f["fee_asset"].as_str().unwrap() {
                "BTC" => btc += fee,
                "USDT" => usdt += fee,
                other => panic!("fee in {other}: {f}"),
            }
        }
    }
    println!("{fills_total} fills (both sides counted)");
    assert!(fills_total > 0, "the workload traded nothing");
    if complete {
        assert_eq!(
            fmt_units(btc),
            fmt_units(BTC_EACH * USERS as i128),
            "BTC conserved"
        );
        assert_eq!(
            fmt_units(usdt),
            fmt_units(USDT_EACH * USERS as i128),
            "USDT conserved"
        );
    } else {
        println!("a user has more than {FILLS_PAGE_MAX} fills: conservation left to reconcile");
    }
}
