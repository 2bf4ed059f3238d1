//! One public WebSocket connection's send queue, with depth conflation.
//!
//! The queue is bounded ([`WS_SEND_QUEUE_LEN_MAX`] items). The publisher
//! (under a market's lock) only ever appends or merges, never waits; the
//! connection's writer takes up to a burst of items per lock.
//!
//! When the queue is full, the pending **depth** messages are conflated
//! before anything is refused: all queued deltas of one depth channel (ours
//! or a Binance `@depth` stream) since its last snapshot are merged into
//! one, at the position of the oldest (so the freshest book goes out
//! first). Per price level the newest quantity wins, which is exactly what
//! applying the deltas one by one would leave; the merged delta carries the
//! range of sequence numbers it covers (`first_seq..=seq` on our channel,
//! `U..=u` on Binance's), so a client tells conflation from loss: the next
//! message's first number is always the previous one's last + 1. While
//! such a merged delta is still queued, further deltas of that channel fold
//! into it in O(levels) instead of taking a slot.
//!
//! Everything else (trades, klines, tickers, replies, snapshots) is never
//! merged or dropped: if the queue is still full after conflation the
//! connection is closed as too slow, as is one whose merged delta grows
//! past [`WS_CONFLATED_LEVELS_MAX`] levels (memory stays bounded).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use exchange_domain::symbol::MarketSymbol;

use crate::channel::ChannelKind;
use crate::render::binance::{self, BnNames};
use crate::render::native;
use crate::state::Scales;

/// Items waiting for one connection before conflation (and then the
/// disconnect) starts.
pub const WS_SEND_QUEUE_LEN_MAX: usize = 1_024;
/// Price levels (both sides) one merged delta may hold before the
/// connection is closed as too slow.
pub const WS_CONFLATED_LEVELS_MAX: usize = 20_000;

/// A depth channel of one market on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthKey {
    pub market: MarketSymbol,
    pub kind: ChannelKind,
}

/// What rendering a market's depth deltas needs without its state: a
/// merged delta is rendered by the connection's writer, outside the
/// market's lock.
#[derive(Debug)]
pub struct DepthInfo {
    pub symbol: MarketSymbol,
    pub scales: Scales,
    pub bn: BnNames,
}

impl DepthInfo {
    pub fn new(symbol: MarketSymbol, scales: Scales) -> Self {
        Self {
            symbol,
            scales,
            bn: BnNames::new(&symbol),
        }
    }
}

/// One published depth change, shared by every subscriber (kept beside
/// the rendered bytes so a slow connection can merge it).
#[derive(Debug)]
pub struct DepthDelta {
    pub info: Arc<DepthInfo>,
    /// The sequence numbers this delta covers: `first..=last`.
    pub first: u64,
    pub last: u64,
    pub time_ms: u64,
    /// Levels as `(price, new total)`, 0 removes.
    pub bids: Vec<(u128, u128)>,
    pub asks: Vec<(u128, u128)>,
}

/// Several deltas of one channel merged into one.
#[derive(Debug)]
pub struct Merged {
    key: DepthKey,
    info: Arc<DepthInfo>,
    first: u64,
    last: u64,
    time_ms: u64,
    /// How many published deltas it stands for.
    count: u64,
    bids: BTreeMap<u128, u128>,
    asks: BTreeMap<u128, u128>,
}

impl Merged {
    fn new(key: DepthKey, d: &DepthDelta) -> Self {
        Self {
            key,
            info: d.info.clone(),
            first: d.first,
            last: d.last,
            time_ms: d.time_ms,
            count: 1,
            bids: d.bids.iter().copied().collect(),
            asks: d.asks.iter().copied().collect(),
        }
    }

    /// Whether a delta starting at `first` continues this one. Deltas of
    /// one channel on one connection always do, unless the connection
    /// unsubscribed and subscribed again in between: then they are not
    /// merged (the client sees the jump and resyncs, as it must anyway).
    fn continues(&self, first: u64) -> bool {
        first == self.last.wrapping_add(1)
    }

    /// Applies a later delta on top (newest quantity per level wins).
    fn fold(&mut self, d: &DepthDelta) {
        self.bids.extend(d.bids.iter().copied());
        self.asks.extend(d.asks.iter().copied());
        self.last = d.last;
        self.time_ms = d.time_ms;
        self.count += 1;
    }

    fn absorb(&mut self, later: Merged) {
        self.bids.extend(later.bids);
        self.asks.extend(later.asks);
        self.last = later.last;
        self.time_ms = later.time_ms;
        self.count += later.count;
    }

    fn levels(&self) -> usize {
        self.bids.len() + self.asks.len()
    }

