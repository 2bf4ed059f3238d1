-- Matching ownership by lease (docs/ARCHITECTURE.md, "Matching replicas").
--
-- Any number of matching replicas may run on every market; each market is
-- owned by the one holding its lease. A lease lasts until `expires_at`
-- (the database's clock: replicas never compare their own clocks) and is
-- renewed by its owner well before. A replica takes a market whose lease
-- has expired by bumping `epoch`; the owner's every write of event batches
-- and snapshots names its epoch in the same statement (FOR SHARE on the
-- market's `matching_fences` row), so a former owner that wakes up after
-- losing the lease (a paused process, a cut network) stores nothing.
CREATE TABLE matching_leases (
    market     text PRIMARY KEY REFERENCES markets (symbol),
    -- `<MATCHING_CONSUMER_NAME>/<process instance id>`: each start is a new
    -- owner; a process restarted under its name takes its predecessor's
    -- leases back at start (exchange-matching's lease.rs).
    owner      text NOT NULL,
    epoch      bigint NOT NULL CHECK (epoch > 0),
    expires_at timestamptz NOT NULL
);

-- The epoch writers are fenced by: every statement that stores event
-- batches or snapshots share-locks the market's row here and writes only
-- if it still has the writer's epoch; a takeover sets it (in the statement
-- that takes the lease), so it waits for a write in flight and fails every
-- later one. A row apart from the lease's, so that renewals (which touch
-- only `matching_leases`) never wait behind a write.
CREATE TABLE matching_fences (
    market text PRIMARY KEY REFERENCES markets (symbol),
    epoch  bigint NOT NULL CHECK (epoch > 0)
);

-- Replicas alive (each renews its row with its leases): how many share
-- the markets, so that none takes them all while others are up.
CREATE TABLE matching_replicas (
    owner   text PRIMARY KEY,
    seen_at timestamptz NOT NULL
);

-- New markets and status changes reach every service at once: the
-- notification is sent when the transaction that made the change commits,
-- whatever code path made it (the services' periodic reloads remain the
-- fallback for a missed notification).
CREATE FUNCTION notify_market_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('exchange_markets', NEW.symbol);
    RETURN NULL;
END
$$;

CREATE TRIGGER markets_notify AFTER INSERT OR UPDATE ON markets
    FOR EACH ROW EXECUTE FUNCTION notify_market_change();

-- The lease epoch that stored each batch (NULL: stored before leases):
-- what shows, in the database, that a fenced former owner stored nothing
-- after a takeover. Adding a nullable column is instant on a large table.
ALTER TABLE event_batches ADD COLUMN epoch bigint;
