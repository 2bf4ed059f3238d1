//! Property tests over random command sequences: the book is never
//! crossed, fills respect both limits, nothing is created or lost, fees are
//! exact, and snapshot + replay equals running straight through.

mod support;

use exchange_domain::{Command, Event, OrderId};
use exchange_engine::OrderBook;
use proptest::prelude::*;
use support::{Decoder, Ledger, spec};

fn raw_commands() -> impl Strategy<Value = Vec<[u32; 6]>> {
    proptest::collection::vec(any::<[u32; 6]>(), 1..400)
}

fn decode(raw: &[[u32; 6]]) -> Vec<Command> {
    let mut dec = Decoder::default();
    raw.iter().map(|r| dec.decode(*r)).collect()
}

fn run(book: &mut OrderBook, first_seq: u64, cmds: &[Command]) -> Vec<Vec<Event>> {
    cmds.iter()
        .zip(first_seq..)
        .map(|(c, seq)| book.apply(seq, seq * 10, c).expect("increasing seq"))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn matching_conserves_money_and_never_crosses(raw in raw_commands()) {
        let spec = spec();
        let cmds = decode(&raw);
        let mut book = OrderBook::new(spec);
        let mut ledger = Ledger::default();
        for (seq, cmd) in (1u64..).zip(&cmds) {
            ledger.command(cmd);
            let events = book.apply(seq, seq, cmd).expect("increasing seq");
            if let Err(e) = ledger.events(&spec, cmd, &events) {
                return Err(TestCaseError::fail(format!("after {cmd:?}: {e}")));
            }
            if let (Some(bid), Some(ask)) = (book.best_bid(), book.best_ask()) {
                prop_assert!(bid < ask, "crossed after {:?}", cmd);
            }
            if let Err(e) = book.check_invariants() {
                return Err(TestCaseError::fail(format!("after {cmd:?}: {e}")));
            }
        }
        let held = |id| book.order(OrderId(id)).map(|o| o.reserve);
        if let Err(e) = ledger.check_book(held) {
            return Err(TestCaseError::fail(e));
        }
    }

    #[test]
    fn snapshot_then_replay_equals_straight_run(raw in raw_commands(), split in any::<prop::sample::Index>()) {
        let spec = spec();
        let cmds = decode(&raw);
        let k = split.index(cmds.len() + 1);
        let mut straight = OrderBook::new(spec);
        let all = run(&mut straight, 1, &cmds);

        let mut first = OrderBook::new(spec);
        run(&mut first, 1, &cmds[..k]);
        let bytes = first.snapshot();
        let mut restored = OrderBook::restore(spec, &bytes).expect("own snapshot restores");
        prop_assert_eq!(restored.state_hash(), first.state_hash());
        let rest = run(&mut restored, k as u64 + 1, &cmds[k..]);
        prop_assert_eq!(&rest[..], &all[k..]);
        prop_assert_eq!(restored.state_hash(), straight.state_hash());
        prop_assert_eq!(restored.snapshot(), straight.snapshot());
    }
}

/// The ledger must notice a lost unit: a test that cannot fail is a defect.
#[test]
fn ledger_detects_a_missing_release() {
    let spec = spec();
    let cmds = support::commands(7, 300);
    let mut book = OrderBook::new(spec);
    let mut ledger = Ledger::default();
    let mut tampered = false;
    let mut failed = false;
    for (seq, cmd) in (1u64..).zip(&cmds) {
        ledger.command(cmd);
        let mut events = book.apply(seq, seq, cmd).expect("increasing seq");
        for ev in &mut events {
            if let Event::OrderDone { release, .. } = ev
                && *release > 0
                && !tampered
            {
                *release -= 1;
                tampered = true;
            }
        }
        failed |= ledger.events(&spec, cmd, &events).is_err();
    }
    assert!(
        tampered && failed,
        "the conservation check accepted a lost unit"
    );
}
