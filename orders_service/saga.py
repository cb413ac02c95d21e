"""orders_service's side of the order saga, as pure decisions: no I/O, so every case is testable.

    PENDING ──credit reserved──▶ APPROVED ──cancel──▶ CANCELLED
       │  └──credit rejected──▶ REJECTED
       │  └──deadline passed──▶ REJECTED (deadline_exceeded)
       └──────────cancel──────────────────────────▶ CANCELLED

Every saga ends: an order no answer has decided by its deadline is rejected by the system.

An answer about credit that finds the order no longer PENDING changes the order no more: it was
cancelled, or rejected by its deadline, meanwhile, and users_service releases (or never takes) the
credit when it hears of that end. Such an end is announced until users_service answers that it
holds no credit for the order (`credit_settled`): a reservation the end missed is still released.
"""

import dataclasses
import enum
import uuid

from shared.events import Event, OrderApproved, OrderCancelled, OrderRejected


class OrderStatus(enum.StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


CANCELLABLE = frozenset({OrderStatus.PENDING, OrderStatus.APPROVED})


DEADLINE_EXCEEDED = "deadline_exceeded"


@dataclasses.dataclass(frozen=True)
class Transition:
    """The order's new status (and reason), and the event that announces it. `credit_settled`: what
    users_service holds for the order is final (a reservation for an approved order, nothing for one
    it rejected); when not, the end is announced until users_service answers."""

    status: OrderStatus
    event: Event
    credit_settled: bool
    rejection_reason: str | None = None
    cancelled_from: OrderStatus | None = None


class NotCancellable(Exception):
    def __init__(self, status: OrderStatus) -> None:
        super().__init__(f"an order in status {status} cannot be cancelled")
        self.status = status


def on_credit_reserved(order_id: uuid.UUID, user_id: uuid.UUID, status: OrderStatus) -> Transition | None:
    if status is not OrderStatus.PENDING:
        return None
    return Transition(OrderStatus.APPROVED, OrderApproved(order_id, user_id), credit_settled=True)


def on_credit_rejected(
    order_id: uuid.UUID, user_id: uuid.UUID, status: OrderStatus, reason: str
) -> Transition | None:
    if status is not OrderStatus.PENDING:
        return None
    return Transition(
        OrderStatus.REJECTED,
        OrderRejected(order_id, user_id, reason),
        credit_settled=True,
        rejection_reason=reason,
    )


def on_deadline(order_id: uuid.UUID, user_id: uuid.UUID, status: OrderStatus) -> Transition | None:
    """No answer came in time: the system rejects the order, and waits for users_service to say
    that it holds no credit for it (it releases a reservation the answer was about)."""
    if status is not OrderStatus.PENDING:
        return None
    return Transition(
        OrderStatus.REJECTED,
        OrderRejected(order_id, user_id, DEADLINE_EXCEEDED),
        credit_settled=False,
        rejection_reason=DEADLINE_EXCEEDED,
    )


def announcement(
    order_id: uuid.UUID,
    user_id: uuid.UUID,
    status: OrderStatus,
    rejection_reason: str | None,
    cancelled_from: OrderStatus | None,
) -> Event:
    """The end of an order, again, for users_service, which has not answered it yet."""
    if status is OrderStatus.CANCELLED:
        return OrderCancelled(order_id, user_id, (cancelled_from or OrderStatus.PENDING).value)
    assert status is OrderStatus.REJECTED, status
    assert rejection_reason is not None, status
    return OrderRejected(order_id, user_id, rejection_reason)


def cancel(order_id: uuid.UUID, user_id: uuid.UUID, status: OrderStatus) -> Transition | None:
    """The cancel transition; None if the order is already cancelled (cancelling is idempotent)."""
    if status is OrderStatus.CANCELLED:
        return None
    if status not in CANCELLABLE:
        raise NotCancellable(status)
    return Transition(
        OrderStatus.CANCELLED,
        OrderCancelled(order_id, user_id, status.value),
        credit_settled=False,
        cancelled_from=status,
    )
