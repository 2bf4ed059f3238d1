//! Writes a settlement to Postgres inside the caller's transaction.
//!
//! Exactly once: the `(market, seq)` keys go into `cleared_batches` first
//! (`ON CONFLICT DO NOTHING RETURNING`), and only the batches whose key was
//! inserted now are planned and applied, in the same transaction. A
//! redelivery finds its key and changes nothing.
//!
//! The statements that look rows up by arrays of keys (orders, balances,
//! fills) are planned at each execution (`persistent(false)`): a plan
//! cached per connection while the tables were nearly empty scans them
//! whole and stays until statistics change (the order bench's first
//! minute spent 11 ms per settlement in one such `SELECT … FOR UPDATE`).
//!
//! Lock order, to avoid deadlocks with the order service and other clearing
//! replicas: `cleared_batches` keys sorted, then orders sorted by id, then
//! balances sorted by (user, asset) (rows created first, then existing ones
//! locked; see `apply_balances`) — last, because the order service
//! reserves from the same balance rows. The order service takes them in
//! the same order (an amend's order row before balances).

use std::collections::{BTreeMap, BTreeSet};

use exchange_domain::money::{format_signed_units, format_units, parse_units};
use exchange_domain::{EventBatch, Side};
use sqlx::{PgConnection, PgPool, Row as _};

use crate::plan::{Account, MarketAssets, Plan, PlanError};
use crate::private::order_view;
use exchange_store::{BalanceJson, FillJson, ORDER_COLUMNS, OrderJson, OrderRow, wire_name};

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("orders not found: {0:?}")]
    MissingOrders(Vec<u64>),
    #[error("id {0} does not fit a bigint")]
    IdRange(u64),
    /// A stored value this code cannot read, or a row a statement did not
    /// return: retrying the same batch cannot help (unlike a `Db` error
    /// of the connection, which is transient), so it is failed like a bad
    /// batch.
    #[error("stored data: {0}")]
    Stored(String),
    /// Balance rows another transaction created while the settlement
    /// wanted to create them; a retry updates them.
    #[error("balance rows created concurrently: {0:?}")]
    BalanceRowRace(Vec<(u64, String)>),
}

impl SettleError {
    /// Worth retrying as is: the database was unreachable or the
    /// transaction lost a race (deadlock, serialization).
    pub fn is_transient(&self) -> bool {
        // One classification of "retry later" for every service.
        match self {
            SettleError::Db(e) => exchange_common::db::is_transient(e),
            SettleError::BalanceRowRace(_) => true,
            _ => false,
        }
    }
}

/// What a settlement changed, for the private events published after commit.
#[derive(Debug, Clone, Default)]
pub struct Settled {
    /// Keys applied now (the rest were already cleared).
    pub applied: BTreeSet<(String, u64)>,
    pub duplicates: usize,
    pub trades: usize,
    /// Each with its owner, as the fills and balances.
    pub orders: Vec<(u64, OrderJson)>,
    pub fills: Vec<(u64, FillJson)>,
    pub balances: Vec<(u64, BalanceJson)>,
}

/// market -> assets, from the markets table.
pub async fn load_markets(db: &PgPool) -> Result<BTreeMap<String, MarketAssets>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT m.symbol, m.base, b.scale AS base_scale, m.quote, q.scale AS quote_scale
         FROM markets m JOIN assets b ON b.symbol = m.base JOIN assets q ON q.symbol = m.quote",
    )
    .fetch_all(db)
    .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        let base_scale: i16 = r.try_get("base_scale")?;
        let quote_scale: i16 = r.try_get("quote_scale")?;
        out.insert(
            r.try_get::<String, _>("symbol")?,
            MarketAssets {
                base: r.try_get("base")?,
                base_scale: u8::try_from(base_scale).unwrap_or(u8::MAX),
                quote: r.try_get("quote")?,
                quote_scale: u8::try_from(quote_scale).unwrap_or(u8::MAX),
            },
        );
    }
    Ok(out)
}

