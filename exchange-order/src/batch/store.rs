//! One function per step a batch takes in Postgres, inside the batch's
//! transaction, each one statement whatever the batch's size (array
//! binds), except the amends' extra reserves and market statuses (one per
//! such request); then the commit and the `XADD`.
//!
//! The lock order every batch keeps (and clearing too, see
//! `exchange-clearing/src/store.rs`): amended order rows by id, then
//! balances by `(user_id, asset)`, then `market_sequences`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use exchange_common::redis::Redis;
use exchange_domain::{MarketStatus, SequencedCommand};
use sqlx::{PgConnection, Postgres, Transaction};

use exchange_store::{ORDER_COLUMNS, OrderRow, db_text, db_units};

/// Existing orders by `(user_id, client_order_id)`, for the placements
/// that carry one (`users[i]`, `client_ids[i]`).
pub(super) async fn load_orders_by_client_id(
    tx: &mut PgConnection,
    users: &[i64],
    client_ids: &[String],
) -> anyhow::Result<HashMap<(i64, String), OrderRow>> {
    let mut out = HashMap::new();
    if client_ids.is_empty() {
        return Ok(out);
    }
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM orders \
         WHERE user_id = ANY($1) \
           AND (user_id, client_order_id) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))"
    );
    let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .persistent(false)
        .bind(users)
        .bind(client_ids)
        .fetch_all(&mut *tx)
        .await?;
    for row in rows {
        if let Some(c) = row.client_order_id.clone() {
            out.insert((row.user_id, c), row);
        }
    }
    Ok(out)
}

/// The last trade price of each market (name → quote scale) that has
/// traded.
pub(super) async fn load_last_prices(
    tx: &mut PgConnection,
    markets: &BTreeMap<String, u8>,
) -> anyhow::Result<HashMap<String, u128>> {
    let mut out = HashMap::new();
    if markets.is_empty() {
        return Ok(out);
    }
    let names: Vec<&String> = markets.keys().collect();
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT m, (SELECT trim_scale(t.price)::text FROM trades t WHERE t.market = m
                    ORDER BY t.time_ms DESC, t.seq DESC LIMIT 1)
         FROM unnest($1::text[]) AS m",
    )
    .persistent(false)
    .bind(&names)
    .fetch_all(&mut *tx)
    .await?;
    for (m, price) in rows {
        if let (Some(p), Some(&scale)) = (price, markets.get(&m)) {
            out.insert(m, db_units(&p, scale)?);
        }
    }
    Ok(out)
}

/// The orders with these ids, by id.
pub(super) async fn load_orders_by_id(
    tx: &mut PgConnection,
    ids: &[i64],
) -> anyhow::Result<HashMap<i64, OrderRow>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ANY($1)");
    let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .persistent(false)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
    Ok(rows.into_iter().map(|r| (r.id, r)).collect())
}

/// Locks order rows in id order (amended orders, before balances, as
/// clearing and [`add_amend_reserves`] take them).
pub(super) async fn lock_orders(tx: &mut PgConnection, ids: &[i64]) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT id FROM orders WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .persistent(false)
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The available balance of each existing `(user, asset)` row in `keys`,
/// in units at the asset's scale, and the assets of rows whose scale is
/// unknown (not parsed). With `lock`, the rows are locked `FOR UPDATE` in
/// key order.
pub(super) async fn load_available(
    tx: &mut PgConnection,
    keys: &BTreeSet<(i64, String)>,
    scales: &HashMap<String, u8>,
    lock: bool,
) -> anyhow::Result<(BTreeMap<(i64, String), u128>, BTreeSet<String>)> {
    let mut available = BTreeMap::new();
    let mut unknown_scale = BTreeSet::new();
    if keys.is_empty() {
        return Ok((available, unknown_scale));
    }
    let (users, assets): (Vec<i64>, Vec<String>) = keys.iter().cloned().unzip();
    let sql = if lock {
        "SELECT b.user_id, b.asset, b.available::text FROM balances b
         JOIN unnest($1::bigint[], $2::text[]) AS k(user_id, asset)
           ON b.user_id = k.user_id AND b.asset = k.asset
         WHERE b.user_id = ANY($1)
         ORDER BY b.user_id, b.asset
         FOR UPDATE OF b"
    } else {
        "SELECT b.user_id, b.asset, b.available::text FROM balances b
         JOIN unnest($1::bigint[], $2::text[]) AS k(user_id, asset)
           ON b.user_id = k.user_id AND b.asset = k.asset
         WHERE b.user_id = ANY($1)"
    };
    let rows: Vec<(i64, String, String)> = sqlx::query_as(sql)
        .persistent(false)
        .bind(&users)
        .bind(&assets)
        .fetch_all(&mut *tx)
        .await?;
    for (user, asset, text) in rows {
        match scales.get(&asset) {
            Some(&scale) => {
                available.insert((user, asset), db_units(&text, scale)?);
            }
            None => {
                unknown_scale.insert(asset);
            }
        }
    }
    Ok((available, unknown_scale))
}

