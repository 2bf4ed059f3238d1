//! The wallet against a naive model of custody, replayed step by step.
//!
//! A seeded random sequence of chain reports (repeated, reorganised,
//! reorganised after credit), withdrawal requests, approvals, cancels,
//! rejections, payout claims and payout reports runs through the real
//! wallet functions on a real PostgreSQL. A model written independently of
//! `rules.rs` — plain counters and a status per withdrawal — predicts every
//! answer (success or the error code) and every balance; after each step the
//! database must agree with it, and at the end every reconcile invariant
//! holds and the model's books close: what was credited equals what users
//! hold + what left + the fee income.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use exchange_common::redis::Redis;
use exchange_common::testing::test_env;
use exchange_common::{ApiError, ErrorCode};
use exchange_domain::money::format_units;
use exchange_store::audit::AuditContext;
use exchange_wallet::Wallet;
use exchange_wallet::adapter::{Adapters, Transfer};
use exchange_wallet::rules::PayoutReport;
use exchange_wallet::withdrawals::{self, Request};
use exchange_wallet::{deposits, payouts};

const SCALE: u8 = 8;
const FEE: u128 = 10;
const MIN: u128 = 100;
const AUTO_LIMIT: u128 = 5_000;
const DAILY_LIMIT: u128 = 20_000;
const CONFIRMATIONS: i32 = 2;
const USERS: usize = 3;
const TRANSFERS_PER_USER: usize = 6;
const STEPS: usize = 500;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dep {
    Pending,
    Credited,
    Reorged,
}

#[derive(Debug, Clone)]
struct ModelWithdrawal {
    user: usize,
    amount: u128,
    status: &'static str,
    required: usize,
    approvers: BTreeSet<&'static str>,
    tx_hash: Option<String>,
}

#[derive(Default)]
struct Model {
    available: [u128; USERS],
    locked: [u128; USERS],
    frozen: [bool; USERS],
    deposits: BTreeMap<(usize, usize), Dep>,
    /// Credited deposits that left the chain once (each freezes once).
    reorged_after_credit: BTreeSet<(usize, usize)>,
    withdrawals: BTreeMap<i64, ModelWithdrawal>,
    credited: u128,
    paid_out: u128,
    fee_income: i128,
}

impl Model {
    /// What the user asked for in the last 24 hours and did not get back.
    fn withdrawn(&self, user: usize) -> u128 {
        self.withdrawals
            .values()
            .filter(|w| w.user == user && !matches!(w.status, "rejected" | "canceled" | "failed"))
            .map(|w| w.amount)
            .sum()
    }

    fn refund(&mut self, id: i64, status: &'static str) {
        let w = self.withdrawals.get_mut(&id).unwrap();
        w.status = status;
        let (user, total) = (w.user, w.amount + FEE);
        self.locked[user] -= total;
        self.available[user] += total;
    }
}

fn transfer_amount(user: usize, n: usize) -> u128 {
    1_000 * (1 + n as u128) + 7 * user as u128
}

fn who(name: &str) -> AuditContext {
    AuditContext {
        actor: name.to_owned(),
        request_id: "model".to_owned(),
        ip: None,
    }
}

fn code<T>(r: &Result<T, ApiError>) -> Option<ErrorCode> {
    r.as_ref().err().map(|e| e.code)
}

