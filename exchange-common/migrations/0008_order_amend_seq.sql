-- Clearing applies event batches in one transaction each, and batches of a
-- market can commit out of sequence order (several consumers, a redelivered
-- older batch). An order row remembers which amend its price and quantity
-- reflect and the newest batch that touched it, so an older Amended event
-- never overwrites a newer one, and fills applied late still count into the
-- amended total quantity (see exchange-clearing/src/store.rs).
ALTER TABLE orders
    ADD COLUMN amend_seq bigint NOT NULL DEFAULT 0,
    ADD COLUMN applied_seq bigint NOT NULL DEFAULT 0;
