//! Scenario tests. Every command runs through both the fast book and the
//! reference book; the harness asserts identical events, identical state
//! hashes and the fast book's structural invariants after each one.
//!
//! Market used: base scale 2, quote scale 4, tick 0.01 quote (100 units),
//! step 0.01 base (1 unit), so one tick × one lot is 1 quote unit and a
//! fill's quote amount is `ticks × lots`. Maker fee 0.1 %, taker 0.2 %.

use exchange_domain::{
    AmendOrder, Asset, AssetRole, AssetSymbol, Command, CommandKind, Event, FeeRate, FinalStatus,
    MarketSpec, MarketSpecFields, MarketStatus, MarketSymbol, OrderId, OrderType, PlaceOrder,
    ReasonCode, SelfTradePrevention, Side, TimeInForce, TradeId, UserId,
};

use crate::reference::ReferenceBook;
use crate::{ApplyError, OrderBook, SnapshotError};

const TICK: u128 = 100;

fn spec() -> MarketSpec {
    MarketSpec::new(MarketSpecFields {
        symbol: MarketSymbol::parse("BTC-USDT").expect("valid"),
        base: Asset {
            symbol: AssetSymbol::parse("BTC").expect("valid"),
            scale: 2,
        },
        quote: Asset {
            symbol: AssetSymbol::parse("USDT").expect("valid"),
            scale: 4,
        },
        price_tick: TICK,
        qty_step: 1,
        min_qty: 1,
        min_notional: 50,
        maker_fee: FeeRate::from_ppm(1_000).expect("valid"),
        taker_fee: FeeRate::from_ppm(2_000).expect("valid"),
    })
    .expect("valid spec")
}

fn px(ticks: u128) -> u128 {
    ticks * TICK
}

struct H {
    fast: OrderBook,
    reference: ReferenceBook,
    seq: u64,
}

impl H {
    fn new() -> Self {
        Self {
            fast: OrderBook::new(spec()),
            reference: ReferenceBook::new(spec()),
            seq: 0,
        }
    }

    fn run(&mut self, cmd: Command) -> Vec<Event> {
        self.seq += 1;
        let a = self
            .fast
            .apply(self.seq, 1_000 + self.seq, &cmd)
            .expect("fresh seq");
        let b = self
            .reference
            .apply(self.seq, 1_000 + self.seq, &cmd)
            .expect("fresh seq");
        assert_eq!(a, b, "fast and reference events differ for {cmd:?}");
        assert_eq!(
            self.fast.state_hash(),
            self.reference.state_hash(),
            "state hashes differ after {cmd:?}"
        );
        if let Err(e) = self.fast.check_invariants() {
            panic!("invariant broken after {cmd:?}: {e}");
        }
        a
    }

    fn place(&mut self, o: PlaceOrder) -> Vec<Event> {
        self.run(Command::Place(o))
    }

    /// Everything observable about the book except seq/time.
    fn observable(&self) -> (crate::Depth, Vec<crate::OrderView>, Option<u128>) {
        (
            self.fast.depth(usize::MAX),
            self.fast.orders(),
            self.fast.last_price(),
        )
    }
}

/// A GTC limit order reserving exactly what it needs.
fn limit(id: u64, user: u64, side: Side, ticks: u128, lots: u128) -> PlaceOrder {
    PlaceOrder {
        order_id: OrderId(id),
        user_id: UserId(user),
        side,
        order_type: OrderType::Limit,
        price: Some(px(ticks)),
        quantity: Some(lots),
        quote_quantity: None,
        stop_price: None,
        time_in_force: TimeInForce::Gtc,
        post_only: false,
        stp: SelfTradePrevention::None,
        reserved: if side == Side::Buy {
            ticks * lots
        } else {
            lots
        },
    }
}

fn market(id: u64, user: u64, side: Side, lots: u128, reserved: u128) -> PlaceOrder {
    PlaceOrder {
        order_type: OrderType::Market,
        price: None,
        time_in_force: TimeInForce::Ioc,
        reserved,
        ..limit(id, user, side, 1, lots)
    }
}

fn trades(events: &[Event]) -> Vec<(u128, u128)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Trade {
                price, quantity, ..
            } => Some((*price / TICK, *quantity)),
            _ => None,
        })
        .collect()
}

fn done_of(events: &[Event], id: u64) -> Option<(FinalStatus, Option<ReasonCode>, u128, u128)> {
    events.iter().find_map(|e| match e {
        Event::OrderDone {
            order_id,
            status,
            reason,
            filled_quantity,
            release,
            ..
        } if order_id.0 == id => Some((*status, *reason, *filled_quantity, *release)),
        _ => None,
    })
}

fn rejection(events: &[Event]) -> Option<ReasonCode> {
    events.iter().find_map(|e| match e {
        Event::CommandRejected { reason, .. } => Some(*reason),
        Event::OrderDone {
            status: FinalStatus::Rejected,
            reason,
            ..
        } => *reason,
        _ => None,
    })
}

fn asks_book(h: &mut H) {
    h.place(limit(1, 1, Side::Sell, 100, 5));
    h.place(limit(2, 1, Side::Sell, 101, 5));
    h.place(limit(3, 1, Side::Sell, 102, 5));
}