/// Records `exchange_clearing_step_seconds{step}`: where settlement time goes.
pub(crate) struct StepClock(std::time::Instant);

impl StepClock {
    pub(crate) fn new() -> Self {
        Self(std::time::Instant::now())
    }
    pub(crate) fn step(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        metrics::histogram!("exchange_clearing_step_seconds", "step" => step)
            .record(now.duration_since(self.0).as_secs_f64());
        self.0 = now;
    }
}

fn id(v: u64) -> Result<i64, SettleError> {
    i64::try_from(v).map_err(|_| SettleError::IdRange(v))
}

fn uid(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

/// Settles `batches` in `tx` (which the caller commits). Batches already
/// cleared are skipped; duplicates within `batches` count once.
pub async fn settle(
    tx: &mut PgConnection,
    batches: &[EventBatch],
    markets: &BTreeMap<String, MarketAssets>,
) -> Result<Settled, SettleError> {
    let mut unique: BTreeMap<(String, u64), &EventBatch> = BTreeMap::new();
    for b in batches {
        unique.entry((b.market.to_string(), b.seq)).or_insert(b);
    }
    let mut settled = Settled {
        duplicates: batches.len() - unique.len(),
        ..Settled::default()
    };
    if unique.is_empty() {
        return Ok(settled);
    }
    let (k_market, k_seq): (Vec<String>, Vec<i64>) = unique
        .keys()
        .map(|(m, s)| Ok((m.clone(), id(*s)?)))
        .collect::<Result<Vec<_>, SettleError>>()?
        .into_iter()
        .unzip();
    let inserted = sqlx::query(
        "INSERT INTO cleared_batches (market, seq)
         SELECT * FROM unnest($1::text[], $2::bigint[]) ORDER BY 1, 2
         ON CONFLICT DO NOTHING RETURNING market, seq",
    )
    .bind(&k_market)
    .bind(&k_seq)
    .fetch_all(&mut *tx)
    .await?;
    for r in inserted {
        let m: String = r.try_get(0)?;
        let s: i64 = r.try_get(1)?;
        settled.applied.insert((m, uid(s)));
    }
    settled.duplicates += unique.len() - settled.applied.len();
    let fresh: Vec<&EventBatch> = unique
        .iter()
        .filter(|(k, _)| settled.applied.contains(*k))
        .map(|(_, b)| *b)
        .collect();
    if fresh.is_empty() {
        return Ok(settled);
    }
    let mut clock = StepClock::new();
    let plan = Plan::build(&fresh, markets)?;
    clock.step("plan");
    settled.trades = plan.trades.len();
    // Orders that only rested (or wait for their stop) change no row
    // here, but their owners still learn they are open.
    let accepted =
        crate::private::accepted_order_ids(&fresh, |order| plan.orders.contains_key(&order));
    settled.orders = apply_orders(tx, &plan, &accepted, markets).await?;
    clock.step("orders");
    insert_trades(tx, &plan).await?;
    clock.step("trades");
    settled.fills = insert_fills(tx, &plan, markets).await?;
    clock.step("fills");
    insert_ledger(tx, &plan).await?;
    clock.step("ledger");
    // Last, right before the caller commits: the balance rows are the ones
    // the order service reserves from, so they are locked for as short a
    // time as possible.
    settled.balances = apply_balances(tx, &plan).await?;
    clock.step("balances");
    Ok(settled)
}

async fn apply_balances(
    tx: &mut PgConnection,
    plan: &Plan,
) -> Result<Vec<(u64, BalanceJson)>, SettleError> {
    if plan.balances.is_empty() {
        return Ok(Vec::new());
    }
    let mut users = Vec::with_capacity(plan.balances.len());
    let mut assets = Vec::with_capacity(plan.balances.len());
    let mut avail = Vec::with_capacity(plan.balances.len());
    let mut locked = Vec::with_capacity(plan.balances.len());
    for ((user, asset), d) in &plan.balances {
        let scale = plan.scales.get(asset).copied().unwrap_or(0);
        users.push(id(*user)?);
        assets.push(asset.clone());
        avail.push(format_signed_units(d.available, scale));
        locked.push(format_signed_units(d.locked, scale));
    }
    // One statement, two steps, each in key order:
    // 1. `i`: keys with no row in the statement's snapshot (e.g. the asset
    //    a buyer receives for the first time) are inserted with their
    //    deltas as the values. A negative one fails the CHECK, exactly as
    //    the UPDATE of a zero row would. (Not one upsert for every key:
    //    Postgres checks the proposed row's CHECKs before it looks for a
    //    conflict, so an existing row's negative delta would fail too.)
    //    A new row is invisible to other transactions, so inserting it
    //    holds nothing they can wait for while we wait.
    // 2. `l` + `u`: the existing rows are locked in key order (the order
    //    service locks in the same order, so the two never deadlock), then
    //    the netted deltas applied. `l` excludes `i`'s keys, which it
    //    could not see anyway: that makes it read all of `i` before its
    //    first lock, so no row is locked while step 1 waits on another
    //    transaction's insert of the same key.
    // A key another transaction inserted after the snapshot is in neither
    // (`DO NOTHING`, and `l` cannot see it): reported below, retried.
    let rows = sqlx::query(
        "WITH d AS (
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::numeric[], $4::numeric[])
               AS d(user_id, asset, da, dl)
         ), i AS (
             INSERT INTO balances (user_id, asset, available, locked)
             SELECT d.user_id, d.asset, d.da, d.dl FROM d
             WHERE NOT EXISTS (
                 SELECT 1 FROM balances b
                 WHERE b.user_id = d.user_id AND b.asset = d.asset AND b.user_id = ANY($1))
             ORDER BY d.user_id, d.asset
             ON CONFLICT DO NOTHING
             RETURNING user_id, asset, available, locked
         ), l AS (
             SELECT b.user_id, b.asset FROM balances b
             JOIN d ON b.user_id = d.user_id AND b.asset = d.asset
             WHERE b.user_id = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM i WHERE i.user_id = d.user_id AND i.asset = d.asset)
             ORDER BY b.user_id, b.asset FOR UPDATE OF b
         ), u AS (
             UPDATE balances b SET available = b.available + d.da, locked = b.locked + d.dl,
                    updated_at = now()
             FROM d JOIN l ON l.user_id = d.user_id AND l.asset = d.asset
             WHERE b.user_id = d.user_id AND b.asset = d.asset AND b.user_id = ANY($1)
             RETURNING b.user_id, b.asset, b.available, b.locked
         )
         SELECT user_id, asset, trim_scale(available)::text, trim_scale(locked)::text FROM i
         UNION ALL
         SELECT user_id, asset, trim_scale(available)::text, trim_scale(locked)::text FROM u",
    )
    .persistent(false)
    .bind(&users)
    .bind(&assets)
    .bind(&avail)
    .bind(&locked)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push((
            uid(r.try_get(0)?),
            BalanceJson {
                asset: r.try_get(1)?,
                available: r.try_get(2)?,
                locked: r.try_get(3)?,
            },
        ));
    }
    if out.len() != plan.balances.len() {
        let found: BTreeSet<(u64, &str)> =
            out.iter().map(|(u, b)| (*u, b.asset.as_str())).collect();
        let raced = plan
            .balances
            .keys()
            .filter(|(u, a)| !found.contains(&(*u, a.as_str())))
            .cloned()
            .collect();
        return Err(SettleError::BalanceRowRace(raced));
    }
    out.sort_by(|a, b| (a.0, &a.1.asset).cmp(&(b.0, &b.1.asset)));
    Ok(out)
}

