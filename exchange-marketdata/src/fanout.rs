//! One market's live feed: its [`MarketState`] and who is subscribed to
//! what, so that every applied batch reaches its subscribers.
//!
//! Each message is rendered once ([`crate::render`]) into a
//! reference-counted [`Utf8Bytes`] shared by every subscriber's queue
//! ([`Outbox`], never awaited); channels without subscribers cost nothing.
//! The depth delta goes out for every batch, even an empty one, so `seq`
//! stays consecutive on the wire. Binance depth events skip batches that
//! changed no level: an event covers `U..=u` (see [`crate::render::binance`]).

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use exchange_domain::event::EventBatch;

use crate::channel::{CHANNEL_KINDS_LEN, ChannelKind};
use crate::outbox::{DepthDelta, DepthInfo, DepthKey, Outbox};
use crate::render::binance::{self, BnKind};
use crate::render::native;
use crate::state::{Applied, MarketState, Order};

/// One connection's entry in a channel: its bounded send queue (which
/// conflates depth and, when that is not enough, disconnects it).
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub conn_id: u64,
    pub outbox: Arc<Outbox>,
}

impl Subscriber {
    /// Queues `msg` without waiting (never merged or dropped). A queue that
    /// is still full after depth conflation means the client does not keep
    /// up: it is disconnected rather than slowing anyone else. Returns
    /// whether the subscriber stays.
    pub fn offer(&self, msg: &Utf8Bytes) -> bool {
        self.outbox.offer(msg)
    }
}

/// A market's state and its subscribers, under one lock: a subscriber
/// registered with a depth snapshot at `seq` N gets every delta from N+1.
#[derive(Debug)]
pub struct MarketFeed {
    state: MarketState,
    /// Shared with the depth deltas this market publishes.
    info: Arc<DepthInfo>,
    /// The first depth seq not yet covered by a Binance depth event: the
    /// next `depthUpdate`'s `U`.
    bn_depth_next: u64,
    subs: [Vec<Subscriber>; CHANNEL_KINDS_LEN],
}

impl MarketFeed {
    pub fn new(state: MarketState) -> Self {
        Self {
            info: Arc::new(DepthInfo::new(state.symbol, state.scales)),
            state,
            bn_depth_next: 1,
            subs: Default::default(),
        }
    }

    pub fn state(&self) -> &MarketState {
        &self.state
    }

    /// Applies `batch` to the state if it is the next one; [`Self::publish`]
    /// then tells the subscribers.
    pub fn apply(&mut self, batch: &EventBatch) -> Result<Applied, Order> {
        self.state.apply(batch)
    }

    pub fn subscribers(&self, kind: ChannelKind) -> &[Subscriber] {
        &self.subs[kind.index()]
    }

    /// Adds `sub` to `kind` unless that connection is already there.
    pub fn subscribe(&mut self, kind: ChannelKind, sub: Subscriber) {
        if let ChannelKind::Bn(k) = kind
            && k.is_depth()
            && !self.has_bn_depth_subscribers()
        {
            // Nobody waits for older changes: the next event starts here.
            self.bn_depth_next = self.state.seq + 1;
        }
        let list = &mut self.subs[kind.index()];
        if !list.iter().any(|s| s.conn_id == sub.conn_id) {
            list.push(sub);
        }
    }

    pub fn unsubscribe(&mut self, kind: ChannelKind, conn_id: u64) {
        self.subs[kind.index()].retain(|s| s.conn_id != conn_id);
    }

    fn has_bn_depth_subscribers(&self) -> bool {
        !self.subs[ChannelKind::Bn(BnKind::Depth).index()].is_empty()
            || !self.subs[ChannelKind::Bn(BnKind::Depth100ms).index()].is_empty()
    }

    fn has_subscribers(&self, kind: ChannelKind) -> bool {
        !self.subs[kind.index()].is_empty()
    }

    /// The delta of `applied` covering `first..=seq`, shared by every
    /// depth subscriber (a slow one merges it instead of queueing it).
    fn depth_delta(&self, applied: &Applied, first: u64, now_ms: u64) -> Arc<DepthDelta> {
        Arc::new(DepthDelta {
            info: self.info.clone(),
            first,
            last: self.state.seq,
            time_ms: now_ms,
            bids: applied.bids.iter().rev().map(|(p, q)| (*p, *q)).collect(),
            asks: applied.asks.iter().map(|(p, q)| (*p, *q)).collect(),
        })
    }

    fn fan_out(&mut self, kind: ChannelKind, msg: &Utf8Bytes) {
        let list = &mut self.subs[kind.index()];
        list.retain(|s| s.offer(msg));
        metrics::counter!("marketdata_ws_messages_total").increment(list.len() as u64);
    }

