//! The snapshot byte format and the state hash.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic  b"EXOBOOK\0"            8 bytes
//! version u16                    1 or 2 (below)
//! spec    base symbol (u8 len + bytes), quote symbol (u8 len + bytes),
//!         base scale u8, quote scale u8, tick u128, step u128,
//!         min_qty u128, min_notional u128, maker ppm u32, taker ppm u32
//! state   status u8, last_seq u64, last_time_ms u64, last_price (ticks) u64,
//!         next_trade_id u64, next_arrival u64
//! resting u32 count, then orders: bids best-first, asks best-first, each
//!         price level in queue (time-priority) order
//! stops   u32 count, then pending orders: buy stops by (stop asc,
//!         arrival), sell stops by (stop desc, arrival), then (version 2)
//!         take-profit buys by (stop desc, arrival), take-profit sells by
//!         (stop asc, arrival)
//! check   u64 FNV-1a of every byte before it
//! ```
//!
//! An order is 94 bytes: id u64, user u64, side u8, type u8, tif u8,
//! post_only u8, stp u8, by_quote u8, price u64, stop u64, lots u64,
//! filled u64, budget u128, reserve u128, arrival u64. Type codes: 0
//! limit, 1 market, 2 stop-limit, 3 stop-market, and from version 2 on 4
//! take-profit-limit, 5 take-profit-market.
//!
//! Versions: version 2 only adds the take-profit type codes, so a book is
//! written as the lowest version that can hold it — version 1 unless it
//! has a pending take-profit. A book without take-profits therefore has
//! the same bytes and state hash as before version 2 existed (a stored
//! version-1 snapshot restores and still matches its stored hash), and a
//! binary that only knows version 1 refuses a snapshot holding
//! take-profits as `UnsupportedVersion` instead of misreading it.
//!
//! The order of everything is canonical (a function of the book's state,
//! not of how it is stored), so the FNV-1a hash of the bytes before the
//! checksum *is* the state hash: two books in the same state — the fast one
//! and the reference one, or a restored one — hash the same.

use exchange_domain::{
    MarketSpec, MarketStatus, OrderType, SelfTradePrevention, Side, TimeInForce,
};

use crate::rules::Order;

pub(crate) const MAGIC: &[u8; 8] = b"EXOBOOK\0";
/// The newest version this build writes and reads (see the module docs).
pub(crate) const VERSION: u16 = 2;
/// Written when no order needs a version-2 type code.
pub(crate) const VERSION_1: u16 = 1;

/// The snapshot version a book needs: 2 only when it holds a take-profit.
pub(crate) fn version_for<'a>(mut orders: impl Iterator<Item = &'a Order>) -> u16 {
    if orders.any(|o| type_code(o.order_type) > 3) {
        VERSION
    } else {
        VERSION_1
    }
}

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a book snapshot (bad magic)")]
    BadMagic,
    #[error("unsupported snapshot version {0}")]
    UnsupportedVersion(u16),
    #[error("snapshot is truncated")]
    Truncated,
    #[error("snapshot checksum does not match its contents")]
    BadChecksum,
    #[error("snapshot was taken for a different market specification")]
    SpecMismatch,
    #[error("snapshot content is invalid: {0}")]
    Invalid(&'static str),
}

/// 64-bit FNV-1a: tiny, dependency-free, deterministic across platforms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn finish(self) -> u64 {
        self.0
    }
}

pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for Fnv {
    fn put(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Book-wide scalars written after the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Snapshot format version ([`version_for`] the book's orders).
    pub version: u16,
    pub status: MarketStatus,
    pub last_seq: u64,
    pub last_time_ms: u64,
    pub last_price: u64,
    pub next_trade_id: u64,
    pub next_arrival: u64,
}

pub(crate) fn write_prefix<S: Sink>(s: &mut S, spec: &MarketSpec, h: &Header) {
    s.put(MAGIC);
    s.put(&h.version.to_le_bytes());
    for sym in [spec.base().symbol, spec.quote().symbol] {
        let text = sym.as_str().as_bytes();
        // Symbols are at most 16 bytes (AssetSymbol invariant).
        s.put(&[u8::try_from(text.len()).unwrap_or(u8::MAX)]);
        s.put(text);
    }
    s.put(&[spec.base().scale, spec.quote().scale]);
    for v in [
        spec.price_tick(),
        spec.qty_step(),
        spec.min_qty(),
        spec.min_notional(),
    ] {
        s.put(&v.to_le_bytes());
    }
    s.put(&spec.maker_fee().ppm().to_le_bytes());
    s.put(&spec.taker_fee().ppm().to_le_bytes());
    s.put(&[status_code(h.status)]);
    for v in [
        h.last_seq,
        h.last_time_ms,
        h.last_price,
        h.next_trade_id,
        h.next_arrival,
    ] {
        s.put(&v.to_le_bytes());
    }
}

pub(crate) fn write_count<S: Sink>(s: &mut S, n: usize) {
    // Order counts are bounded by memory long before u32::MAX.
    s.put(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

pub(crate) fn write_order<S: Sink>(s: &mut S, o: &Order) {
    let mut buf = [0u8; 94];
    buf[0..8].copy_from_slice(&o.id.to_le_bytes());
    buf[8..16].copy_from_slice(&o.user.to_le_bytes());
    buf[16] = side_code(o.side);
    buf[17] = type_code(o.order_type);
    buf[18] = tif_code(o.tif);
    buf[19] = u8::from(o.post_only);
    buf[20] = stp_code(o.stp);
    buf[21] = u8::from(o.by_quote);
    buf[22..30].copy_from_slice(&o.price.to_le_bytes());
    buf[30..38].copy_from_slice(&o.stop.to_le_bytes());
    buf[38..46].copy_from_slice(&o.lots.to_le_bytes());
    buf[46..54].copy_from_slice(&o.filled.to_le_bytes());
    buf[54..70].copy_from_slice(&o.budget.to_le_bytes());
    buf[70..86].copy_from_slice(&o.reserve.to_le_bytes());
    buf[86..94].copy_from_slice(&o.arrival.to_le_bytes());
    s.put(&buf);
}

/// Appends the checksum of everything in `bytes`.
pub(crate) fn seal(bytes: &mut Vec<u8>) {
    let mut h = Fnv::new();
    h.put(bytes);
    let sum = h.finish();
    bytes.extend_from_slice(&sum.to_le_bytes());
}

/// A decoded snapshot, in canonical order.
pub(crate) struct Decoded {
    pub header: Header,
    pub resting: Vec<Order>,
    pub stops: Vec<Order>,
}

pub(crate) fn decode(spec: &MarketSpec, bytes: &[u8]) -> Result<Decoded, SnapshotError> {
    if bytes.len() < MAGIC.len() + 2 + 8 {
        return Err(SnapshotError::Truncated);
    }
    if &bytes[..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if !(VERSION_1..=VERSION).contains(&version) {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    let mut h = Fnv::new();
    h.put(body);
    if h.finish().to_le_bytes() != sum {
        return Err(SnapshotError::BadChecksum);
    }
    // The spec must match byte for byte: write ours and compare.
    let mut expected = Vec::new();
    let dummy = Header {
        version,
        status: MarketStatus::Trading,
        last_seq: 0,
        last_time_ms: 0,
        last_price: 0,
        next_trade_id: 0,
        next_arrival: 0,
    };
    write_prefix(&mut expected, spec, &dummy);
    let spec_len = expected.len() - 1 - 5 * 8;
    if body.len() < expected.len() {
        return Err(SnapshotError::Truncated);
    }
    if body[..spec_len] != expected[..spec_len] {
        return Err(SnapshotError::SpecMismatch);
    }
    let mut r = Reader {
        bytes: body,
        pos: spec_len,
    };
    let status = match r.u8()? {
        0 => MarketStatus::Trading,
        1 => MarketStatus::CancelOnly,
        2 => MarketStatus::Halted,
        _ => return Err(SnapshotError::Invalid("status")),
    };
    let header = Header {
        version,
        status,
        last_seq: r.u64()?,
        last_time_ms: r.u64()?,
        last_price: r.u64()?,
        next_trade_id: r.u64()?,
        next_arrival: r.u64()?,
    };
    let n = r.count()?;
    let mut resting = Vec::with_capacity(n.min(body.len() / 94));
    for _ in 0..n {
        resting.push(r.order(version)?);
    }
    let n = r.count()?;
    let mut stops = Vec::with_capacity(n.min(body.len() / 94));
    for _ in 0..n {
        stops.push(r.order(version)?);
    }
    if r.pos != body.len() {
        return Err(SnapshotError::Invalid("trailing bytes"));
    }
    Ok(Decoded {
        header,
        resting,
        stops,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let end = self.pos.checked_add(N).ok_or(SnapshotError::Truncated)?;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(SnapshotError::Truncated)?;
        self.pos = end;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take::<1>()?[0])
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn u128(&mut self) -> Result<u128, SnapshotError> {
        Ok(u128::from_le_bytes(self.take()?))
    }
    fn count(&mut self) -> Result<usize, SnapshotError> {
        usize::try_from(u32::from_le_bytes(self.take()?))
            .map_err(|_| SnapshotError::Invalid("count"))
    }
    fn flag(&mut self) -> Result<bool, SnapshotError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(SnapshotError::Invalid("flag")),
        }
    }
    fn order(&mut self, version: u16) -> Result<Order, SnapshotError> {
        let id = self.u64()?;
        let user = self.u64()?;
        let side = match self.u8()? {
            0 => Side::Buy,
            1 => Side::Sell,
            _ => return Err(SnapshotError::Invalid("side")),
        };
        let order_type = match self.u8()? {
            0 => OrderType::Limit,
            1 => OrderType::Market,
            2 => OrderType::StopLimit,
            3 => OrderType::StopMarket,
            4 if version >= 2 => OrderType::TakeProfitLimit,
            5 if version >= 2 => OrderType::TakeProfitMarket,
            _ => return Err(SnapshotError::Invalid("order type")),
        };
        let tif = match self.u8()? {
            0 => TimeInForce::Gtc,
            1 => TimeInForce::Ioc,
            2 => TimeInForce::Fok,
            _ => return Err(SnapshotError::Invalid("time in force")),
        };
        let post_only = self.flag()?;
        let stp = match self.u8()? {
            0 => SelfTradePrevention::None,
            1 => SelfTradePrevention::ExpireTaker,
            2 => SelfTradePrevention::ExpireMaker,
            3 => SelfTradePrevention::ExpireBoth,
            _ => return Err(SnapshotError::Invalid("self-trade prevention")),
        };
        let by_quote = self.flag()?;
        Ok(Order {
            id,
            user,
            side,
            order_type,
            tif,
            post_only,
            stp,
            by_quote,
            price: self.u64()?,
            stop: self.u64()?,
            lots: self.u64()?,
            filled: self.u64()?,
            budget: self.u128()?,
            reserve: self.u128()?,
            arrival: self.u64()?,
        })
    }
}

fn status_code(s: MarketStatus) -> u8 {
    match s {
        MarketStatus::Trading => 0,
        MarketStatus::CancelOnly => 1,
        MarketStatus::Halted => 2,
    }
}
fn side_code(s: Side) -> u8 {
    match s {
        Side::Buy => 0,
        Side::Sell => 1,
    }
}
fn type_code(t: OrderType) -> u8 {
    match t {
        OrderType::Limit => 0,
        OrderType::Market => 1,
        OrderType::StopLimit => 2,
        OrderType::StopMarket => 3,
        OrderType::TakeProfitLimit => 4,
        OrderType::TakeProfitMarket => 5,
    }
}
fn tif_code(t: TimeInForce) -> u8 {
    match t {
        TimeInForce::Gtc => 0,
        TimeInForce::Ioc => 1,
        TimeInForce::Fok => 2,
    }
}
fn stp_code(s: SelfTradePrevention) -> u8 {
    match s {
        SelfTradePrevention::None => 0,
        SelfTradePrevention::ExpireTaker => 1,
        SelfTradePrevention::ExpireMaker => 2,
        SelfTradePrevention::ExpireBoth => 3,
    }
}

/// Validates decoded orders well enough that a restored book's invariants
/// hold: resting orders are live limit orders in canonical order, stops are
/// stops, ids are unique.
pub(crate) fn check_decoded(d: &Decoded) -> Result<(), SnapshotError> {
    let mut ids = std::collections::BTreeSet::new();
    let mut prev: Option<&Order> = None;
    for o in &d.resting {
        if o.order_type != OrderType::Limit
            || o.lots == 0
            || o.price == 0
            || o.price > crate::rules::TICKS_MAX
        {
            return Err(SnapshotError::Invalid("resting order"));
        }
        if let Some(p) = prev {
            let in_order = match (p.side, o.side) {
                (Side::Buy, Side::Buy) => o.price <= p.price,
                (Side::Sell, Side::Sell) => o.price >= p.price,
                (Side::Buy, Side::Sell) => true,
                (Side::Sell, Side::Buy) => false,
            };
            if !in_order {
                return Err(SnapshotError::Invalid("resting order sequence"));
            }
        }
        prev = Some(o);
        if !ids.insert(o.id) {
            return Err(SnapshotError::Invalid("duplicate order id"));
        }
    }
    let best_bid = d
        .resting
        .iter()
        .filter(|o| o.side == Side::Buy)
        .map(|o| o.price)
        .max();
    let best_ask = d
        .resting
        .iter()
        .filter(|o| o.side == Side::Sell)
        .map(|o| o.price)
        .min();
    if let (Some(b), Some(a)) = (best_bid, best_ask)
        && b >= a
    {
        return Err(SnapshotError::Invalid("crossed book"));
    }
    for o in &d.stops {
        if !o.is_stop() || o.stop == 0 {
            return Err(SnapshotError::Invalid("stop order"));
        }
        if !ids.insert(o.id) {
            return Err(SnapshotError::Invalid("duplicate order id"));
        }
    }
    Ok(())
}