async fn balance(w: &Wallet, user_id: i64) -> (u128, u128) {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT available::text, locked::text FROM balances WHERE user_id = $1 AND asset = 'COIN'",
    )
    .bind(user_id)
    .fetch_optional(&w.db)
    .await
    .unwrap();
    row.map_or((0, 0), |(a, l)| {
        (
            exchange_store::db_units(&a, SCALE).unwrap(),
            exchange_store::db_units(&l, SCALE).unwrap(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wallet_agrees_with_a_naive_model_of_custody_step_by_step() {
    let env = test_env().await;
    let db = sqlx::PgPool::connect(&env.db_url).await.unwrap();
    let mut config = env.config.clone();
    config.wallet.address_cooldown = Duration::ZERO;
    let w = Wallet {
        config: Arc::new(config.clone()),
        db: db.clone(),
        redis: Redis::new(&config).unwrap(),
        adapters: Adapters::default(),
        payouts_due: Arc::default(),
    };
    let units = |u: u128| format_units(u, SCALE);
    sqlx::query(
        "INSERT INTO assets (symbol, scale, network, confirmations, withdraw_fee, withdraw_min,
                             auto_approve_limit, daily_withdraw_limit)
         VALUES ('COIN', 8, 'testnet', $1, $2::numeric, $3::numeric, $4::numeric, $5::numeric)",
    )
    .bind(CONFIRMATIONS)
    .bind(units(FEE))
    .bind(units(MIN))
    .bind(units(AUTO_LIMIT))
    .bind(units(DAILY_LIMIT))
    .execute(&db)
    .await
    .unwrap();
    let mut users = Vec::new();
    let mut deposit_addresses = Vec::new();
    let mut book = Vec::new();
    for n in 0..USERS {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id",
        )
        .bind(format!("model{n}@example.com"))
        .fetch_one(&db)
        .await
        .unwrap();
        sqlx::query("INSERT INTO deposit_addresses (network, address) VALUES ('testnet', $1)")
            .bind(format!("dep-{n}"))
            .execute(&db)
            .await
            .unwrap();
        let address = deposits::address(&w, id, "COIN").await.unwrap().address;
        let entry: i64 = sqlx::query_scalar(
            "INSERT INTO withdrawal_addresses (user_id, asset, network, address, usable_from)
             VALUES ($1, 'COIN', 'testnet', $2, now()) RETURNING id",
        )
        .bind(id)
        .bind(format!("out-{n}"))
        .fetch_one(&db)
        .await
        .unwrap();
        users.push(id);
        deposit_addresses.push(address);
        book.push(entry);
    }

    let mut m = Model::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let operators = ["ops-a", "ops-b", "ops-c"];
    for step in 0..STEPS {
        let user = rng.below(USERS as u64) as usize;
        // Mostly a withdrawal still under way (the interesting ones), now
        // and then any (to see ended ones refuse).
        let all: Vec<i64> = m.withdrawals.keys().copied().collect();
        let open: Vec<i64> = m
            .withdrawals
            .iter()
            .filter(|(_, mw)| {
                !matches!(mw.status, "confirmed" | "rejected" | "canceled" | "failed")
            })
            .map(|(id, _)| *id)
            .collect();
        let pick = |rng: &mut Rng| -> Option<i64> {
            let from = if open.is_empty() || rng.below(5) == 0 {
                &all
            } else {
                &open
            };
            (!from.is_empty()).then(|| from[rng.below(from.len() as u64) as usize])
        };
        let what = rng.below(10);
        let context = format!("step {step}: op {what}, user {user}");
        match what {
            // A chain report: seen with some confirmations, or gone.
            0..=2 => {
                let n = rng.below(TRANSFERS_PER_USER as u64) as usize;
                let confirmations = rng.below(4) as i32;
                let removed = rng.below(8) == 0;
                let t = Transfer {
                    network: "testnet".into(),
                    tx_hash: format!("tx-{user}-{n}"),
                    log_index: 0,
                    address: deposit_addresses[user].clone(),
                    asset: "COIN".into(),
                    amount: units(transfer_amount(user, n)),
                    block_number: None,
                    block_hash: None,
                    confirmations,
                    removed,
                };
                let got = deposits::observe(&w, &t, Some(&who("ops-a"))).await;
                let before = m.deposits.get(&(user, n)).copied();
                let expect_err = before.is_none() && removed;
                assert_eq!(
                    code(&got),
                    expect_err.then_some(ErrorCode::DepositNotFound),
                    "{context}"
                );
                let after = match (before, removed) {
                    (None, true) => None,
                    (Some(Dep::Credited), true) => {
                        if m.reorged_after_credit.insert((user, n)) {
                            m.frozen[user] = true;
                        }
                        Some(Dep::Credited)
                    }
                    (Some(Dep::Credited), false) => Some(Dep::Credited),
                    (_, true) => Some(Dep::Reorged),
                    (_, false) if confirmations >= CONFIRMATIONS => {
                        m.available[user] += transfer_amount(user, n);
                        m.credited += transfer_amount(user, n);
                        Some(Dep::Credited)
                    }
                    (_, false) => Some(Dep::Pending),
                };
                if let Some(d) = after {
                    m.deposits.insert((user, n), d);
                    let status = got.unwrap().status;
                    let want = match d {
                        Dep::Pending => "pending",
                        Dep::Credited => "credited",
                        Dep::Reorged => "reorged",
                    };
                    assert_eq!(status, want, "{context}");
                }
            }
            // A withdrawal request.
            3..=4 => {
                let amount = 50 + u128::from(rng.below(6_000));
                let got = withdrawals::request(
                    &w,
                    Request {
                        user_id: users[user],
                        asset: "COIN".into(),
                        address_id: book[user],
                        amount: units(amount),
                        client_withdrawal_id: None,
                    },
                )
                .await;
                let withdrawn = m.withdrawn(user);
                let expect = if m.frozen[user] {
                    Some(ErrorCode::WithdrawalsFrozen)
                } else if amount < MIN {
                    Some(ErrorCode::AmountBelowMinimum)
                } else if withdrawn + amount > DAILY_LIMIT {
                    Some(ErrorCode::DailyLimitExceeded)
                } else if amount + FEE > m.available[user] {
                    Some(ErrorCode::InsufficientBalance)
                } else {
                    None
                };
                assert_eq!(code(&got), expect, "{context}: amount {amount}");
                if let Ok((created, row)) = got {
                    assert!(created);
                    let required = if withdrawn + amount <= AUTO_LIMIT {
                        0
                    } else {
                        2
                    };
                    m.available[user] -= amount + FEE;
                    m.locked[user] += amount + FEE;
                    let status = if required == 0 {
                        "approved"
                    } else {
                        "pending_approval"
                    };
                    assert_eq!(row.status, status, "{context}");
                    m.withdrawals.insert(
                        row.id,
                        ModelWithdrawal {
                            user,
                            amount,
                            status,
                            required,
                            approvers: BTreeSet::new(),
                            tx_hash: None,
                        },
                    );
                }
            }
            // An operator approves.
            5 => {
                let Some(id) = pick(&mut rng) else { continue };
                let op = operators[rng.below(3) as usize];
                let got = withdrawals::approve(&w, id, &who(op)).await;
                let mw = m.withdrawals.get_mut(&id).unwrap();
                let expect = if mw.status != "pending_approval" {
                    Some(ErrorCode::WithdrawalNotPending)
                } else if mw.approvers.contains(op) {
                    Some(ErrorCode::SameApprover)
                } else {
                    mw.approvers.insert(op);
                    if mw.approvers.len() >= mw.required {
                        mw.status = "approved";
                    }
                    None
                };
                assert_eq!(code(&got), expect, "{context}: approve {id} by {op}");
            }
            // The owner cancels, or an operator rejects.
            6 => {
                let Some(id) = pick(&mut rng) else { continue };
                let status = m.withdrawals[&id].status;
                let cancelable = matches!(status, "pending_approval" | "approved");
                if rng.below(2) == 0 {
                    let owner = users[m.withdrawals[&id].user];
                    let got = withdrawals::cancel(&w, owner, id).await;
                    let expect = (!cancelable).then_some(ErrorCode::WithdrawalInProgress);
                    assert_eq!(code(&got), expect, "{context}: cancel {id} ({status})");
                    if cancelable {
                        m.refund(id, "canceled");
                    }
                } else {
                    let got = withdrawals::reject(&w, id, "model", &who("ops-b")).await;
                    let expect = (!cancelable).then_some(ErrorCode::WithdrawalNotPending);
                    assert_eq!(code(&got), expect, "{context}: reject {id} ({status})");
                    if cancelable {
                        m.refund(id, "rejected");
                    }
                }
            }
            // The payout loop claims what is payable.
            7 => {
                let claimed: BTreeSet<i64> = payouts::claim(&w)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.id)
                    .collect();
                let want: BTreeSet<i64> = m
                    .withdrawals
                    .iter()
                    .filter(|(_, mw)| mw.status == "approved" && !m.frozen[mw.user])
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(claimed, want, "{context}");
                for id in claimed {
                    m.withdrawals.get_mut(&id).unwrap().status = "signing";
                }
            }
            // The operator reports a payout: sent, final, or failed.
            8 => {
                let Some(id) = pick(&mut rng) else { continue };
                let mw = m.withdrawals[&id].clone();
                let report = match rng.below(3) {
                    0 => PayoutReport::Broadcast {
                        tx_hash: format!("out-{id}"),
                    },
                    1 => PayoutReport::Confirmed {
                        network_fee: u128::from(rng.below(3)) * FEE,
                    },
                    _ => PayoutReport::Failed {
                        reason: "dropped".into(),
                    },
                };
                let got = withdrawals::report(&w, id, &report, Some(&who("ops-c"))).await;
                let total = mw.amount + FEE;
                let expect = match (&report, mw.status) {
                    (PayoutReport::Broadcast { .. }, "signing") => {
                        let e = m.withdrawals.get_mut(&id).unwrap();
                        e.status = "broadcast";
                        e.tx_hash = Some(format!("out-{id}"));
                        None
                    }
                    (PayoutReport::Broadcast { tx_hash }, "broadcast")
                        if mw.tx_hash.as_ref() == Some(tx_hash) =>
                    {
                        None
                    }
                    (PayoutReport::Confirmed { .. }, "confirmed")
                    | (PayoutReport::Failed { .. }, "failed") => None,
                    (PayoutReport::Confirmed { network_fee }, "broadcast") => {
                        m.withdrawals.get_mut(&id).unwrap().status = "confirmed";
                        m.locked[mw.user] -= total;
                        m.paid_out += mw.amount + network_fee;
                        m.fee_income +=
                            i128::try_from(FEE).unwrap() - i128::try_from(*network_fee).unwrap();
                        None
                    }
                    (PayoutReport::Failed { .. }, "signing" | "broadcast") => {
                        m.refund(id, "failed");
                        None
                    }
                    _ => Some(ErrorCode::WithdrawalNotPending),
                };
                assert_eq!(
                    code(&got),
                    expect,
                    "{context}: {report:?} on {id} ({})",
                    mw.status
                );
            }
            // Support reviewed the user's freeze.
            _ => {
                let open: Vec<i64> = sqlx::query_scalar(
                    "SELECT id FROM custody_freezes WHERE user_id = $1 AND released_at IS NULL",
                )
                .bind(users[user])
                .fetch_all(&db)
                .await
                .unwrap();
                assert_eq!(!open.is_empty(), m.frozen[user], "{context}");
                for id in open {
                    deposits::release_freeze(&w, id, "reviewed", &who("ops-a"))
                        .await
                        .unwrap();
                }
                m.frozen[user] = false;
            }
        }
        for (n, id) in users.iter().enumerate() {
            assert_eq!(
                balance(&w, *id).await,
                (m.available[n], m.locked[n]),
                "{context}: user {n}'s balance"
            );
        }
        for (id, mw) in &m.withdrawals {
            let mut conn = db.acquire().await.unwrap();
            let row = exchange_wallet::store::withdrawal(&mut conn, *id, None, false)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(row.status, mw.status, "{context}: withdrawal {id}");
        }
    }

    let held: u128 = (0..USERS).map(|n| m.available[n] + m.locked[n]).sum();
    let books = i128::try_from(held + m.paid_out).unwrap() + m.fee_income;
    assert_eq!(
        books,
        i128::try_from(m.credited).unwrap(),
        "the model's books close"
    );
    let statuses: BTreeSet<&str> = m.withdrawals.values().map(|mw| mw.status).collect();
    for s in ["confirmed", "failed", "canceled", "rejected"] {
        assert!(statuses.contains(s), "the walk reached {s}: {statuses:?}");
    }
    let report = exchange_clearing::reconcile::reconcile(
        &db,
        exchange_clearing::reconcile::Options {
            lag: Duration::ZERO,
            full: true,
        },
    )
    .await
    .unwrap();
    assert!(report.ok(), "{report}");
}
