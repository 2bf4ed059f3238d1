-- Matching's order book snapshots: the starting point of recovery, which
-- then replays the journal (order_commands) after `seq`. A snapshot is taken
-- only when every event batch up to `seq` is stored, so the replay never
-- needs commands at or below it.
--
-- `bytes` is exchange-engine's versioned snapshot format (it carries its
-- own checksum); `state_hash` is the book's state hash (a u64 stored as the
-- bigint with the same bits), checked again after restoring.
CREATE TABLE matching_snapshots (
    market     text NOT NULL REFERENCES markets (symbol),
    seq        bigint NOT NULL CHECK (seq > 0),
    state_hash bigint NOT NULL,
    bytes      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (market, seq)
);
