-- Idempotency-Key on POST /api/orders: one row per (user, key) names the order that key placed,
-- the fingerprint (sha256 of the canonical JSON) of the request that placed it, and the order as
-- the first response showed it, which a retry gets again.
--
-- The row is claimed first, in the same transaction as the order and its outbox row, so the
-- primary key is the lock: a concurrent request with the same key waits on it until the first
-- commits (and then replays or gets 409) or rolls back (and then places the order itself).
CREATE TABLE idempotency_keys (
    user_id uuid NOT NULL,
    key text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_sha256 bytea NOT NULL CHECK (length(request_sha256) = 32),
    -- Deferred: the key is claimed before the order it names is inserted.
    order_id uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    -- Filled in by the claiming transaction once the order exists, so NULL is never committed.
    placed_order jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);

-- Serves the periodic delete of expired keys.
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
