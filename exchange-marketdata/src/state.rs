//! One market's derived state: depth book, recent trades, current candles,
//! the 1m history behind the 24h ticker, and who is subscribed to what.
//!
//! Pure apart from the subscriber queues: time comes from the event batches
//! (and the caller, for the ticker window), never from the clock.
//! Invariant: `seq` is the last event batch applied, and batches are applied
//! only in order (`seq + 1`), so the depth book equals the engine's book at
//! `seq` exactly and a depth delta carries exactly one batch's changes.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use exchange_domain::event::{Event, EventBatch};
use exchange_domain::money::FormatUnits;
use exchange_domain::order::{MarketStatus, Side};
use exchange_domain::symbol::MarketSymbol;

use crate::binance::{BN_KINDS_LEN, BnKind, lower_name, upper_name};
use crate::kline::{Candle, Interval};
use crate::outbox::{DepthDelta, DepthKey, Outbox};

/// Recent trades kept per market (REST `/trades` serves at most this many).
pub const RECENT_TRADES_LEN_MAX: usize = 1_000;
/// 1m candles kept for the rolling 24h ticker: a day plus the current minute.
pub const TICKER_MINUTES_LEN_MAX: usize = 24 * 60 + 1;
pub const DAY_MS: u64 = 86_400_000;

/// Price levels `(price, quantity)` in units.
pub type Levels = Vec<(u128, u128)>;

/// Decimal scales of a market's assets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scales {
    pub base: u8,
    pub quote: u8,
}

/// A public WebSocket channel's kind (the market is kept beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChannelKind {
    Depth,
    Trades,
    Ticker,
    Kline(Interval),
    /// A Binance-format stream (`btcusdt@depth`, ...).
    Bn(BnKind),
}

pub const CHANNEL_KINDS_LEN: usize = 3 + Interval::ALL.len() + BN_KINDS_LEN;

impl ChannelKind {
    fn index(self) -> usize {
        match self {
            ChannelKind::Depth => 0,
            ChannelKind::Trades => 1,
            ChannelKind::Ticker => 2,
            ChannelKind::Kline(i) => 3 + i.index(),
            ChannelKind::Bn(k) => 3 + Interval::ALL.len() + k.index(),
        }
    }
}

/// `depth:BTC-USDT`, `trades:BTC-USDT`, `ticker:BTC-USDT`, `kline:1m:BTC-USDT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Channel {
    pub kind: ChannelKind,
    pub market: MarketSymbol,
}

impl Channel {
    /// Parses a channel name; `None` when it is not one of the four forms.
    pub fn parse(text: &str) -> Option<Self> {
        let (head, rest) = text.split_once(':')?;
        let (kind, market) = match head {
            "depth" => (ChannelKind::Depth, rest),
            "trades" => (ChannelKind::Trades, rest),
            "ticker" => (ChannelKind::Ticker, rest),
            "kline" => {
                let (interval, market) = rest.split_once(':')?;
                (ChannelKind::Kline(Interval::parse(interval)?), market)
            }
            _ => return None,
        };
        Some(Self {
            kind,
            market: MarketSymbol::parse(market).ok()?,
        })
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ChannelKind::Depth => write!(f, "depth:{}", self.market),
            ChannelKind::Trades => write!(f, "trades:{}", self.market),
            ChannelKind::Ticker => write!(f, "ticker:{}", self.market),
            ChannelKind::Kline(i) => write!(f, "kline:{i}:{}", self.market),
            ChannelKind::Bn(k) => write!(f, "{}@{k}", lower_name(&self.market)),
        }
    }
}

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

/// What rendering a market's depth messages needs, shared with the
/// connections that merge its deltas.
#[derive(Debug)]
pub struct DepthInfo {
    pub symbol: MarketSymbol,
    pub scales: Scales,
    /// `BTCUSDT`, and `btcusdt` for stream names.
    pub bn_symbol: String,
    pub bn_stream: String,
}

impl DepthInfo {
    pub fn new(symbol: MarketSymbol, scales: Scales) -> Self {
        Self {
            symbol,
            scales,
            bn_symbol: upper_name(&symbol),
            bn_stream: lower_name(&symbol),
        }
    }
}

