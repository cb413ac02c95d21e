"""The design's invariants, checked against the real databases and broker once the system is quiet.

- I1 every order is in a final state or APPROVED; none stays PENDING;
- I2 for every user, credit_used_cents = the sum of total_cents of their APPROVED orders, and never
     exceeds credit_limit_cents (the CHECK constraint guards "not even for a moment");
- I3 no event's effect is applied twice;
- I4 no committed state change loses its event.
"""

import collections
import dataclasses
import uuid
from typing import Any

import aio_pika
import asyncpg
import orjson

from devstack.waiting import eventually
from shared.bus_contract import bus
from shared.config import ServiceConfig
from shared.topology import queues_for
from tests.e2e.conftest import Stack

ONCE_PER_ORDER = {"orders.order.created", "orders.order.approved", "users.credit.reserved"}


@dataclasses.dataclass(frozen=True)
class SystemState:
    orders: list[asyncpg.Record]
    users: list[asyncpg.Record]
    reservations: list[asyncpg.Record]
    orders_outbox: list[asyncpg.Record]
    users_outbox: list[asyncpg.Record]
    orders_inbox: set[uuid.UUID]
    users_inbox: set[uuid.UUID]
    queued: dict[str, int]


async def read_state(stack: Stack) -> SystemState:
    users_dsn, orders_dsn = stack.admin_dsn("users_service"), stack.admin_dsn("orders_service")
    users_db, orders_db = await asyncpg.connect(users_dsn), await asyncpg.connect(orders_dsn)
    try:
        outbox_query = "SELECT event_id, event_type, body::jsonb -> 'data' AS data, published_at FROM outbox"
        state = SystemState(
            orders=await orders_db.fetch("SELECT id, user_id, status, total_cents FROM orders"),
            users=await users_db.fetch("SELECT id, credit_limit_cents, credit_used_cents FROM users"),
            reservations=await users_db.fetch("SELECT * FROM credit_reservations"),
            orders_outbox=await orders_db.fetch(outbox_query),
            users_outbox=await users_db.fetch(outbox_query),
            orders_inbox={row["event_id"] for row in await orders_db.fetch("SELECT event_id FROM inbox")},
            users_inbox={row["event_id"] for row in await users_db.fetch("SELECT event_id FROM inbox")},
            queued=await _queue_depths(stack),
        )
    finally:
        await users_db.close()
        await orders_db.close()
    return state


async def _queue_depths(stack: Stack) -> dict[str, int]:
    """Messages waiting in every consumer's main and retry queues (not the dead letters)."""
    connection = await aio_pika.connect(stack.rabbitmq_url)
    try:
        channel = await connection.channel()
        depths: dict[str, int] = {}
        for receiver in sorted({name for names in bus().receivers.values() for name in names}):
            consumer = queues_for(receiver)
            config = ServiceConfig.from_env(stack.env[consumer.service])
            for queue in [consumer.main, *map(consumer.retry, config.retry_delays)]:
                declared = await channel.declare_queue(queue, passive=True)
                depths[queue] = declared.declaration_result.message_count or 0
        return depths
    finally:
        await connection.close()


def is_quiet(state: SystemState) -> bool:
    unpublished = [row for row in [*state.orders_outbox, *state.users_outbox] if row["published_at"] is None]
    pending = [order for order in state.orders if order["status"] == "PENDING"]
    return not unpublished and not pending and not any(state.queued.values())


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


def _i3_no_effect_twice(state: SystemState) -> list[str]:
    found = []
    # An order is created, approved and given credit at most once: a second one would mean an
    # effect applied twice. (Its end may be announced again until users_service answers, and each
    # announcement is answered: those repeat by design, docs/saga.md, and change nothing; the
    # credit check below is what says so.)
    for source, outbox in (("orders", state.orders_outbox), ("users", state.users_outbox)):
        once = [row for row in outbox if row["event_type"] in ONCE_PER_ORDER]
        counts = collections.Counter((row["event_type"], _subject(row["data"])) for row in once)
        found += [
            f"I3: {source} emitted {kind} for {subject} {n} times"
            for (kind, subject), n in counts.items()
            if n > 1
        ]
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
    found = []
    orders_events = {(row["event_type"], _subject(row["data"])) for row in state.orders_outbox}
    expected_event = {
        "APPROVED": "orders.order.approved",
        "REJECTED": "orders.order.rejected",
        "CANCELLED": "orders.order.cancelled",
    }
    for order in state.orders:
        for kind in ["orders.order.created", expected_event.get(order["status"])]:
            if kind and (kind, str(order["id"])) not in orders_events:
                found.append(f"I4: order {order['id']} is {order['status']} but {kind} was never written")
    users_events = {(row["event_type"], _subject(row["data"])) for row in state.users_outbox}
    for reservation in state.reservations:
        status, order_id = reservation["status"], str(reservation["order_id"])
        needed = {
            "RESERVED": ["users.credit.reserved"],
            "RELEASED": ["users.credit.reserved", "users.credit.released"],
            "REJECTED": ["users.credit.rejected"],
        }.get(status, [])
        found += [
            f"I4: reservation {order_id} is {status} without {kind}"
            for kind in needed
            if (kind, order_id) not in users_events
        ]
    for row in [*state.orders_outbox, *state.users_outbox]:
        if row["published_at"] is None:
            found.append(f"I4: {row['event_type']} {row['event_id']} was never published")
    # Published is not enough: every event a service consumes must have reached its inbox.
    for row in state.orders_outbox:
        if row["event_type"] in bus().receives("users_service") and row["event_id"] not in state.users_inbox:
            found.append(f"I4: users_service never applied {row['event_type']} {row['event_id']}")
    for row in state.users_outbox:
        if (
            row["event_type"] in bus().receives("orders_service")
            and row["event_id"] not in state.orders_inbox
        ):
            found.append(f"I4: orders_service never applied {row['event_type']} {row['event_id']}")
    return found


def _subject(data: Any) -> str:
    parsed = orjson.loads(data) if isinstance(data, str) else data
    return str(parsed.get("order_id") or parsed.get("user_id"))


async def assert_invariants_once_quiet(stack: Stack, *, timeout: float = 60.0) -> SystemState:
    """Wait (with a deadline) until nothing is in flight, then check I1 to I4 and say what broke."""

    async def quiet_state() -> SystemState | None:
        state = await read_state(stack)
        return state if is_quiet(state) else None

    try:
        state = await eventually(quiet_state, timeout=timeout, interval=0.2, what="the system to go quiet")
    except AssertionError:
        state = await read_state(stack)
        raise AssertionError(
            f"never quiet; queued: {state.queued}; violations: {violations(state)[:20]}"
        ) from None
    broken = violations(state)
    assert not broken, "\n".join(broken[:50])
    return state
