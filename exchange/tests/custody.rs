//! Custody, part 1, end to end over HTTP against the real services (the
//! wallet among them) as separate processes, with the manual adapter:
//! operators load deposit addresses and report chain transfers and payouts.
//!
//! What a user and an operator would check: a deposit reported three times
//! is credited once; one that leaves the chain before its confirmations is
//! never credited, one that leaves after freezes the user's withdrawals;
//! withdrawals hold `amount + fee`, run to `confirmed` with the fee booked
//! to the unit, wait for two different operators above the limit, return
//! the funds when rejected, canceled or failed; every refusal holds
//! nothing; the kill switch stops payouts; 50 concurrent requests against
//! a balance for 10 hold exactly 10; reconcile passes, and names
//! `custody_flows` when a custody ledger row is deleted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Cluster, Options, User, units};

const SETTLE: Duration = Duration::from_secs(20);
/// Seconds a new withdrawal address cools down in these clusters.
const COOLDOWN_SECS: u64 = 3;

/// An Ethereum transaction hash made of one repeated byte.
fn tx(byte: u8) -> String {
    format!("0x{}", format!("{byte:02x}").repeat(32))
}

/// A lowercase (so checksum-free and valid) Ethereum address.
fn eth_address(n: u64) -> String {
    format!("0x{n:040x}")
}

async fn cluster() -> Cluster {
    Cluster::start_with(Options {
        env: vec![(
            "WITHDRAWAL_ADDRESS_COOLDOWN_SECS".into(),
            COOLDOWN_SECS.to_string(),
        )],
        ..Options::default()
    })
    .await
}

/// An operator of `role`: their token.
async fn operator(c: &Cluster, name: &str, role: &str) -> String {
    let v = c
        .admin(
            Method::POST,
            "/admin/v1/operators",
            &json!({"name": name, "role": role}),
        )
        .await;
    v["token"].as_str().unwrap().to_owned()
}

async fn as_operator(
    c: &Cluster,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    c.call(method, path, Some(token), body).await
}

