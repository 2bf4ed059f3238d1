-- The order path: orders, the per-market command journal (matching's input),
-- the per-market event journal (matching's output), what clearing has
-- applied, trades and per-user fills.
--
-- Amounts are NUMERIC decimal values of their asset (e.g. 0.015 BTC), like
-- balances; the services convert to integer units at the edge.

-- Markets may also be cancel-only (the engine knows three states).
ALTER TABLE markets DROP CONSTRAINT markets_status_check;
ALTER TABLE markets ADD CONSTRAINT markets_status_check
    CHECK (status IN ('trading', 'cancel_only', 'halted'));

-- The last sequence number handed out per market: the journal is gapless
-- because a number is only taken inside the transaction that writes it.
CREATE TABLE market_sequences (
    market   text PRIMARY KEY REFERENCES markets (symbol),
    last_seq bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0)
);

CREATE SEQUENCE order_ids AS bigint;

CREATE TABLE orders (
    id               bigint PRIMARY KEY,
    user_id          bigint NOT NULL REFERENCES users (id),
    client_order_id  text CHECK (char_length(client_order_id) BETWEEN 1 AND 64),
    market           text NOT NULL REFERENCES markets (symbol),
    side             text NOT NULL CHECK (side IN ('buy', 'sell')),
    type             text NOT NULL CHECK (type IN ('limit', 'market', 'stop_limit', 'stop_market')),
    time_in_force    text NOT NULL CHECK (time_in_force IN ('GTC', 'IOC', 'FOK')),
    post_only        boolean NOT NULL DEFAULT false,
    stp              text NOT NULL DEFAULT 'none'
                     CHECK (stp IN ('none', 'expire_taker', 'expire_maker', 'expire_both')),
    price            numeric CHECK (price > 0),
    stop_price       numeric CHECK (stop_price > 0),
    quantity         numeric CHECK (quantity > 0),
    quote_quantity   numeric CHECK (quote_quantity > 0),
    filled_quantity  numeric NOT NULL DEFAULT 0 CHECK (filled_quantity >= 0),
    -- quote exchanged so far: the average price is filled_quote / filled_quantity
    filled_quote     numeric NOT NULL DEFAULT 0 CHECK (filled_quote >= 0),
    -- what the order locked, in the asset it spends (quote for a buy, base
    -- for a sell), and how much of it is still locked: sum(locked_remaining)
    -- over a user's orders equals balances.locked (the reconcile invariant)
    reserve_asset    text NOT NULL REFERENCES assets (symbol),
    reserved         numeric NOT NULL CHECK (reserved >= 0),
    locked_remaining numeric NOT NULL CHECK (locked_remaining >= 0),
    status           text NOT NULL DEFAULT 'new'
                     CHECK (status IN ('new', 'partially_filled', 'filled', 'canceled', 'expired', 'rejected')),
    reason           text,
    -- the journal sequence number of the placement
    seq              bigint NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- Idempotent placement: the same client_order_id again is the same order.
CREATE UNIQUE INDEX orders_user_client_order_id_key ON orders (user_id, client_order_id)
    WHERE client_order_id IS NOT NULL;
CREATE INDEX orders_user_market_created_idx ON orders (user_id, market, created_at DESC);
CREATE INDEX orders_open_idx ON orders (user_id, market) WHERE status IN ('new', 'partially_filled');

-- Matching's input: one command per (market, seq), gapless, immutable.
CREATE TABLE order_commands (
    market     text NOT NULL REFERENCES markets (symbol),
    seq        bigint NOT NULL CHECK (seq > 0),
    time_ms    bigint NOT NULL,
    command    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (market, seq)
);

-- Matching's output: the event batch of each command. A replay that
-- produces a different batch than the stored one is a bug: the market halts.
CREATE TABLE event_batches (
    market     text NOT NULL REFERENCES markets (symbol),
    seq        bigint NOT NULL CHECK (seq > 0),
    time_ms    bigint NOT NULL,
    events     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (market, seq)
);

-- Clearing's exactly-once guard: a batch is applied in the transaction that
-- inserts its row here, so a redelivery finds the row and changes nothing.
CREATE TABLE cleared_batches (
    market     text NOT NULL,
    seq        bigint NOT NULL,
    cleared_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (market, seq)
);

CREATE TABLE trades (
    market         text NOT NULL REFERENCES markets (symbol),
    id             bigint NOT NULL,
    seq            bigint NOT NULL,
    price          numeric NOT NULL CHECK (price > 0),
    quantity       numeric NOT NULL CHECK (quantity > 0),
    quote_amount   numeric NOT NULL CHECK (quote_amount > 0),
    taker_side     text NOT NULL CHECK (taker_side IN ('buy', 'sell')),
    maker_order_id bigint NOT NULL,
    taker_order_id bigint NOT NULL,
    maker_user_id  bigint NOT NULL,
    taker_user_id  bigint NOT NULL,
    maker_fee      numeric NOT NULL CHECK (maker_fee >= 0),
    taker_fee      numeric NOT NULL CHECK (taker_fee >= 0),
    time_ms        bigint NOT NULL,
    PRIMARY KEY (market, id)
);
CREATE INDEX trades_market_time_idx ON trades (market, time_ms DESC);

-- One row per side of a trade: a user's trade history.
CREATE TABLE fills (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id),
    order_id   bigint NOT NULL,
    market     text NOT NULL,
    trade_id   bigint NOT NULL,
    side       text NOT NULL CHECK (side IN ('buy', 'sell')),
    price      numeric NOT NULL,
    quantity   numeric NOT NULL,
    quote_amount numeric NOT NULL,
    fee        numeric NOT NULL,
    fee_asset  text NOT NULL,
    liquidity  text NOT NULL CHECK (liquidity IN ('maker', 'taker')),
    time_ms    bigint NOT NULL,
    UNIQUE (market, trade_id, liquidity)
);
CREATE INDEX fills_user_market_idx ON fills (user_id, market, id DESC);
