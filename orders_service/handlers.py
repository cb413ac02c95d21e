"""orders_service's event handlers: load the order, let `saga` decide, store the decision.

Each runs inside the consumer's transaction (inbox, change, outbox together), holding the order's
row lock, so a credit answer and a concurrent cancel of the same order are taken one at a time.
"""

import functools
import uuid

from orders_service import db, saga
from orders_service.metrics import SagaMetrics
from shared.consumer import HandlerTable
from shared.events import CreditRejected, CreditReserved
from shared.unit_of_work import UnitOfWork


class UnknownOrder(Exception):
    """An answer about an order this service never stored: retried, then dead-lettered for a human."""


async def on_credit_reserved(metrics: SagaMetrics, work: UnitOfWork, reserved: CreditReserved) -> None:
    status = await _lock(work, reserved.order_id)
    transition = saga.on_credit_reserved(reserved.order_id, reserved.user_id, status)
    await _store(metrics, work, status, reserved.order_id, transition)


async def on_credit_rejected(metrics: SagaMetrics, work: UnitOfWork, rejected: CreditRejected) -> None:
    status = await _lock(work, rejected.order_id)
    transition = saga.on_credit_rejected(rejected.order_id, rejected.user_id, status, rejected.reason)
    await _store(metrics, work, status, rejected.order_id, transition)


async def _lock(work: UnitOfWork, order_id: uuid.UUID) -> saga.OrderStatus:
    status = await db.lock_status(work.connection, order_id)
    if status is None:
        raise UnknownOrder(order_id)
    return saga.OrderStatus(status)


async def _store(
    metrics: SagaMetrics,
    work: UnitOfWork,
    previous: saga.OrderStatus,
    order_id: uuid.UUID,
    transition: saga.Transition | None,
) -> None:
    if transition is None:
        return
    order = await db.set_status(work.connection, order_id, transition.status, transition.rejection_reason)
    await work.emit(transition.event)
    metrics.transitioned(work, previous, order)


def handler_table(metrics: SagaMetrics) -> HandlerTable:
    """What orders_service reacts to; the handlers time the saga with this app's `metrics`."""
    return {
        CreditReserved: functools.partial(on_credit_reserved, metrics),
        CreditRejected: functools.partial(on_credit_rejected, metrics),
    }
