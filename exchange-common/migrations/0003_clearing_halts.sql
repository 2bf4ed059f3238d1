-- Markets whose settlement stopped in clearing: a batch of the market
-- failed on its last allowed delivery and went to the dead-letter stream.
-- While a row exists, clearing refuses that market's later batches, its
-- /ready shows `market:<MARKET>` down and `exchange_market_halted{market}`
-- is 1. An operator fixes the cause, replays the DLQ in seq order, then
-- deletes the row; clearing resumes within seconds.
CREATE TABLE clearing_halts (
    market    text PRIMARY KEY,
    seq       bigint NOT NULL,
    error     text NOT NULL,
    halted_at timestamptz NOT NULL DEFAULT now()
);
