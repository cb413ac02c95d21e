-- Rate limits shared by every gateway replica: one token bucket per (limit, client).
--
-- UNLOGGED: written on every lease, and worth nothing after a crash (buckets that come back full
-- are what a restart means anyway), so not worth a WAL record each.
CREATE UNLOGGED TABLE rate_limit_buckets (
    bucket text PRIMARY KEY,            -- "<limit>:<client>", e.g. "requests:203.0.113.7"
    tokens double precision NOT NULL,   -- as of refilled_at
    refilled_at timestamptz NOT NULL
);

-- Take up to `want` whole tokens from a bucket in one atomic step: refill it for the time since it
-- was last touched (never above `burst`), then hand out what is there. `granted` is how many were
-- taken; when none, `wait_seconds` is how long until the next one.
CREATE FUNCTION take_tokens(
    p_bucket text,
    p_want integer,
    p_burst double precision,
    p_rate double precision,
    OUT granted integer,
    OUT wait_seconds double precision
) LANGUAGE plpgsql AS $$
DECLARE
    available double precision;
BEGIN
    -- The upsert locks the row, so concurrent takes from other replicas queue behind this one.
    INSERT INTO rate_limit_buckets AS b (bucket, tokens, refilled_at)
    VALUES (p_bucket, p_burst, clock_timestamp())
    ON CONFLICT (bucket) DO UPDATE
        SET tokens = least(p_burst, b.tokens + extract(epoch FROM clock_timestamp() - b.refilled_at) * p_rate),
            refilled_at = clock_timestamp()
    RETURNING tokens INTO available;
    granted := least(p_want, floor(available))::integer;
    IF granted > 0 THEN
        UPDATE rate_limit_buckets SET tokens = available - granted WHERE bucket = p_bucket;
        wait_seconds := 0;
    ELSE
        wait_seconds := (1 - available) / p_rate;
    END IF;
END
$$;