    /// How many deltas it stands for.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The message as the connection's channel shows it.
    pub fn render(&self, combined: bool) -> Utf8Bytes {
        let bids = self.bids.iter().rev().map(|(p, q)| (*p, *q));
        let asks = self.asks.iter().map(|(p, q)| (*p, *q));
        let info = &self.info;
        let text = match self.key.kind {
            ChannelKind::Bn(kind) => {
                let raw = binance::depth_update(
                    &info.bn,
                    info.scales,
                    self.first,
                    self.last,
                    self.time_ms,
                    bids,
                    asks,
                );
                if combined {
                    binance::combined(&info.bn, kind, &raw)
                } else {
                    raw
                }
            }
            _ => native::depth_delta(
                &info.symbol,
                info.scales,
                Some(self.first),
                self.last,
                bids,
                asks,
            ),
        };
        Utf8Bytes::from(text)
    }
}

enum Item {
    Msg(Utf8Bytes),
    /// A depth snapshot: deltas queued after it never merge with ones before.
    Snapshot(DepthKey, Utf8Bytes),
    Depth(DepthKey, Utf8Bytes, Arc<DepthDelta>),
    Merged(Box<Merged>),
}

/// What the writer sends next.
pub enum Out {
    Bytes(Utf8Bytes),
    Merged(Box<Merged>),
}

#[derive(Default)]
struct Inner {
    items: VecDeque<Item>,
    /// Position (counted since the connection opened) of `items[0]`.
    head: u64,
    /// Merged deltas still queued that later deltas of their channel fold
    /// into: (channel, position).
    open: Vec<(DepthKey, u64)>,
    /// `Item::Depth`s queued: conflation is worth a pass only when > 0.
    plain_depth: usize,
    closed: bool,
}

impl Inner {
    fn open_slot(&mut self, key: &DepthKey) -> Option<&mut Merged> {
        let pos = self.open.iter().find(|(k, _)| k == key)?.1;
        let idx = usize::try_from(pos.checked_sub(self.head)?).ok()?;
        match self.items.get_mut(idx) {
            Some(Item::Merged(m)) => Some(m),
            _ => None,
        }
    }

    /// Merges every channel's queued deltas (since its last snapshot) into
    /// one at the oldest one's place. Returns the deltas folded.
    fn conflate(&mut self) -> u64 {
        if self.plain_depth == 0 {
            return 0;
        }
        let old = std::mem::take(&mut self.items);
        let mut items = VecDeque::with_capacity(old.len());
        // Channel -> index in `items` of its merged delta after the last snapshot.
        let mut cur: Vec<(DepthKey, usize)> = Vec::new();
        let mut folded = 0;
        for item in old {
            match item {
                Item::Depth(key, _, d) => {
                    if let Some(&(_, i)) = cur.iter().find(|(k, _)| *k == key)
                        && let Some(Item::Merged(m)) = items.get_mut(i)
                        && m.continues(d.first)
                    {
                        m.fold(&d);
                        folded += 1;
                    } else {
                        cur.retain(|(k, _)| *k != key);
                        cur.push((key, items.len()));
                        items.push_back(Item::Merged(Box::new(Merged::new(key, &d))));
                    }
                }
                Item::Merged(m) => {
                    if let Some(&(_, i)) = cur.iter().find(|(k, _)| *k == m.key)
                        && let Some(Item::Merged(into)) = items.get_mut(i)
                        && into.continues(m.first)
                    {
                        into.absorb(*m);
                        folded += 1;
                    } else {
                        cur.retain(|(k, _)| *k != m.key);
                        cur.push((m.key, items.len()));
                        items.push_back(Item::Merged(m));
                    }
                }
                Item::Snapshot(key, b) => {
                    cur.retain(|(k, _)| *k != key);
                    items.push_back(Item::Snapshot(key, b));
                }
                Item::Msg(b) => items.push_back(Item::Msg(b)),
            }
        }
        self.items = items;
        self.plain_depth = 0;
        let head = self.head;
        self.open = cur.into_iter().map(|(k, i)| (k, head + i as u64)).collect();
        folded
    }
}

