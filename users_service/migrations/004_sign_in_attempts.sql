-- Failed sign-ins counted per email AND client (an IPv4 address or an IPv6 /64, as the gateway found
-- it), within a window that starts at the first attempt: the throttle of POST /api/auth/token.
-- Counted per email alone (login_attempts, 003), a stranger's five wrong passwords locked the owner
-- out for the whole window; now they lock out only the stranger's own address. A guesser gets
-- LOGIN_MAX_FAILURES tries per account, address and window, within the gateway's per-client limit
-- on sign-ins.
--
-- Keyed by email, not user id, so an unknown email is throttled exactly like a known one (the answers
-- never tell whether an account exists). In the database, not in process memory, so every replica
-- counts against the same limit. Rows whose window has ended are deleted by every replica now and
-- then (users_service/app.py), a bounded batch at a time.
--
-- A new table rather than a changed key: during a rolling update the previous release still counts
-- in login_attempts, and keeps working. Drop login_attempts one release later.
CREATE TABLE sign_in_attempts (
    email text NOT NULL CHECK (email = lower(email)),
    client text NOT NULL,
    attempts integer NOT NULL CHECK (attempts > 0),
    window_started_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (email, client)
);

-- For the purge: the oldest windows first, without reading the whole table.
CREATE INDEX sign_in_attempts_window_started_at ON sign_in_attempts (window_started_at);
