"""The saga under faults, each bounded in time and ending with a drain and the invariant checker.

These tests restart the run's own RabbitMQ and Postgres (never servers of yours: with those they are
skipped) and kill services with SIGKILL at chosen moments. A chosen moment is made with a TCP relay
between a service and the broker that the test freezes: no hook in the code under test.
"""

import asyncio
import time

import aiohttp
import pytest

from devstack.servers import Servers
from devstack.waiting import eventually
from tests.e2e.api import FINAL, User, final_order, new_product, new_user, place_order
from tests.e2e.conftest import Stack, StackFactory
from tests.e2e.faults import UNTHROTTLED, broker_relay, count
from tests.e2e.saga_checker import assert_invariants_once_quiet

pytestmark = pytest.mark.faults


async def burst(
    http: aiohttp.ClientSession, stack: Stack, users: list[User], cent: str, n: int, *, within: float = 30.0
) -> list[dict[str, object]]:
    """Place orders round-robin over the users until n are accepted, each of another total: so many
    of product `cent`, which costs one cent (made before any fault, as a product of the test's own
    at every total would need one request more per order, which a fault could refuse). Mid-fault
    the gateway may answer 503 (a dependency is briefly down): like any client, try again."""
    accepted: list[dict[str, object]] = []
    give_up_at = time.monotonic() + within
    while len(accepted) < n:
        assert time.monotonic() < give_up_at, f"only {len(accepted)} of {n} orders accepted in {within} s"
        user = users[len(accepted) % len(users)]
        body = {"items": [{"sku": cent, "quantity": 300 + len(accepted)}]}
        async with http.post(f"{stack.url}/api/v2/orders", json=body, headers=user.headers) as response:
            if response.status == 202:
                accepted.append({**(await response.json()), "owner": user})
            else:
                assert response.status == 503, await response.text()
    return accepted


async def all_final(http: aiohttp.ClientSession, stack: Stack, orders: list[dict[str, object]]) -> None:
    for order in orders:
        owner = order["owner"]
        assert isinstance(owner, User)
        decided = await final_order(http, stack.url, owner, str(order["id"]), within=60)
        assert decided["status"] in FINAL