fn write_levels_of(out: &mut String, scales: Scales, levels: impl Iterator<Item = (u128, u128)>) {
    out.push('[');
    for (n, (p, q)) in levels.enumerate() {
        if n > 0 {
            out.push(',');
        }
        let price = FormatUnits {
            units: p,
            scale: scales.quote,
        };
        let qty = FormatUnits {
            units: q,
            scale: scales.base,
        };
        let _ = write!(out, "[\"{price}\",\"{qty}\"]");
    }
    out.push(']');
}

/// A depth delta on our channel. `first_seq` is written only for a merged
/// delta (a slow connection's): it covers `first_seq..=seq`, and a plain
/// delta covers `seq` alone.
pub fn depth_delta_json(
    info: &DepthInfo,
    first_seq: Option<u64>,
    seq: u64,
    bids: impl Iterator<Item = (u128, u128)>,
    asks: impl Iterator<Item = (u128, u128)>,
) -> String {
    let (lo, hi) = bids.size_hint();
    let mut out = String::with_capacity(112 + hi.unwrap_or(lo) * 48);
    let _ = write!(
        out,
        "{{\"channel\":\"depth:{}\",\"type\":\"delta\",\"seq\":{seq},",
        info.symbol
    );
    if let Some(first) = first_seq {
        let _ = write!(out, "\"first_seq\":{first},");
    }
    out.push_str("\"bids\":");
    write_levels_of(&mut out, info.scales, bids);
    out.push_str(",\"asks\":");
    write_levels_of(&mut out, info.scales, asks);
    out.push('}');
    out
}

/// A trade as market data shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TradeRow {
    pub id: u64,
    pub price: u128,
    pub quantity: u128,
    pub quote_amount: u128,
    pub taker_side: Side,
    pub time: u64,
}

/// The rolling 24h ticker, in units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ticker {
    pub last: u128,
    pub open: u128,
    pub high: u128,
    pub low: u128,
    pub volume: u128,
    pub quote_volume: u128,
}

impl Ticker {
    /// `(last - open) / open × 100`, rounded half away from zero to 2
    /// decimals, as a decimal string (`"-1.25"`); `"0"` without an open.
    pub fn change_percent(&self) -> String {
        if self.open == 0 {
            return "0".to_owned();
        }
        let (diff, negative) = if self.last >= self.open {
            (self.last - self.open, false)
        } else {
            (self.open - self.last, true)
        };
        // Hundredths of a percent: diff × 10^4 / open, rounded.
        let Some(scaled) = diff.checked_mul(20_000) else {
            return "0".to_owned();
        };
        let hundredths = (scaled / self.open).div_ceil(2);
        let body = FormatUnits {
            units: hundredths,
            scale: 2,
        }
        .to_string();
        if negative && hundredths != 0 {
            format!("-{body}")
        } else {
            body
        }
    }
}

/// What applying one batch changed.
#[derive(Debug, Default)]
pub struct Applied {
    /// Depth changes of this batch, the last total per price (may be empty).
    pub bids: BTreeMap<u128, u128>,
    pub asks: BTreeMap<u128, u128>,
    pub trades: Vec<TradeRow>,
    /// The current candle of every interval after the batch (when it traded).
    pub candles: Vec<(Interval, Candle)>,
}

/// Why a batch was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Already applied (at-least-once delivery, or a replica rebuilt past it).
    Duplicate,
    /// Batches `expected..batch.seq` are missing.
    Gap { expected: u64 },
}

#[derive(Debug)]
pub struct MarketState {
    pub symbol: MarketSymbol,
    pub scales: Scales,
    pub seq: u64,
    pub status: Option<MarketStatus>,
    bids: BTreeMap<u128, u128>,
    asks: BTreeMap<u128, u128>,
    trades: VecDeque<TradeRow>,
    candles: [Option<Candle>; Interval::ALL.len()],
    /// Closed 1m candles of (at least) the last 24h, oldest first.
    minutes: VecDeque<Candle>,
    last_price: Option<u128>,
    /// First trade id of each interval's current candle (Binance `k.f`).
    candle_first_trade: [u64; Interval::ALL.len()],
    /// `BTCUSDT`, and `btcusdt` for stream names.
    pub(crate) bn_symbol: String,
    bn_stream: String,
    /// The first depth seq not yet covered by a Binance depth event: the
    /// next `depthUpdate`'s `U`.
    bn_depth_next: u64,
    info: Arc<DepthInfo>,
    subs: [Vec<Subscriber>; CHANNEL_KINDS_LEN],
}

