//! Markets as the services see them: loaded from Postgres into
//! [`MarketSpec`]s (checked by the exactness rule) plus their status, and
//! an in-memory cache refreshed periodically and on a miss.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use exchange_domain::{
    Asset, AssetSymbol, FeeRate, MarketSpec, MarketSpecFields, MarketStatus, MarketSymbol,
};
use sqlx::PgPool;

use crate::numeric::db_units;

/// How often the cache reloads every market.
pub const MARKETS_REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// A miss reloads at once (single-flight: concurrent misses share one
/// reload); a symbol still unknown after a reload is answered from the
/// cache (negative-cached) for this long, so unknown symbols cannot hammer
/// the database.
pub const MARKETS_MISS_RELOAD_INTERVAL: Duration = Duration::from_millis(50);
/// Negative-cache entries kept at most (older ones are dropped wholesale).
const MARKETS_MISSES_MAX: usize = 1_024;

fn fee_ppm(text: &str) -> anyhow::Result<FeeRate> {
    let ppm = u32::try_from(db_units(text, 6)?)?;
    FeeRate::from_ppm(ppm).map_err(|e| anyhow::anyhow!("fee {text}: {e}"))
}

/// One market: its rules and current status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarketInfo {
    pub spec: MarketSpec,
    pub status: MarketStatus,
}

impl MarketInfo {
    /// How this market's amounts are shown.
    pub fn scales(&self) -> crate::Scales {
        crate::Scales {
            base: self.spec.base().scale,
            quote: self.spec.quote().scale,
        }
    }

    /// The scale of the asset an order on `side` spends.
    pub fn spend_asset(&self, side: exchange_domain::Side) -> Asset {
        match side {
            exchange_domain::Side::Buy => self.spec.quote(),
            exchange_domain::Side::Sell => self.spec.base(),
        }
    }
}

type Row = (
    String,
    String,
    i16,
    String,
    i16,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

fn market_from_row(row: Row) -> anyhow::Result<(String, MarketInfo)> {
    let (
        symbol,
        base,
        base_scale,
        quote,
        quote_scale,
        tick,
        step,
        min_qty,
        min_notional,
        maker,
        taker,
        status,
    ) = row;
    let base = Asset {
        symbol: AssetSymbol::parse(&base)?,
        scale: u8::try_from(base_scale)?,
    };
    let quote = Asset {
        symbol: AssetSymbol::parse(&quote)?,
        scale: u8::try_from(quote_scale)?,
    };
    let spec = MarketSpec::new(MarketSpecFields {
        symbol: MarketSymbol::parse(&symbol)?,
        base,
        quote,
        price_tick: db_units(&tick, quote.scale)?,
        qty_step: db_units(&step, base.scale)?,
        min_qty: db_units(&min_qty, base.scale)?,
        min_notional: db_units(&min_notional, quote.scale)?,
        maker_fee: fee_ppm(&maker)?,
        taker_fee: fee_ppm(&taker)?,
    })
    .map_err(|e| anyhow::anyhow!("market {symbol}: {e}"))?;
    let status = MarketStatus::parse(&status)
        .ok_or_else(|| anyhow::anyhow!("market {symbol}: status {status}"))?;
    Ok((symbol, MarketInfo { spec, status }))
}

/// Loads every market. A market whose row breaks the rules is skipped with
/// an error log (one bad row must not stop every market).
pub async fn load_all(db: &PgPool) -> Result<BTreeMap<String, MarketInfo>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT m.symbol, m.base, b.scale, m.quote, q.scale, m.price_tick::text, m.qty_step::text,
                m.min_qty::text, m.min_notional::text, m.maker_fee::text, m.taker_fee::text, m.status
         FROM markets m JOIN assets b ON b.symbol = m.base JOIN assets q ON q.symbol = m.quote
         ORDER BY m.symbol",
    )
    .fetch_all(db)
    .await?;
    let mut out = BTreeMap::new();
    for row in rows {
        match market_from_row(row) {
            Ok((symbol, info)) => {
                out.insert(symbol, info);
            }
            Err(e) => tracing::error!(error = %e, "market skipped: invalid specification"),
        }
    }
    Ok(out)
}

/// The cache of every market (cheap to clone).
#[derive(Clone, Debug)]
pub struct Markets {
    db: PgPool,
    inner: Arc<RwLock<Cache>>,
    /// Single-flight for reloads.
    reloading: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug, Default)]
struct Cache {
    markets: Arc<BTreeMap<String, MarketInfo>>,
    /// When the last successful reload *started* (its data is at least
    /// this fresh).
    loaded_at: Option<Instant>,
    /// Symbols a reload started at that time did not find.
    misses: HashMap<String, Instant>,
}