/// Applies the plan's order deltas and returns the orders' views, with
/// those of `accepted` (orders only accepted, none of the plan's) read in
/// the same statement. Sorted by id.
async fn apply_orders(
    tx: &mut PgConnection,
    plan: &Plan,
    accepted: &[i64],
    markets: &BTreeMap<String, MarketAssets>,
) -> Result<Vec<(u64, OrderJson)>, SettleError> {
    if plan.orders.is_empty() {
        return Ok(crate::private::accepted_orders(tx, accepted, markets).await?);
    }
    let n = plan.orders.len();
    let mut ids = Vec::with_capacity(n);
    for order_id in plan.orders.keys() {
        ids.push(id(*order_id)?);
    }
    // Lock in id order, and read what the amend guard needs.
    let current: Vec<(i64, i64, i64, i64, String, Option<String>)> = sqlx::query_as(
        "SELECT id, user_id, amend_seq, applied_seq, trim_scale(filled_quantity)::text,
                trim_scale(quantity)::text
         FROM orders WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .persistent(false)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let current: BTreeMap<u64, (i64, u64, u64, String, Option<String>)> = current
        .into_iter()
        .map(|(i, u, a, m, f, q)| (uid(i), (u, uid(a), uid(m), f, q)))
        .collect();
    let mut fq = Vec::with_capacity(n);
    let mut fquote = Vec::with_capacity(n);
    let mut unlocked = Vec::with_capacity(n);
    let mut status: Vec<Option<String>> = Vec::with_capacity(n);
    let mut reason: Vec<Option<String>> = Vec::with_capacity(n);
    let mut a_price: Vec<Option<String>> = Vec::with_capacity(n);
    let mut new_qty: Vec<Option<String>> = Vec::with_capacity(n);
    let mut amend_seq: Vec<i64> = Vec::with_capacity(n);
    let mut applied_seq: Vec<i64> = Vec::with_capacity(n);
    let mut triggered_ms: Vec<Option<i64>> = Vec::with_capacity(n);
    for (order_id, d) in &plan.orders {
        let m = markets
            .get(&d.market)
            .ok_or_else(|| PlanError::UnknownMarket(d.market.clone()))?;
        let reserve_scale = d.reserve_role.map_or(0, |r| m.scale(r));
        fq.push(format_units(d.filled_quantity, m.base_scale));
        fquote.push(format_units(d.filled_quote, m.quote_scale));
        unlocked.push(format_units(d.unlocked, reserve_scale));
        status.push(d.final_status.map(|s| wire_name(&s)));
        reason.push(d.reason.map(|r| wire_name(&r)));
        triggered_ms.push(d.triggered_ms.map(id).transpose()?);
        // A missing row is reported below (MissingOrders) from the UPDATE.
        let Some((user, row_amend, row_applied, row_filled, row_qty)) = current.get(order_id)
        else {
            a_price.push(None);
            new_qty.push(None);
            amend_seq.push(0);
            applied_seq.push(id(d.last_seq)?);
            continue;
        };
        let units = |t: &str| {
            parse_units(t, m.base_scale).map_err(|e| {
                SettleError::Stored(format!("order {order_id}: stored quantity {t:?}: {e}"))
            })
        };
        // The order's total quantity is what was filled before its
        // latest amend plus the open quantity that amend set. Batches may
        // arrive out of order, so "before" is by batch seq, not by
        // arrival: an older Amended event is ignored (never rolls price
        // and quantity back), and fills older than the row's amend that
        // arrive late add to the total.
        let (price, quantity, amend) = match d.amend {
            Some(a) if a.seq > *row_amend => {
                let applied_before = if *row_applied < a.seq {
                    // Every fill applied so far is older than this amend.
                    units(row_filled)?
                } else {
                    // A newer batch was applied first: count only the
                    // fills older than the amend (rare; read them back).
                    let text: String = sqlx::query_scalar(
                        "SELECT trim_scale(coalesce(sum(f.quantity), 0))::text FROM fills f
                         JOIN trades t ON t.market = f.market AND t.id = f.trade_id
                         WHERE f.user_id = $1 AND f.market = $2 AND f.order_id = $3
                           AND t.seq < $4",
                    )
                    .persistent(false)
                    .bind(*user)
                    .bind(&d.market)
                    .bind(id(*order_id)?)
                    .bind(id(a.seq)?)
                    .fetch_one(&mut *tx)
                    .await?;
                    units(&text)?
                };
                let total = applied_before + d.filled_before(a.seq) + a.open_quantity;
                (
                    Some(format_units(a.price, m.quote_scale)),
                    Some(format_units(total, m.base_scale)),
                    a.seq,
                )
            }
            _ if *row_amend > 0 => {
                let late = d.filled_before(*row_amend);
                let quantity = match (late, row_qty) {
                    (0, _) | (_, None) => None,
                    (late, Some(q)) => Some(format_units(units(q)? + late, m.base_scale)),
                };
                (None, quantity, *row_amend)
            }
            _ => (None, None, 0),
        };
        a_price.push(price);
        new_qty.push(quantity);
        amend_seq.push(id(amend)?);
        applied_seq.push(id(d.last_seq.max(*row_applied))?);
    }
    // The accepted orders' read rides along (one round trip, not two);
    // their ids are none of the updated ones. $11 is the read's (accepted
    // ids), $12 the update's trigger times.
    let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH u AS (UPDATE orders o SET
            filled_quantity = o.filled_quantity + d.fq,
            filled_quote = o.filled_quote + d.fquote,
            locked_remaining = o.locked_remaining - d.unlocked,
            status = CASE
                WHEN o.status IN ('filled', 'canceled', 'expired', 'rejected') THEN o.status
                WHEN d.status IS NOT NULL THEN d.status
                WHEN d.fq > 0 THEN 'partially_filled'
                ELSE o.status END,
            reason = CASE
                WHEN o.status IN ('filled', 'canceled', 'expired', 'rejected') THEN o.reason
                WHEN d.status IS NOT NULL THEN d.reason
                ELSE o.reason END,
            price = COALESCE(d.a_price, o.price),
            quantity = COALESCE(d.quantity, o.quantity),
            amend_seq = d.amend_seq,
            applied_seq = d.applied_seq,
            triggered_at = COALESCE(o.triggered_at,
                timestamptz 'epoch' + d.triggered_ms * interval '1 millisecond'),
            updated_at = now()
         FROM unnest($1::bigint[], $2::numeric[], $3::numeric[], $4::numeric[], $5::text[],
                     $6::text[], $7::numeric[], $8::numeric[], $9::bigint[], $10::bigint[],
                     $12::bigint[])
              AS d(id, fq, fquote, unlocked, status, reason, a_price, quantity, amend_seq,
                   applied_seq, triggered_ms)
         WHERE o.id = d.id AND o.id = ANY($1)
         RETURNING o.*)
         SELECT {ORDER_COLUMNS} FROM u
         UNION ALL
         SELECT {ORDER_COLUMNS} FROM orders WHERE id = ANY($11)"
    )))
    .persistent(false)
    .bind(&ids)
    .bind(&fq)
    .bind(&fquote)
    .bind(&unlocked)
    .bind(&status)
    .bind(&reason)
    .bind(&a_price)
    .bind(&new_qty)
    .bind(&amend_seq)
    .bind(&applied_seq)
    .bind(accepted)
    .bind(&triggered_ms)
    .fetch_all(&mut *tx)
    .await?;
    let is_planned =
        |r: &&OrderRow| u64::try_from(r.id).is_ok_and(|id| plan.orders.contains_key(&id));
    if rows.iter().filter(is_planned).count() != n {
        let found: BTreeSet<u64> = rows
            .iter()
            .filter_map(|r| u64::try_from(r.id).ok())
            .collect();
        let missing = plan
            .orders
            .keys()
            .filter(|k| !found.contains(k))
            .copied()
            .collect();
        return Err(SettleError::MissingOrders(missing));
    }
    let mut out: Vec<(u64, OrderJson)> = rows.iter().map(|r| order_view(r, markets)).collect();
    out.sort_by_key(|(_, o)| o.id);
    Ok(out)
}