/// `count` new order ids (no locks).
pub(super) async fn next_order_ids(
    tx: &mut PgConnection,
    count: usize,
) -> anyhow::Result<Vec<i64>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    Ok(
        sqlx::query_scalar("SELECT nextval('order_ids') FROM generate_series(1, $1)")
            .bind(i64::try_from(count)?)
            .fetch_all(&mut *tx)
            .await?,
    )
}

/// Adds the amends' extra reserve to their order rows (`(order id,
/// numeric text)`, sorted by id): before the balances, since clearing
/// locks an order's row before its owners' balances, so taking them the
/// other way round could deadlock with a settlement of the amended order.
pub(super) async fn add_amend_reserves(
    tx: &mut PgConnection,
    reserves: &[(i64, String)],
) -> anyhow::Result<()> {
    for (order_id, amount) in reserves {
        sqlx::query(
            "UPDATE orders SET reserved = reserved + $2::numeric,
                    locked_remaining = locked_remaining + $2::numeric, updated_at = now()
             WHERE id = $1",
        )
        .bind(order_id)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Moves the netted amounts from available to locked in one statement,
/// rows locked in key order, each only if it still covers its amount.
/// `false` when one no longer did (nothing is then right: the caller rolls
/// back and decides again under row locks).
pub(super) async fn lock_funds(
    tx: &mut PgConnection,
    locks: &BTreeMap<(i64, String), u128>,
    scales: &HashMap<String, u8>,
) -> anyhow::Result<bool> {
    if locks.is_empty() {
        return Ok(true);
    }
    let mut users = Vec::with_capacity(locks.len());
    let mut assets = Vec::with_capacity(locks.len());
    let mut amounts = Vec::with_capacity(locks.len());
    for ((u, a), v) in locks {
        // Only keys whose balance was parsed get a lock.
        let scale = scales
            .get(a)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("no scale for asset {a}"))?;
        users.push(*u);
        assets.push(a.clone());
        amounts.push(db_text(*v, scale));
    }
    let updated = sqlx::query(
        "WITH d AS (
             SELECT user_id, asset, amount::numeric AS amount
             FROM unnest($1::bigint[], $2::text[], $3::text[]) AS d(user_id, asset, amount)
         ), l AS (
             SELECT b.user_id, b.asset FROM balances b
             JOIN d ON b.user_id = d.user_id AND b.asset = d.asset
             WHERE b.user_id = ANY($1)
             ORDER BY b.user_id, b.asset
             FOR UPDATE OF b
         )
         UPDATE balances b
         SET available = b.available - d.amount,
             locked = b.locked + d.amount,
             updated_at = now()
         FROM d JOIN l ON l.user_id = d.user_id AND l.asset = d.asset
         WHERE b.user_id = d.user_id AND b.asset = d.asset AND b.user_id = ANY($1)
           AND b.available >= d.amount",
    )
    .persistent(false)
    .bind(&users)
    .bind(&assets)
    .bind(&amounts)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(updated == locks.len() as u64)
}

/// The users among `users` whose account an operator froze. Their rows
/// stay share-locked to the commit: a freeze (an UPDATE of the row) waits
/// for this batch, so once it commits the batch's orders are visible to the
/// freeze's cancel-all; and a batch after the freeze sees it.
pub(super) async fn frozen_users(
    tx: &mut PgConnection,
    users: &[i64],
) -> anyhow::Result<BTreeSet<i64>> {
    if users.is_empty() {
        return Ok(BTreeSet::new());
    }
    let rows: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT id, frozen_at IS NOT NULL FROM users WHERE id = ANY($1) ORDER BY id FOR SHARE",
    )
    .bind(users)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, frozen)| frozen.then_some(id))
        .collect())
}

