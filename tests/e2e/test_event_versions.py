"""Event contracts and versions against the running services (docs/events.md): a consumer handles
version 2 of users.credit.rejected as it handles version 1, and dead-letters at once a version it does
not know or an event that breaks its schema, then goes on with the next message."""

import dataclasses
import uuid
from typing import Any

import aiohttp
import asyncpg

from devstack.waiting import eventually
from shared.dlq import DeadLetter, list_dead_letters
from shared.envelope import Cause, Envelope
from shared.events import CreditRejected, OrderCreated
from tests.e2e.api import final_order, get_order, me, new_product, new_user, order_product, place_order
from tests.e2e.conftest import Stack
from tests.e2e.saga_checker import assert_invariants_once_quiet
from tests.support import publish_raw

CAUSE = Cause("event-versions-test", "event-versions-test")


def credit_rejected(
    order_id: uuid.UUID, user_id: uuid.UUID, dataversion: int, data: dict[str, Any]
) -> Envelope:
    """A users.credit.rejected envelope of any data version, as a users_service of that version would
    publish it (the code emits only version 1, so the test writes the other versions' data itself)."""
    envelope = Envelope.wrap(
        CreditRejected(order_id, user_id, "insufficient_credit"), source="users", cause=CAUSE
    )
    return dataclasses.replace(envelope, dataversion=dataversion, data=data)


async def reservation_status(stack: Stack, order_id: str) -> str | None:
    users_db = await asyncpg.connect(stack.admin_dsn("users_service"))
    try:
        status: str | None = await users_db.fetchval(
            "SELECT status FROM credit_reservations WHERE order_id = $1", uuid.UUID(order_id)
        )
        return status
    finally:
        await users_db.close()


async def test_a_version_2_credit_rejection_decides_a_pending_order(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    admin = stack.keys.admin_headers()
    user = await new_user(http, stack.url, credit_limit_cents=0, admin=admin)
    sku = await new_product(http, stack.url, admin, 100)
    # Hold the lock users_service takes on the user's account before it decides about their credit:
    # until it is released, users_service cannot answer, and the order stays PENDING for the test.
    users_db = await asyncpg.connect(stack.admin_dsn("users_service"))
    holding = users_db.transaction()
    await holding.start()
    try:
        await users_db.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", uuid.UUID(user.id))
        order = await order_product(http, stack.url, user, sku)
        order_id, user_id = uuid.UUID(order["id"]), uuid.UUID(user.id)
        v2 = credit_rejected(
            order_id,
            user_id,
            2,
            {
                "order_id": order["id"],
                "user_id": user.id,
                "reason": {
                    "code": "insufficient_credit",
                    "message": "The order needs 100 cents; 0 are left.",
                },
            },
        )
        await publish_raw(stack.broker, v2.to_json(), CreditRejected.TYPE)

        rejected = await final_order(http, stack.url, user, order["id"])
        assert (rejected["status"], rejected["rejection_reason"]) == ("REJECTED", "insufficient_credit")
        # Decided by the version 2 event alone: users_service has not answered yet.
        assert await reservation_status(stack, order["id"]) is None
    finally:
        await holding.rollback()
        await users_db.close()

    # Now users_service answers too (version 1, as producers still emit it); the order is decided
    # already, so the answer changes nothing, and the two services agree.
    async def answered() -> bool:
        return await reservation_status(stack, order["id"]) == "REJECTED"

    await eventually(answered, what="users_service's own answer")
    assert (await get_order(http, stack.url, user, order["id"]))["status"] == "REJECTED"
    assert str(v2.id) not in {
        letter.message_id for letter in await list_dead_letters(stack.rabbitmq_url, "orders_service")
    }
    await assert_invariants_once_quiet(stack)


async def test_an_unknown_version_and_a_broken_event_are_dead_lettered_and_the_consumer_goes_on(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    admin = stack.keys.admin_headers()
    user = await new_user(http, stack.url, credit_limit_cents=10_000, admin=admin)
    order_id, user_id = uuid.uuid4(), uuid.UUID(user.id)
    v3 = credit_rejected(
        order_id,
        user_id,
        3,
        {"order_id": str(order_id), "user_id": user.id, "reasons": ["insufficient_credit"]},
    )
    missing_reason = credit_rejected(order_id, user_id, 1, {"order_id": str(order_id), "user_id": user.id})
    # Applied, a negative total would hand the user 100 cents of credit: the contract stops it first.
    created = Envelope.wrap(OrderCreated(order_id, user_id, 100), source="orders", cause=CAUSE)
    negative_total = dataclasses.replace(created, data={**created.data, "total_cents": -100})
    await publish_raw(stack.broker, v3.to_json(), CreditRejected.TYPE)
    await publish_raw(stack.broker, missing_reason.to_json(), CreditRejected.TYPE)
    await publish_raw(stack.broker, negative_total.to_json(), OrderCreated.TYPE)

    async def dead_letters(service: str, *ids: uuid.UUID) -> dict[str, DeadLetter] | None:
        letters = {
            letter.message_id: letter for letter in await list_dead_letters(stack.rabbitmq_url, service)
        }
        return letters if all(str(event_id) in letters for event_id in ids) else None

    at_orders = await eventually(
        lambda: dead_letters("orders_service", v3.id, missing_reason.id), what="both in orders_service.dlq"
    )
    assert (at_orders[str(v3.id)].reason, at_orders[str(v3.id)].error) == (
        "invalid",
        "users.credit.rejected has no data version 3",
    )
    assert (at_orders[str(missing_reason.id)].reason, at_orders[str(missing_reason.id)].error) == (
        "invalid",
        "users.credit.rejected v1: data.reason is missing",
    )
    at_users = await eventually(
        lambda: dead_letters("users_service", negative_total.id), what="in users_service.dlq"
    )
    assert (at_users[str(negative_total.id)].reason, at_users[str(negative_total.id)].error) == (
        "invalid",
        "orders.order.created v1: data.total_cents must be at least 0",
    )

    # Both consumers went on: the user's next order goes through, on untouched credit.
    assert (await me(http, stack.url, user))["credit_used_cents"] == 0
    order = await place_order(http, stack.url, user, 2_500, admin=admin)
    assert (await final_order(http, stack.url, user, order["id"]))["status"] == "APPROVED"
    assert (await me(http, stack.url, user))["credit_used_cents"] == 2_500
    await assert_invariants_once_quiet(stack)
