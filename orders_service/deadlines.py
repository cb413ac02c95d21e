"""Every saga ends: what orders_service decides on its own, now and then, in every replica.

- An order still PENDING when its deadline passes (SAGA_DEADLINE_SECONDS after it was placed) is
  rejected, with reason deadline_exceeded: its orders.order.created was dead-lettered, or
  users_service has been away too long, and the client is told rather than kept waiting. If
  users_service reserves credit for it after all, it releases the credit when it hears of the end.
- An order that ended without users_service's word about its credit (cancelled, or rejected by its
  deadline) is announced again, one deadline after the last time, until users_service answers that
  it holds no credit for it: a cancel that was lost on the way (dead-lettered, say) still has its
  reservation released. Announcing twice is harmless: users_service decides by the reservation's
  state, not by the event.

It runs here because orders_service owns the order and its deadline. It runs in every replica
because it is safe there: each order is decided in a transaction of its own that takes the order's
row lock (skipping an order whose lock another holds), the same lock a credit answer takes, and the
saga decides again under it: an order is decided once, by whichever comes first, a replica's sweep
or an answer from users_service. Each decision is told in the order's own story (its correlation
id), in the logs and on the flow page.
"""

import datetime

import asyncpg
import structlog
from aiohttp import web

from orders_service import db, saga, services
from orders_service.metrics import SAGA_METRICS, SagaMetrics
from shared.app_keys import DB_POOL, OUTBOX
from shared.envelope import Cause
from shared.periodic import CleanupContext, periodically
from shared.unit_of_work import Outbox, unit_of_work

log = structlog.get_logger("deadlines")

BATCH = 100  # orders looked at per run and kind; the next run takes the rest
WHO = "saga-deadline"  # the causation of what the system decides on its own


async def reject_overdue(
    pool: asyncpg.Pool, outbox: Outbox, metrics: SagaMetrics, deadline: datetime.timedelta
) -> int:
    """Reject the PENDING orders whose deadline has passed; how many it rejected."""
    rejected = 0
    for order in await db.overdue(pool, deadline, BATCH):
        async with unit_of_work(pool, outbox, _story_of(order)) as work:
            status = await db.lock_if_free(work.connection, order["id"])
            if status is None:
                continue
            transition = saga.on_deadline(order["id"], order["user_id"], saga.OrderStatus(status))
            if (
                await services.apply(metrics, work, saga.OrderStatus(status), order["id"], transition)
                is not None
            ):
                log.warning("saga deadline passed; order rejected", order=str(order["id"])[:8])
                rejected += 1
    return rejected


async def announce_unsettled(pool: asyncpg.Pool, outbox: Outbox, wait: datetime.timedelta) -> int:
    """Announce again the ends of orders that users_service has not answered; how many."""
    announced = 0
    for order in await db.unsettled(pool, wait, BATCH):
        async with unit_of_work(pool, outbox, _story_of(order)) as work:
            current = await db.lock_unsettled(work.connection, order["id"], wait)
            if current is None:
                continue
            cancelled_from = current["cancelled_from"]
            end = saga.announcement(
                order["id"],
                order["user_id"],
                saga.OrderStatus(current["status"]),
                current["rejection_reason"],
                saga.OrderStatus(cancelled_from) if cancelled_from else None,
            )
            await work.emit(end)
            await db.note_announced(work.connection, order["id"])
            log.warning("the end of an order not answered yet; announced again", order=str(order["id"])[:8])
            announced += 1
    return announced


def _story_of(order: asyncpg.Record) -> Cause:
    return Cause(correlation_id=order["correlation_id"] or WHO, causation_id=WHO)


def saga_deadlines(deadline: datetime.timedelta, every_seconds: float) -> CleanupContext:
    async def sweep(app: web.Application) -> None:
        await reject_overdue(app[DB_POOL], app[OUTBOX], app[SAGA_METRICS], deadline)
        await announce_unsettled(app[DB_POOL], app[OUTBOX], deadline)

    return periodically("saga deadlines", every_seconds, sweep)
