"""users_service's event handlers: load the state, let `saga` decide, store the decision.

Each runs inside the consumer's transaction (inbox, change, outbox together). Both lock the user's
account row first, so the decisions about one user's credit are taken one at a time, in the same
lock order everywhere (no deadlock).
"""

from shared.consumer import HandlerTable
from shared.events import OrderCancelled, OrderCreated, OrderRejected
from shared.unit_of_work import UnitOfWork
from users_service import db, saga


async def on_order_created(work: UnitOfWork, created: OrderCreated) -> None:
    account = await db.lock_account(work.connection, created.user_id)
    existing = await db.lock_reservation(work.connection, created.order_id)
    await _store(work, saga.on_order_created(account, existing, created))


async def on_order_cancelled(work: UnitOfWork, cancelled: OrderCancelled) -> None:
    await db.lock_account(work.connection, cancelled.user_id)
    existing = await db.lock_reservation(work.connection, cancelled.order_id)
    await _store(work, saga.on_order_cancelled(existing, cancelled))


async def on_order_rejected(work: UnitOfWork, rejected: OrderRejected) -> None:
    await db.lock_account(work.connection, rejected.user_id)
    existing = await db.lock_reservation(work.connection, rejected.order_id)
    await _store(work, saga.on_order_rejected(existing, rejected))


async def _store(work: UnitOfWork, decision: saga.Decision) -> None:
    if decision.reservation is not None:
        await db.save_reservation(work.connection, decision.reservation)
    if decision.credit_change_cents:
        assert decision.reservation is not None
        await db.change_credit_used(
            work.connection, decision.reservation.user_id, decision.credit_change_cents
        )
    if decision.event is not None:
        await work.emit(decision.event)


HANDLERS: HandlerTable = {
    OrderCreated: on_order_created,
    OrderCancelled: on_order_cancelled,
    OrderRejected: on_order_rejected,
}
