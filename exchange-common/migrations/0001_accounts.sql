-- Accounts, assets, markets, balances and the double-entry ledger.
--
-- Amounts are NUMERIC decimal values (e.g. 0.015 BTC), never floats; the
-- application converts them to integer units of the asset's scale at the edge.

CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    email         text NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_length CHECK (char_length(email) BETWEEN 3 AND 254)
);
-- Case-insensitive uniqueness: Alice@x and alice@x are one account.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

-- API keys for programmatic access (Binance-style HMAC signing). The secret
-- must be recoverable to verify signatures, so it is encrypted at rest
-- (ChaCha20-Poly1305, see exchange-gateway/src/keys.rs), never hashed.
CREATE TABLE api_keys (
    id                bigserial PRIMARY KEY,
    api_key           text NOT NULL UNIQUE,
    user_id           bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    label             text NOT NULL DEFAULT '',
    can_read          boolean NOT NULL DEFAULT true,
    can_trade         boolean NOT NULL DEFAULT false,
    ip_allowlist      text[] NOT NULL DEFAULT '{}',
    secret_nonce      bytea NOT NULL,
    secret_ciphertext bytea NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_used_at      timestamptz,
    CONSTRAINT api_keys_label_length CHECK (char_length(label) <= 64)
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id);

CREATE TABLE assets (
    symbol     text PRIMARY KEY CHECK (symbol ~ '^[A-Z0-9]{1,16}$'),
    scale      smallint NOT NULL CHECK (scale BETWEEN 0 AND 18),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE markets (
    symbol       text PRIMARY KEY,
    base         text NOT NULL REFERENCES assets (symbol),
    quote        text NOT NULL REFERENCES assets (symbol),
    price_tick   numeric NOT NULL CHECK (price_tick > 0),
    qty_step     numeric NOT NULL CHECK (qty_step > 0),
    min_qty      numeric NOT NULL CHECK (min_qty > 0),
    min_notional numeric NOT NULL CHECK (min_notional >= 0),
    maker_fee    numeric NOT NULL CHECK (maker_fee >= 0 AND maker_fee <= 1),
    taker_fee    numeric NOT NULL CHECK (taker_fee >= 0 AND taker_fee <= 1),
    status       text NOT NULL DEFAULT 'trading' CHECK (status IN ('trading', 'halted')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT markets_symbol_is_base_quote CHECK (symbol = base || '-' || quote),
    CONSTRAINT markets_distinct_assets CHECK (base <> quote)
);

-- available + locked of a user is what the ledger says the user owns.
CREATE TABLE balances (
    user_id    bigint NOT NULL REFERENCES users (id),
    asset      text NOT NULL REFERENCES assets (symbol),
    available  numeric NOT NULL DEFAULT 0 CHECK (available >= 0),
    locked     numeric NOT NULL DEFAULT 0 CHECK (locked >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, asset)
);

-- Double-entry ledger. A journal entry groups postings; per journal entry
-- and asset the postings sum to zero (checked at commit by a deferred
-- constraint trigger, so a transaction can add its postings in any order).
-- Accounts: a user's holdings (`user`, with user_id), or system accounts:
-- `deposits` (the outside world: its balance is minus all deposits) and
-- `fees` (the exchange's fee income).
CREATE TABLE ledger_journal (
    id         bigserial PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('deposit', 'withdrawal', 'trade', 'fee', 'adjustment')),
    reference  text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger_postings (
    id           bigserial PRIMARY KEY,
    journal_id   bigint NOT NULL REFERENCES ledger_journal (id),
    account_kind text NOT NULL CHECK (account_kind IN ('user', 'deposits', 'fees')),
    user_id      bigint REFERENCES users (id),
    asset        text NOT NULL REFERENCES assets (symbol),
    amount       numeric NOT NULL CHECK (amount <> 0),
    CONSTRAINT ledger_postings_user_account CHECK ((account_kind = 'user') = (user_id IS NOT NULL))
);
CREATE INDEX ledger_postings_journal_idx ON ledger_postings (journal_id);
CREATE INDEX ledger_postings_user_asset_idx ON ledger_postings (user_id, asset) WHERE user_id IS NOT NULL;

CREATE FUNCTION ledger_journal_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
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
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER ledger_postings_balanced
    AFTER INSERT OR UPDATE ON ledger_postings
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_journal_balanced();

-- Postings are history: never rewritten.
CREATE FUNCTION ledger_postings_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger postings are append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER ledger_postings_no_update_delete
    BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_postings_append_only();

-- Deposits credited by the admin API (the stand-in for a wallet service).
-- `reference`, when given, makes a deposit idempotent.
CREATE TABLE deposits (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id),
    asset      text NOT NULL REFERENCES assets (symbol),
    amount     numeric NOT NULL CHECK (amount > 0),
    reference  text UNIQUE,
    journal_id bigint NOT NULL REFERENCES ledger_journal (id),
    created_at timestamptz NOT NULL DEFAULT now()
);