    /// Offers a Binance event to `kind`'s subscribers: raw to `/ws`
    /// connections, wrapped (built once, only if needed) to `/stream` ones.
    /// A depth event goes with its levels (`depth`), which a slow
    /// connection merges instead of queueing.
    fn fan_out_bn(&mut self, kind: BnKind, raw: &str, depth: Option<&Arc<DepthDelta>>) {
        let ch = ChannelKind::Bn(kind);
        let list = &mut self.subs[ch.index()];
        if list.is_empty() {
            return;
        }
        let plain = Utf8Bytes::from(raw.to_owned());
        let wrapped = list
            .iter()
            .any(|s| s.outbox.combined)
            .then(|| Utf8Bytes::from(binance::combined(&self.info.bn, kind, raw)));
        let key = DepthKey {
            market: self.state.symbol,
            kind: ch,
        };
        list.retain(|s| {
            let msg = match (&wrapped, s.outbox.combined) {
                (Some(w), true) => w,
                _ => &plain,
            };
            match depth {
                Some(d) => s.outbox.offer_depth(key, msg, d),
                None => s.offer(msg),
            }
        });
        metrics::counter!("marketdata_ws_messages_total").increment(list.len() as u64);
    }

    /// The Binance streams' share of [`Self::publish`].
    fn publish_bn(&mut self, applied: &Applied, now_ms: u64) {
        if self.has_bn_depth_subscribers() {
            if !applied.bids.is_empty() || !applied.asks.is_empty() {
                let delta = self.depth_delta(applied, self.bn_depth_next, now_ms);
                let raw = binance::depth_update(
                    &self.info.bn,
                    self.state.scales,
                    delta.first,
                    delta.last,
                    now_ms,
                    delta.bids.iter().copied(),
                    delta.asks.iter().copied(),
                );
                self.bn_depth_next = self.state.seq + 1;
                self.fan_out_bn(BnKind::Depth, &raw, Some(&delta));
                self.fan_out_bn(BnKind::Depth100ms, &raw, Some(&delta));
            }
        } else {
            self.bn_depth_next = self.state.seq + 1;
        }
        if applied.trades.is_empty() {
            return;
        }
        for (kind, agg) in [(BnKind::Trade, false), (BnKind::AggTrade, true)] {
            if self.has_subscribers(ChannelKind::Bn(kind)) {
                for t in &applied.trades {
                    let raw = binance::trade_event(&self.info.bn, self.state.scales, t, agg);
                    self.fan_out_bn(kind, &raw, None);
                }
            }
        }
        let last_trade = applied.trades.last().map_or(0, |t| t.id);
        for (interval, candle) in &applied.candles {
            let kind = BnKind::Kline(*interval);
            if self.has_subscribers(ChannelKind::Bn(kind)) {
                let raw = binance::kline_event(
                    &self.info.bn,
                    self.state.scales,
                    *interval,
                    candle,
                    self.state.candle_first_trade(*interval),
                    last_trade,
                    now_ms,
                );
                self.fan_out_bn(kind, &raw, None);
            }
        }
        let full = self.has_subscribers(ChannelKind::Bn(BnKind::Ticker));
        let mini = self.has_subscribers(ChannelKind::Bn(BnKind::MiniTicker));
        if full || mini {
            let ticker = self.state.ticker(now_ms);
            if full {
                let raw = binance::ticker_event(&self.state, &self.info.bn, &ticker, now_ms);
                self.fan_out_bn(BnKind::Ticker, &raw, None);
            }
            if mini {
                let raw =
                    binance::mini_ticker_event(&self.info.bn, self.state.scales, &ticker, now_ms);
                self.fan_out_bn(BnKind::MiniTicker, &raw, None);
            }
        }
    }

    /// Sends what `applied` changed to the subscribers of each channel.
    pub fn publish(&mut self, applied: &Applied, now_ms: u64) {
        self.publish_bn(applied, now_ms);
        if self.has_subscribers(ChannelKind::Depth) {
            let delta = self.depth_delta(applied, self.state.seq, now_ms);
            let msg = Utf8Bytes::from(native::depth_delta(
                &self.state.symbol,
                self.state.scales,
                None,
                self.state.seq,
                delta.bids.iter().copied(),
                delta.asks.iter().copied(),
            ));
            let key = DepthKey {
                market: self.state.symbol,
                kind: ChannelKind::Depth,
            };
            let list = &mut self.subs[ChannelKind::Depth.index()];
            list.retain(|s| s.outbox.offer_depth(key, &msg, &delta));
            metrics::counter!("marketdata_ws_messages_total").increment(list.len() as u64);
        }
        if !applied.trades.is_empty() && self.has_subscribers(ChannelKind::Trades) {
            for t in &applied.trades {
                let msg = native::trade_message(&self.state, t);
                self.fan_out(ChannelKind::Trades, &Utf8Bytes::from(msg));
            }
        }
        for (interval, candle) in &applied.candles {
            let kind = ChannelKind::Kline(*interval);
            if self.has_subscribers(kind) {
                let msg = native::kline_message(&self.state, *interval, candle);
                self.fan_out(kind, &Utf8Bytes::from(msg));
            }
        }
        if !applied.trades.is_empty() && self.has_subscribers(ChannelKind::Ticker) {
            let msg = native::ticker_message(&self.state, &self.state.ticker(now_ms));
            self.fan_out(ChannelKind::Ticker, &Utf8Bytes::from(msg));
        }
    }
}