#[test]
fn partial_fill_across_levels_with_exact_events() {
    let mut h = H::new();
    asks_book(&mut h);
    let ev = h.place(limit(10, 2, Side::Buy, 101, 8));
    let expected = vec![
        Event::OrderAccepted {
            order_id: OrderId(10),
            user_id: UserId(2),
        },
        Event::Trade {
            trade_id: TradeId(1),
            maker_order_id: OrderId(1),
            maker_user_id: UserId(1),
            taker_order_id: OrderId(10),
            taker_user_id: UserId(2),
            taker_side: Side::Buy,
            price: px(100),
            quantity: 5,
            quote_amount: 500,
            // 0.1 % of 500 quote units = 0.5, rounded up
            maker_fee: 1,
            // 0.2 % of 5 base units = 0.01, rounded up
            taker_fee: 1,
        },
        Event::OrderDone {
            order_id: OrderId(1),
            user_id: UserId(1),
            status: FinalStatus::Filled,
            reason: None,
            filled_quantity: 5,
            release_asset: AssetRole::Base,
            release: 0,
        },
        Event::BookLevel {
            side: Side::Sell,
            price: px(100),
            quantity: 0,
        },
        Event::Trade {
            trade_id: TradeId(2),
            maker_order_id: OrderId(2),
            maker_user_id: UserId(1),
            taker_order_id: OrderId(10),
            taker_user_id: UserId(2),
            taker_side: Side::Buy,
            price: px(101),
            quantity: 3,
            quote_amount: 303,
            maker_fee: 1,
            taker_fee: 1,
        },
        Event::BookLevel {
            side: Side::Sell,
            price: px(101),
            quantity: 2,
        },
        // Reserved 808 at the limit, spent 803: 5 comes back.
        Event::OrderDone {
            order_id: OrderId(10),
            user_id: UserId(2),
            status: FinalStatus::Filled,
            reason: None,
            filled_quantity: 8,
            release_asset: AssetRole::Quote,
            release: 5,
        },
    ];
    assert_eq!(ev, expected);
    assert_eq!(h.fast.best_ask(), Some(px(101)));
    assert_eq!(h.fast.last_price(), Some(px(101)));
}

#[test]
fn gtc_remainder_rests_and_ioc_remainder_expires() {
    let mut h = H::new();
    h.place(limit(1, 1, Side::Sell, 100, 2));
    let ev = h.place(limit(2, 2, Side::Buy, 100, 5));
    assert_eq!(trades(&ev), vec![(100, 2)]);
    assert_eq!(
        ev.last(),
        Some(&Event::BookLevel {
            side: Side::Buy,
            price: px(100),
            quantity: 3
        })
    );
    assert_eq!(
        h.fast
            .order(OrderId(2))
            .map(|o| (o.open_quantity, o.filled_quantity, o.reserve)),
        Some((3, 2, 300))
    );

    h.place(limit(3, 1, Side::Buy, 99, 1));
    let ev = h.place(PlaceOrder {
        time_in_force: TimeInForce::Ioc,
        ..limit(4, 3, Side::Sell, 99, 10)
    });
    assert_eq!(trades(&ev), vec![(100, 3), (99, 1)]);
    assert_eq!(
        done_of(&ev, 4),
        Some((
            FinalStatus::Expired,
            Some(ReasonCode::ImmediateRemainder),
            4,
            6
        ))
    );
    assert_eq!(h.fast.best_bid(), None);
}

#[test]
fn fok_that_cannot_fill_trades_nothing_and_releases_everything() {
    let mut h = H::new();
    asks_book(&mut h);
    let before = h.observable();
    let ev = h.place(PlaceOrder {
        time_in_force: TimeInForce::Fok,
        ..limit(10, 2, Side::Buy, 101, 11)
    });
    assert!(trades(&ev).is_empty());
    assert_eq!(
        done_of(&ev, 10),
        Some((
            FinalStatus::Expired,
            Some(ReasonCode::FillOrKillUnfilled),
            0,
            1111
        ))
    );
    assert_eq!(h.observable(), before);
    // Exactly enough within the limit: fills completely.
    let ev = h.place(PlaceOrder {
        time_in_force: TimeInForce::Fok,
        ..limit(11, 2, Side::Buy, 101, 10)
    });
    assert_eq!(trades(&ev), vec![(100, 5), (101, 5)]);
    assert_eq!(done_of(&ev, 11).map(|d| d.0), Some(FinalStatus::Filled));
    // FOK market sell into an empty bid side.
    let ev = h.place(PlaceOrder {
        time_in_force: TimeInForce::Fok,
        ..market(12, 2, Side::Sell, 1, 1)
    });
    assert_eq!(
        done_of(&ev, 12),
        Some((
            FinalStatus::Expired,
            Some(ReasonCode::FillOrKillUnfilled),
            0,
            1
        ))
    );
}

#[test]
fn post_only_is_rejected_when_it_would_take_and_rests_otherwise() {
    let mut h = H::new();
    asks_book(&mut h);
    let ev = h.place(PlaceOrder {
        post_only: true,
        ..limit(10, 2, Side::Buy, 100, 1)
    });
    assert_eq!(ev.len(), 1);
    assert_eq!(
        done_of(&ev, 10),
        Some((
            FinalStatus::Rejected,
            Some(ReasonCode::PostOnlyWouldTake),
            0,
            100
        ))
    );
    let ev = h.place(PlaceOrder {
        post_only: true,
        ..limit(11, 2, Side::Buy, 99, 1)
    });
    assert_eq!(
        ev.last(),
        Some(&Event::BookLevel {
            side: Side::Buy,
            price: px(99),
            quantity: 1
        })
    );
    // post-only is for limit orders only
    let ev = h.place(PlaceOrder {
        post_only: true,
        ..market(12, 2, Side::Buy, 1, 500)
    });
    assert_eq!(rejection(&ev), Some(ReasonCode::InvalidOrder));
}

fn stp_book(h: &mut H) {
    h.place(limit(1, 7, Side::Sell, 100, 2)); // own order first in queue
    h.place(limit(2, 1, Side::Sell, 100, 2));
}

#[test]
fn stp_expire_taker_keeps_the_maker() {
    let mut h = H::new();
    stp_book(&mut h);
    let ev = h.place(PlaceOrder {
        stp: SelfTradePrevention::ExpireTaker,
        ..limit(10, 7, Side::Buy, 100, 3)
    });
    assert!(trades(&ev).is_empty());
    assert_eq!(
        done_of(&ev, 10),
        Some((
            FinalStatus::Expired,
            Some(ReasonCode::SelfTradePrevention),
            0,
            300
        ))
    );
    assert!(h.fast.order(OrderId(1)).is_some());
}

