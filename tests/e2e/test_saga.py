"""The order saga over the real RabbitMQ and Postgres, through the gateway, with the invariants
checked by tests/e2e/saga_checker.py after every scenario."""

import asyncio
import uuid

import aiohttp
import asyncpg

from devstack.waiting import eventually
from shared.dlq import list_dead_letters, replay_dead_letters
from shared.envelope import Cause, Envelope
from shared.events import CreditReserved
from tests.e2e.api import final_order, me, new_product, new_user, order_product, place_order
from tests.e2e.conftest import Stack, StackFactory
from tests.e2e.saga_checker import assert_invariants_once_quiet
from tests.support import publish_raw

FAST_RETRIES = {"RETRY_DELAYS_MS": "100,200"}


async def test_approved_rejected_and_cancelled_orders(stack: Stack, http: aiohttp.ClientSession) -> None:
    admin = stack.keys.admin_headers()
    user = await new_user(http, stack.url, credit_limit_cents=5_000, admin=admin)
    approved = await place_order(http, stack.url, user, 3_000, admin=admin)
    assert (await final_order(http, stack.url, user, approved["id"]))["status"] == "APPROVED"
    assert (await me(http, stack.url, user))["credit_used_cents"] == 3_000

    too_much = await place_order(http, stack.url, user, 2_001, admin=admin)
    rejected = await final_order(http, stack.url, user, too_much["id"])
    assert (rejected["status"], rejected["rejection_reason"]) == ("REJECTED", "insufficient_credit")
    async with http.post(
        f"{stack.url}/api/v2/orders/{too_much['id']}/cancel", headers=user.headers
    ) as response:
        assert response.status == 409

    async with http.post(
        f"{stack.url}/api/v2/orders/{approved['id']}/cancel", headers=user.headers
    ) as response:
        assert response.status == 202

    async def released() -> bool:
        return bool((await me(http, stack.url, user))["credit_used_cents"] == 0)

    await eventually(released, what="the cancelled order's credit released")
    await assert_invariants_once_quiet(stack)


async def test_fifty_concurrent_orders_never_over_reserve(stack: Stack, http: aiohttp.ClientSession) -> None:
    admin = stack.keys.admin_headers()
    user = await new_user(http, stack.url, credit_limit_cents=10_000, admin=admin)
    sku = await new_product(http, stack.url, admin, 700)
    orders = await asyncio.gather(*(order_product(http, stack.url, user, sku) for _ in range(50)))
    finals = [await final_order(http, stack.url, user, order["id"]) for order in orders]
    approved = [order for order in finals if order["status"] == "APPROVED"]
    assert len(approved) == 10_000 // 700  # exactly as many as the limit covers: 14
    assert {order["rejection_reason"] for order in finals if order["status"] == "REJECTED"} == {
        "insufficient_credit"
    }
    assert (await me(http, stack.url, user))["credit_used_cents"] == 14 * 700
    await assert_invariants_once_quiet(stack)


async def test_an_event_delivered_twice_is_applied_once(stack: Stack, http: aiohttp.ClientSession) -> None:
    admin = stack.keys.admin_headers()
    user = await new_user(http, stack.url, credit_limit_cents=10_000, admin=admin)
    order = await place_order(http, stack.url, user, 4_000, admin=admin)
    await final_order(http, stack.url, user, order["id"])
    # Take the very envelope orders_service published, and deliver it to users_service again.
    orders_db = await asyncpg.connect(stack.admin_dsn("orders_service"))
    try:
        body = await orders_db.fetchval(
            """
            SELECT body FROM outbox
            WHERE event_type = 'orders.order.created' AND body::jsonb -> 'data' ->> 'order_id' = $1
            """,
            order["id"],
        )
    finally:
        await orders_db.close()
    await publish_raw(stack.broker, body.encode(), "orders.order.created")

    async def skipped() -> bool:
        return "duplicate skipped" in stack.users.log_text() and order["id"][:8] in stack.users.log_text()

    await eventually(skipped, what="users_service to skip the duplicate")
    assert (await me(http, stack.url, user))["credit_used_cents"] == 4_000  # not 8_000
    await assert_invariants_once_quiet(stack)


