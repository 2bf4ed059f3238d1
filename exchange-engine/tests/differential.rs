//! Differential test: the fast book against the naive reference book on a
//! fixed seed, comparing every command's events and the state hash every
//! 100 commands (as exchange-core does with its naive book).

mod support;

use exchange_engine::OrderBook;
use exchange_engine::reference::ReferenceBook;

fn compare(seed: u64, n: usize) {
    let spec = support::spec();
    let cmds = support::commands(seed, n);
    let mut fast = OrderBook::new(spec);
    let mut naive = ReferenceBook::new(spec);
    let mut trades = 0usize;
    // Take-profits placed, and how many of them the price triggered: the
    // stream must exercise both trigger directions.
    let take_profits: std::collections::BTreeSet<u64> = cmds
        .iter()
        .filter_map(|c| match c {
            exchange_domain::Command::Place(p) if p.order_type.is_conditional() => matches!(
                p.order_type,
                exchange_domain::OrderType::TakeProfitLimit
                    | exchange_domain::OrderType::TakeProfitMarket
            )
            .then_some(p.order_id.0),
            _ => None,
        })
        .collect();
    let mut tp_triggered = 0usize;
    let mut stop_triggered = 0usize;
    for (i, cmd) in cmds.iter().enumerate() {
        let seq = i as u64 + 1;
        let a = fast.apply(seq, seq, cmd).expect("increasing seq");
        let b = naive.apply(seq, seq, cmd).expect("increasing seq");
        assert_eq!(a, b, "seed {seed}: events differ at command {i}: {cmd:?}");
        trades += a
            .iter()
            .filter(|e| matches!(e, exchange_domain::Event::Trade { .. }))
            .count();
        for e in &a {
            if let exchange_domain::Event::StopTriggered { order_id, .. } = e {
                if take_profits.contains(&order_id.0) {
                    tp_triggered += 1;
                } else {
                    stop_triggered += 1;
                }
            }
        }
        if seq.is_multiple_of(100) {
            assert_eq!(
                fast.state_hash(),
                naive.state_hash(),
                "seed {seed}: state differs after command {i}"
            );
        }
    }
    assert_eq!(fast.state_hash(), naive.state_hash());
    // The stream must actually exercise matching for the comparison to mean anything.
    assert!(trades > n / 20, "only {trades} trades in {n} commands");
    assert!(
        tp_triggered > 0 && stop_triggered > 0,
        "seed {seed}: {stop_triggered} stops and {tp_triggered} take-profits triggered"
    );
    fast.check_invariants().expect("consistent");
}

#[test]
fn fast_book_matches_reference_on_100k_commands() {
    compare(0x5eed_0001, 100_000);
}

#[test]
fn fast_book_matches_reference_on_other_seeds() {
    for seed in 1..=8 {
        compare(seed, 5_000);
    }
}