#[test]
fn stp_expire_maker_cancels_own_order_and_continues() {
    let mut h = H::new();
    stp_book(&mut h);
    let ev = h.place(PlaceOrder {
        stp: SelfTradePrevention::ExpireMaker,
        ..limit(10, 7, Side::Buy, 100, 3)
    });
    assert_eq!(
        done_of(&ev, 1),
        Some((
            FinalStatus::Expired,
            Some(ReasonCode::SelfTradePrevention),
            0,
            2
        ))
    );
    assert_eq!(trades(&ev), vec![(100, 2)]);
    // the rest of the taker rests
    assert_eq!(h.fast.order(OrderId(10)).map(|o| o.open_quantity), Some(1));
    assert_eq!(h.fast.best_ask(), None);
}

#[test]
fn stp_expire_both_ends_both_orders() {
    let mut h = H::new();
    stp_book(&mut h);
    let ev = h.place(PlaceOrder {
        stp: SelfTradePrevention::ExpireBoth,
        ..limit(10, 7, Side::Buy, 100, 3)
    });
    assert!(trades(&ev).is_empty());
    assert_eq!(
        done_of(&ev, 1).map(|d| d.1),
        Some(Some(ReasonCode::SelfTradePrevention))
    );
    assert_eq!(
        done_of(&ev, 10).map(|d| d.1),
        Some(Some(ReasonCode::SelfTradePrevention))
    );
    assert!(h.fast.order(OrderId(2)).is_some());
}

#[test]
fn stp_none_trades_with_yourself() {
    let mut h = H::new();
    stp_book(&mut h);
    let ev = h.place(limit(10, 7, Side::Buy, 100, 3));
    assert_eq!(trades(&ev), vec![(100, 2), (100, 1)]);
}

#[test]
fn stop_orders_trigger_in_a_cascade() {
    let mut h = H::new();
    h.place(limit(1, 1, Side::Sell, 100, 1));
    h.place(limit(2, 1, Side::Sell, 101, 1));
    h.place(limit(3, 1, Side::Sell, 102, 1));
    h.place(limit(4, 1, Side::Sell, 103, 5));
    h.place(limit(5, 1, Side::Buy, 90, 1));
    // establish a last price of 100
    h.place(limit(6, 2, Side::Buy, 100, 1));
    // buy stop-market at 101, then a buy stop-limit at 102 limit 103
    let stop_market = PlaceOrder {
        order_type: OrderType::StopMarket,
        stop_price: Some(px(101)),
        ..market(20, 3, Side::Buy, 1, 10_000)
    };
    let ev = h.place(stop_market);
    assert_eq!(
        ev,
        vec![Event::OrderAccepted {
            order_id: OrderId(20),
            user_id: UserId(3)
        }]
    );
    let stop_limit = PlaceOrder {
        order_type: OrderType::StopLimit,
        stop_price: Some(px(102)),
        ..limit(21, 4, Side::Buy, 103, 2)
    };
    h.place(stop_limit);
    // a sell stop far below must not trigger
    let far = PlaceOrder {
        order_type: OrderType::StopLimit,
        stop_price: Some(px(50)),
        ..limit(22, 5, Side::Sell, 50, 1)
    };
    h.place(far);
    // stops at or through the last price are refused
    let bad = PlaceOrder {
        order_type: OrderType::StopLimit,
        stop_price: Some(px(100)),
        ..limit(23, 5, Side::Buy, 100, 1)
    };
    assert_eq!(
        rejection(&h.place(bad)),
        Some(ReasonCode::StopWouldTriggerImmediately)
    );

    let ev = h.place(limit(7, 2, Side::Buy, 101, 1));
    let kinds: Vec<String> = ev
        .iter()
        .map(|e| match e {
            Event::StopTriggered { order_id, .. } => format!("stop{}", order_id.0),
            Event::Trade {
                taker_order_id,
                price,
                ..
            } => format!("trade{}@{}", taker_order_id.0, price / TICK),
            _ => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        kinds,
        [
            "trade7@101",
            "stop20",
            "trade20@102",
            "stop21",
            "trade21@103"
        ]
    );
    assert_eq!(
        done_of(&ev, 20).map(|d| (d.0, d.2)),
        Some((FinalStatus::Filled, 1))
    );
    assert_eq!(
        done_of(&ev, 21).map(|d| (d.0, d.2)),
        Some((FinalStatus::Filled, 2))
    );
    assert!(
        h.fast.order(OrderId(22)).is_some(),
        "the far sell stop still waits"
    );
    assert_eq!(h.fast.last_price(), Some(px(103)));
}

#[test]
fn sell_stop_triggers_when_price_falls() {
    let mut h = H::new();
    h.place(limit(1, 1, Side::Buy, 100, 1));
    h.place(limit(2, 1, Side::Buy, 95, 3));
    h.place(limit(3, 2, Side::Sell, 100, 1)); // last = 100
    let stop = PlaceOrder {
        order_type: OrderType::StopMarket,
        stop_price: Some(px(96)),
        ..market(10, 3, Side::Sell, 2, 2)
    };
    h.place(stop);
    let ev = h.place(limit(4, 2, Side::Sell, 95, 1)); // last = 95 <= 96
    assert_eq!(trades(&ev), vec![(95, 1), (95, 2)]);
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::StopTriggered {
            order_id: OrderId(10),
            ..
        }
    )));
}