async def test_a_poison_message_is_dead_lettered_and_the_consumer_goes_on(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    await publish_raw(stack.broker, b"this is not an event", "orders.order.created")

    async def dead_lettered() -> bool:
        letters = await list_dead_letters(stack.rabbitmq_url, "users_service")
        return any(letter.reason == "invalid" for letter in letters)

    await eventually(dead_lettered, what="the poison message in users_service.dlq")
    user = await new_user(http, stack.url)
    order = await place_order(http, stack.url, user, 100, admin=stack.keys.admin_headers())
    assert (await final_order(http, stack.url, user, order["id"]))["status"] == "APPROVED"
    await assert_invariants_once_quiet(stack)


async def test_a_failing_handler_is_retried_then_dead_lettered_then_replayed(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    stack = await fresh_stack(orders_service=FAST_RETRIES, users_service=FAST_RETRIES)
    # A credit answer for an order orders_service has never stored: its handler raises every time.
    orphan = Envelope.wrap(
        CreditReserved(uuid.uuid4(), uuid.uuid4(), 100),
        source="test",
        cause=Cause("orphan-test", "orphan-test"),
    )
    await publish_raw(stack.broker, orphan.to_json(), CreditReserved.TYPE)

    async def dead_lettered() -> bool:
        letters = await list_dead_letters(stack.rabbitmq_url, "orders_service")
        return [letter.message_id for letter in letters] == [str(orphan.id)]

    await eventually(dead_lettered, what="the orphan answer in orders_service.dlq")
    log = stack.orders.log_text()
    assert log.count("retry scheduled") == 2
    assert "retries exhausted" in log

    # The consumer went on: an order still goes through.
    user = await new_user(http, stack.url)
    order = await place_order(http, stack.url, user, 100, admin=stack.keys.admin_headers())
    assert (await final_order(http, stack.url, user, order["id"]))["status"] == "APPROVED"

    replayed = await replay_dead_letters(stack.broker.operator_url, "orders_service", str(orphan.id))
    assert [letter.message_id for letter in replayed] == [str(orphan.id)]

    async def dead_lettered_again() -> bool:
        return stack.orders.log_text().count("retries exhausted") == 2

    await eventually(dead_lettered_again, what="the replayed orphan to fail its retries again")


async def test_a_poison_message_in_a_batch_is_dead_lettered_and_the_rest_applied_once(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """Messages that wait together are applied in one transaction (shared/inbox.py). One of them whose
    handler fails rolls the batch back; applied again one by one, the others take effect once each,
    a duplicate among them is skipped, and the poison alone is retried, then dead-lettered."""
    stack = await fresh_stack(orders_service=FAST_RETRIES, users_service=FAST_RETRIES)
    admin = stack.keys.admin_headers()
    user = await new_user(http, stack.url, admin=admin)
    cent = await new_product(http, stack.url, admin, 1)
    # The credit answers are made to wait in orders_service's queue, so that it takes them at once
    # when it starts: users_service is away while the orders come in, orders_service while it answers.
    assert await stack.users.stop() == 0
    orders = [await order_product(http, stack.url, user, cent) for _ in range(8)]
    assert await stack.orders.stop() == 0
    await stack.start("users_service")
    users_db = await asyncpg.connect(stack.admin_dsn("users_service"))
    try:

        async def answered() -> bool:
            published: int = await users_db.fetchval(
                "SELECT count(*) FROM outbox WHERE event_type = $1 AND published_at IS NOT NULL",
                CreditReserved.TYPE,
            )
            return published == len(orders)

        await eventually(answered, what="users_service's eight credit answers published")
        a_real_answer: str = await users_db.fetchval(
            "SELECT body FROM outbox WHERE event_type = $1 LIMIT 1", CreditReserved.TYPE
        )
    finally:
        await users_db.close()
    await publish_raw(stack.broker, a_real_answer.encode(), CreditReserved.TYPE)  # a duplicate
    orphan = Envelope.wrap(
        CreditReserved(uuid.uuid4(), uuid.uuid4(), 100), source="test", cause=Cause("poison", "poison")
    )
    await publish_raw(stack.broker, orphan.to_json(), CreditReserved.TYPE)  # its handler raises
    await stack.start("orders_service")

    async def dead_lettered() -> bool:
        letters = await list_dead_letters(stack.rabbitmq_url, "orders_service")
        return [(letter.message_id, letter.reason) for letter in letters] == [
            (str(orphan.id), "retries exhausted")
        ]

    await eventually(dead_lettered, what="the poison message in orders_service.dlq")
    for order in orders:
        assert (await final_order(http, stack.url, user, order["id"]))["status"] == "APPROVED"
    log = stack.orders.log_text()
    assert "a batch failed; applying its messages one by one" in log
    assert log.count("duplicate skipped") == 1
    assert log.count("retry scheduled") == 2
    assert (await me(http, stack.url, user))["credit_used_cents"] == len(orders)
    await assert_invariants_once_quiet(stack)
