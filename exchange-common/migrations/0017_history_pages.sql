-- History users can walk (API.md "History and statements"): every list is
-- a keyset page, newest first, on an index of its owner's rows in that
-- order, so page 10,000 costs what page 1 costs.
--
-- Orders: by (created_at, id) across markets (orders_user_market_created_idx
-- serves a market's). Fills: by id (fills_user_market_idx serves a
-- market's). Deposits, withdrawals and the audit log have theirs already.
CREATE INDEX orders_user_created_idx ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX fills_user_idx ON fills (user_id, id DESC);
