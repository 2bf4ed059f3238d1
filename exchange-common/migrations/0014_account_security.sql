-- Account security: sessions that end, a second factor (TOTP), frozen
-- accounts and API keys that expire (docs/API.md, "Account security").

-- One row per login. An access token names its session (`sid`), and is
-- accepted only while that row has no `ended_at`: a logout ends one row,
-- logout-all, a password or 2FA change and a freeze end all of a user's.
CREATE TABLE user_sessions (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    ended_at   timestamptz,
    end_reason text,
    ip         text
);
CREATE INDEX user_sessions_open_idx ON user_sessions (user_id) WHERE ended_at IS NULL;
CREATE INDEX user_sessions_user_expiry_idx ON user_sessions (user_id, expires_at);

ALTER TABLE users
    -- Set by an operator; a frozen user cannot log in, trade or withdraw.
    ADD COLUMN frozen_at timestamptz,
    ADD COLUMN frozen_reason text,
    -- Bumped whenever all of a user's sessions end, so private WebSocket
    -- sessions opened with an API key before that end too.
    ADD COLUMN session_epoch bigint NOT NULL DEFAULT 0,
    -- The TOTP secret, encrypted like API-key secrets (ChaCha20-Poly1305,
    -- the user id as associated data). Present and `totp_enabled_at` NULL:
    -- enrolled, waiting for the first code.
    ADD COLUMN totp_secret_nonce bytea,
    ADD COLUMN totp_secret_ciphertext bytea,
    ADD COLUMN totp_enabled_at timestamptz,
    -- The 30 s time step of the last code accepted: a code is accepted only
    -- for a later step, so none is ever accepted twice.
    ADD COLUMN totp_last_step bigint,
    ADD CONSTRAINT users_frozen_reason_length CHECK (char_length(frozen_reason) <= 512);

-- Single-use recovery codes, stored as SHA-256 (they are 80-bit random
-- strings, so a fast hash does not make them guessable).
CREATE TABLE totp_recovery_codes (
    user_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash text NOT NULL,
    used_at   timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;

-- Wrong second-factor codes in the current window: at five, further codes
-- are refused for a while, so a code cannot be guessed (10^6 of them) by
-- trying from many addresses.
ALTER TABLE users
    ADD COLUMN totp_failed_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN totp_failed_since timestamptz;