/// A connection's queue, shared by the markets it subscribes to (which
/// offer) and its writer (which drains).
#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
    ready: Notify,
    kill: Notify,
    /// Binance streams reach this connection wrapped as
    /// `{"stream":..,"data":..}` (the combined `/stream` endpoint).
    pub combined: bool,
    capacity: usize,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("combined", &self.combined)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    pub fn new(combined: bool) -> Self {
        Self::with_capacity(combined, WS_SEND_QUEUE_LEN_MAX)
    }

    pub fn with_capacity(combined: bool, capacity: usize) -> Self {
        Self {
            combined,
            capacity: capacity.max(1),
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing in `Inner` is left half-updated by a panic that matters
        // more than keeping the connection's queue usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes for good (the connection ended): offers fail from now on.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.items.clear();
        inner.open.clear();
    }

    /// Resolves when the connection must be closed as too slow.
    pub async fn killed(&self) {
        self.kill.notified().await;
    }

    fn too_slow(&self, inner: &mut Inner) -> bool {
        metrics::counter!("marketdata_ws_slow_disconnects_total").increment(1);
        inner.closed = true;
        inner.items.clear();
        inner.open.clear();
        self.kill.notify_one();
        false
    }

    /// Appends `item`, conflating depth first when the queue is full.
    fn push(&self, inner: &mut Inner, item: Item) -> bool {
        if inner.items.len() >= self.capacity {
            let folded = inner.conflate();
            metrics::counter!("marketdata_ws_conflated_total").increment(folded);
            if let Item::Depth(key, _, d) = &item
                && let Some(m) = inner.open_slot(key)
                && m.continues(d.first)
            {
                m.fold(d);
                return m.levels() <= WS_CONFLATED_LEVELS_MAX || self.too_slow(inner);
            }
            if inner.items.len() >= self.capacity {
                return self.too_slow(inner);
            }
        }
        if matches!(item, Item::Depth(..)) {
            inner.plain_depth += 1;
        }
        let was_empty = inner.items.is_empty();
        inner.items.push_back(item);
        if was_empty {
            // The writer re-checks the queue before it waits, so waking it
            // on the empty -> non-empty edge is enough.
            self.ready.notify_one();
        }
        true
    }

    /// Queues a message that is never merged or dropped. Returns whether
    /// the connection stays (false: closed, or now cut off as too slow).
    pub fn offer(&self, msg: &Utf8Bytes) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        self.push(&mut inner, Item::Msg(msg.clone()))
    }

    /// Queues a depth snapshot of `key`: later deltas start after it.
    pub fn offer_snapshot(&self, key: DepthKey, msg: Utf8Bytes) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        inner.open.retain(|(k, _)| *k != key);
        self.push(&mut inner, Item::Snapshot(key, msg))
    }

    /// Queues a depth delta (`msg` is `delta` rendered for this connection).
    pub fn offer_depth(&self, key: DepthKey, msg: &Utf8Bytes, delta: &Arc<DepthDelta>) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        if let Some(m) = inner.open_slot(&key) {
            if m.continues(delta.first) {
                m.fold(delta);
                metrics::counter!("marketdata_ws_conflated_total").increment(1);
                return m.levels() <= WS_CONFLATED_LEVELS_MAX || self.too_slow(&mut inner);
            }
            // Not a continuation (resubscribed): queue it on its own.
            inner.open.retain(|(k, _)| *k != key);
        }
        self.push(&mut inner, Item::Depth(key, msg.clone(), delta.clone()))
    }

    /// Moves up to `max` items into `out`, oldest first. Merged deltas are
    /// handed over whole (rendered by the writer, outside the lock).
    pub fn drain(&self, max: usize, out: &mut Vec<Out>) {
        let mut inner = self.lock();
        let n = max.min(inner.items.len());
        for _ in 0..n {
            let Some(item) = inner.items.pop_front() else {
                break;
            };
            let pos = inner.head;
            inner.head += 1;
            out.push(match item {
                Item::Msg(b) | Item::Snapshot(_, b) => Out::Bytes(b),
                Item::Depth(_, b, _) => {
                    inner.plain_depth -= 1;
                    Out::Bytes(b)
                }
                Item::Merged(m) => {
                    inner.open.retain(|(_, p)| *p != pos);
                    Out::Merged(m)
                }
            });
        }
    }

    /// Resolves when something was queued since the last [`Self::drain`]
    /// found the queue empty (may resolve spuriously).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Items queued now (tests, metrics).
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::render::binance::BnKind;

    fn info() -> Arc<DepthInfo> {
        Arc::new(DepthInfo::new(
            MarketSymbol::parse("BTC-USDT").unwrap(),
            Scales { base: 2, quote: 2 },
        ))
    }

    fn key(kind: ChannelKind) -> DepthKey {
        DepthKey {
            market: MarketSymbol::parse("BTC-USDT").unwrap(),
            kind,
        }
    }

    fn delta(seq: u64, bids: &[(u128, u128)]) -> Arc<DepthDelta> {
        Arc::new(DepthDelta {
            info: info(),
            first: seq,
            last: seq,
            time_ms: seq * 10,
            bids: bids.to_vec(),
            asks: vec![],
        })
    }

    fn texts(o: &Outbox) -> Vec<String> {
        let mut out = Vec::new();
        o.drain(usize::MAX, &mut out);
        out.into_iter()
            .map(|x| match x {
                Out::Bytes(b) => b.as_str().to_owned(),
                Out::Merged(m) => m.render(o.combined).as_str().to_owned(),
            })
            .collect()
    }

    #[test]
    fn full_queue_merges_depth_newest_level_wins_with_the_seq_range() {
        let o = Outbox::with_capacity(false, 4);
        let k = key(ChannelKind::Depth);
        let b = Utf8Bytes::from_static("d");
        assert!(o.offer_depth(k, &b, &delta(1, &[(100, 5)])));
        assert!(o.offer(&Utf8Bytes::from_static("t1")));
        assert!(o.offer_depth(k, &b, &delta(2, &[(100, 0), (200, 7)])));
        assert!(o.offer_depth(k, &b, &delta(3, &[(300, 1)])));
        // Full: deltas 1..=4 become one at delta 1's place; the trade stays.
        assert!(o.offer_depth(k, &b, &delta(4, &[(300, 2)])));
        assert_eq!(o.len(), 2);
        // Still queued: folds in without a slot.
        assert!(o.offer_depth(k, &b, &delta(5, &[(100, 9)])));
        assert!(o.offer(&Utf8Bytes::from_static("t2")));
        assert_eq!(
            texts(&o),
            [
                r#"{"channel":"depth:BTC-USDT","type":"delta","seq":5,"first_seq":1,"bids":[["3","0.02"],["2","0.07"],["1","0.09"]],"asks":[]}"#,
                "t1",
                "t2"
            ]
        );
        // Drained: the next delta is queued as is again.
        assert!(o.offer_depth(k, &b, &delta(6, &[])));
        assert_eq!(texts(&o), ["d"]);
    }

    #[test]
    fn deltas_never_merge_across_a_snapshot() {
        let o = Outbox::with_capacity(false, 4);
        let k = key(ChannelKind::Depth);
        let b = Utf8Bytes::from_static("d");
        assert!(o.offer_depth(k, &b, &delta(1, &[(100, 1)])));
        assert!(o.offer_snapshot(k, Utf8Bytes::from_static("snap@1")));
        assert!(o.offer_depth(k, &b, &delta(2, &[(100, 2)])));
        assert!(o.offer_depth(k, &b, &delta(3, &[(100, 3)])));
        assert!(o.offer_depth(k, &b, &delta(4, &[(100, 4)])));
        let t = texts(&o);
        assert_eq!(t.len(), 3);
        assert!(t[0].contains(r#""seq":1,"first_seq":1,"#), "{}", t[0]);
        assert_eq!(t[1], "snap@1");
        assert!(t[2].contains(r#""seq":4,"first_seq":2,"#), "{}", t[2]);
    }

    #[test]
    fn a_backlog_that_cannot_be_merged_disconnects() {
        let o = Outbox::with_capacity(false, 3);
        for t in ["t1", "t2", "t3"] {
            assert!(o.offer(&Utf8Bytes::from(t)));
        }
        // Trades are never conflated away: the fourth one closes the connection.
        assert!(!o.offer(&Utf8Bytes::from_static("t4")));
        assert!(!o.offer(&Utf8Bytes::from_static("t5")));
        assert!(o.is_empty());
    }

    #[test]
    fn merged_delta_is_bounded() {
        let o = Outbox::with_capacity(false, 1);
        let k = key(ChannelKind::Depth);
        let b = Utf8Bytes::from_static("d");
        assert!(o.offer_depth(k, &b, &delta(1, &[])));
        let wide: Vec<(u128, u128)> = (0..=WS_CONFLATED_LEVELS_MAX as u128)
            .map(|p| (p, 1))
            .collect();
        assert!(!o.offer_depth(k, &b, &delta(2, &wide)));
    }

    #[test]
    fn binance_depth_merges_into_one_depth_update_covering_u_ranges() {
        let o = Outbox::with_capacity(true, 2);
        let k = key(ChannelKind::Bn(BnKind::Depth));
        let b = Utf8Bytes::from_static("d");
        let ev = |first, last, bids: &[(u128, u128)]| {
            Arc::new(DepthDelta {
                info: info(),
                first,
                last,
                time_ms: last,
                bids: bids.to_vec(),
                asks: vec![(900, last as u128)],
            })
        };
        assert!(o.offer_depth(k, &b, &ev(3, 5, &[(100, 1)])));
        assert!(o.offer_depth(k, &b, &ev(6, 6, &[(100, 2)])));
        assert!(o.offer_depth(k, &b, &ev(7, 9, &[(50, 3)])));
        assert_eq!(
            texts(&o),
            [
                r#"{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":9,"s":"BTCUSDT","U":3,"u":9,"b":[["1.00000000","0.02000000"],["0.50000000","0.03000000"]],"a":[["9.00000000","0.09000000"]]}}"#
            ]
        );
    }
}
