-- When a stop or take-profit order triggered (the time of the engine step
-- that triggered it); NULL while it waits, and for every other type.
--
-- Before, an order row could not tell "triggered, resting unfilled" from
-- "waiting for its stop price": both are status 'new' with nothing filled,
-- so the Binance API showed a triggered order as isWorking: false until it
-- filled something. Clearing sets it from the StopTriggered event, in the
-- same update as the order's fills.
--
-- A nullable column without a default: instant on any table size, but it
-- needs a moment's exclusive lock on orders. Waiting for that lock behind
-- a long transaction would hold every query on orders in the queue: wait
-- at most 10 s, then fail with nothing applied; run it again. Code from
-- before this migration neither reads nor writes the column.
SET LOCAL lock_timeout = '10s';
ALTER TABLE orders ADD COLUMN triggered_at timestamptz;
