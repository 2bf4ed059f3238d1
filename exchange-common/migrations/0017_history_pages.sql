-- History users can walk (API.md "History and statements"): every list is
-- a keyset page, newest first, on an index of its owner's rows in that
-- order, so page 10,000 costs what page 1 costs.
--
-- Orders: by (created_at, id) across markets (orders_user_market_created_idx
-- serves a market's). Fills: by (time, id), below. Deposits, withdrawals and
-- the audit log have theirs already.
--
-- IF NOT EXISTS: on a large database build them first with CREATE INDEX
-- CONCURRENTLY (docs/RUNBOOK.md, "Deploy"), and this migration then only
-- records them; a plain CREATE INDEX holds inserts while it builds.
CREATE INDEX IF NOT EXISTS orders_user_created_idx ON orders (user_id, created_at DESC, id DESC);

-- The statement (exchange-store/src/statement.rs) and the fills list read
-- each source on its owner's time index: fills by their time, operator
-- credits by creation,
-- chain deposits by crediting, withdrawals by confirmation.
CREATE INDEX IF NOT EXISTS fills_user_time_idx ON fills (user_id, time_ms DESC, id DESC);
CREATE INDEX IF NOT EXISTS deposits_user_created_idx ON deposits (user_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS chain_deposits_user_credited_idx ON chain_deposits (user_id, credited_at DESC, id DESC)
    WHERE journal_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS withdrawals_user_confirmed_idx ON withdrawals (user_id, updated_at DESC, id DESC)
    WHERE status = 'confirmed';