impl MarketState {
    pub fn new(symbol: MarketSymbol, scales: Scales) -> Self {
        Self {
            symbol,
            scales,
            seq: 0,
            status: None,
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            trades: VecDeque::with_capacity(RECENT_TRADES_LEN_MAX),
            candles: [None; Interval::ALL.len()],
            minutes: VecDeque::new(),
            last_price: None,
            candle_first_trade: [0; Interval::ALL.len()],
            bn_symbol: upper_name(&symbol),
            bn_stream: lower_name(&symbol),
            bn_depth_next: 1,
            info: Arc::new(DepthInfo::new(symbol, scales)),
            subs: Default::default(),
        }
    }

    /// Applies `batch` if it is the next one.
    pub fn apply(&mut self, batch: &EventBatch) -> Result<Applied, Order> {
        if batch.seq <= self.seq {
            return Err(Order::Duplicate);
        }
        if batch.seq != self.seq + 1 {
            return Err(Order::Gap {
                expected: self.seq + 1,
            });
        }
        let mut applied = Applied::default();
        let mut traded = false;
        for event in &batch.events {
            match event {
                Event::BookLevel {
                    side,
                    price,
                    quantity,
                } => {
                    let (book, changes) = match side {
                        Side::Buy => (&mut self.bids, &mut applied.bids),
                        Side::Sell => (&mut self.asks, &mut applied.asks),
                    };
                    if *quantity == 0 {
                        book.remove(price);
                    } else {
                        book.insert(*price, *quantity);
                    }
                    changes.insert(*price, *quantity);
                }
                Event::Trade {
                    trade_id,
                    taker_side,
                    price,
                    quantity,
                    quote_amount,
                    ..
                } => {
                    let row = TradeRow {
                        id: trade_id.0,
                        price: *price,
                        quantity: *quantity,
                        quote_amount: *quote_amount,
                        taker_side: *taker_side,
                        time: batch.time_ms,
                    };
                    self.add_trade(row, batch.seq);
                    applied.trades.push(row);
                    traded = true;
                }
                Event::MarketStatusChanged { status } => self.status = Some(*status),
                _ => {}
            }
        }
        self.seq = batch.seq;
        if traded {
            applied.candles = Interval::ALL
                .into_iter()
                .filter_map(|i| self.candles[i.index()].map(|c| (i, c)))
                .collect();
        }
        Ok(applied)
    }

    fn add_trade(&mut self, t: TradeRow, seq: u64) {
        if self.trades.len() == RECENT_TRADES_LEN_MAX {
            self.trades.pop_front();
        }
        self.trades.push_back(t);
        self.last_price = Some(t.price);
        for interval in Interval::ALL {
            let slot = &mut self.candles[interval.index()];
            // A batch stamped earlier than the current candle (clock step
            // back in matching) joins the current candle: candles never reopen.
            let open_time = interval.open_time(t.time);
            match slot {
                Some(c) if open_time <= c.open_time => {
                    c.add(t.price, t.quantity, t.quote_amount, seq);
                }
                _ => {
                    if interval == Interval::M1
                        && let Some(closed) = *slot
                    {
                        self.minutes.push_back(closed);
                        while self.minutes.len() > TICKER_MINUTES_LEN_MAX {
                            self.minutes.pop_front();
                        }
                    }
                    self.candle_first_trade[interval.index()] = t.id;
                    *slot = Some(Candle::first(
                        open_time,
                        t.price,
                        t.quantity,
                        t.quote_amount,
                        seq,
                    ));
                }
            }
        }
    }

    /// Top `limit` levels per side: bids best (highest) first, asks lowest first.
    pub fn depth(&self, limit: usize) -> (Levels, Levels) {
        let bids = self
            .bids
            .iter()
            .rev()
            .take(limit)
            .map(|(p, q)| (*p, *q))
            .collect();
        let asks = self
            .asks
            .iter()
            .take(limit)
            .map(|(p, q)| (*p, *q))
            .collect();
        (bids, asks)
    }