/// The user's address book entry for `asset`, usable once the cooldown is over.
async fn add_address(c: &Cluster, u: &User, asset: &str, address: &str) -> Value {
    let (s, v) = c
        .call(
            Method::POST,
            "/api/v1/account/withdrawal-addresses",
            Some(&u.token),
            Some(&json!({"asset": asset, "address": address, "label": "cold wallet"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v
}

async fn withdraw(c: &Cluster, u: &User, body: &Value) -> (u16, Value) {
    c.call(
        Method::POST,
        "/api/v1/withdrawals",
        Some(&u.token),
        Some(body),
    )
    .await
}

async fn withdrawal(c: &Cluster, u: &User, id: i64) -> Value {
    let (s, v) = c
        .call(
            Method::GET,
            &format!("/api/v1/withdrawals/{id}"),
            Some(&u.token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn wait_withdrawal(c: &Cluster, u: &User, id: i64, status: &str) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let w = withdrawal(c, u, id).await;
        if w["status"] == status {
            return w;
        }
        assert!(
            Instant::now() < deadline,
            "withdrawal {id} never reached {status}: {w}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(available, locked)` of one asset in units of 10^-8.
async fn balance(c: &Cluster, u: &User, asset: &str) -> (i128, i128) {
    c.balances(u).await.get(asset).copied().unwrap_or((0, 0))
}

fn reconcile_ok(c: &Cluster) {
    let out = c.reconcile();
    assert!(
        out.status.success(),
        "reconcile failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn report(c: &Cluster, token: &str, t: &Value) -> (u16, Value) {
    as_operator(
        c,
        token,
        Method::POST,
        "/admin/v1/custody/deposits",
        Some(t),
    )
    .await
}

/// Reads private pushes for a while: the `type`s seen with their data.
async fn pushes(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    within: Duration,
) -> Vec<Value> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Ok(text) = msg.into_text()
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            seen.push(v);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_credit_once_and_withdrawals_hold_pay_and_return_to_the_unit() {
    let c = cluster().await;
    let db = sqlx::PgPool::connect(&c.db_url).await.unwrap();
    c.admin(
        Method::POST,
        "/admin/v1/assets",
        &json!({"symbol": "ETH", "scale": 8, "network": "ethereum", "confirmations": 3,
                "withdraw_fee": "0.001", "withdraw_min": "0.01", "auto_approve_limit": "1",
                "daily_withdraw_limit": "100"}),
    )
    .await;
    let finance1 = operator(&c, "fiona", "finance").await;
    let finance2 = operator(&c, "frank", "finance").await;
    let support_op = operator(&c, "sam", "support").await;
    let loaded = c
        .admin(
            Method::POST,
            "/admin/v1/custody/deposit-addresses",
            &json!({"network": "ethereum", "addresses": (1..=5).map(eth_address).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(
        (loaded["added"].as_i64(), loaded["free"].as_i64()),
        (Some(5), Some(5)),
        "{loaded}"
    );

    let mut alice = c.user("alice@example.com").await;
    let bob = c.user("bob@example.com").await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/ws/private?token={}", c.ws_url, alice.token))
            .await
            .unwrap();

    // --- Deposits.
    let path = "/api/v1/account/deposit-address?asset=ETH";
    let (s, first) = c.call(Method::GET, path, Some(&alice.token), None).await;
    assert_eq!(s, 200, "{first}");
    let (_, again) = c.call(Method::GET, path, Some(&alice.token), None).await;
    assert_eq!(first, again, "the same address every time");
    assert_eq!(first["network"], "ethereum");
    let address = first["address"].as_str().unwrap().to_owned();
    let (_, bobs) = c.call(Method::GET, path, Some(&bob.token), None).await;
    assert_ne!(bobs["address"], first["address"], "one address per user");

    let transfer = |tx: &str, amount: &str, confirmations: i64, removed: bool| {
        json!({"network": "ethereum", "tx_hash": tx, "log_index": 0, "address": address,
               "asset": "ETH", "amount": amount, "confirmations": confirmations, "removed": removed})
    };
    let (s, d) = report(&c, &finance1, &transfer(&tx(0xd1), "5", 1, false)).await;
    assert_eq!((s, d["status"].as_str()), (200, Some("pending")), "{d}");
    assert_eq!(
        balance(&c, &alice, "ETH").await,
        (0, 0),
        "not credited before 3 confirmations"
    );
    // Delivered three times, once spelt in capitals (a second reporter):
    // one deposit, one credit.
    for hash in [
        tx(0xd1),
        tx(0xd1),
        tx(0xd1).to_uppercase().replacen("0X", "0x", 1),
    ] {
        let (s, d) = report(&c, &finance1, &transfer(&hash, "5", 3, false)).await;
        assert_eq!((s, d["status"].as_str()), (200, Some("credited")), "{d}");
        assert_eq!(d["tx_hash"].as_str(), Some(tx(0xd1).as_str()), "{d}");
    }
    assert_eq!(
        balance(&c, &alice, "ETH").await,
        (units("5"), 0),
        "credited exactly once"
    );
    let (s, _) = report(&c, &finance1, &transfer(&tx(0xd1), "6", 4, false)).await;
    assert_eq!(
        s, 409,
        "the same transfer with another amount is a conflict"
    );

    // Leaves the chain before its confirmations: never credited.
    report(&c, &finance1, &transfer(&tx(0xd2), "7", 1, false)).await;
    let (_, gone) = report(&c, &finance1, &transfer(&tx(0xd2), "7", 0, true)).await;
    assert_eq!(gone["status"], "reorged", "{gone}");
    assert_eq!(balance(&c, &alice, "ETH").await, (units("5"), 0));
    let (s, list) = c
        .call(
            Method::GET,
            "/api/v1/account/deposits?asset=ETH",
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let statuses: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["reorged", "credited"], "{list}");
    let seen = pushes(&mut ws, Duration::from_millis(800)).await;
    assert!(
        seen.iter()
            .any(|m| m["type"] == "deposit" && m["data"]["status"] == "credited"),
        "a private push of the credit: {seen:?}"
    );
    reconcile_ok(&c);

    // --- Withdrawals. A new address cools down first; nothing is held.
    let (s, bad) = c
        .call(
            Method::POST,
            "/api/v1/account/withdrawal-addresses",
            Some(&alice.token),
            Some(&json!({"asset": "ETH", "address": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"})),
        )
        .await;
    assert_eq!(
        (s, bad["error"]["code"].as_str()),
        (400, Some("INVALID_ADDRESS")),
        "bad checksum: {bad}"
    );
    let (s, bad) = c
        .call(
            Method::POST,
            "/api/v1/account/withdrawal-addresses",
            Some(&alice.token),
            Some(&json!({"asset": "ETH", "address": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeA"})),
        )
        .await;
    assert_eq!(
        (s, bad["error"]["code"].as_str()),
        (400, Some("INVALID_ADDRESS")),
        "wrong length: {bad}"
    );
    let book = add_address(
        &c,
        &alice,
        "ETH",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    )
    .await;
    let address_id = book["id"].as_i64().unwrap();
    let refused =
        |amount: &str| json!({"asset": "ETH", "address_id": address_id, "amount": amount});
    let (s, v) = withdraw(&c, &alice, &refused("0.5")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("ADDRESS_COOLING_DOWN")),
        "{v}"
    );
    assert_eq!(
        balance(&c, &alice, "ETH").await,
        (units("5"), 0),
        "nothing held"
    );
    tokio::time::sleep(Duration::from_secs(COOLDOWN_SECS + 1)).await;
    let (s, v) = withdraw(&c, &alice, &refused("0.001")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("AMOUNT_BELOW_MINIMUM")),
        "{v}"
    );
    let (s, v) = withdraw(&c, &alice, &refused("4.9999")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("INSUFFICIENT_BALANCE")),
        "amount + fee > available: {v}"
    );
    assert_eq!(
        balance(&c, &alice, "ETH").await,
        (units("5"), 0),
        "nothing held"
    );

    // At or below the auto-approval limit: approved at once, claimed by the
    // payout loop, sent and confirmed by an operator; the fee is booked.
    let (s, w) = withdraw(&c, &alice, &json!({"asset": "ETH", "address_id": address_id, "amount": "0.5", "client_withdrawal_id": "w-1"})).await;
    assert_eq!(s, 201, "{w}");
    assert_eq!(
        (w["status"].as_str(), w["fee"].as_str()),
        (Some("approved"), Some("0.001")),
        "{w}"
    );
    let id = w["id"].as_i64().unwrap();
    let (s, same) = withdraw(&c, &alice, &json!({"asset": "ETH", "address_id": address_id, "amount": "0.5", "client_withdrawal_id": "w-1"})).await;
    assert_eq!(
        (s, same["id"].as_i64()),
        (200, Some(id)),
        "the same client_withdrawal_id is the same withdrawal"
    );
    assert_eq!(
        balance(&c, &alice, "ETH").await,
        (units("4.499"), units("0.501"))
    );
    wait_withdrawal(&c, &alice, id, "signing").await;
    let (s, v) = c
        .call(
            Method::DELETE,
            &format!("/api/v1/withdrawals/{id}"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("WITHDRAWAL_IN_PROGRESS")),
        "{v}"
    );
    let (s, v) = as_operator(
        &c,
        &support_op,
        Method::POST,
        &format!("/admin/v1/withdrawals/{id}/broadcast"),
        Some(&json!({"tx_hash": tx(0xa1)})),
    )
    .await;
    assert_eq!(s, 403, "support cannot move money: {v}");
    let (s, v) = as_operator(
        &c,
        &finance1,
        Method::POST,
        &format!("/admin/v1/withdrawals/{id}/broadcast"),
        Some(&json!({"tx_hash": tx(0xa1)})),
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("broadcast")), "{v}");
    let (s, v) = as_operator(
        &c,
        &finance1,
        Method::POST,
        &format!("/admin/v1/withdrawals/{id}/confirm"),
        Some(&json!({"network_fee": "0.0004"})),
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("confirmed")), "{v}");
    assert_eq!(
        balance(&c, &alice, "ETH").await,
        (units("4.499"), 0),
        "paid out: 0.5 + 0.001 left"
    );
    let fee_booked: String = sqlx::query_scalar(
        "SELECT trim_scale(sum(p.amount))::text FROM ledger_postings p JOIN ledger_journal j ON j.id = p.journal_id
         WHERE j.reference = $1 AND j.kind = 'withdrawal' AND p.account_kind = 'fees'",
    )
    .bind(format!("withdrawal:{id}"))
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        fee_booked, "0.0006",
        "fee charged 0.001 - network fee 0.0004"
    );
    let seen = pushes(&mut ws, Duration::from_millis(800)).await;
    let withdrawal_states: Vec<&str> = seen
        .iter()
        .filter(|m| m["type"] == "withdrawal")
        .map(|m| m["data"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        withdrawal_states,
        ["approved", "signing", "broadcast", "confirmed"],
        "private pushes: {seen:?}"
    );
    reconcile_ok(&c);

    // Above the limit: two different finance operators.
    let (s, big) = withdraw(
        &c,
        &alice,
        &json!({"asset": "ETH", "address_id": address_id, "amount": "2"}),
    )
    .await;
    assert_eq!(
        (s, big["status"].as_str()),
        (201, Some("pending_approval")),
        "{big}"
    );
    let big_id = big["id"].as_i64().unwrap();
    let approve = format!("/admin/v1/withdrawals/{big_id}/approve");
    let (s, v) = as_operator(&c, &finance1, Method::POST, &approve, None).await;
    assert_eq!(
        (s, v["status"].as_str(), v["approvals"].as_i64()),
        (200, Some("pending_approval"), Some(1)),
        "{v}"
    );
    let (s, v) = as_operator(&c, &finance1, Method::POST, &approve, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("SAME_APPROVER")),
        "{v}"
    );
    // The kill switch: approved, but no payout leaves while it is off.
    c.admin(
        Method::PATCH,
        "/admin/v1/assets/ETH",
        &json!({"withdrawals_enabled": false}),
    )
    .await;
    let (s, v) = as_operator(&c, &finance2, Method::POST, &approve, None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    let (s, v) = withdraw(&c, &alice, &refused("0.1")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("WITHDRAWALS_DISABLED")),
        "{v}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        withdrawal(&c, &alice, big_id).await["status"],
        "approved",
        "no payout while the switch is off"
    );
    c.admin(
        Method::PATCH,
        "/admin/v1/assets/ETH",
        &json!({"withdrawals_enabled": true}),
    )
    .await;
    wait_withdrawal(&c, &alice, big_id, "signing").await;
    // A payout that fails on chain returns amount + fee.
    let before = balance(&c, &alice, "ETH").await;
    as_operator(
        &c,
        &finance2,
        Method::POST,
        &format!("/admin/v1/withdrawals/{big_id}/broadcast"),
        Some(&json!({"tx_hash": tx(0xa2)})),
    )
    .await;
    let (s, v) = as_operator(
        &c,
        &finance2,
        Method::POST,
        &format!("/admin/v1/withdrawals/{big_id}/fail"),
        Some(&json!({"reason": "reverted"})),
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("failed")), "{v}");
    assert_eq!(
        balance(&c, &alice, "ETH").await,
        (before.0 + units("2.001"), before.1 - units("2.001"))
    );

    // Two operators approving at the same moment: approved, once each.
    let (_, pair) = withdraw(
        &c,
        &alice,
        &json!({"asset": "ETH", "address_id": address_id, "amount": "1.3"}),
    )
    .await;
    let pair_id = pair["id"].as_i64().unwrap();
    let approve = format!("/admin/v1/withdrawals/{pair_id}/approve");
    let (a, b) = tokio::join!(
        as_operator(&c, &finance1, Method::POST, &approve, None),
        as_operator(&c, &finance2, Method::POST, &approve, None)
    );
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    let w = wait_withdrawal(&c, &alice, pair_id, "signing").await;
    assert_eq!(w["approvals"], 2, "{w}");
    as_operator(
        &c,
        &finance1,
        Method::POST,
        &format!("/admin/v1/withdrawals/{pair_id}/fail"),
        Some(&json!({"reason": "not sent"})),
    )
    .await;

    // Rejected and canceled return amount + fee.
    let start = balance(&c, &alice, "ETH").await;
    let (_, r) = withdraw(
        &c,
        &alice,
        &json!({"asset": "ETH", "address_id": address_id, "amount": "1.5"}),
    )
    .await;
    let (_, k) = withdraw(
        &c,
        &alice,
        &json!({"asset": "ETH", "address_id": address_id, "amount": "1.2"}),
    )
    .await;
    assert_eq!(
        balance(&c, &alice, "ETH").await,
        (start.0 - units("2.702"), units("2.702"))
    );
    let (s, v) = as_operator(
        &c,
        &finance1,
        Method::POST,
        &format!("/admin/v1/withdrawals/{}/reject", r["id"]),
        Some(&json!({"reason": "unusual destination"})),
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("rejected")), "{v}");
    let (s, v) = c
        .call(
            Method::DELETE,
            &format!("/api/v1/withdrawals/{}", k["id"]),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("canceled")), "{v}");
    assert_eq!(balance(&c, &alice, "ETH").await, start, "everything back");

    // The rolling daily limit counts what was not returned: 0.5 confirmed.
    c.admin(
        Method::PATCH,
        "/admin/v1/assets/ETH",
        &json!({"daily_withdraw_limit": "0.6"}),
    )
    .await;
    let (s, v) = withdraw(&c, &alice, &refused("0.2")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("DAILY_LIMIT_EXCEEDED")),
        "{v}"
    );
    c.admin(
        Method::PATCH,
        "/admin/v1/assets/ETH",
        &json!({"daily_withdraw_limit": null}),
    )
    .await;

    // A frozen user cannot withdraw (their sessions end, login is refused)
    // and what they asked for before is not paid while they are frozen.
    let (_, held) = withdraw(
        &c,
        &alice,
        &json!({"asset": "ETH", "address_id": address_id, "amount": "1.1"}),
    )
    .await;
    let held_id = held["id"].as_i64().unwrap();
    let (s, _) = as_operator(
        &c,
        &support_op,
        Method::POST,
        &format!("/admin/v1/users/{}/freeze", alice.id),
        Some(&json!({"reason": "review"})),
    )
    .await;
    assert_eq!(s, 200);
    let creds = json!({"email": "alice@example.com", "password": support::PASSWORD});
    let (s, v) = c
        .call(Method::POST, "/api/v1/auth/login", None, Some(&creds))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("ACCOUNT_FROZEN")),
        "{v}"
    );
    let (s, _) = withdraw(&c, &alice, &refused("0.1")).await;
    assert_eq!(s, 401, "the frozen user's session is over");
    for op in [&finance1, &finance2] {
        let (s, v) = as_operator(
            &c,
            op,
            Method::POST,
            &format!("/admin/v1/withdrawals/{held_id}/approve"),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let row: (String,) = sqlx::query_as("SELECT status FROM withdrawals WHERE id = $1")
        .bind(held_id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(row.0, "approved", "no payout to a frozen user");
    as_operator(
        &c,
        &support_op,
        Method::POST,
        &format!("/admin/v1/users/{}/unfreeze", alice.id),
        Some(&json!({})),
    )
    .await;
    let (s, v) = c
        .call(Method::POST, "/api/v1/auth/login", None, Some(&creds))
        .await;
    assert_eq!(s, 200, "{v}");
    alice.token = v["access_token"].as_str().unwrap().to_owned();
    wait_withdrawal(&c, &alice, held_id, "signing").await;
    as_operator(
        &c,
        &finance1,
        Method::POST,
        &format!("/admin/v1/withdrawals/{held_id}/fail"),
        Some(&json!({"reason": "not sent"})),
    )
    .await;
    assert_eq!(balance(&c, &alice, "ETH").await, start, "nothing held");

    // A credited deposit that leaves the chain is not debited: it freezes
    // the user's withdrawals until an operator releases them.
    let (_, d) = report(&c, &finance1, &transfer(&tx(0xd1), "5", 0, true)).await;
    assert_eq!(
        d["status"], "credited",
        "never debited on the chain's word: {d}"
    );
    assert_eq!(balance(&c, &alice, "ETH").await, start);
    let (s, v) = withdraw(&c, &alice, &refused("0.1")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("WITHDRAWALS_FROZEN")),
        "{v}"
    );
    let (_, freezes) = as_operator(
        &c,
        &finance1,
        Method::GET,
        "/admin/v1/custody/freezes?open=true",
        None,
    )
    .await;
    let freeze_id = freezes[0]["id"].as_i64().unwrap();
    let (_, paged) = as_operator(
        &c,
        &finance1,
        Method::GET,
        "/admin/v1/custody/freezes?open=true&paginate=true&limit=1",
        None,
    )
    .await;
    assert_eq!(
        (
            paged["items"][0]["id"].as_i64(),
            paged["next_cursor"].as_str()
        ),
        (Some(freeze_id), None),
        "{paged}"
    );
    let (s, _) = as_operator(
        &c,
        &finance1,
        Method::POST,
        &format!("/admin/v1/custody/freezes/{freeze_id}/release"),
        Some(&json!({"reason": "re-mined in block 12"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = withdraw(&c, &alice, &refused("0.1")).await;
    assert_eq!(s, 201, "{v}");
    reconcile_ok(&c);

    // With 2FA on, adding an address and withdrawing need a code.
    let (s, e) = c
        .call(
            Method::POST,
            "/api/v1/account/2fa/totp",
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{e}");
    let raw = totp_rs::Secret::Encoded(e["secret"].as_str().unwrap().to_owned())
        .to_bytes()
        .unwrap();
    let app = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, raw).unwrap();
    let step = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30;
    let (s, v) = c
        .call(
            Method::POST,
            "/api/v1/account/2fa/totp/confirm",
            Some(&bob.token),
            Some(&json!({"totp": app.generate(step * 30)})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let bob_address = json!({"asset": "ETH", "address": eth_address(99)});
    let (s, v) = c
        .call(
            Method::POST,
            "/api/v1/account/withdrawal-addresses",
            Some(&bob.token),
            Some(&bob_address),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("TOTP_REQUIRED")),
        "{v}"
    );
    let mut with_code = bob_address.clone();
    with_code["totp"] = json!(app.generate((step + 1) * 30));
    let (s, bob_book) = c
        .call(
            Method::POST,
            "/api/v1/account/withdrawal-addresses",
            Some(&bob.token),
            Some(&with_code),
        )
        .await;
    assert_eq!(s, 201, "{bob_book}");
    let (s, v) = withdraw(
        &c,
        &bob,
        &json!({"asset": "ETH", "address_id": bob_book["id"], "amount": "0.1"}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("TOTP_REQUIRED")),
        "{v}"
    );

    // Withdrawals page like every list: each once, newest first.
    let (_, all) = c
        .call(
            Method::GET,
            "/api/v1/withdrawals?limit=1000",
            Some(&alice.token),
            None,
        )
        .await;
    let mut walked = Vec::new();
    let mut path = "/api/v1/withdrawals?limit=2&paginate=true".to_owned();
    loop {
        let (s, page) = c.call(Method::GET, &path, Some(&alice.token), None).await;
        assert_eq!(s, 200, "{page}");
        walked.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(k) => path = format!("/api/v1/withdrawals?limit=2&cursor={k}"),
            None => break,
        }
    }
    let bare: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_i64().unwrap())
        .collect();
    assert_eq!(walked, bare, "the pages are the list, newest first");

    // Every operator step is in the audit log.
    let (_, audit) = c
        .call(
            Method::GET,
            "/admin/v1/audit?limit=1000",
            Some(support::ADMIN_TOKEN),
            None,
        )
        .await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "deposit.report",
        "withdrawal.approve",
        "withdrawal.reject",
        "withdrawal.broadcast",
        "withdrawal.confirmed",
        "withdrawal.failed",
        "asset.update",
        "custody_freeze.release",
    ] {
        assert!(actions.contains(&a), "{a} audited: {actions:?}");
    }

    // A custody ledger row deleted behind the application's back is found.
    let mut conn = db.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "DELETE FROM ledger_postings WHERE id = (SELECT max(id) FROM ledger_postings WHERE account_kind = 'custody')",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let out = c.reconcile();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("custody_flows") && text.contains("FAILED"),
        "names the invariant: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_withdrawals_against_a_balance_for_ten_hold_exactly_ten() {
    let c = cluster().await;
    c.admin(
        Method::POST,
        "/admin/v1/assets",
        &json!({"symbol": "SOL", "scale": 8, "network": "solana", "withdraw_fee": "0.01",
                "auto_approve_limit": "0"}),
    )
    .await;
    let u = c.user("racer@example.com").await;
    c.deposit(&u, "SOL", "10.1").await;
    let book = add_address(&c, &u, "SOL", "7EcDhSYGxXyscszYEp35KHN8vvw3svAuLKTzXwCFLtV").await;
    tokio::time::sleep(Duration::from_secs(COOLDOWN_SECS + 1)).await;
    let body = json!({"asset": "SOL", "address_id": book["id"], "amount": "1"});
    let tasks: Vec<_> = (0..50).map(|_| withdraw(&c, &u, &body)).collect();
    let answers = futures_util::future::join_all(tasks).await;
    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s != 201).collect();
    assert_eq!(created, 10, "{answers:?}");
    assert!(
        refused
            .iter()
            .all(|(s, v)| *s == 400 && v["error"]["code"] == "INSUFFICIENT_BALANCE"),
        "{refused:?}"
    );
    assert_eq!(
        balance(&c, &u, "SOL").await,
        (0, units("10.1")),
        "exactly ten held, none overdrawn"
    );
    let (_, mine) = c
        .call(
            Method::GET,
            "/api/v1/withdrawals?limit=100",
            Some(&u.token),
            None,
        )
        .await;
    assert_eq!(mine.as_array().unwrap().len(), 10);
    reconcile_ok(&c);
}
