-- History users can walk (API.md "History and statements"): every list is
-- a keyset page, newest first, on an index of its owner's rows in that
-- order, so page 10,000 costs what page 1 costs.
--
-- Orders: by (created_at, id) across markets (orders_user_market_created_idx
-- serves a market's). Fills: by id (fills_user_market_idx serves a
-- market's). Deposits, withdrawals and the audit log have theirs already.
CREATE INDEX orders_user_created_idx ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX fills_user_idx ON fills (user_id, id DESC);

-- The statement (exchange-store/src/statement.rs) reads each source on its
-- owner's time index: fills by their time, operator credits by creation,
-- chain deposits by crediting, withdrawals by confirmation.
CREATE INDEX fills_user_time_idx ON fills (user_id, time_ms DESC, id DESC);
CREATE INDEX deposits_user_created_idx ON deposits (user_id, created_at DESC, id DESC);
CREATE INDEX chain_deposits_user_credited_idx ON chain_deposits (user_id, credited_at DESC, id DESC)
    WHERE journal_id IS NOT NULL;
CREATE INDEX withdrawals_user_confirmed_idx ON withdrawals (user_id, updated_at DESC, id DESC)
    WHERE status = 'confirmed';