/// Stores market status changes, in order.
pub(super) async fn set_market_statuses(
    tx: &mut PgConnection,
    statuses: &[(String, MarketStatus)],
) -> anyhow::Result<()> {
    for (symbol, status) in statuses {
        sqlx::query("UPDATE markets SET status = $2, updated_at = now() WHERE symbol = $1")
            .bind(symbol)
            .bind(status.as_str())
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Takes `counts[market]` sequence numbers per market (the
/// `market_sequences` row lock keeps each market's journal gapless);
/// returns the first one taken per market.
pub(super) async fn take_sequences(
    tx: &mut PgConnection,
    counts: &BTreeMap<String, i64>,
) -> anyhow::Result<HashMap<String, i64>> {
    let mut first = HashMap::new();
    if counts.is_empty() {
        return Ok(first);
    }
    let (markets, ns): (Vec<&String>, Vec<i64>) = counts.iter().map(|(m, c)| (m, *c)).unzip();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "INSERT INTO market_sequences (market, last_seq)
         SELECT * FROM unnest($1::text[], $2::bigint[])
         ON CONFLICT (market) DO UPDATE SET last_seq = market_sequences.last_seq + EXCLUDED.last_seq
         RETURNING market, last_seq",
    )
    .bind(&markets)
    .bind(&ns)
    .fetch_all(&mut *tx)
    .await?;
    for (m, last) in rows {
        let count = counts.get(&m).copied().unwrap_or(0);
        first.insert(m, last - count + 1);
    }
    Ok(first)
}

/// Inserts the new orders in one statement, created at `time_ms`.
pub(super) async fn insert_orders<'a>(
    tx: &mut PgConnection,
    orders: impl Iterator<Item = &'a OrderRow>,
    time_ms: u64,
) -> anyhow::Result<()> {
    let mut c = OrderColumns::default();
    for o in orders {
        c.push(o);
    }
    if c.id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO orders (id, user_id, client_order_id, market, side, type, time_in_force,
            post_only, stp, price, stop_price, quantity, quote_quantity, reserve_asset,
            reserved, locked_remaining, seq, created_at, updated_at)
         SELECT id, user_id, coid, market, side, type, tif, post_only, stp,
            price::numeric, stop_price::numeric, quantity::numeric, quote_quantity::numeric,
            reserve_asset, reserved::numeric, reserved::numeric, seq,
            timestamptz 'epoch' + $17 * interval '1 millisecond',
            timestamptz 'epoch' + $17 * interval '1 millisecond'
         FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::bool[], $9::text[], $10::text[], $11::text[], $12::text[],
            $13::text[], $14::text[], $15::text[], $16::bigint[])
           AS u(id, user_id, coid, market, side, type, tif, post_only, stp, price, stop_price,
                quantity, quote_quantity, reserve_asset, reserved, seq)",
    )
    .bind(&c.id)
    .bind(&c.user_id)
    .bind(&c.coid)
    .bind(&c.market)
    .bind(&c.side)
    .bind(&c.order_type)
    .bind(&c.tif)
    .bind(&c.post_only)
    .bind(&c.stp)
    .bind(&c.price)
    .bind(&c.stop_price)
    .bind(&c.quantity)
    .bind(&c.quote_quantity)
    .bind(&c.reserve_asset)
    .bind(&c.reserved)
    .bind(&c.seq)
    .bind(i64::try_from(time_ms)?)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Column arrays for [`insert_orders`].
#[derive(Default)]
struct OrderColumns<'a> {
    id: Vec<i64>,
    user_id: Vec<i64>,
    coid: Vec<Option<&'a str>>,
    market: Vec<&'a str>,
    side: Vec<&'a str>,
    order_type: Vec<&'a str>,
    tif: Vec<&'a str>,
    post_only: Vec<bool>,
    stp: Vec<&'a str>,
    price: Vec<Option<&'a str>>,
    stop_price: Vec<Option<&'a str>>,
    quantity: Vec<Option<&'a str>>,
    quote_quantity: Vec<Option<&'a str>>,
    reserve_asset: Vec<&'a str>,
    reserved: Vec<&'a str>,
    seq: Vec<i64>,
}

