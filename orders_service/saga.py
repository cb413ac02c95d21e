"""orders_service's side of the order saga, as pure decisions: no I/O, so every case is testable.

    PENDING ──credit reserved──▶ APPROVED ──cancel──▶ CANCELLED
       │  └──credit rejected──▶ REJECTED
       └──────────cancel──────────────────────────▶ CANCELLED

An answer about credit that finds the order no longer PENDING changes nothing: the order was
cancelled meanwhile, and users_service releases (or never takes) the credit when it hears of it.
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


@dataclasses.dataclass(frozen=True)
class Transition:
    """The order's new status (and reason), and the event that announces it."""

    status: OrderStatus
    event: Event
    rejection_reason: str | None = None


class NotCancellable(Exception):
    def __init__(self, status: OrderStatus) -> None:
        super().__init__(f"an order in status {status} cannot be cancelled")
        self.status = status


def on_credit_reserved(order_id: uuid.UUID, user_id: uuid.UUID, status: OrderStatus) -> Transition | None:
    if status is not OrderStatus.PENDING:
        return None
    return Transition(OrderStatus.APPROVED, OrderApproved(order_id, user_id))


def on_credit_rejected(
    order_id: uuid.UUID, user_id: uuid.UUID, status: OrderStatus, reason: str
) -> Transition | None:
    if status is not OrderStatus.PENDING:
        return None
    return Transition(OrderStatus.REJECTED, OrderRejected(order_id, user_id, reason), rejection_reason=reason)


def cancel(order_id: uuid.UUID, user_id: uuid.UUID, status: OrderStatus) -> Transition | None:
    """The cancel transition; None if the order is already cancelled (cancelling is idempotent)."""
    if status is OrderStatus.CANCELLED:
        return None
    if status not in CANCELLABLE:
        raise NotCancellable(status)
    return Transition(OrderStatus.CANCELLED, OrderCancelled(order_id, user_id, status.value))