#[test]
fn amend_reduce_keeps_priority_increase_and_reprice_lose_it() {
    let mut h = H::new();
    h.place(limit(1, 1, Side::Buy, 100, 5));
    h.place(limit(2, 2, Side::Buy, 100, 5));
    // reduce: keeps priority, releases the excess reserve at once
    let ev = h.run(Command::Amend(AmendOrder {
        order_id: OrderId(1),
        user_id: UserId(1),
        side: Side::Buy,
        new_price: None,
        new_quantity: Some(3),
        additional_reserve: 0,
    }));
    assert_eq!(
        ev[0],
        Event::Amended {
            order_id: OrderId(1),
            user_id: UserId(1),
            price: px(100),
            quantity: 3,
            priority_kept: true,
            release_asset: AssetRole::Quote,
            released: 200,
        }
    );
    let ev = h.place(limit(10, 3, Side::Sell, 100, 1));
    assert!(
        matches!(
            ev[1],
            Event::Trade {
                maker_order_id: OrderId(1),
                ..
            }
        ),
        "{ev:?}"
    );

    // increase: needs more reserve, loses priority
    let increase = AmendOrder {
        order_id: OrderId(1),
        user_id: UserId(1),
        side: Side::Buy,
        new_price: None,
        new_quantity: Some(4),
        additional_reserve: 0,
    };
    assert_eq!(
        rejection(&h.run(Command::Amend(increase.clone()))),
        Some(ReasonCode::InsufficientReserve)
    );
    let ev = h.run(Command::Amend(AmendOrder {
        additional_reserve: 250,
        ..increase
    }));
    assert!(
        matches!(
            ev[0],
            Event::Amended {
                priority_kept: false,
                released: 50,
                ..
            }
        ),
        "{ev:?}"
    );
    let ev = h.place(limit(11, 3, Side::Sell, 100, 1));
    assert!(
        matches!(
            ev[1],
            Event::Trade {
                maker_order_id: OrderId(2),
                ..
            }
        ),
        "{ev:?}"
    );

    // price change loses priority too, and can cross: it trades as a taker
    h.place(limit(12, 4, Side::Sell, 102, 2));
    let ev = h.run(Command::Amend(AmendOrder {
        order_id: OrderId(2),
        user_id: UserId(2),
        side: Side::Buy,
        new_price: Some(px(102)),
        new_quantity: None,
        additional_reserve: 8,
    }));
    // 4 open at 100 (reserve 400) -> 4 at 102 needs 408
    assert!(
        matches!(
            ev[0],
            Event::Amended {
                priority_kept: false,
                released: 0,
                ..
            }
        ),
        "{ev:?}"
    );
    assert_eq!(trades(&ev), vec![(102, 2)]);
    assert_eq!(
        h.fast
            .order(OrderId(2))
            .map(|o| (o.price, o.open_quantity, o.reserve)),
        Some((Some(px(102)), 2, 204))
    );
}

