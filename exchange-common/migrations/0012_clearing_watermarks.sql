-- Where clearing's catch-up walk of event_batches starts after a restart.
--
-- Catch-up (settling batches matching stored whose stream entry was lost)
-- walks each market's event_batches from a watermark below which every
-- batch is known to be in cleared_batches. The watermark lived only in
-- memory, so the first round after every start walked the market's whole
-- history — on a database of a year's trading, hours of reads. Clearing
-- now keeps it here and starts from it.
--
-- Any replica may raise it (never lower: GREATEST on write): rows of
-- cleared_batches are never deleted, so "every batch up to seq is cleared"
-- stays true once it was seen. No foreign key: a row for a market that no
-- longer exists only costs its bytes.
CREATE TABLE clearing_watermarks (
    market     text PRIMARY KEY,
    seq        bigint NOT NULL CHECK (seq >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