async fn insert_trades(tx: &mut PgConnection, plan: &Plan) -> Result<(), SettleError> {
    if plan.trades.is_empty() {
        return Ok(());
    }
    let scales = &plan.scales;
    let mut market = Vec::new();
    let mut tid = Vec::new();
    let mut seq = Vec::new();
    let (mut price, mut qty, mut quote) = (Vec::new(), Vec::new(), Vec::new());
    let mut taker_side = Vec::new();
    let (mut mo, mut to, mut mu, mut tu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut mf, mut tf, mut time) = (Vec::new(), Vec::new(), Vec::new());
    for t in &plan.trades {
        let (b, q) = t.market.split_once('-').unwrap_or((&t.market, ""));
        let bs = scales.get(b).copied().unwrap_or(0);
        let qs = scales.get(q).copied().unwrap_or(0);
        market.push(t.market.clone());
        tid.push(id(t.trade_id)?);
        seq.push(id(t.seq)?);
        price.push(format_units(t.price, qs));
        qty.push(format_units(t.quantity, bs));
        quote.push(format_units(t.quote_amount, qs));
        taker_side.push(t.taker_side.as_str());
        mo.push(id(t.maker_order_id)?);
        to.push(id(t.taker_order_id)?);
        mu.push(id(t.maker_user_id)?);
        tu.push(id(t.taker_user_id)?);
        // Each side's fee is in what that side receives.
        let (maker_scale, taker_scale) = match t.taker_side {
            Side::Buy => (qs, bs),
            Side::Sell => (bs, qs),
        };
        mf.push(format_units(t.maker_fee, maker_scale));
        tf.push(format_units(t.taker_fee, taker_scale));
        time.push(id(t.time_ms)?);
    }
    sqlx::query(
        "INSERT INTO trades (market, id, seq, price, quantity, quote_amount, taker_side,
            maker_order_id, taker_order_id, maker_user_id, taker_user_id, maker_fee, taker_fee, time_ms)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::numeric[], $5::numeric[],
            $6::numeric[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[],
            $12::numeric[], $13::numeric[], $14::bigint[])",
    )
    .bind(&market)
    .bind(&tid)
    .bind(&seq)
    .bind(&price)
    .bind(&qty)
    .bind(&quote)
    .bind(&taker_side)
    .bind(&mo)
    .bind(&to)
    .bind(&mu)
    .bind(&tu)
    .bind(&mf)
    .bind(&tf)
    .bind(&time)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_fills(
    tx: &mut PgConnection,
    plan: &Plan,
    markets: &BTreeMap<String, MarketAssets>,
) -> Result<Vec<(u64, FillJson)>, SettleError> {
    if plan.fills.is_empty() {
        return Ok(Vec::new());
    }
    let mut views = Vec::with_capacity(plan.fills.len());
    let (mut user, mut order, mut market, mut tid) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut side, mut price, mut qty, mut quote) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut fee, mut fee_asset, mut liq, mut time) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for f in &plan.fills {
        let m = markets
            .get(&f.market)
            .ok_or_else(|| PlanError::UnknownMarket(f.market.clone()))?;
        let view = FillJson {
            id: 0,
            order_id: id(f.order_id)?,
            trade_id: id(f.trade_id)?,
            market: f.market.clone(),
            side: f.side.as_str().to_owned(),
            price: format_units(f.price, m.quote_scale),
            quantity: format_units(f.quantity, m.base_scale),
            quote_amount: format_units(f.quote_amount, m.quote_scale),
            fee: format_units(f.fee, m.scale(f.fee_role)),
            fee_asset: m.asset(f.fee_role).to_owned(),
            liquidity: if f.maker { "maker" } else { "taker" }.to_owned(),
            time: id(f.time_ms)?,
        };
        user.push(id(f.user_id)?);
        order.push(id(f.order_id)?);
        market.push(view.market.clone());
        tid.push(id(f.trade_id)?);
        side.push(view.side.clone());
        price.push(view.price.clone());
        qty.push(view.quantity.clone());
        quote.push(view.quote_amount.clone());
        fee.push(view.fee.clone());
        fee_asset.push(view.fee_asset.clone());
        liq.push(view.liquidity.clone());
        time.push(id(f.time_ms)?);
        views.push((f.user_id, view));
    }
    let rows = sqlx::query(
        "INSERT INTO fills (user_id, order_id, market, trade_id, side, price, quantity,
            quote_amount, fee, fee_asset, liquidity, time_ms)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::text[],
            $6::numeric[], $7::numeric[], $8::numeric[], $9::numeric[], $10::text[], $11::text[],
            $12::bigint[])
         RETURNING id, market, trade_id, liquidity",
    )
    .bind(&user)
    .bind(&order)
    .bind(&market)
    .bind(&tid)
    .bind(&side)
    .bind(&price)
    .bind(&qty)
    .bind(&quote)
    .bind(&fee)
    .bind(&fee_asset)
    .bind(&liq)
    .bind(&time)
    .fetch_all(&mut *tx)
    .await?;
    let mut ids: BTreeMap<(String, i64, String), i64> = BTreeMap::new();
    for r in rows {
        ids.insert((r.try_get(1)?, r.try_get(2)?, r.try_get(3)?), r.try_get(0)?);
    }
    for (_, v) in &mut views {
        v.id = ids
            .get(&(v.market.clone(), v.trade_id, v.liquidity.clone()))
            .copied()
            .unwrap_or_default();
    }
    Ok(views)
}

