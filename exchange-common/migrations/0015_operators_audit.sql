-- Named operators with roles, and the tamper-evident audit log
-- (docs/API.md, "Operators and audit"; docs/RUNBOOK.md, "Operators" and
-- "Audit log").

-- People who run the exchange through the admin API. `ADMIN_TOKEN` stays
-- the break-glass root (actor `root`); everyone else has a row here. The
-- token is a 256-bit random string shown once at creation: only its
-- SHA-256 is kept (a fast hash is enough for a value nobody can guess, and
-- it lets a request find its operator by one index lookup). A deleted
-- operator keeps its row, so the names in the audit log stay resolvable;
-- names are unique for ever, never reused for another person.
CREATE TABLE operators (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    role       text NOT NULL CHECK (role IN ('viewer', 'support', 'finance', 'admin')),
    token_hash text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    deleted_at timestamptz,
    CONSTRAINT operators_name_format CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    -- Actors the server writes itself: the break-glass token and failed
    -- authentications.
    CONSTRAINT operators_name_not_reserved CHECK (name NOT IN ('root', 'unknown'))
);

-- The audit log: who changed what, when, from where. Rows are written by
-- exchange_store::audit::append only, in the transaction of the change
-- they record, one at a time (an advisory lock serialises writers), each
-- linked to the one before by `prev_hash` and sealed by `hash`:
--   hash = hex(sha256(prev_hash || canonical JSON of the row without
--          prev_hash and hash))
-- so changing, removing or inserting a row breaks the chain
-- (`exchange admin audit verify`). The first row's prev_hash is 64 zeros.
CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    -- Unix milliseconds, as the API shows it (and hashes it).
    time       bigint NOT NULL,
    actor      text NOT NULL,
    action     text NOT NULL,
    target     text NOT NULL,
    -- `json`, not `jsonb`: the text is kept exactly as it was hashed.
    details    json NOT NULL,
    request_id text NOT NULL,
    ip         text,
    prev_hash  text NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    hash       text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT audit_log_details_object CHECK (json_typeof(details) = 'object'),
    -- One successor per row: the chain can never fork, whatever a writer
    -- gets wrong.
    CONSTRAINT audit_log_prev_hash_key UNIQUE (prev_hash)
);

-- History is never rewritten, by the application or by mistake: UPDATE,
-- DELETE and TRUNCATE are refused for every role (superusers included,
-- unless they disable triggers: the hash chain is what catches that).
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Deposits by operators name their reference (required by the API from
-- now on); bounded so the UNIQUE index on it stays small. NOT VALID: rows
-- from before are not checked, every new one is.
ALTER TABLE deposits
    ADD CONSTRAINT deposits_reference_length CHECK (char_length(reference) <= 128) NOT VALID;