impl<'a> OrderColumns<'a> {
    fn push(&mut self, o: &'a OrderRow) {
        self.id.push(o.id);
        self.user_id.push(o.user_id);
        self.coid.push(o.client_order_id.as_deref());
        self.market.push(&o.market);
        self.side.push(&o.side);
        self.order_type.push(&o.order_type);
        self.tif.push(&o.time_in_force);
        self.post_only.push(o.post_only);
        self.stp.push(&o.stp);
        self.price.push(o.price.as_deref());
        self.stop_price.push(o.stop_price.as_deref());
        self.quantity.push(o.quantity.as_deref());
        self.quote_quantity.push(o.quote_quantity.as_deref());
        self.reserve_asset.push(&o.reserve_asset);
        self.reserved.push(&o.reserved);
        self.seq.push(o.seq);
    }
}

/// Appends the commands to the journal `order_commands` in one statement.
pub(super) async fn insert_commands(
    tx: &mut PgConnection,
    commands: &[SequencedCommand],
    time_ms: u64,
) -> anyhow::Result<()> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut markets = Vec::with_capacity(commands.len());
    let mut seqs = Vec::with_capacity(commands.len());
    let mut bodies = Vec::with_capacity(commands.len());
    for c in commands {
        markets.push(c.market.to_string());
        seqs.push(i64::try_from(c.seq)?);
        bodies.push(serde_json::to_string(&c.command)?);
    }
    sqlx::query(
        "INSERT INTO order_commands (market, seq, time_ms, command)
         SELECT market, seq, $3, command::jsonb
         FROM unnest($1::text[], $2::bigint[], $4::text[]) AS u(market, seq, command)",
    )
    .bind(&markets)
    .bind(&seqs)
    .bind(i64::try_from(time_ms)?)
    .bind(&bodies)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// `COMMIT` failed in a way that does not tell whether it took effect:
/// the connection was lost or the server ended the session while the
/// commit was in flight. The batch may be committed (and its commands
/// journaled, so matching will execute them) or not.
#[derive(Debug, thiserror::Error)]
#[error("commit outcome unknown: {0}")]
pub struct CommitOutcomeUnknown(#[source] pub sqlx::Error);

/// Commits. Postgres reporting an error for the `COMMIT` (a deferred
/// constraint, a serialization failure) means it rolled back — nothing
/// applied, as for any statement; anything else (I/O error, protocol
/// error, the session terminated, connection class `08`) is a
/// [`CommitOutcomeUnknown`].
pub(super) async fn commit(tx: Transaction<'_, Postgres>) -> anyhow::Result<()> {
    let Err(e) = tx.commit().await else {
        return Ok(());
    };
    let rolled_back = e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| !c.starts_with("08") && !c.starts_with("57P"));
    if rolled_back {
        Err(anyhow::Error::new(e))
    } else {
        Err(anyhow::Error::new(CommitOutcomeUnknown(e)))
    }
}

/// `XADD` every command to its market's stream, pipelined, in seq order.
/// One pipeline per market: on a Redis Cluster each market's stream sits on
/// its own slot (`{MARKET}` hash tag) and a pipeline must stay on one slot;
/// on a single Redis they still go out as one (`Redis::query_pipelines`).
pub async fn publish(redis: &Redis, commands: &[SequencedCommand]) -> anyhow::Result<()> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut per_market: Vec<(String, redis::Pipeline)> = Vec::new();
    for c in commands {
        let market = c.market.to_string();
        let at = match per_market.iter().position(|(m, _)| *m == market) {
            Some(at) => at,
            None => {
                per_market.push((market.clone(), redis::pipe()));
                per_market.len() - 1
            }
        };
        let body = serde_json::to_string(c)?;
        per_market[at]
            .1
            .cmd("XADD")
            .arg(redis.orders_stream(&market))
            .arg("*")
            .arg("command")
            .arg(body)
            .ignore();
    }
    redis
        .query_pipelines(per_market.into_iter().map(|(_, p)| p).collect())
        .await?;
    Ok(())
}
