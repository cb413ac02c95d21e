-- The transactional outbox: an event row commits in the same transaction as the state change that
-- caused it, and the relay publishes it afterwards. `id` gives the publishing order.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    event_type text NOT NULL,
    body text NOT NULL, -- the CloudEvents envelope, exactly as it is published
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

-- The relay only ever looks for unpublished rows; this index holds just those.
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- The inbox: the ids of the events this service has applied. A redelivered or duplicated event
-- finds its id here and is skipped, so its effect is applied once.
CREATE TABLE inbox (
    event_id uuid PRIMARY KEY,
    event_type text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
