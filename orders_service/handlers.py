"""orders_service's event handlers: load the order, let `saga` decide, store the decision.

Each runs inside the consumer's transaction (inbox, change, outbox together), holding the order's
row lock, so a credit answer and a concurrent cancel of the same order are taken one at a time.
"""

import functools
import uuid

from orders_service import db, saga, services
from orders_service.metrics import SagaMetrics
from shared.consumer import HandlerTable
from shared.events import CreditRejected, CreditReleased, CreditReserved
from shared.unit_of_work import UnitOfWork


class UnknownOrder(Exception):
    """An answer about an order this service never stored: retried, then dead-lettered for a human."""


async def on_credit_reserved(metrics: SagaMetrics, work: UnitOfWork, reserved: CreditReserved) -> None:
    status = await _lock(work, reserved.order_id)
    transition = saga.on_credit_reserved(reserved.order_id, reserved.user_id, status)
    await services.apply(metrics, work, status, reserved.order_id, transition)


async def on_credit_rejected(metrics: SagaMetrics, work: UnitOfWork, rejected: CreditRejected) -> None:
    status = await _lock(work, rejected.order_id)
    transition = saga.on_credit_rejected(rejected.order_id, rejected.user_id, status, rejected.reason)
    await services.apply(metrics, work, status, rejected.order_id, transition)
    if transition is None:
        # The order had ended otherwise: users_service holds no credit for it.
        await db.note_credit_settled(work.connection, rejected.order_id)


async def on_credit_released(work: UnitOfWork, released: CreditReleased) -> None:
    await _lock(work, released.order_id)
    await db.note_credit_settled(work.connection, released.order_id)


async def _lock(work: UnitOfWork, order_id: uuid.UUID) -> saga.OrderStatus:
    status = await db.lock_status(work.connection, order_id)
    if status is None:
        raise UnknownOrder(order_id)
    return saga.OrderStatus(status)


def handler_table(metrics: SagaMetrics) -> HandlerTable:
    """What orders_service reacts to; the handlers time the saga with this app's `metrics`."""
    return {
        CreditReserved: functools.partial(on_credit_reserved, metrics),
        CreditRejected: functools.partial(on_credit_rejected, metrics),
        CreditReleased: on_credit_released,
    }
