-- The balanced-journal check, once per journal instead of once per posting.
--
-- 0001's deferred constraint trigger ran for every posting row at commit and
-- summed that row's whole journal each time: quadratic in the journal's size
-- and the largest single cost of a clearing commit. The guarantee stays the
-- same — a journal whose postings do not sum to zero per asset can never
-- commit — but the work is now:
--
-- 1. a statement-level AFTER INSERT/UPDATE trigger on ledger_postings (with a
--    transition table) records each journal the statement touched in
--    ledger_journals_pending, one row per journal (ON CONFLICT DO NOTHING);
--    in the same set-based pass it checks that every posting's user and
--    asset exist (this replaces the two per-row foreign keys below);
-- 2. a deferred constraint trigger on ledger_journals_pending checks that
--    journal once at commit (or at SET CONSTRAINTS … IMMEDIATE) and deletes
--    its pending row, so postings added to the same journal afterwards queue
--    a new check.
--
-- ledger_postings keeps its foreign key to ledger_journal (the journal row
-- is the transaction's own). The per-row foreign keys to users and assets
-- are replaced by the statement-level existence check: neither users with
-- ledger history nor assets are ever deleted (balances, markets and
-- deposits reference them with restricting foreign keys), and the per-row
-- checks each took a KEY SHARE lock on the same few assets rows from every
-- settling transaction.

CREATE UNLOGGED TABLE ledger_journals_pending (
    journal_id bigint PRIMARY KEY
);

CREATE FUNCTION ledger_journal_pending_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced record;
BEGIN
    SELECT asset, sum(amount) AS total INTO unbalanced
    FROM ledger_postings
    WHERE journal_id = NEW.journal_id
    GROUP BY asset
    HAVING sum(amount) <> 0
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger journal % is unbalanced in %: postings sum to %',
            NEW.journal_id, unbalanced.asset, unbalanced.total
            USING ERRCODE = 'check_violation';
    END IF;
    DELETE FROM ledger_journals_pending WHERE journal_id = NEW.journal_id;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER ledger_journals_pending_balanced
    AFTER INSERT ON ledger_journals_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_journal_pending_check();

CREATE FUNCTION ledger_postings_touched() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.user_id, n.asset INTO bad
    FROM new_postings n
    WHERE NOT EXISTS (SELECT 1 FROM assets a WHERE a.symbol = n.asset)
       OR (n.user_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = n.user_id))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger posting refers to a missing user % or asset %', bad.user_id, bad.asset
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    INSERT INTO ledger_journals_pending (journal_id)
    SELECT DISTINCT journal_id FROM new_postings
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE TRIGGER ledger_postings_touched_insert
    AFTER INSERT ON ledger_postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_touched();

CREATE TRIGGER ledger_postings_touched_update
    AFTER UPDATE ON ledger_postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_touched();

DROP TRIGGER ledger_postings_balanced ON ledger_postings;
DROP FUNCTION ledger_journal_balanced();

ALTER TABLE ledger_postings DROP CONSTRAINT ledger_postings_user_id_fkey;
ALTER TABLE ledger_postings DROP CONSTRAINT ledger_postings_asset_fkey;