async fn insert_ledger(tx: &mut PgConnection, plan: &Plan) -> Result<(), SettleError> {
    if plan.ledger.is_empty() {
        return Ok(());
    }
    // Unique within a settlement (seq ranges of one market do not overlap),
    // so the returned ids can be matched to their entries.
    let references: Vec<String> = plan
        .ledger
        .iter()
        .map(|e| {
            format!(
                "clearing {} seq {}..{} ({} batches)",
                e.market, e.seq_first, e.seq_last, e.batches
            )
        })
        .collect();
    let rows = sqlx::query(
        "INSERT INTO ledger_journal (kind, reference)
         SELECT 'trade', r FROM unnest($1::text[]) AS r RETURNING id, reference",
    )
    .bind(&references)
    .fetch_all(&mut *tx)
    .await?;
    let mut ids: BTreeMap<String, i64> = BTreeMap::new();
    for r in rows {
        ids.insert(r.try_get(1)?, r.try_get(0)?);
    }
    let (mut journal, mut kind, mut user, mut asset, mut amount) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (entry, reference) in plan.ledger.iter().zip(&references) {
        let journal_id = ids
            .get(reference)
            .copied()
            .ok_or_else(|| SettleError::Stored(format!("journal {reference:?} not returned")))?;
        for ((account, a), value) in &entry.postings {
            let scale = plan.scales.get(a).copied().unwrap_or(0);
            journal.push(journal_id);
            match account {
                Account::User(u) => {
                    kind.push("user");
                    user.push(Some(id(*u)?));
                }
                Account::Fees => {
                    kind.push("fees");
                    user.push(None);
                }
            }
            asset.push(a.clone());
            amount.push(format_signed_units(*value, scale));
        }
    }
    sqlx::query(
        "INSERT INTO ledger_postings (journal_id, account_kind, user_id, asset, amount)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::numeric[])",
    )
    .bind(&journal)
    .bind(&kind)
    .bind(&user)
    .bind(&asset)
    .bind(&amount)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