async def test_orders_service_killed_between_commit_and_publish(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    stack = await fresh_stack(gateway=UNTHROTTLED)
    admin = stack.keys.admin_headers()
    user = await new_user(http, stack.url)
    async with broker_relay(stack) as (relay, relayed_url):
        await stack.restart("orders_service", RABBITMQ_URL=relayed_url)
        relay.hold_upstream()  # from now on, nothing orders_service sends reaches the broker
        orders = [await place_order(http, stack.url, user, 100, admin=admin) for _ in range(5)]

        async def committed_not_published() -> bool:
            unpublished = await count(
                stack.admin_dsn("orders_service"),
                """
                SELECT count(*) FROM outbox
                WHERE published_at IS NULL AND event_type = 'orders.order.created'
                """,
            )
            return unpublished == 5

        await eventually(committed_not_published, what="5 committed, unpublished OrderCreated rows")
        await stack.orders.kill()
        relay.sever()
    await stack.start("orders_service", RABBITMQ_URL=stack.broker.url_for("orders_service"))
    for order in orders:
        assert (await final_order(http, stack.url, user, order["id"]))["status"] == "APPROVED"
    await assert_invariants_once_quiet(stack)


async def test_orders_service_killed_between_consume_and_ack(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    stack = await fresh_stack(gateway=UNTHROTTLED)
    admin = stack.keys.admin_headers()
    user = await new_user(http, stack.url)
    orders_dsn = stack.admin_dsn("orders_service")
    async with broker_relay(stack) as (relay, relayed_url):
        await stack.restart("orders_service", RABBITMQ_URL=relayed_url)
        assert await stack.users.stop() == 0  # so that the credit answer waits until we are ready
        order = await place_order(http, stack.url, user, 100, admin=admin)

        async def created_published() -> bool:
            return await count(orders_dsn, "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL") == 1

        await eventually(created_published, what="OrderCreated published")
        relay.hold_upstream()  # orders_service will receive, commit, and then its ack is held back
        await stack.start("users_service")

        async def applied_but_not_acked() -> bool:
            return await count(orders_dsn, "SELECT count(*) FROM inbox") == 1

        await eventually(applied_but_not_acked, what="orders_service to commit the credit answer")
        await stack.orders.kill()
        relay.sever()  # the held ack dies with the connection: the broker must redeliver
    await stack.start("orders_service", RABBITMQ_URL=stack.broker.url_for("orders_service"))

    async def redelivery_skipped() -> bool:
        return "duplicate skipped" in stack.orders.log_text()

    await eventually(redelivery_skipped, what="the redelivered credit answer skipped by the inbox")
    assert (await final_order(http, stack.url, user, order["id"]))["status"] == "APPROVED"
    await assert_invariants_once_quiet(stack)


async def test_rabbitmq_restarted_during_a_burst(
    fault_servers: Servers, fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    stack = await fresh_stack(gateway=UNTHROTTLED)
    admin = stack.keys.admin_headers()
    users = [await new_user(http, stack.url, credit_limit_cents=5_000, admin=admin) for _ in range(3)]
    cent = await new_product(http, stack.url, admin, 1)
    first = await burst(http, stack, users, cent, 10)
    await fault_servers.rabbitmq.stop_app()
    try:
        during = await burst(http, stack, users, cent, 10)  # accepted: the outbox holds their events
    finally:
        await fault_servers.rabbitmq.start_app()
    after = await burst(http, stack, users, cent, 10)
    assert len(first) == len(during) == len(after) == 10
    await all_final(http, stack, [*first, *during, *after])
    await assert_invariants_once_quiet(stack)


async def test_users_service_down_for_ten_seconds_during_a_burst(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    stack = await fresh_stack(gateway=UNTHROTTLED)
    admin = stack.keys.admin_headers()
    users = [await new_user(http, stack.url, credit_limit_cents=4_000, admin=admin) for _ in range(2)]
    cent = await new_product(http, stack.url, admin, 1)
    orders = await burst(http, stack, users, cent, 5)
    assert await stack.users.stop() == 0
    down_until = time.monotonic() + 10
    while time.monotonic() < down_until:  # orders keep coming in while users_service is away
        orders += await burst(http, stack, users, cent, 1)
    pending = await count(
        stack.admin_dsn("orders_service"), "SELECT count(*) FROM orders WHERE status = 'PENDING'"
    )
    assert pending > 0
    await stack.start("users_service")
    await all_final(http, stack, orders)
    await assert_invariants_once_quiet(stack)


async def test_postgres_restarted_during_a_burst(
    fault_servers: Servers, fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    stack = await fresh_stack(gateway=UNTHROTTLED)
    admin = stack.keys.admin_headers()
    users = [await new_user(http, stack.url, credit_limit_cents=5_000, admin=admin) for _ in range(3)]
    cent = await new_product(http, stack.url, admin, 1)
    placing = asyncio.create_task(burst(http, stack, users, cent, 60))
    await eventually(lambda: _at_least(stack, 10), what="10 orders placed before the restart")
    await fault_servers.postgres.restart()
    orders = await placing
    await all_final(http, stack, orders)
    await assert_invariants_once_quiet(stack)


async def _at_least(stack: Stack, orders: int) -> bool:
    return await count(stack.admin_dsn("orders_service"), "SELECT count(*) FROM orders") >= orders


async def test_sigterm_drains_in_flight_messages(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    stack = await fresh_stack(gateway=UNTHROTTLED)
    admin = stack.keys.admin_headers()
    users = [await new_user(http, stack.url, credit_limit_cents=50_000, admin=admin) for _ in range(4)]
    cent = await new_product(http, stack.url, admin, 1)
    placing = asyncio.create_task(burst(http, stack, users, cent, 40))
    await eventually(lambda: _at_least(stack, 10), what="10 orders placed before the SIGTERM")
    assert await stack.users.stop() == 0  # mid-burst: messages are in users_service's hands
    await stack.start("users_service")
    await all_final(http, stack, await placing)
    # A drained shutdown acks everything it committed: the new process is redelivered nothing
    # it has already applied (a crash would show up here as "duplicate skipped").
    assert "duplicate skipped" not in stack.users.log_text()
    assert stack.users.log_text().count("consumed") >= 40
    await assert_invariants_once_quiet(stack)
