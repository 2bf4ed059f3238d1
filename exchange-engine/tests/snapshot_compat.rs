//! Snapshot format compatibility. `fixtures/snapshot_v1.hex` was written by
//! the engine before take-profit orders existed (format version 1) for the
//! scenario below; the matching service stores such snapshots with their
//! state hash and, at start, only uses one whose restored hash equals the
//! stored one. So this build must (a) restore it, (b) hash it to the very
//! same value, and (c) still write byte-identical version-1 snapshots for
//! books without take-profits.

mod support;

use exchange_domain::{
    Command, OrderId, OrderType, PlaceOrder, SelfTradePrevention, Side, TimeInForce, UserId,
};
use exchange_engine::OrderBook;

/// The state hash the version-1 engine reported for this scenario.
const V1_HASH: u64 = 0x5697_ee79_6f78_dcc5;

#[allow(clippy::too_many_arguments)]
fn place(
    id: u64,
    user: u64,
    side: Side,
    order_type: OrderType,
    price: Option<u128>,
    qty: u128,
    stop: Option<u128>,
    reserved: u128,
) -> Command {
    Command::Place(PlaceOrder {
        order_id: OrderId(id),
        user_id: UserId(user),
        side,
        order_type,
        price,
        quantity: Some(qty),
        quote_quantity: None,
        stop_price: stop,
        time_in_force: if order_type == OrderType::StopMarket {
            TimeInForce::Ioc
        } else {
            TimeInForce::Gtc
        },
        post_only: false,
        stp: SelfTradePrevention::None,
        reserved,
    })
}

/// Resting orders on both sides (one partially filled) and pending stops in
/// both directions.
fn scenario() -> Vec<Command> {
    use OrderType::{Limit, StopLimit, StopMarket};
    use support::{BASE_ONE, STEP, TICK};
    let k = TICK * STEP / BASE_ONE;
    vec![
        place(
            1,
            1,
            Side::Sell,
            Limit,
            Some(100 * TICK),
            3 * STEP,
            None,
            3 * STEP,
        ),
        place(
            2,
            2,
            Side::Buy,
            Limit,
            Some(100 * TICK),
            STEP,
            None,
            100 * k,
        ),
        place(
            3,
            2,
            Side::Buy,
            Limit,
            Some(95 * TICK),
            2 * STEP,
            None,
            95 * 2 * k + 7,
        ),
        place(
            4,
            3,
            Side::Buy,
            StopLimit,
            Some(106 * TICK),
            STEP,
            Some(105 * TICK),
            106 * k,
        ),
        place(
            5,
            3,
            Side::Sell,
            StopMarket,
            None,
            STEP,
            Some(90 * TICK),
            STEP,
        ),
        place(
            6,
            4,
            Side::Sell,
            StopLimit,
            Some(91 * TICK),
            2 * STEP,
            Some(92 * TICK),
            2 * STEP,
        ),
        place(7, 4, Side::Sell, Limit, Some(104 * TICK), STEP, None, STEP),
    ]
}

fn v1_bytes() -> Vec<u8> {
    let hex = include_str!("fixtures/snapshot_v1.hex").trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex fixture"))
        .collect()
}

#[test]
fn version_1_snapshots_restore_with_their_stored_hash_and_are_still_written() {
    let old = v1_bytes();
    assert_eq!(u16::from_le_bytes([old[8], old[9]]), 1);
    let restored =
        OrderBook::restore(support::spec(), &old).expect("a version-1 snapshot restores");
    assert_eq!(
        restored.state_hash(),
        V1_HASH,
        "the stored hash still matches"
    );
    assert_eq!(restored.snapshot(), old, "re-written byte for byte");
    restored.check_invariants().expect("consistent");
    assert_eq!(restored.order_count(), 6, "3 resting, 3 pending stops");

    let mut book = OrderBook::new(support::spec());
    for (seq, cmd) in (1u64..).zip(scenario().iter()) {
        book.apply(seq, 999 + seq, cmd).expect("fresh seq");
    }
    assert_eq!(
        book.snapshot(),
        old,
        "this build writes the same version-1 bytes"
    );
    assert_eq!(book.state_hash(), V1_HASH);
}
