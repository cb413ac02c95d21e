"""The design's invariants, checked against the real databases and broker once the system is quiet:
by the end-to-end tests (tests/e2e/saga_checker.py) and by the chaos run (chaos/).

- I1 every order is in a final state or APPROVED; none stays PENDING;
- I2 for every user, credit_used_cents = the sum of total_cents of their APPROVED orders, and never
     exceeds credit_limit_cents (the CHECK constraint guards "not even for a moment");
- I3 no event's effect is applied twice;
- I4 no committed state change loses its event.

"Quiet" means nothing is in flight: no outbox row waits, no message waits in a consumer's queue, no
order is PENDING. "Settled" asks more: every order that ended without users_service's word about its
credit (cancelled, or rejected by its deadline) has had that word; until then, its end is announced
again now and then (orders_service/deadlines.py).
"""

import collections
import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
import asyncpg
import orjson

from devstack.stack import Stack
from devstack.waiting import eventually
from shared.bus_contract import bus
from shared.config import ServiceConfig
from shared.topology import queues_for

# The events that say something happened to an order that can happen only once: it was placed, its
# credit was reserved, it was approved. The others may rightly come again: an end of an order
# (cancelled, or rejected by its deadline) is announced until users_service answers, and each
# announcement is answered (released, or rejected for nothing held); a create that comes after the
# order's end is answered "rejected" a second time.
ONCE_PER_ORDER = ("orders.order.created", "orders.order.approved", "users.credit.reserved")


@dataclasses.dataclass(frozen=True)
class SystemState:
    orders: list[asyncpg.Record]
    users: list[asyncpg.Record]
    reservations: list[asyncpg.Record]
    orders_outbox: list[asyncpg.Record]
    users_outbox: list[asyncpg.Record]
    orders_inbox: set[uuid.UUID]
    users_inbox: set[uuid.UUID]
    queued: dict[str, int]  # messages waiting in each consumer's main and retry queues
    dead_letters: dict[str, int]  # messages set aside in each consumer's dead-letter queue


async def read_state(stack: Stack) -> SystemState:
    users_dsn, orders_dsn = stack.admin_dsn("users_service"), stack.admin_dsn("orders_service")
    users_db, orders_db = await asyncpg.connect(users_dsn), await asyncpg.connect(orders_dsn)
    try:
        outbox_query = """
            SELECT event_id, event_type, body::jsonb -> 'data' AS data, created_at, published_at FROM outbox
        """
        queued, dead_letters = await _queue_depths(stack)
        state = SystemState(
            orders=await orders_db.fetch(
                """
                SELECT id, user_id, status, rejection_reason, total_cents, created_at, credit_settled_at
                FROM orders
                """
            ),
            users=await users_db.fetch("SELECT id, credit_limit_cents, credit_used_cents FROM users"),
            reservations=await users_db.fetch("SELECT * FROM credit_reservations"),
            orders_outbox=await orders_db.fetch(outbox_query),
            users_outbox=await users_db.fetch(outbox_query),
            orders_inbox={row["event_id"] for row in await orders_db.fetch("SELECT event_id FROM inbox")},
            users_inbox={row["event_id"] for row in await users_db.fetch("SELECT event_id FROM inbox")},
            queued=queued,
            dead_letters=dead_letters,
        )
    finally:
        await users_db.close()
        await orders_db.close()
    return state


async def _queue_depths(stack: Stack) -> tuple[dict[str, int], dict[str, int]]:
    """Messages waiting in every consumer's main and retry queues, and in its dead letters."""
    connection = await aio_pika.connect(stack.rabbitmq_url)
    try:
        channel = await connection.channel()

        async def depth(queue: str) -> int:
            declared = await channel.declare_queue(queue, passive=True)
            return declared.declaration_result.message_count or 0

        waiting: dict[str, int] = {}
        dead: dict[str, int] = {}
        for receiver in sorted({name for names in bus().receivers.values() for name in names}):
            consumer = queues_for(receiver)
            config = ServiceConfig.from_env(stack.env[consumer.service])
            for queue in [consumer.main, *map(consumer.retry, config.retry_delays)]:
                waiting[queue] = await depth(queue)
            dead[consumer.dead_letter] = await depth(consumer.dead_letter)
        return waiting, dead
    finally:
        await connection.close()


