-- One row per order this service has heard of: its credit reservation, or why it has none.
-- No foreign key to users: an order may name a user who does not exist (it is then REJECTED).
CREATE TABLE credit_reservations (
    order_id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
    -- CANCELLED_BEFORE_CREATED is the tombstone a cancel leaves when it overtakes the create.
    status text NOT NULL CHECK (status IN ('RESERVED', 'RELEASED', 'REJECTED', 'CANCELLED_BEFORE_CREATED')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
