-- Every replay or drop of a dead-lettered stream entry, by `exchange admin dlq`:
-- who did what to which entry, and the error it had, kept for audits.
CREATE TABLE dlq_audit (
    id          bigserial PRIMARY KEY,
    action      text NOT NULL CHECK (action IN ('replay', 'drop')),
    stream      text NOT NULL,
    dlq_entry   text NOT NULL,
    original_id text,
    new_id      text,
    error       text,
    operator    text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dlq_audit_stream_idx ON dlq_audit (stream, at DESC);