def in_flight(state: SystemState) -> dict[str, int]:
    """What is still under way, by kind (nothing, once the system is settled)."""
    return {
        "unpublished events": sum(
            row["published_at"] is None for row in [*state.orders_outbox, *state.users_outbox]
        ),
        "queued messages": sum(state.queued.values()),
        # Published and not queued, yet not applied: in a consumer's hands (a redelivery after a
        # crash among them), which the queue's count of ready messages does not show.
        "events not applied yet": len(_published_not_applied(state)),
        "PENDING orders": sum(order["status"] == "PENDING" for order in state.orders),
        # Ended without users_service's word about its credit: its end is announced until it comes.
        "ends unanswered": sum(
            order["status"] != "PENDING" and order["credit_settled_at"] is None for order in state.orders
        ),
    }


def is_quiet(state: SystemState) -> bool:
    waiting = in_flight(state)
    return not (
        waiting["unpublished events"]
        or waiting["queued messages"]
        or waiting["events not applied yet"]
        or waiting["PENDING orders"]
    )


def is_settled(state: SystemState) -> bool:
    return not any(in_flight(state).values())


def violations(state: SystemState) -> list[str]:
    found: list[str] = []
    found += _i1_no_order_pending(state)
    found += _i2_credit_matches_approved_orders(state)
    found += _i3_no_effect_twice(state)
    found += _i4_no_change_without_its_event(state)
    return found


def _i1_no_order_pending(state: SystemState) -> list[str]:
    return [
        f"I1: order {order['id']} is still PENDING" for order in state.orders if order["status"] == "PENDING"
    ]


def _i2_credit_matches_approved_orders(state: SystemState) -> list[str]:
    approved: dict[uuid.UUID, int] = collections.defaultdict(int)
    for order in state.orders:
        if order["status"] == "APPROVED":
            approved[order["user_id"]] += order["total_cents"]
    found = []
    for user in state.users:
        if user["credit_used_cents"] != approved[user["id"]]:
            found.append(
                f"I2: user {user['id']} uses {user['credit_used_cents']} cents of credit,"
                f" but their approved orders total {approved[user['id']]}"
            )
        if user["credit_used_cents"] > user["credit_limit_cents"]:
            found.append(f"I2: user {user['id']} is over their credit limit")
    return found


def effects_applied_twice(state: SystemState) -> list[str]:
    """Each order placed, approved, and its credit reserved, at most once: a second such event
    means an effect applied twice (a second order, credit reserved twice)."""
    counts = collections.Counter(
        (row["event_type"], subject_of(row["data"]))
        for row in [*state.orders_outbox, *state.users_outbox]
        if row["event_type"] in ONCE_PER_ORDER
    )
    return [f"I3: {kind} for {subject} {n} times" for (kind, subject), n in counts.items() if n > 1]


def _i3_no_effect_twice(state: SystemState) -> list[str]:
    found = effects_applied_twice(state)
    # The credit in use is exactly what the live reservations hold.
    held: dict[uuid.UUID, int] = collections.defaultdict(int)
    for reservation in state.reservations:
        if reservation["status"] == "RESERVED":
            held[reservation["user_id"]] += reservation["amount_cents"]
    for user in state.users:
        if user["credit_used_cents"] != held[user["id"]]:
            found.append(
                f"I3: user {user['id']} uses {user['credit_used_cents']},"
                f" but their reservations hold {held[user['id']]}"
            )
    return found