    /// The newest `limit` trades, oldest first.
    pub fn recent_trades(&self, limit: usize) -> Vec<TradeRow> {
        let skip = self.trades.len().saturating_sub(limit);
        self.trades.iter().skip(skip).copied().collect()
    }

    /// The current candle of `interval`, if any trade happened yet.
    pub fn candle(&self, interval: Interval) -> Option<Candle> {
        self.candles[interval.index()]
    }

    /// The 24h ticker as of `now_ms`, at minute granularity: 1m candles
    /// opened within the last 24h (plus the minute that straddles the edge).
    pub fn ticker(&self, now_ms: u64) -> Ticker {
        let start = Interval::M1.open_time(now_ms.saturating_sub(DAY_MS));
        let mut window: Option<Candle> = None;
        let current = self.candles[Interval::M1.index()];
        for c in self.minutes.iter().chain(current.iter()) {
            if c.open_time < start {
                continue;
            }
            match &mut window {
                None => window = Some(*c),
                Some(w) => w.merge(c),
            }
        }
        let last = self.last_price.unwrap_or(0);
        match window {
            Some(w) => Ticker {
                last,
                open: w.open,
                high: w.high,
                low: w.low,
                volume: w.volume,
                quote_volume: w.quote_volume,
            },
            None => Ticker {
                last,
                open: last,
                high: last,
                low: last,
                volume: 0,
                quote_volume: 0,
            },
        }
    }

    // ---- rendering: JSON written by hand. Every value is digits, a dot,
    // a fixed word or a validated symbol, so nothing needs escaping.

    fn price(&self, units: u128) -> FormatUnits {
        FormatUnits {
            units,
            scale: self.scales.quote,
        }
    }

    fn qty(&self, units: u128) -> FormatUnits {
        FormatUnits {
            units,
            scale: self.scales.base,
        }
    }

    fn write_levels(&self, out: &mut String, levels: impl Iterator<Item = (u128, u128)>) {
        write_levels_of(out, self.scales, levels);
    }

    /// `{"seq":N,"bids":[..],"asks":[..]}` (REST) at most `limit` levels a side.
    pub fn depth_json(&self, limit: usize) -> String {
        let mut out = String::with_capacity(64 + limit * 48);
        let _ = write!(out, "{{\"seq\":{},\"bids\":", self.seq);
        self.write_levels(
            &mut out,
            self.bids.iter().rev().take(limit).map(|(p, q)| (*p, *q)),
        );
        out.push_str(",\"asks\":");
        self.write_levels(
            &mut out,
            self.asks.iter().take(limit).map(|(p, q)| (*p, *q)),
        );
        out.push('}');
        out
    }

    /// The WebSocket depth snapshot of at most `limit` levels a side.
    pub fn depth_snapshot_message(&self, limit: usize) -> Utf8Bytes {
        let mut out =
            String::with_capacity(96 + limit.min(self.bids.len().max(self.asks.len())) * 96);
        let _ = write!(
            out,
            "{{\"channel\":\"depth:{}\",\"type\":\"snapshot\",\"seq\":{},\"bids\":",
            self.symbol, self.seq
        );
        self.write_levels(
            &mut out,
            self.bids.iter().rev().take(limit).map(|(p, q)| (*p, *q)),
        );
        out.push_str(",\"asks\":");
        self.write_levels(
            &mut out,
            self.asks.iter().take(limit).map(|(p, q)| (*p, *q)),
        );
        out.push('}');
        Utf8Bytes::from(out)
    }

    pub(crate) fn depth_info(&self) -> &DepthInfo {
        &self.info
    }

    pub fn write_trade(&self, out: &mut String, t: &TradeRow) {
        let side = match t.taker_side {
            Side::Buy => "buy",
            Side::Sell => "sell",
        };
        let _ = write!(
            out,
            "{{\"id\":{},\"price\":\"{}\",\"quantity\":\"{}\",\"taker_side\":\"{side}\",\"time\":{}}}",
            t.id,
            self.price(t.price),
            self.qty(t.quantity),
            t.time
        );
    }

