-- Retention (shared/retention.py) deletes the oldest rows by age; these indexes let it find them
-- without reading the tables whole. The outbox one holds only published rows: unpublished rows are
-- never pruned, and the relay has its own index for them.
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX inbox_received_at ON inbox (received_at);
