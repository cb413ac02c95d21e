-- What the relay needs to publish a row besides its body, in columns of their own: the message's
-- correlation id, the trace context it was written in, and the subject its log line names. The relay
-- sends the body as it is and never parses the JSON it stored (shared/relay.py).
ALTER TABLE outbox
    ADD COLUMN correlation_id text,
    ADD COLUMN traceparent text,
    ADD COLUMN subject text;

-- Rows still waiting from before: the same fields, read once from their bodies. A body that is not
-- JSON keeps NULLs, which the relay takes for a row it cannot publish, and sets aside for an operator.
DO $$
DECLARE
    waiting record;
    envelope jsonb;
BEGIN
    FOR waiting IN SELECT id, body FROM outbox WHERE published_at IS NULL LOOP
        BEGIN
            envelope := waiting.body::jsonb;
        EXCEPTION WHEN others THEN
            CONTINUE;
        END;
        UPDATE outbox
        SET correlation_id = envelope ->> 'correlationid',
            traceparent = envelope ->> 'traceparent',
            subject = CASE
                WHEN jsonb_typeof(envelope -> 'data' -> 'order_id') = 'string'
                    THEN 'order:' || (envelope -> 'data' ->> 'order_id')
                WHEN jsonb_typeof(envelope -> 'data' -> 'user_id') = 'string'
                    THEN 'user:' || (envelope -> 'data' ->> 'user_id')
            END
        WHERE id = waiting.id;
    END LOOP;
END
$$;
