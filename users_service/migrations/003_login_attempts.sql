-- Sign-in attempts per email since the last success, within a window that starts at the first one:
-- the per-account throttle of POST /api/auth/token. Keyed by email, not user id, so an unknown email
-- is throttled exactly like a known one (the answers never tell whether an account exists). In the
-- database, not in process memory, so every replica counts against the same limit.
CREATE TABLE login_attempts (
    email text PRIMARY KEY CHECK (email = lower(email)),
    attempts integer NOT NULL CHECK (attempts > 0),
    window_started_at timestamptz NOT NULL DEFAULT now()
);
