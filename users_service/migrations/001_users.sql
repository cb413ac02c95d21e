CREATE TABLE users (
    id uuid PRIMARY KEY,
    -- stored lower-cased, so the unique constraint is case-insensitive
    email text NOT NULL UNIQUE CHECK (email = lower(email)),
    name text NOT NULL,
    password_hash text NOT NULL,
    credit_limit_cents bigint NOT NULL CHECK (credit_limit_cents >= 0),
    -- the database itself refuses to over-reserve credit, whatever the code does
    credit_used_cents bigint NOT NULL DEFAULT 0
        CHECK (credit_used_cents >= 0 AND credit_used_cents <= credit_limit_cents),
    created_at timestamptz NOT NULL DEFAULT now()
);
