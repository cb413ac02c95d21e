-- A row the broker returned or refused, or that cannot be made into a message at all, must never hold
-- up the rows behind it. It waits until `retry_at`, longer after each attempt, with its error kept in
-- `last_error`; after too many attempts, or at once when it can never be published as it is, it is set
-- aside, and only an operator's retry puts it back (`make outbox SERVICE=...`, shared/parked.py).
ALTER TABLE outbox
    ADD COLUMN attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text,
    ADD COLUMN retry_at timestamptz,
    ADD COLUMN set_aside_at timestamptz;

DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL AND set_aside_at IS NULL;
