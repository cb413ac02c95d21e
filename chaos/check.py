"""The history held against what the system holds once it has settled.

Each order the clients placed carries its operation's key in its correlation id (chaos-<key>, the
X-Request-ID of every attempt), so the orders an operation placed are found whatever its answer was,
or whether one came at all:

    place ok       exactly one order, the one the answer named, at its product's price
    place unknown  at most one order (a retry with the same Idempotency-Key that succeeded counts once)
    place failed   no order
    cancel ok      the order is CANCELLED
    cancel failed  (every cancel of the order failed) the order is not CANCELLED

Anything else is an anomaly: **lost** (an ok operation whose effect is missing), **doubled** (an
effect applied twice: an operation that placed two orders, or an order placed, approved or its
credit reserved twice), or **phantom** (an effect with no operation to answer for it: a failed one
that took effect, or an order nobody placed). The invariants I1 to I4 are checked besides
(devstack/invariants.py), and the time each order took to be decided is measured from its events.
"""

import collections
import dataclasses
import enum
import statistics

import asyncpg

from chaos.history import Kind, Operation, Outcome
from chaos.load import STORY_PREFIX
from devstack.invariants import SystemState, effects_applied_twice, subject_of

DECISIONS = ("orders.order.approved", "orders.order.rejected", "orders.order.cancelled")
DEADLINE_EXCEEDED = "deadline_exceeded"


class Anomaly(enum.StrEnum):
    LOST = "lost"
    DOUBLED = "doubled"
    PHANTOM = "phantom"


@dataclasses.dataclass(frozen=True)
class Finding:
    anomaly: Anomaly
    detail: str


async def placed_orders(orders_dsn: str) -> list[asyncpg.Record]:
    """Every order with its correlation id, which names the operation that placed it."""
    connection = await asyncpg.connect(orders_dsn)
    try:
        return await connection.fetch("SELECT id, status, total_cents, correlation_id FROM orders")
    finally:
        await connection.close()


def check_history(
    history: list[Operation], orders: list[asyncpg.Record], state: SystemState
) -> list[Finding]:
    findings = _check_places(history, orders)
    findings += _check_cancels(history, orders)
    findings += [Finding(Anomaly.DOUBLED, detail) for detail in effects_applied_twice(state)]
    return findings


def _check_places(history: list[Operation], orders: list[asyncpg.Record]) -> list[Finding]:
    by_key: dict[str, list[asyncpg.Record]] = collections.defaultdict(list)
    for order in orders:
        by_key[(order["correlation_id"] or "").removeprefix(STORY_PREFIX)].append(order)
    findings = []
    places = {operation.key: operation for operation in history if operation.kind is Kind.PLACE}
    for key, operation in places.items():
        found = by_key.get(key, [])
        outcome = operation.outcome
        if len(found) > 1:
            ids = ", ".join(str(order["id"]) for order in found)
            findings.append(
                Finding(Anomaly.DOUBLED, f"place {key} ({outcome}) placed {len(found)} orders: {ids}")
            )
        elif outcome is Outcome.OK and not found:
            findings.append(
                Finding(Anomaly.LOST, f"place {key} was answered {operation.order_id}, which is missing")
            )
        elif outcome is Outcome.OK and (
            str(found[0]["id"]) != operation.order_id or found[0]["total_cents"] != operation.total_cents
        ):
            findings.append(
                Finding(
                    Anomaly.LOST,
                    f"place {key} was answered {operation.order_id} for {operation.total_cents} cents,"
                    f" but its order is {found[0]['id']} for {found[0]['total_cents']}",
                )
            )
        elif outcome is Outcome.FAILED and found:
            findings.append(Finding(Anomaly.PHANTOM, f"place {key} failed, yet placed {found[0]['id']}"))
    findings += [
        Finding(
            Anomaly.PHANTOM, f"order {order['id']} ({order['correlation_id']}) was placed by no operation"
        )
        for key, found in by_key.items()
        if key not in places
        for order in found
    ]
    return findings


def _check_cancels(history: list[Operation], orders: list[asyncpg.Record]) -> list[Finding]:
    status = {str(order["id"]): order["status"] for order in orders}
    cancels: dict[str, list[Operation]] = collections.defaultdict(list)
    for operation in history:
        if operation.kind is Kind.CANCEL and operation.order_id is not None:
            cancels[operation.order_id].append(operation)
    findings = []
    for order_id, operations in cancels.items():
        outcomes = {operation.outcome for operation in operations}
        if Outcome.OK in outcomes and status.get(order_id) != "CANCELLED":
            findings.append(
                Finding(Anomaly.LOST, f"cancel of {order_id} was ok, but the order is {status.get(order_id)}")
            )
        if outcomes == {Outcome.FAILED} and status.get(order_id) == "CANCELLED":
            findings.append(
                Finding(Anomaly.PHANTOM, f"every cancel of {order_id} failed, yet it is CANCELLED")
            )
    return findings


@dataclasses.dataclass(frozen=True)
class Decisions:
    """How long orders took from their acceptance to their decision (approved, rejected or
    cancelled: the first of their events that says so), by the database's clock."""

    decided: int
    median: float
    p99: float
    longest: float
    longest_order: str
    by_deadline: int  # rejected by the system at their deadline: no answer came in time


def decision_times(state: SystemState) -> Decisions:
    first: dict[str, float] = {}
    for row in state.orders_outbox:
        if row["event_type"] in DECISIONS:
            order = subject_of(row["data"])
            at = row["created_at"].timestamp()
            first[order] = min(first.get(order, at), at)
    waits = {
        str(order["id"]): first[str(order["id"])] - order["created_at"].timestamp()
        for order in state.orders
        if str(order["id"]) in first
    }
    by_deadline = sum(order["rejection_reason"] == DEADLINE_EXCEEDED for order in state.orders)
    if not waits:
        return Decisions(0, 0.0, 0.0, 0.0, "", by_deadline)
    longest_order = max(waits, key=lambda order: waits[order])
    ordered = sorted(waits.values())
    return Decisions(
        decided=len(ordered),
        median=statistics.median(ordered),
        p99=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        longest=waits[longest_order],
        longest_order=longest_order,
        by_deadline=by_deadline,
    )