impl Markets {
    pub fn new(db: PgPool) -> Self {
        Self {
            db,
            inner: Arc::new(RwLock::new(Cache::default())),
            reloading: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub async fn reload(&self) -> Result<(), sqlx::Error> {
        let started = Instant::now();
        let fresh = load_all(&self.db).await?;
        if let Ok(mut c) = self.inner.write() {
            c.markets = Arc::new(fresh);
            c.loaded_at = Some(started);
        }
        Ok(())
    }

    /// Reloads whenever a market is created or changed (the
    /// `exchange_markets` notification), so a new market or a status
    /// change is seen at its commit, not at the next periodic reload.
    pub fn follow_changes(&self, shutdown: exchange_common::Shutdown) {
        let woken = spawn_listener(
            self.db.clone(),
            &[MARKETS_CHANGED_CHANNEL],
            shutdown.clone(),
        );
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = woken.notified() => {}
                    () = shutdown.wait() => return,
                }
                if let Err(e) = this.reload().await {
                    tracing::warn!(error = %e, "reloading markets after a change failed");
                }
            }
        });
    }

    /// The cached market and whether the cache must be reloaded for it.
    fn cached(&self, symbol: &str) -> (Option<MarketInfo>, bool) {
        match self.inner.read() {
            Ok(c) => {
                let hit = c.markets.get(symbol).copied();
                let stale = c
                    .loaded_at
                    .is_none_or(|t| t.elapsed() >= MARKETS_REFRESH_INTERVAL)
                    || (hit.is_none()
                        && c.misses
                            .get(symbol)
                            .is_none_or(|t| t.elapsed() >= MARKETS_MISS_RELOAD_INTERVAL));
                (hit, stale)
            }
            Err(_) => (None, true),
        }
    }

    fn loaded_since(&self, t: Instant) -> bool {
        self.inner
            .read()
            .ok()
            .and_then(|c| c.loaded_at)
            .is_some_and(|l| l >= t)
    }

    fn note_miss(&self, symbol: &str) {
        if let Ok(mut c) = self.inner.write()
            && let Some(loaded) = c.loaded_at
        {
            if c.misses.len() >= MARKETS_MISSES_MAX {
                c.misses.clear();
            }
            c.misses.insert(symbol.to_owned(), loaded);
        }
    }

    /// The market, reloading when the cache is stale or misses. A miss
    /// reloads at once; concurrent misses wait for one reload that started
    /// after they looked.
    pub async fn get(&self, symbol: &str) -> Result<Option<MarketInfo>, sqlx::Error> {
        let looked = Instant::now();
        let (hit, stale) = self.cached(symbol);
        if !stale {
            return Ok(hit);
        }
        let _flight = self.reloading.lock().await;
        let result = if self.loaded_since(looked) {
            Ok(())
        } else {
            self.reload().await
        };
        match result {
            Ok(()) => {
                let found = self.cached(symbol).0;
                if found.is_none() {
                    self.note_miss(symbol);
                }
                Ok(found)
            }
            // A stale answer beats none while the database blips.
            Err(e) if hit.is_some() => {
                tracing::warn!(error = %e, "market reload failed, using cached");
                Ok(hit)
            }
            Err(e) => Err(e),
        }
    }

    /// The cached market without touching the database.
    pub fn peek(&self, symbol: &str) -> Option<MarketInfo> {
        self.inner.read().ok()?.markets.get(symbol).copied()
    }

    /// Every cached market.
    pub fn all(&self) -> Arc<BTreeMap<String, MarketInfo>> {
        self.inner
            .read()
            .map(|c| c.markets.clone())
            .unwrap_or_default()
    }

    /// Records a status this process just committed.
    pub fn set_status(&self, symbol: &str, status: MarketStatus) {
        if let Ok(mut c) = self.inner.write() {
            let mut map = (*c.markets).clone();
            if let Some(m) = map.get_mut(symbol) {
                m.status = status;
            }
            c.markets = Arc::new(map);
        }
    }
}

/// The channel the `markets_notify` trigger (migration 0018) announces a
/// created or changed market on, at the commit that made the change.
pub const MARKETS_CHANGED_CHANNEL: &str = "exchange_markets";

/// How long the listener waits before reconnecting after an error.
const LISTEN_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Listens on `channels` with a dedicated connection of `db` and wakes the
/// returned [`tokio::sync::Notify`] on every notification, and after every
/// (re)connection: a notification sent while the listener was away is
/// lost, so the woken side reloads as if one had arrived. The woken side
/// keeps its periodic reload as well. Runs until `shutdown`.
pub fn spawn_listener(
    db: PgPool,
    channels: &[&'static str],
    shutdown: exchange_common::Shutdown,
) -> Arc<tokio::sync::Notify> {
    let notify = Arc::new(tokio::sync::Notify::new());
    let woken = notify.clone();
    let channels = channels.to_vec();
    tokio::spawn(async move {
        while !shutdown.is_triggered() {
            let listened = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&db).await?;
                listener.listen_all(channels.iter().copied()).await?;
                woken.notify_one();
                loop {
                    // `None`: the connection dropped (and is re-made by the
                    // next call); something may have been missed.
                    let got = listener.try_recv().await?;
                    if got.is_none() {
                        tracing::warn!("database notifications: connection lost, reconnecting");
                    }
                    woken.notify_one();
                }
            };
            tokio::select! {
                r = listened => {
                    let r: Result<(), sqlx::Error> = r;
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "database notifications unavailable; retrying");
                    }
                }
                () = shutdown.wait() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(LISTEN_RETRY_DELAY) => {}
                () = shutdown.wait() => return,
            }
        }
    });
    notify
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fee_text_to_ppm() {
        assert_eq!(fee_ppm("0.001").unwrap().ppm(), 1_000);
        assert_eq!(fee_ppm("0.0010").unwrap().ppm(), 1_000);
    }
}
