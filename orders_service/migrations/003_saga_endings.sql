-- Every saga ends (orders_service/deadlines.py).
--
-- An order that is still PENDING when its deadline passes is rejected by the system; the partial
-- index finds those without reading the decided ones.
--
-- An order that ends without users_service having said so (cancelled, or rejected by its deadline)
-- waits for users_service to answer that it holds no credit for it any more: `credit_settled_at`
-- stays empty until then, and the end is announced again (`announced_at`) until it comes, so a
-- cancel that was lost on the way (dead-lettered, say) still releases its credit. `cancelled_from`
-- is what the order was when it was cancelled, which the announcement repeats. `correlation_id` is
-- the story the order belongs to (the X-Request-ID that placed it): what the system decides on its
-- own later is told in the same story, in the logs and on the flow page.
ALTER TABLE orders
    ADD COLUMN correlation_id text,
    ADD COLUMN credit_settled_at timestamptz,
    ADD COLUMN announced_at timestamptz,
    ADD COLUMN cancelled_from text CHECK (cancelled_from IN ('PENDING', 'APPROVED'));

-- The orders that exist already were settled by the saga as it was.
UPDATE orders SET credit_settled_at = updated_at WHERE status <> 'PENDING';

CREATE INDEX orders_pending_by_age ON orders (created_at) WHERE status = 'PENDING';
CREATE INDEX orders_unsettled ON orders (announced_at)
    WHERE credit_settled_at IS NULL AND status IN ('CANCELLED', 'REJECTED');
