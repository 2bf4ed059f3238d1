-- Market data: candles (klines) per market and interval, written by every
-- marketdata replica from the event stream and repairable from `trades`.
--
-- Rows hold absolute values; `last_seq` is the last event batch a candle
-- includes. Writers upsert only when `last_seq` does not go backwards, so
-- replicas writing the same candle, and redeliveries, are harmless.
-- Prices are NUMERIC decimal values of the quote asset, `volume` of the base
-- asset, `quote_volume` of the quote asset. `open_time` is Unix ms, aligned to
-- a multiple of the interval's length.

CREATE TABLE klines (
    market       text NOT NULL REFERENCES markets (symbol),
    interval     text NOT NULL CHECK (interval IN ('1m', '5m', '15m', '1h', '4h', '1d')),
    open_time    bigint NOT NULL CHECK (open_time >= 0),
    open         numeric NOT NULL CHECK (open > 0),
    high         numeric NOT NULL CHECK (high > 0),
    low          numeric NOT NULL CHECK (low > 0),
    close        numeric NOT NULL CHECK (close > 0),
    volume       numeric NOT NULL CHECK (volume >= 0),
    quote_volume numeric NOT NULL CHECK (quote_volume >= 0),
    trade_count  bigint NOT NULL CHECK (trade_count > 0),
    last_seq     bigint NOT NULL CHECK (last_seq > 0),
    PRIMARY KEY (market, interval, open_time),
    CONSTRAINT klines_high_low CHECK (low <= high)
);
