"""users_service's side of the order saga, as pure decisions: no I/O, so every case is testable.

A reservation (one per order) moves RESERVED → RELEASED, or is REJECTED. An order that ends before
its create arrives (cancelled, or rejected by its deadline) leaves a tombstone
(CANCELLED_BEFORE_CREATED), so the late create is refused and never reserves credit.

Every end of an order (orders.order.cancelled; orders.order.rejected when the system rejected it on
its own, by its deadline) is answered with what users_service holds for the order from then on:
nothing (users.credit.rejected) or a released reservation (users.credit.released). orders_service
announces an end until it has that answer, so an end can come more than once: the answer is the
same each time, and only the first releases anything. `handlers.py` loads the state, asks these
functions, and stores the answer.
"""

import dataclasses
import enum
import uuid

from shared.events import (
    CreditRejected,
    CreditReleased,
    CreditReserved,
    Event,
    OrderCancelled,
    OrderCreated,
    OrderRejected,
)


class ReservationStatus(enum.StrEnum):
    RESERVED = "RESERVED"
    RELEASED = "RELEASED"
    REJECTED = "REJECTED"
    CANCELLED_BEFORE_CREATED = "CANCELLED_BEFORE_CREATED"


DEADLINE_EXCEEDED = "deadline_exceeded"  # orders_service's reason for an order it ended on its own


class RejectionReason(enum.StrEnum):
    INSUFFICIENT_CREDIT = "insufficient_credit"
    UNKNOWN_USER = "unknown_user"
    ORDER_CANCELLED = "order_cancelled"


@dataclasses.dataclass(frozen=True)
class Account:
    user_id: uuid.UUID
    credit_limit_cents: int
    credit_used_cents: int


@dataclasses.dataclass(frozen=True)
class Reservation:
    order_id: uuid.UUID
    user_id: uuid.UUID
    amount_cents: int
    status: ReservationStatus


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to store and say: the reservation's new state, the change to credit used, the event."""

    reservation: Reservation | None = None
    credit_change_cents: int = 0
    event: Event | None = None


NOTHING_TO_DO = Decision()


def on_order_created(
    account: Account | None, existing: Reservation | None, created: OrderCreated
) -> Decision:
    if existing is not None:
        if existing.status is ReservationStatus.CANCELLED_BEFORE_CREATED:
            return _reject(created, RejectionReason.ORDER_CANCELLED)
        return NOTHING_TO_DO  # this order was decided already
    if account is None:
        return _reject(created, RejectionReason.UNKNOWN_USER)
    if account.credit_used_cents + created.total_cents > account.credit_limit_cents:
        return _reject(created, RejectionReason.INSUFFICIENT_CREDIT)
    return Decision(
        reservation=Reservation(
            created.order_id, created.user_id, created.total_cents, ReservationStatus.RESERVED
        ),
        credit_change_cents=created.total_cents,
        event=CreditReserved(created.order_id, created.user_id, created.total_cents),
    )


def on_order_cancelled(existing: Reservation | None, cancelled: OrderCancelled) -> Decision:
    return _on_order_ended(existing, cancelled.order_id, cancelled.user_id)


def on_order_rejected(existing: Reservation | None, rejected: OrderRejected) -> Decision:
    if rejected.reason != DEADLINE_EXCEEDED:
        return NOTHING_TO_DO  # rejected on our own answer, which holds nothing for it
    return _on_order_ended(existing, rejected.order_id, rejected.user_id)


def _on_order_ended(existing: Reservation | None, order_id: uuid.UUID, user_id: uuid.UUID) -> Decision:
    """The order ended without credit: release what is held, refuse what is yet to come, and say so."""
    if existing is None:
        # The end overtook the create: remember it, so that the create is refused when it comes.
        return Decision(
            reservation=Reservation(order_id, user_id, 0, ReservationStatus.CANCELLED_BEFORE_CREATED),
            event=CreditRejected(order_id, user_id, RejectionReason.ORDER_CANCELLED.value),
        )
    if existing.status is ReservationStatus.RESERVED:
        return Decision(
            reservation=dataclasses.replace(existing, status=ReservationStatus.RELEASED),
            credit_change_cents=-existing.amount_cents,
            event=CreditReleased(existing.order_id, existing.user_id, existing.amount_cents),
        )
    if existing.status is ReservationStatus.RELEASED:
        # Said before; said again, for an orders_service that did not hear it (it asks again).
        return Decision(event=CreditReleased(order_id, user_id, existing.amount_cents))
    # Rejected, or a tombstone already: nothing is held.
    return Decision(event=CreditRejected(order_id, user_id, RejectionReason.ORDER_CANCELLED.value))


def _reject(created: OrderCreated, reason: RejectionReason) -> Decision:
    return Decision(
        reservation=Reservation(created.order_id, created.user_id, 0, ReservationStatus.REJECTED),
        event=CreditRejected(created.order_id, created.user_id, reason.value),
    )
