-- Custody: deposits from a chain, withdrawals with an address book, limits
-- and four-eyes approval (the wallet service, exchange-wallet).
--
-- Ledger accounts added:
-- - `custody` (per asset, no user): minus what the exchange holds on chain
--   for it. A credited chain deposit moves +amount to the user and -amount
--   here; a confirmed payout moves +(amount + network fee) back here.
-- - `withdrawal_pending` (per user and asset): what a user's open
--   withdrawals hold. The hold journal moves amount + fee from `user` to
--   here; a release moves it back; a confirmed payout moves it out to
--   `custody` and `fees` (the withdrawal fee charged minus the network fee
--   paid, which may be negative: it is booked, never lost).
-- A user's available + locked is the ledger sum of their `user` and
-- `withdrawal_pending` postings (reconcile `ledger_matches_balances`).

-- Custody settings of an asset. `network` absent: an off-chain asset
-- (operator credits only, no deposit address, no withdrawal).
ALTER TABLE assets
    ADD COLUMN network text CHECK (network ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    ADD COLUMN contract text CHECK (char_length(contract) BETWEEN 1 AND 128),
    ADD COLUMN confirmations integer NOT NULL DEFAULT 1 CHECK (confirmations BETWEEN 1 AND 10000),
    ADD COLUMN withdraw_fee numeric NOT NULL DEFAULT 0 CHECK (withdraw_fee >= 0),
    ADD COLUMN withdraw_min numeric NOT NULL DEFAULT 0 CHECK (withdraw_min >= 0),
    -- at or below it a withdrawal is approved at once; above it two
    -- different operators must approve
    ADD COLUMN auto_approve_limit numeric NOT NULL DEFAULT 0 CHECK (auto_approve_limit >= 0),
    -- per user, over the last 24 hours, in the asset; NULL: no limit
    ADD COLUMN daily_withdraw_limit numeric CHECK (daily_withdraw_limit >= 0),
    -- the kill switch: false stops new withdrawals and new payouts at once
    ADD COLUMN withdrawals_enabled boolean NOT NULL DEFAULT true,
    ADD CONSTRAINT assets_contract_needs_network CHECK (contract IS NULL OR network IS NOT NULL);
CREATE UNIQUE INDEX assets_network_contract_key ON assets (network, coalesce(contract, ''))
    WHERE network IS NOT NULL;

-- The widened checks below are NOT VALID: every existing row met the
-- stricter check each replaces, so scanning the ledger (large, and locked
-- while scanned) would prove nothing; every new row is checked.
ALTER TABLE ledger_journal DROP CONSTRAINT ledger_journal_kind_check;
ALTER TABLE ledger_journal ADD CONSTRAINT ledger_journal_kind_check
    CHECK (kind IN ('deposit', 'withdrawal', 'withdrawal_hold', 'withdrawal_release', 'trade', 'fee', 'adjustment'))
    NOT VALID;

ALTER TABLE ledger_postings DROP CONSTRAINT ledger_postings_account_kind_check;
ALTER TABLE ledger_postings ADD CONSTRAINT ledger_postings_account_kind_check
    CHECK (account_kind IN ('user', 'deposits', 'fees', 'custody', 'withdrawal_pending')) NOT VALID;
ALTER TABLE ledger_postings DROP CONSTRAINT ledger_postings_user_account;
ALTER TABLE ledger_postings ADD CONSTRAINT ledger_postings_user_account
    CHECK ((account_kind IN ('user', 'withdrawal_pending')) = (user_id IS NOT NULL)) NOT VALID;

-- Deposit addresses, one per (user, network) once assigned. The manual
-- adapter hands out addresses an operator loaded from an external custody
-- system (user_id NULL until assigned); a deriving adapter stores the
-- derivation index it used.
CREATE TABLE deposit_addresses (
    id               bigserial PRIMARY KEY,
    network          text NOT NULL,
    address          text NOT NULL CHECK (char_length(address) BETWEEN 1 AND 128),
    user_id          bigint REFERENCES users (id),
    derivation_index bigint CHECK (derivation_index >= 0),
    assigned_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (network, address),
    CONSTRAINT deposit_addresses_assigned CHECK ((user_id IS NULL) = (assigned_at IS NULL))
);
CREATE UNIQUE INDEX deposit_addresses_user_network_key ON deposit_addresses (user_id, network)
    WHERE user_id IS NOT NULL;
CREATE INDEX deposit_addresses_free_idx ON deposit_addresses (network, id) WHERE user_id IS NULL;

-- Incoming transfers seen on a chain, one per (network, tx_hash, log_index):
-- pending until the asset's confirmations, then credited exactly once
-- (journal_id set in the crediting transaction); `reorged` when it left the
-- chain before that. A credited deposit that leaves the chain stays
-- credited (never silently debited) and freezes the user's withdrawals of
-- the asset (custody_freezes) until an operator decides.
CREATE TABLE chain_deposits (
    id                     bigserial PRIMARY KEY,
    user_id                bigint NOT NULL REFERENCES users (id),
    asset                  text NOT NULL REFERENCES assets (symbol),
    network                text NOT NULL,
    address                text NOT NULL,
    amount                 numeric NOT NULL CHECK (amount > 0),
    tx_hash                text NOT NULL CHECK (char_length(tx_hash) BETWEEN 1 AND 128),
    log_index              integer NOT NULL CHECK (log_index >= 0),
    block_number           bigint CHECK (block_number >= 0),
    block_hash             text CHECK (char_length(block_hash) <= 128),
    confirmations          integer NOT NULL CHECK (confirmations >= 0),
    required_confirmations integer NOT NULL CHECK (required_confirmations >= 1),
    status                 text NOT NULL CHECK (status IN ('pending', 'credited', 'reorged')),
    journal_id             bigint REFERENCES ledger_journal (id),
    reorged_after_credit   boolean NOT NULL DEFAULT false,
    credited_at            timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (network, tx_hash, log_index),
    CONSTRAINT chain_deposits_credited CHECK ((journal_id IS NOT NULL) = (credited_at IS NOT NULL)),
    CONSTRAINT chain_deposits_status_credit CHECK ((status = 'credited') <= (journal_id IS NOT NULL))
);
CREATE INDEX chain_deposits_user_idx ON chain_deposits (user_id, created_at DESC, id DESC);
CREATE INDEX chain_deposits_status_idx ON chain_deposits (status, id);

-- A user's withdrawal address book. A new entry is usable from
-- `usable_from` (created + WITHDRAWAL_ADDRESS_COOLDOWN_SECS), so a stolen
-- session cannot add an address and drain the account at once.
CREATE TABLE withdrawal_addresses (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id),
    asset       text NOT NULL REFERENCES assets (symbol),
    network     text NOT NULL,
    address     text NOT NULL CHECK (char_length(address) BETWEEN 1 AND 128),
    label       text NOT NULL DEFAULT '' CHECK (char_length(label) <= 64),
    usable_from timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX withdrawal_addresses_user_idx ON withdrawal_addresses (user_id, id);

CREATE TABLE withdrawals (
    id                   bigserial PRIMARY KEY,
    user_id              bigint NOT NULL REFERENCES users (id),
    client_withdrawal_id text CHECK (char_length(client_withdrawal_id) BETWEEN 1 AND 64),
    asset                text NOT NULL REFERENCES assets (symbol),
    network              text NOT NULL,
    address              text NOT NULL,
    amount               numeric NOT NULL CHECK (amount > 0),
    -- the withdrawal fee charged (held with the amount)
    fee                  numeric NOT NULL CHECK (fee >= 0),
    status               text NOT NULL CHECK (status IN ('pending_approval', 'approved', 'signing',
                             'broadcast', 'confirmed', 'rejected', 'canceled', 'failed')),
    -- approvals still needed (two above auto_approve_limit, none at or below)
    approvals_required   smallint NOT NULL CHECK (approvals_required BETWEEN 0 AND 2),
    tx_hash              text CHECK (char_length(tx_hash) BETWEEN 1 AND 128),
    -- what the payout cost on chain (known once confirmed)
    network_fee          numeric CHECK (network_fee >= 0),
    reason               text CHECK (char_length(reason) <= 512),
    hold_journal_id      bigint NOT NULL REFERENCES ledger_journal (id),
    -- the payout (confirmed) or the release (rejected, canceled, failed)
    final_journal_id     bigint REFERENCES ledger_journal (id),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT withdrawals_final CHECK (
        (status IN ('confirmed', 'rejected', 'canceled', 'failed')) = (final_journal_id IS NOT NULL))
);
CREATE UNIQUE INDEX withdrawals_user_client_id_key ON withdrawals (user_id, client_withdrawal_id)
    WHERE client_withdrawal_id IS NOT NULL;
CREATE INDEX withdrawals_user_idx ON withdrawals (user_id, created_at DESC, id DESC);
CREATE INDEX withdrawals_open_idx ON withdrawals (status, id)
    WHERE status IN ('pending_approval', 'approved', 'signing', 'broadcast');
-- the rolling daily limit sums a user's recent withdrawals of an asset
CREATE INDEX withdrawals_user_asset_recent_idx ON withdrawals (user_id, asset, created_at);

-- Who approved a withdrawal (the actor of the audit log: an operator's name
-- or `root`); one row per approver, so the same one twice is refused.
CREATE TABLE withdrawal_approvals (
    withdrawal_id bigint NOT NULL REFERENCES withdrawals (id),
    approver      text NOT NULL,
    approved_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (withdrawal_id, approver)
);

-- A user's withdrawals (of every asset: what the deposit credited may have
-- been traded) stopped because a credited deposit of `asset` left the
-- chain; lifted only by an operator.
CREATE TABLE custody_freezes (
    id             bigserial PRIMARY KEY,
    user_id        bigint NOT NULL REFERENCES users (id),
    asset          text NOT NULL REFERENCES assets (symbol),
    deposit_id     bigint NOT NULL REFERENCES chain_deposits (id),
    reason         text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    released_at    timestamptz,
    released_by    text,
    release_reason text CHECK (char_length(release_reason) <= 512),
    CONSTRAINT custody_freezes_released CHECK ((released_at IS NULL) = (released_by IS NULL))
);
CREATE UNIQUE INDEX custody_freezes_deposit_open_key ON custody_freezes (deposit_id) WHERE released_at IS NULL;
CREATE INDEX custody_freezes_open_idx ON custody_freezes (user_id, asset) WHERE released_at IS NULL;

-- Where a scanning chain adapter resumes (its own cursor format: a block
-- number and hash, …); written after the transfers it covers are recorded.
CREATE TABLE chain_cursors (
    network    text PRIMARY KEY,
    cursor     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- API keys may withdraw only when created with the `withdraw` permission,
-- which needs an IP allowlist (a leaked key alone cannot move money out)
-- and, with 2FA on, the second factor at creation.
ALTER TABLE api_keys
    ADD COLUMN can_withdraw boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT api_keys_withdraw_needs_allowlist CHECK (NOT can_withdraw OR cardinality(ip_allowlist) > 0);
