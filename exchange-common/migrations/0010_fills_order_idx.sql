-- A fills lookup by order: the Binance API's FULL placement answer lists the
-- order's fills (user_id, order_id), and clearing sums an order's fills
-- older than an amend when a newer batch was applied first. Without this
-- both scan every fill of the user (millions for a market maker).
-- Upgrading a large database: the index is built under a write lock on
-- fills for its duration; docs/RUNBOOK.md (Deploy, step 4) shows how to
-- build it beforehand with CREATE INDEX CONCURRENTLY.
CREATE INDEX IF NOT EXISTS fills_order_idx ON fills (order_id);