#[test]
fn amend_rejections_change_nothing_and_refund_the_extra_reserve() {
    let mut h = H::new();
    h.place(limit(1, 1, Side::Buy, 100, 5));
    h.place(PlaceOrder {
        post_only: true,
        ..limit(2, 1, Side::Buy, 99, 1)
    });
    h.place(limit(3, 2, Side::Sell, 105, 1));
    let before = h.observable();
    let base = AmendOrder {
        order_id: OrderId(1),
        user_id: UserId(1),
        side: Side::Buy,
        new_price: Some(px(102)), // needs 510, holds 500 + 5
        new_quantity: None,
        additional_reserve: 5,
    };
    let cases = [
        (
            AmendOrder {
                order_id: OrderId(99),
                ..base.clone()
            },
            ReasonCode::OrderNotFound,
        ),
        (
            AmendOrder {
                user_id: UserId(2),
                ..base.clone()
            },
            ReasonCode::NotOrderOwner,
        ),
        (
            AmendOrder {
                side: Side::Sell,
                ..base.clone()
            },
            ReasonCode::SideMismatch,
        ),
        (
            AmendOrder {
                new_price: Some(px(101) + 1),
                ..base.clone()
            },
            ReasonCode::PriceNotOnTick,
        ),
        (
            AmendOrder {
                new_price: None,
                new_quantity: None,
                ..base.clone()
            },
            ReasonCode::InvalidAmend,
        ),
        (
            AmendOrder {
                new_price: None,
                new_quantity: Some(0),
                ..base.clone()
            },
            ReasonCode::InvalidAmend,
        ),
        (
            AmendOrder {
                order_id: OrderId(2),
                new_price: Some(px(105)),
                ..base.clone()
            },
            ReasonCode::PostOnlyWouldTake,
        ),
        (base.clone(), ReasonCode::InsufficientReserve),
    ];
    for (amend, reason) in cases {
        let ev = h.run(Command::Amend(amend.clone()));
        assert_eq!(ev.len(), 1, "{amend:?}");
        match &ev[0] {
            Event::CommandRejected {
                command,
                reason: r,
                release,
                release_asset,
                ..
            } => {
                assert_eq!(
                    (*command, *r, *release, *release_asset),
                    (CommandKind::Amend, reason, 5, amend.side.spends())
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(h.observable(), before);
    }
}

#[test]
fn cancel_unknown_or_foreign_order_is_rejected_without_change() {
    let mut h = H::new();
    h.place(limit(1, 1, Side::Buy, 100, 5));
    let before = h.observable();
    let ev = h.run(Command::Cancel {
        order_id: OrderId(2),
        user_id: UserId(1),
    });
    assert_eq!(rejection(&ev), Some(ReasonCode::OrderNotFound));
    let ev = h.run(Command::Cancel {
        order_id: OrderId(1),
        user_id: UserId(2),
    });
    assert_eq!(rejection(&ev), Some(ReasonCode::NotOrderOwner));
    assert_eq!(h.observable(), before);
    let ev = h.run(Command::Cancel {
        order_id: OrderId(1),
        user_id: UserId(1),
    });
    assert_eq!(done_of(&ev, 1), Some((FinalStatus::Canceled, None, 0, 500)));
    assert_eq!(
        ev[1],
        Event::BookLevel {
            side: Side::Buy,
            price: px(100),
            quantity: 0
        }
    );
    assert_eq!(h.fast.order_count(), 0);
}

#[test]
fn cancel_all_cancels_resting_and_stops_of_one_user_in_id_order() {
    let mut h = H::new();
    h.place(limit(5, 1, Side::Buy, 100, 1));
    h.place(limit(3, 1, Side::Sell, 110, 1));
    h.place(limit(4, 2, Side::Buy, 100, 1));
    h.place(limit(9, 3, Side::Sell, 100, 1)); // trade: last = 100
    let stop = PlaceOrder {
        order_type: OrderType::StopLimit,
        stop_price: Some(px(120)),
        ..limit(1, 1, Side::Buy, 120, 1)
    };
    h.place(stop);
    let ev = h.run(Command::CancelAll { user_id: UserId(1) });
    let canceled: Vec<u64> = ev
        .iter()
        .filter_map(|e| match e {
            Event::OrderDone {
                order_id,
                status: FinalStatus::Canceled,
                ..
            } => Some(order_id.0),
            _ => None,
        })
        .collect();
    assert_eq!(canceled, [1, 3]); // order 5 traded away already
    assert_eq!(h.fast.order_count(), 1);
    assert!(h.fast.order(OrderId(4)).is_some());
}

#[test]
fn off_tick_off_step_and_small_orders_are_rejected_with_full_release() {
    let mut h = H::new();
    let cases = [
        (
            PlaceOrder {
                price: Some(px(100) + 1),
                ..limit(1, 1, Side::Buy, 100, 1)
            },
            ReasonCode::PriceNotOnTick,
        ),
        (
            PlaceOrder {
                quantity: Some(0),
                ..limit(1, 1, Side::Buy, 100, 1)
            },
            ReasonCode::InvalidOrder,
        ),
        (limit(1, 1, Side::Buy, 1, 1), ReasonCode::NotionalTooSmall),
        (
            PlaceOrder {
                reserved: 99,
                ..limit(1, 1, Side::Buy, 100, 1)
            },
            ReasonCode::InsufficientReserve,
        ),
        (
            PlaceOrder {
                reserved: 0,
                ..limit(1, 1, Side::Sell, 100, 1)
            },
            ReasonCode::InsufficientReserve,
        ),
        (
            PlaceOrder {
                price: None,
                ..limit(1, 1, Side::Buy, 100, 1)
            },
            ReasonCode::InvalidOrder,
        ),
        (
            PlaceOrder {
                quote_quantity: Some(5),
                ..market(1, 1, Side::Buy, 1, 500)
            },
            ReasonCode::InvalidOrder,
        ),
        (
            PlaceOrder {
                quantity: None,
                quote_quantity: Some(500),
                ..market(1, 1, Side::Sell, 1, 5)
            },
            ReasonCode::InvalidOrder,
        ),
        (
            PlaceOrder {
                price: Some(u128::MAX - u128::MAX % TICK),
                ..limit(1, 1, Side::Sell, 1, 1)
            },
            ReasonCode::OutOfRange,
        ),
        (
            PlaceOrder {
                stop_price: Some(px(1)),
                ..limit(1, 1, Side::Buy, 100, 1)
            },
            ReasonCode::InvalidOrder,
        ),
    ];
    for (order, reason) in cases {
        let reserved = order.reserved;
        let ev = h.place(order.clone());
        assert_eq!(
            ev,
            vec![Event::OrderDone {
                order_id: OrderId(1),
                user_id: UserId(1),
                status: FinalStatus::Rejected,
                reason: Some(reason),
                filled_quantity: 0,
                release_asset: order.side.spends(),
                release: reserved,
            }],
            "{order:?}"
        );
    }
    // a step-aligned market with a coarser step rejects off-step input
    let mut f = *spec().fields();
    f.qty_step = 10;
    f.min_qty = 10;
    let mut coarse = OrderBook::new(MarketSpec::new(f).expect("valid"));
    let ev = coarse
        .apply(1, 0, &Command::Place(limit(1, 1, Side::Sell, 100, 15)))
        .expect("seq");
    assert_eq!(rejection(&ev), Some(ReasonCode::QuantityNotOnStep));
    let ev = coarse
        .apply(2, 0, &Command::Place(limit(1, 1, Side::Sell, 100, 10)))
        .expect("seq");
    assert!(matches!(ev[0], Event::OrderAccepted { .. }));
}

/// The order service refuses both of these (its minimum quantity is
/// compared in units, and it needs `price × quantity` to fit in `u128`
/// units); the engine never did, and must keep accepting what it accepted.
#[test]
fn the_engine_keeps_its_own_edges_of_the_64_bit_lots() {
    let max_lots = u128::from(u64::MAX);
    // A minimum above u64::MAX lots counts as u64::MAX lots.
    let mut f = *spec().fields();
    f.min_qty = max_lots + 1;
    let mut h = H {
        fast: OrderBook::new(MarketSpec::new(f).expect("valid")),
        reference: ReferenceBook::new(MarketSpec::new(f).expect("valid")),
        seq: 0,
    };
    let ev = h.place(limit(1, 1, Side::Sell, 100, max_lots));
    assert!(matches!(ev[0], Event::OrderAccepted { .. }), "{ev:?}");
    let ev = h.place(limit(2, 1, Side::Sell, 100, max_lots - 1));
    assert_eq!(rejection(&ev), Some(ReasonCode::QuantityTooSmall));
    // The highest price times u64::MAX lots overflows u128 in units, not
    // in ticks × lots.
    let mut h = H::new();
    let top = u128::from(crate::rules::TICKS_MAX);
    assert!(px(top).checked_mul(max_lots).is_none());
    let ev = h.place(limit(1, 1, Side::Sell, top, max_lots));
    assert!(matches!(ev[0], Event::OrderAccepted { .. }), "{ev:?}");
}

#[test]
fn quote_amount_market_buy_leaves_dust_that_is_released() {
    let mut h = H::new();
    h.place(limit(1, 1, Side::Sell, 100, 2));
    h.place(limit(2, 1, Side::Sell, 101, 5));
    let order = PlaceOrder {
        quantity: None,
        quote_quantity: Some(350),
        ..market(10, 2, Side::Buy, 1, 360)
    };
    let ev = h.place(order);
    // 2 @ 100 = 200, then 150 left buys 1 @ 101; 49 cannot buy another lot
    assert_eq!(trades(&ev), vec![(100, 2), (101, 1)]);
    // reserved 360 - spent 301 = 59 released (49 dust + 10 over-reserve)
    assert_eq!(done_of(&ev, 10), Some((FinalStatus::Filled, None, 3, 59)));
}

#[test]
fn market_buy_by_quantity_never_spends_more_than_reserved() {
    let mut h = H::new();
    asks_book(&mut h);
    let ev = h.place(market(10, 2, Side::Buy, 10, 750));
    // 5 @ 100 = 500; 250 left buys 2 @ 101 = 202; 48 cannot buy one more
    assert_eq!(trades(&ev), vec![(100, 5), (101, 2)]);
    assert_eq!(
        done_of(&ev, 10),
        Some((
            FinalStatus::Expired,
            Some(ReasonCode::ReserveExhausted),
            7,
            48
        ))
    );
    // market sell with nothing to hit
    let ev = h.place(market(11, 2, Side::Sell, 3, 3));
    assert_eq!(
        done_of(&ev, 11),
        Some((
            FinalStatus::Expired,
            Some(ReasonCode::ImmediateRemainder),
            0,
            3
        ))
    );
}

#[test]
fn over_reserved_limit_releases_remainder_when_done() {
    let mut h = H::new();
    h.place(limit(1, 1, Side::Sell, 100, 2));
    let ev = h.place(PlaceOrder {
        reserved: 1_000,
        ..limit(2, 2, Side::Buy, 100, 2)
    });
    assert_eq!(done_of(&ev, 2), Some((FinalStatus::Filled, None, 2, 800)));
}

#[test]
fn market_status_gates_commands() {
    let mut h = H::new();
    h.place(limit(1, 1, Side::Buy, 100, 5));
    h.place(limit(2, 1, Side::Buy, 99, 5));
    h.run(Command::SetStatus {
        status: MarketStatus::CancelOnly,
    });
    let ev = h.place(limit(3, 2, Side::Sell, 100, 1));
    assert_eq!(
        done_of(&ev, 3),
        Some((
            FinalStatus::Rejected,
            Some(ReasonCode::MarketCancelOnly),
            0,
            1
        ))
    );
    let ev = h.run(Command::Amend(AmendOrder {
        order_id: OrderId(1),
        user_id: UserId(1),
        side: Side::Buy,
        new_price: None,
        new_quantity: Some(1),
        additional_reserve: 7,
    }));
    assert!(matches!(
        ev[0],
        Event::CommandRejected {
            reason: ReasonCode::MarketCancelOnly,
            release: 7,
            ..
        }
    ));
    let ev = h.run(Command::Cancel {
        order_id: OrderId(1),
        user_id: UserId(1),
    });
    assert_eq!(done_of(&ev, 1).map(|d| d.0), Some(FinalStatus::Canceled));
    h.run(Command::SetStatus {
        status: MarketStatus::Halted,
    });
    let ev = h.run(Command::Cancel {
        order_id: OrderId(2),
        user_id: UserId(1),
    });
    assert_eq!(rejection(&ev), Some(ReasonCode::MarketHalted));
    let ev = h.run(Command::CancelAll { user_id: UserId(1) });
    assert_eq!(rejection(&ev), Some(ReasonCode::MarketHalted));
    assert_eq!(
        rejection(&h.place(limit(4, 2, Side::Sell, 100, 1))),
        Some(ReasonCode::MarketHalted)
    );
    let ev = h.run(Command::SetStatus {
        status: MarketStatus::Trading,
    });
    assert_eq!(
        ev,
        vec![Event::MarketStatusChanged {
            status: MarketStatus::Trading
        }]
    );
    assert_eq!(
        trades(&h.place(limit(5, 2, Side::Sell, 99, 1))),
        vec![(99, 1)]
    );
}

#[test]
fn duplicate_order_id_and_stale_sequence_are_refused() {
    let mut h = H::new();
    h.place(limit(1, 1, Side::Buy, 100, 5));
    assert_eq!(
        rejection(&h.place(limit(1, 2, Side::Buy, 90, 1))),
        Some(ReasonCode::DuplicateOrderId)
    );
    let seq = h.seq;
    assert_eq!(
        h.fast
            .apply(seq, 0, &Command::CancelAll { user_id: UserId(1) }),
        Err(ApplyError::StaleSequence {
            last: seq,
            got: seq
        })
    );
    assert_eq!(h.fast.order_count(), 1);
}

#[test]
fn snapshot_restores_identical_state_and_rejects_damage() {
    let mut h = H::new();
    asks_book(&mut h);
    h.place(limit(4, 2, Side::Buy, 99, 3));
    h.place(limit(5, 3, Side::Buy, 99, 2));
    h.place(limit(6, 2, Side::Buy, 100, 1)); // trade, last = 100
    let stop = PlaceOrder {
        order_type: OrderType::StopLimit,
        stop_price: Some(px(90)),
        ..limit(7, 4, Side::Sell, 89, 1)
    };
    h.place(stop);
    let bytes = h.fast.snapshot();
    assert_eq!(
        bytes,
        h.reference.snapshot(),
        "both books write the same canonical bytes"
    );
    let restored = OrderBook::restore(spec(), &bytes).expect("restores");
    assert_eq!(restored.state_hash(), h.fast.state_hash());
    assert_eq!(restored.orders(), h.fast.orders());
    restored
        .check_invariants()
        .expect("restored book is consistent");

    let mut damaged = bytes.clone();
    damaged[60] ^= 1;
    assert_eq!(
        OrderBook::restore(spec(), &damaged).err(),
        Some(SnapshotError::BadChecksum)
    );
    assert_eq!(
        OrderBook::restore(spec(), &bytes[..bytes.len() - 3]).err(),
        Some(SnapshotError::BadChecksum)
    );
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert_eq!(
        OrderBook::restore(spec(), &magic).err(),
        Some(SnapshotError::BadMagic)
    );
    let mut version = bytes.clone();
    version[8] = 9;
    assert_eq!(
        OrderBook::restore(spec(), &version).err(),
        Some(SnapshotError::UnsupportedVersion(9))
    );
    let mut f = *spec().fields();
    f.taker_fee = FeeRate::from_ppm(3_000).expect("valid");
    let other = MarketSpec::new(f).expect("valid");
    assert_eq!(
        OrderBook::restore(other, &bytes).err(),
        Some(SnapshotError::SpecMismatch)
    );
}

#[test]
fn fees_on_both_sides_are_in_the_received_asset() {
    let mut h = H::new();
    h.place(limit(1, 1, Side::Buy, 1000, 300));
    let ev = h.place(limit(2, 2, Side::Sell, 1000, 300));
    match &ev[1] {
        Event::Trade {
            quantity,
            quote_amount,
            maker_fee,
            taker_fee,
            taker_side,
            ..
        } => {
            assert_eq!(
                (*quantity, *quote_amount, *taker_side),
                (300, 300_000, Side::Sell)
            );
            // maker bought: pays 0.1 % of 300 base units = 0.3 -> 1 (rounded up)
            assert_eq!(*maker_fee, 1);
            // taker sold: pays 0.2 % of 300_000 quote units = 600
            assert_eq!(*taker_fee, 600);
        }
        other => panic!("{other:?}"),
    }
}

/// A take-profit of `order_type` (limit or market counterpart in `base`).
fn take_profit(base: PlaceOrder, stop_ticks: u128) -> PlaceOrder {
    let order_type = if base.order_type == OrderType::Limit {
        OrderType::TakeProfitLimit
    } else {
        OrderType::TakeProfitMarket
    };
    PlaceOrder {
        order_type,
        stop_price: Some(px(stop_ticks)),
        ..base
    }
}

/// Trades as `trade{taker}@{price}` and triggers as `stop{id}`, in order.
fn story(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StopTriggered { order_id, .. } => Some(format!("stop{}", order_id.0)),
            Event::Trade {
                taker_order_id,
                price,
                ..
            } => Some(format!("trade{}@{}", taker_order_id.0, price / TICK)),
            _ => None,
        })
        .collect()
}

#[test]
fn take_profit_sell_waits_for_a_rise_then_trades_and_rests() {
    let mut h = H::new();
    h.place(limit(1, 1, Side::Sell, 100, 1));
    h.place(limit(2, 2, Side::Buy, 100, 1)); // last = 100
    // sell 2 at 105 once the price has risen to 105
    let ev = h.place(take_profit(limit(10, 3, Side::Sell, 105, 2), 105));
    assert_eq!(
        ev,
        vec![Event::OrderAccepted {
            order_id: OrderId(10),
            user_id: UserId(3)
        }],
        "a pending take-profit is not in the book"
    );
    let pending = h.fast.order(OrderId(10)).expect("pending");
    assert!(!pending.resting);
    assert_eq!(pending.order_type, OrderType::TakeProfitLimit);
    assert_eq!(pending.stop_price, Some(px(105)));
    assert_eq!(h.fast.best_ask(), None);

    // a fall never triggers a sell take-profit; a rise short of it neither
    h.place(limit(3, 1, Side::Buy, 90, 1));
    h.place(limit(4, 4, Side::Sell, 90, 1)); // last = 90
    h.place(limit(5, 1, Side::Sell, 104, 1));
    let ev = h.place(limit(6, 2, Side::Buy, 104, 1)); // last = 104
    assert_eq!(story(&ev), ["trade6@104"]);
    assert!(!h.fast.order(OrderId(10)).expect("still pending").resting);

    // the buy sweeps 105 and rests its last lot at 105; the trade at 105
    // triggers the take-profit, whose limit 105 takes that bid
    h.place(limit(7, 1, Side::Sell, 105, 1));
    let ev = h.place(limit(8, 2, Side::Buy, 105, 2));
    assert_eq!(story(&ev), ["trade8@105", "stop10", "trade10@105"]);
    assert!(ev.contains(&Event::StopTriggered {
        order_id: OrderId(10),
        user_id: UserId(3),
        stop_price: px(105),
        last_price: px(105),
    }));
    assert_eq!(
        done_of(&ev, 8).map(|d| (d.0, d.2)),
        Some((FinalStatus::Filled, 2))
    );
    let tp = h.fast.order(OrderId(10)).expect("remainder rests");
    assert!(tp.resting);
    assert_eq!(tp.order_type, OrderType::Limit);
    assert_eq!((tp.open_quantity, tp.filled_quantity), (1, 1));
    assert_eq!(h.fast.best_ask(), Some(px(105)));
}

#[test]
fn falling_price_cascades_through_a_sell_stop_into_a_buy_take_profit() {
    let mut h = H::new();
    h.place(limit(1, 1, Side::Buy, 99, 1));
    h.place(limit(2, 1, Side::Buy, 97, 1));
    h.place(limit(3, 1, Side::Buy, 96, 1));
    h.place(limit(4, 1, Side::Buy, 94, 5));
    h.place(limit(5, 1, Side::Sell, 110, 5));
    h.place(limit(6, 1, Side::Sell, 100, 1));
    h.place(limit(7, 2, Side::Buy, 100, 1)); // last = 100
    // sell stop at 97 (falls), buy take-profit at 95 (falls further), and
    // a sell take-profit at 108 and a buy stop at 105 that a fall must
    // leave alone
    let sell_stop = PlaceOrder {
        order_type: OrderType::StopMarket,
        stop_price: Some(px(97)),
        ..market(20, 3, Side::Sell, 2, 2)
    };
    h.place(sell_stop);
    h.place(take_profit(limit(21, 4, Side::Buy, 95, 1), 95));
    h.place(take_profit(limit(22, 4, Side::Sell, 108, 1), 108));
    let buy_stop = PlaceOrder {
        order_type: OrderType::StopLimit,
        stop_price: Some(px(105)),
        ..limit(23, 4, Side::Buy, 106, 1)
    };
    h.place(buy_stop);

    let ev = h.place(market(30, 2, Side::Sell, 2, 2)); // 99, 97: last = 97
    assert_eq!(
        story(&ev),
        [
            "trade30@99",
            "trade30@97",
            "stop20",
            "trade20@96",
            "trade20@94",
            "stop21"
        ]
    );
    assert_eq!(
        done_of(&ev, 20).map(|d| (d.0, d.2)),
        Some((FinalStatus::Filled, 2))
    );
    // the take-profit buy became a limit at 95 with no ask at or below it
    let tp = h.fast.order(OrderId(21)).expect("rests");
    assert!(tp.resting && tp.order_type == OrderType::Limit);
    assert_eq!(h.fast.best_bid(), Some(px(95)));
    assert!(!h.fast.order(OrderId(22)).expect("waits").resting);
    assert!(!h.fast.order(OrderId(23)).expect("waits").resting);

    // a rise now triggers the buy stop before the sell take-profit (stops
    // first), and the take-profit market sell then hits the new bid
    h.place(limit(8, 1, Side::Sell, 109, 1));
    let ev = h.place(limit(31, 2, Side::Buy, 109, 1)); // last = 109
    assert_eq!(story(&ev), ["trade31@109", "stop23", "stop22"]);
    assert!(h.fast.order(OrderId(23)).expect("rests").resting);
    assert!(h.fast.order(OrderId(22)).expect("rests").resting);
}

#[test]
fn take_profit_at_or_through_the_last_price_is_refused() {
    let mut h = H::new();
    // before any trade there is no last price: anything is accepted
    let ev = h.place(take_profit(limit(10, 3, Side::Sell, 100, 1), 1));
    assert!(rejection(&ev).is_none(), "{ev:?}");
    h.place(limit(1, 1, Side::Sell, 100, 1));
    let ev = h.place(limit(2, 2, Side::Buy, 100, 1)); // last = 100
    // the first trade meets order 10's condition (last >= 1): it now rests
    assert_eq!(story(&ev), ["trade2@100", "stop10"]);
    assert!(h.fast.order(OrderId(10)).expect("rests").resting);
    let cases = [
        (11, Side::Sell, 100, true),
        (12, Side::Sell, 99, true),
        (13, Side::Sell, 101, false),
        (14, Side::Buy, 100, true),
        (15, Side::Buy, 101, true),
        (16, Side::Buy, 99, false),
    ];
    for (id, side, stop, refused) in cases {
        let ev = h.place(take_profit(market(id, 3, side, 1, 1_000), stop));
        let want = refused.then_some(ReasonCode::StopWouldTriggerImmediately);
        assert_eq!(rejection(&ev), want, "{side:?} take-profit at {stop}");
        if refused {
            assert_eq!(done_of(&ev, id).map(|d| d.3), Some(1_000), "full release");
        }
    }
}

#[test]
fn pending_take_profits_are_canceled_alone_or_with_cancel_all() {
    let mut h = H::new();
    h.place(limit(1, 1, Side::Sell, 100, 1));
    h.place(limit(2, 2, Side::Buy, 100, 1)); // last = 100
    h.place(take_profit(limit(10, 3, Side::Sell, 110, 2), 110));
    h.place(take_profit(market(11, 3, Side::Buy, 1, 5_000), 90));
    h.place(take_profit(limit(12, 4, Side::Buy, 80, 1), 80));
    let ev = h.run(Command::Cancel {
        order_id: OrderId(12),
        user_id: UserId(4),
    });
    assert_eq!(
        done_of(&ev, 12),
        Some((FinalStatus::Canceled, None, 0, 80)),
        "canceled with its whole reserve back"
    );
    let ev = h.run(Command::CancelAll { user_id: UserId(3) });
    assert_eq!(
        ev.iter()
            .filter_map(|e| match e {
                Event::OrderDone {
                    order_id,
                    status: FinalStatus::Canceled,
                    release,
                    ..
                } => Some((order_id.0, *release)),
                _ => None,
            })
            .collect::<Vec<_>>(),
        [(10, 2), (11, 5_000)]
    );
    assert_eq!(h.fast.order_count(), 0);
    // nothing is left to trigger
    h.place(limit(3, 1, Side::Sell, 120, 1));
    let ev = h.place(limit(4, 2, Side::Buy, 120, 1));
    assert_eq!(story(&ev), ["trade4@120"]);
}

#[test]
fn snapshot_version_2_holds_take_profits_and_version_1_books_are_unchanged() {
    let mut h = H::new();
    asks_book(&mut h);
    h.place(limit(4, 2, Side::Buy, 99, 3));
    h.place(limit(6, 2, Side::Buy, 100, 1)); // trade, last = 100
    let stop = PlaceOrder {
        order_type: OrderType::StopLimit,
        stop_price: Some(px(90)),
        ..limit(7, 4, Side::Sell, 89, 1)
    };
    h.place(stop);
    // No take-profit: still written as version 1, byte for byte the
    // layout older builds wrote, so their stored state hashes still match.
    let v1 = h.fast.snapshot();
    assert_eq!(u16::from_le_bytes([v1[8], v1[9]]), 1);

    h.place(take_profit(limit(8, 5, Side::Sell, 103, 2), 103));
    h.place(take_profit(limit(9, 5, Side::Sell, 102, 1), 102));
    h.place(take_profit(market(10, 6, Side::Buy, 1, 1_000), 95));
    h.place(take_profit(market(11, 6, Side::Buy, 1, 1_000), 97));
    let v2 = h.fast.snapshot();
    assert_eq!(u16::from_le_bytes([v2[8], v2[9]]), 2);
    assert_eq!(v2, h.reference.snapshot(), "same canonical bytes");
    let mut restored = OrderBook::restore(spec(), &v2).expect("restores");
    assert_eq!(restored.state_hash(), h.fast.state_hash());
    assert_eq!(restored.orders(), h.fast.orders());
    // canonical pending order: stops, then take-profit buys highest first,
    // then take-profit sells lowest first
    let pending: Vec<u64> = h
        .fast
        .orders()
        .iter()
        .filter(|o| !o.resting)
        .map(|o| o.order_id.0)
        .collect();
    assert_eq!(pending, [7, 11, 10, 9, 8]);

    // the restored book triggers exactly like the live one
    let cmd = Command::Place(limit(12, 2, Side::Buy, 102, 10));
    let live = h.run(cmd.clone());
    let again = restored
        .apply(h.seq, 1_000 + h.seq, &cmd)
        .expect("fresh seq");
    assert_eq!(again, live);
    assert_eq!(
        story(&live),
        ["trade12@100", "trade12@101", "trade12@102", "stop9"]
    );

    // A version-1 snapshot cannot hold a take-profit type code.
    let mut downgraded = v2[..v2.len() - 8].to_vec();
    downgraded[8] = 1;
    crate::snapshot::seal(&mut downgraded);
    assert_eq!(
        OrderBook::restore(spec(), &downgraded).err(),
        Some(SnapshotError::Invalid("order type"))
    );
}