    /// REST `/trades`: a JSON array, oldest first.
    pub fn trades_json(&self, limit: usize) -> String {
        let mut out = String::from("[");
        for (n, t) in self.recent_trades(limit).iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            self.write_trade(&mut out, t);
        }
        out.push(']');
        out
    }

    pub fn write_candle(&self, out: &mut String, c: &Candle) {
        let _ = write!(
            out,
            "{{\"open_time\":{},\"open\":\"{}\",\"high\":\"{}\",\"low\":\"{}\",\"close\":\"{}\",\"volume\":\"{}\"}}",
            c.open_time,
            self.price(c.open),
            self.price(c.high),
            self.price(c.low),
            self.price(c.close),
            self.qty(c.volume)
        );
    }

    pub fn write_ticker(&self, out: &mut String, t: &Ticker) {
        let _ = write!(
            out,
            "{{\"last\":\"{}\",\"open\":\"{}\",\"high\":\"{}\",\"low\":\"{}\",\"volume\":\"{}\",\"quote_volume\":\"{}\",\"change_percent\":\"{}\"}}",
            self.price(t.last),
            self.price(t.open),
            self.price(t.high),
            self.price(t.low),
            self.qty(t.volume),
            FormatUnits {
                units: t.quote_volume,
                scale: self.scales.quote
            },
            t.change_percent()
        );
    }

    pub fn ticker_json(&self, now_ms: u64) -> String {
        let mut out = String::with_capacity(200);
        self.write_ticker(&mut out, &self.ticker(now_ms));
        out
    }

    // ---- subscriptions and fan-out

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
            self.bn_depth_next = self.seq + 1;
        }
        let list = &mut self.subs[kind.index()];
        if !list.iter().any(|s| s.conn_id == sub.conn_id) {
            list.push(sub);
        }
    }

    fn has_bn_depth_subscribers(&self) -> bool {
        !self.subs[ChannelKind::Bn(BnKind::Depth).index()].is_empty()
            || !self.subs[ChannelKind::Bn(BnKind::Depth100ms).index()].is_empty()
    }

    fn has_subscribers(&self, kind: ChannelKind) -> bool {
        !self.subs[kind.index()].is_empty()
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
        let wrapped = list.iter().any(|s| s.outbox.combined).then(|| {
            Utf8Bytes::from(format!(
                "{{\"stream\":\"{}@{kind}\",\"data\":{raw}}}",
                self.bn_stream
            ))
        });
        let key = DepthKey {
            market: self.symbol,
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
                let delta = Arc::new(DepthDelta {
                    info: self.info.clone(),
                    first: self.bn_depth_next,
                    last: self.seq,
                    time_ms: now_ms,
                    bids: applied.bids.iter().rev().map(|(p, q)| (*p, *q)).collect(),
                    asks: applied.asks.iter().map(|(p, q)| (*p, *q)).collect(),
                });
                let raw = self.bn_depth_event(
                    delta.first,
                    now_ms,
                    delta.bids.iter().copied(),
                    delta.asks.iter().copied(),
                );
                self.bn_depth_next = self.seq + 1;
                self.fan_out_bn(BnKind::Depth, &raw, Some(&delta));
                self.fan_out_bn(BnKind::Depth100ms, &raw, Some(&delta));
            }
        } else {
            self.bn_depth_next = self.seq + 1;
        }
        if applied.trades.is_empty() {
            return;
        }
        for (kind, agg) in [(BnKind::Trade, false), (BnKind::AggTrade, true)] {
            if self.has_subscribers(ChannelKind::Bn(kind)) {
                for t in &applied.trades {
                    let raw = self.bn_trade_event(t, agg);
                    self.fan_out_bn(kind, &raw, None);
                }
            }
        }
        let last_trade = applied.trades.last().map_or(0, |t| t.id);
        for (interval, candle) in &applied.candles {
            let kind = BnKind::Kline(*interval);
            if self.has_subscribers(ChannelKind::Bn(kind)) {
                let first = self.candle_first_trade[interval.index()];
                let raw = self.bn_kline_event(*interval, candle, first, last_trade, now_ms);
                self.fan_out_bn(kind, &raw, None);
            }
        }
        let full = self.has_subscribers(ChannelKind::Bn(BnKind::Ticker));
        let mini = self.has_subscribers(ChannelKind::Bn(BnKind::MiniTicker));
        if full || mini {
            let ticker = self.ticker(now_ms);
            if full {
                let raw = self.bn_ticker_event(&ticker, now_ms);
                self.fan_out_bn(BnKind::Ticker, &raw, None);
            }
            if mini {
                let raw = self.bn_mini_ticker_event(&ticker, now_ms);
                self.fan_out_bn(BnKind::MiniTicker, &raw, None);
            }
        }
    }

    pub fn unsubscribe(&mut self, kind: ChannelKind, conn_id: u64) {
        self.subs[kind.index()].retain(|s| s.conn_id != conn_id);
    }

    fn fan_out(&mut self, kind: ChannelKind, msg: &Utf8Bytes) {
        let list = &mut self.subs[kind.index()];
        list.retain(|s| s.offer(msg));
        metrics::counter!("marketdata_ws_messages_total").increment(list.len() as u64);
    }

    /// Sends what `applied` changed to the subscribers of each channel.
    /// Each message is serialized once and shared by every queue; channels
    /// without subscribers cost nothing. The depth delta goes out for every
    /// batch, even an empty one, so `seq` stays consecutive on the wire.
    pub fn publish(&mut self, applied: &Applied, now_ms: u64) {
        self.publish_bn(applied, now_ms);
        if !self.subs[ChannelKind::Depth.index()].is_empty() {
            let delta = Arc::new(DepthDelta {
                info: self.info.clone(),
                first: self.seq,
                last: self.seq,
                time_ms: now_ms,
                bids: applied.bids.iter().rev().map(|(p, q)| (*p, *q)).collect(),
                asks: applied.asks.iter().map(|(p, q)| (*p, *q)).collect(),
            });
            let msg = Utf8Bytes::from(depth_delta_json(
                &self.info,
                None,
                self.seq,
                delta.bids.iter().copied(),
                delta.asks.iter().copied(),
            ));
            let key = DepthKey {
                market: self.symbol,
                kind: ChannelKind::Depth,
            };
            let list = &mut self.subs[ChannelKind::Depth.index()];
            list.retain(|s| s.outbox.offer_depth(key, &msg, &delta));
            metrics::counter!("marketdata_ws_messages_total").increment(list.len() as u64);
        }
        if !applied.trades.is_empty() && !self.subs[ChannelKind::Trades.index()].is_empty() {
            for t in &applied.trades {
                let mut out = String::with_capacity(192);
                let _ = write!(
                    out,
                    "{{\"channel\":\"trades:{}\",\"type\":\"trade\",\"data\":",
                    self.symbol
                );
                self.write_trade(&mut out, t);
                out.push('}');
                self.fan_out(ChannelKind::Trades, &Utf8Bytes::from(out));
            }
        }
        for (interval, candle) in &applied.candles {
            let kind = ChannelKind::Kline(*interval);
            if self.subs[kind.index()].is_empty() {
                continue;
            }
            let mut out = String::with_capacity(224);
            let _ = write!(
                out,
                "{{\"channel\":\"kline:{interval}:{}\",\"type\":\"kline\",\"data\":",
                self.symbol
            );
            self.write_candle(&mut out, candle);
            out.push('}');
            self.fan_out(kind, &Utf8Bytes::from(out));
        }
        if !applied.trades.is_empty() && !self.subs[ChannelKind::Ticker.index()].is_empty() {
            let mut out = String::with_capacity(256);
            let _ = write!(
                out,
                "{{\"channel\":\"ticker:{}\",\"type\":\"ticker\",\"data\":",
                self.symbol
            );
            self.write_ticker(&mut out, &self.ticker(now_ms));
            out.push('}');
            self.fan_out(ChannelKind::Ticker, &Utf8Bytes::from(out));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use exchange_domain::order::{OrderId, TradeId, UserId};

    fn sym() -> MarketSymbol {
        MarketSymbol::parse("BTC-USDT").unwrap()
    }

    fn level(side: Side, price: u128, quantity: u128) -> Event {
        Event::BookLevel {
            side,
            price,
            quantity,
        }
    }

    fn trade(id: u64, price: u128, quantity: u128) -> Event {
        Event::Trade {
            trade_id: TradeId(id),
            maker_order_id: OrderId(1),
            maker_user_id: UserId(1),
            taker_order_id: OrderId(2),
            taker_user_id: UserId(2),
            taker_side: Side::Buy,
            price,
            quantity,
            quote_amount: price * quantity / 100,
            maker_fee: 0,
            taker_fee: 0,
        }
    }

    fn batch(seq: u64, time_ms: u64, events: Vec<Event>) -> EventBatch {
        EventBatch {
            market: sym(),
            seq,
            time_ms,
            events,
        }
    }

    #[test]
    fn applies_in_order_and_refuses_duplicates_and_gaps() {
        let mut s = MarketState::new(sym(), Scales { base: 2, quote: 2 });
        s.apply(&batch(
            1,
            0,
            vec![level(Side::Buy, 100, 5), level(Side::Sell, 110, 3)],
        ))
        .unwrap();
        assert_eq!(s.apply(&batch(1, 0, vec![])).unwrap_err(), Order::Duplicate);
        assert_eq!(
            s.apply(&batch(3, 0, vec![])).unwrap_err(),
            Order::Gap { expected: 2 }
        );
        s.apply(&batch(
            2,
            0,
            vec![level(Side::Buy, 100, 0), level(Side::Buy, 99, 7)],
        ))
        .unwrap();
        assert_eq!(s.depth(10), (vec![(99, 7)], vec![(110, 3)]));
        assert_eq!(
            s.depth_json(10),
            r#"{"seq":2,"bids":[["0.99","0.07"]],"asks":[["1.1","0.03"]]}"#
        );
    }

    #[test]
    fn candles_roll_and_ticker_covers_24h() {
        let mut s = MarketState::new(sym(), Scales { base: 2, quote: 2 });
        let m = 60_000;
        s.apply(&batch(1, 10, vec![trade(1, 100, 1)])).unwrap();
        s.apply(&batch(2, 20, vec![trade(2, 120, 2), trade(3, 90, 1)]))
            .unwrap();
        let applied = s.apply(&batch(3, m + 5, vec![trade(4, 110, 4)])).unwrap();
        let m1 = s.candle(Interval::M1).unwrap();
        assert_eq!(
            (m1.open_time, m1.open, m1.close, m1.volume),
            (m, 110, 110, 4)
        );
        let m5 = s.candle(Interval::M5).unwrap();
        assert_eq!(
            (m5.open, m5.high, m5.low, m5.close, m5.volume, m5.trades),
            (100, 120, 90, 110, 8, 4)
        );
        assert_eq!(applied.candles.len(), 6);
        let t = s.ticker(m + 10);
        assert_eq!(
            (t.last, t.open, t.high, t.low, t.volume),
            (110, 100, 120, 90, 8)
        );
        assert_eq!(t.change_percent(), "10");
        // A day later the first minute has left the window.
        let t = s.ticker(DAY_MS + m + 10);
        assert_eq!((t.open, t.high, t.low, t.volume), (110, 110, 110, 4));
        assert_eq!(
            s.recent_trades(2).iter().map(|t| t.id).collect::<Vec<_>>(),
            [3, 4]
        );
    }

    #[test]
    fn change_percent_rounds_half_away_from_zero() {
        let t = |open, last| {
            Ticker {
                open,
                last,
                ..Ticker::default()
            }
            .change_percent()
        };
        assert_eq!(t(0, 5), "0");
        assert_eq!(t(100, 100), "0");
        assert_eq!(t(300, 299), "-0.33");
        assert_eq!(t(8, 9), "12.5");
        assert_eq!(t(30_000, 30_001), "0");
        assert_eq!(t(20_000, 20_001), "0.01"); // 0.005 rounds up
        assert_eq!(t(20_000, 19_999), "-0.01");
    }

    #[test]
    fn channels_parse_and_print() {
        for text in [
            "depth:BTC-USDT",
            "trades:BTC-USDT",
            "ticker:BTC-USDT",
            "kline:4h:BTC-USDT",
        ] {
            assert_eq!(Channel::parse(text).unwrap().to_string(), text);
        }
        for bad in [
            "depth",
            "depth:btc-usdt",
            "kline:2m:BTC-USDT",
            "book:BTC-USDT",
            "kline:BTC-USDT",
        ] {
            assert!(Channel::parse(bad).is_none(), "{bad}");
        }
    }
}