def _i4_no_change_without_its_event(state: SystemState) -> list[str]:
    return [
        *_orders_without_events(state),
        *_reservations_without_events(state),
        *_events_not_delivered(state),
    ]


# The events each state must have been announced with.
ORDER_EVENTS = {
    "APPROVED": ["orders.order.created", "orders.order.approved"],
    "REJECTED": ["orders.order.created", "orders.order.rejected"],
    "CANCELLED": ["orders.order.created", "orders.order.cancelled"],
}
RESERVATION_EVENTS = {
    "RESERVED": ["users.credit.reserved"],
    "RELEASED": ["users.credit.reserved", "users.credit.released"],
    "REJECTED": ["users.credit.rejected"],
    "CANCELLED_BEFORE_CREATED": ["users.credit.rejected"],
}


def _orders_without_events(state: SystemState) -> list[str]:
    written = {(row["event_type"], subject_of(row["data"])) for row in state.orders_outbox}
    return [
        f"I4: order {order['id']} is {order['status']} but {kind} was never written"
        for order in state.orders
        for kind in ORDER_EVENTS.get(order["status"], ["orders.order.created"])
        if (kind, str(order["id"])) not in written
    ]


def _reservations_without_events(state: SystemState) -> list[str]:
    written = {(row["event_type"], subject_of(row["data"])) for row in state.users_outbox}
    return [
        f"I4: reservation {reservation['order_id']} is {reservation['status']} without {kind}"
        for reservation in state.reservations
        for kind in RESERVATION_EVENTS.get(reservation["status"], [])
        if (kind, str(reservation["order_id"])) not in written
    ]


def _events_not_delivered(state: SystemState) -> list[str]:
    found = [
        f"I4: {row['event_type']} {row['event_id']} was never published"
        for row in [*state.orders_outbox, *state.users_outbox]
        if row["published_at"] is None
    ]
    # Published is not enough: every event a service consumes must have reached its inbox.
    found += [
        f"I4: {receiver} never applied {row['event_type']} {row['event_id']}"
        for receiver, row in _published_not_applied(state)
    ]
    return found


def _published_not_applied(state: SystemState) -> list[tuple[str, asyncpg.Record]]:
    """The published events a service consumes that are not in its inbox, with that service."""
    return [
        (receiver, row)
        for outbox, receiver, inbox in (
            (state.orders_outbox, "users_service", state.users_inbox),
            (state.users_outbox, "orders_service", state.orders_inbox),
        )
        for row in outbox
        if row["published_at"] is not None
        and row["event_type"] in bus().receives(receiver)
        and row["event_id"] not in inbox
    ]


def subject_of(data: Any) -> str:
    """Whom an event is about: its order, or else its user (`data` as read from the outbox)."""
    parsed = orjson.loads(data) if isinstance(data, str) else data
    return str(parsed.get("order_id") or parsed.get("user_id"))


async def state_once(
    stack: Stack, condition: Callable[[SystemState], bool], *, within: float, interval: float = 0.2
) -> tuple[SystemState, bool]:
    """The state once `condition` (is_quiet, is_settled) holds, and True; or, after `timeout`, the
    state as it is, and False. Each look reads every order and event: after a long run, look less
    often (`interval`)."""

    async def met() -> SystemState | None:
        state = await read_state(stack)
        return state if condition(state) else None

    try:
        return await eventually(met, within=within, interval=interval, what=condition.__name__), True
    except AssertionError:
        return await read_state(stack), False


async def assert_invariants_once_quiet(stack: Stack, *, within: float = 60.0) -> SystemState:
    """Wait (with a deadline) until nothing is in flight, then check I1 to I4 and say what broke."""
    state, quiet = await state_once(stack, is_quiet, within=within)
    if not quiet:
        raise AssertionError(
            f"never quiet; in flight: {in_flight(state)}; queued: {state.queued};"
            f" violations: {violations(state)[:20]}"
        )
    broken = violations(state)
    assert not broken, "\n".join(broken[:50])
    return state
