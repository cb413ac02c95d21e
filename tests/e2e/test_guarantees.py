"""Each delivery guarantee, proven by a test that fails without it (docs/delivery.md says which).

Every test stops the real system at one chosen moment, from outside the code under test: a gate on
a service's COMMIT (tests/e2e/gates.py), a fault in its database, a binding or a queue deleted on
the broker. Then it crashes, stops or restarts what the guarantee is about, and checks the outcome
through the API and the invariants I1 to I4 (tests/e2e/saga_checker.py).
"""

from urllib.parse import quote

import aio_pika
import aiohttp
import pytest

from devstack.rabbitmq import OPERATOR
from devstack.waiting import eventually
from shared import broker_setup
from shared.bus_contract import bus
from shared.dlq import DeadLetter, list_dead_letters, replay_dead_letters
from shared.topology import EXCHANGE, queues_for
from tests.e2e.api import User, final_order, get_order, me, new_user, place_order
from tests.e2e.conftest import Stack, StackFactory
from tests.e2e.faults import UNTHROTTLED, count
from tests.e2e.gates import commit_gate, refusing
from tests.e2e.saga_checker import assert_invariants_once_quiet

pytestmark = pytest.mark.faults

USERS_QUEUE = queues_for("users_service")
ORDERS_QUEUE = queues_for("orders_service")


async def cancel(http: aiohttp.ClientSession, stack: Stack, user: User, order_id: str) -> None:
    async with http.post(f"{stack.url}/api/v2/orders/{order_id}/cancel", headers=user.headers) as response:
        assert response.status == 202, await response.text()


async def waiting_in(stack: Stack, queue: str) -> int:
    """Messages ready in `queue` now (a passive declare answers at once, unlike the statistics)."""
    async with await aio_pika.connect(stack.rabbitmq_url) as connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0


async def approved_once(
    http: aiohttp.ClientSession, stack: Stack, user: User, order_id: str, total_cents: int
) -> None:
    """The order ends APPROVED, its credit held once, and the invariants hold."""
    assert (await final_order(http, stack.url, user, order_id))["status"] == "APPROVED"
    assert (await me(http, stack.url, user))["credit_used_cents"] == total_cents
    await assert_invariants_once_quiet(stack)


def vhost_path(stack: Stack) -> str:
    return quote(stack.broker.name, safe="")


async def test_an_event_is_acked_only_after_its_effect_commits(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """users_service is killed while its reservation waits at COMMIT, and the crash takes the
    transaction with it. Had the consumer acked first, the message would be gone with the effect."""
    stack = await fresh_stack(gateway=UNTHROTTLED)
    admin = stack.keys.admin_headers()
    user = await new_user(http, stack.url)
    users_dsn = stack.admin_dsn("users_service")
    async with commit_gate(users_dsn, "credit_reservations", "INSERT") as gate:
        order = await place_order(http, stack.url, user, 100, admin=admin)
        await gate.wait_for_one("users_service's reservation waiting at its COMMIT")
        await stack.users.kill()
        await gate.abort_waiting()
    assert await count(users_dsn, "SELECT count(*) FROM credit_reservations") == 0, "the crash lost it"
    await stack.start("users_service")
    await approved_once(http, stack, user, order["id"], 100)


async def test_a_crash_after_the_confirm_and_before_the_mark_publishes_again_and_changes_nothing(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """orders_service's relay has its OrderCreated confirmed (users_service even applies it), and is
    killed while marking the row published. The row is published again after the restart, and the
    duplicate changes nothing. Had the relay marked before publishing, nothing would reach users_service."""
    stack = await fresh_stack(gateway=UNTHROTTLED)
    admin = stack.keys.admin_headers()
    user = await new_user(http, stack.url)
    orders_dsn, users_dsn = stack.admin_dsn("orders_service"), stack.admin_dsn("users_service")
    marking = "OLD.published_at IS NULL AND NEW.published_at IS NOT NULL"
    async with commit_gate(orders_dsn, "outbox", "UPDATE", marking) as gate:
        order = await place_order(http, stack.url, user, 100, admin=admin)
        await gate.wait_for_one("the relay's mark waiting at its COMMIT")

        async def reserved() -> bool:
            query = "SELECT count(*) FROM credit_reservations WHERE order_id = $1::uuid AND status = $2"
            return await count(users_dsn, query, order["id"], "RESERVED") == 1

        await eventually(reserved, what="users_service to apply the OrderCreated the broker confirmed")
        await stack.orders.kill()
        await gate.abort_waiting()
    unmarked = "SELECT count(*) FROM outbox WHERE event_type = $1 AND published_at IS NULL"
    assert await count(orders_dsn, unmarked, "orders.order.created") == 1
    await stack.start("orders_service")

    async def duplicate_skipped() -> bool:
        return "duplicate skipped" in stack.users.log_text()

    await eventually(duplicate_skipped, what="users_service to skip the OrderCreated published again")
    await approved_once(http, stack, user, order["id"], 100)


async def test_a_message_that_kills_its_consumer_every_time_is_dead_lettered_by_the_delivery_limit(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """users_service is SIGKILLed each time it holds one customer's OrderCreated. After the delivery
    limit the broker dead-letters it, users_service serves everyone else meanwhile, the order's
    deadline ends it with no credit held, and a replay of the dead letter changes nothing."""
    delivery_limit = 2
    stack = await fresh_stack(gateway=UNTHROTTLED)
    admin = stack.keys.admin_headers()
    management = stack.servers.rabbitmq.management
    strict = broker_setup.plan(
        bus(), operator=OPERATOR, delivery_limit=delivery_limit, broker_major=await management.broker_major()
    )
    await broker_setup.apply_policies(management, stack.broker.name, strict.policies)
    victim, bystander = await new_user(http, stack.url), await new_user(http, stack.url)
    users_dsn = stack.admin_dsn("users_service")

    victims_rows = f"NEW.user_id = '{victim.id}'"
    async with commit_gate(users_dsn, "credit_reservations", "INSERT", victims_rows) as gate:
        doomed = await place_order(http, stack.url, victim, 100, admin=admin)
        kills = 0

        async def held_or_dead_lettered() -> str | None:
            if await waiting_in(stack, USERS_QUEUE.dead_letter) > 0:
                return "dead-lettered"
            return "held" if await gate.waiting() > 0 else None

        what = "the message held, or dead-lettered"
        while await eventually(held_or_dead_lettered, within=30, what=what) == "held":
            assert kills <= delivery_limit + 1, f"still delivered after {kills} crashes"
            await stack.users.kill()
            await gate.abort_waiting()
            kills += 1
            await stack.start("users_service")
        assert kills >= delivery_limit, f"dead-lettered after {kills} crashes, before the limit"
        served = await place_order(http, stack.url, bystander, 200, admin=admin)
        assert (await final_order(http, stack.url, bystander, served["id"]))["status"] == "APPROVED"

    [letter] = await list_dead_letters(stack.broker.operator_url, "users_service")
    assert (letter.event_type, letter.reason) == ("orders.order.created", "delivery limit")
    # The order's deadline ends it; a short one, set now, so that the test need not wait two minutes.
    await stack.restart("orders_service", SAGA_DEADLINE_SECONDS="1", SAGA_SWEEP_INTERVAL="0.2")
    ended = await final_order(http, stack.url, victim, doomed["id"])
    assert (ended["status"], ended["rejection_reason"]) == ("REJECTED", "deadline_exceeded")
    await _replayed_and_harmless(stack, http, victim, doomed["id"], "users_service", letter)


@pytest.mark.parametrize(
    ("service", "table", "when"),
    [
        # users_service cannot reserve: OrderCreated is dead-lettered, no credit is ever held.
        ("users_service", "credit_reservations", "NEW.status = 'RESERVED'"),
        # orders_service cannot approve: CreditReserved is dead-lettered, the credit is held, and
        # the deadline's rejection has users_service release it.
        ("orders_service", "orders", "NEW.status = 'APPROVED'"),
    ],
)
async def test_a_dead_lettered_saga_message_still_ends_its_order_by_the_deadline_with_the_credit_exact(
    fresh_stack: StackFactory, http: aiohttp.ClientSession, service: str, table: str, when: str
) -> None:
    stack = await fresh_stack(
        gateway=UNTHROTTLED,
        users_service={"RETRY_DELAYS_MS": "100,100"},
        orders_service={
            "RETRY_DELAYS_MS": "100,100",
            "SAGA_DEADLINE_SECONDS": "8",
            "SAGA_SWEEP_INTERVAL": "0.5",
        },
    )
    admin = stack.keys.admin_headers()
    victim, bystander = await new_user(http, stack.url), await new_user(http, stack.url)
    queue = queues_for(service).dead_letter
    async with refusing(stack.admin_dsn(service), table, f"{when} AND NEW.user_id = '{victim.id}'"):
        doomed = await place_order(http, stack.url, victim, 300, admin=admin)
        served = await place_order(http, stack.url, bystander, 200, admin=admin)

        async def dead_lettered() -> bool:
            return await waiting_in(stack, queue) == 1

        await eventually(dead_lettered, what=f"the victim's message in {queue}")
        ended = await final_order(http, stack.url, victim, doomed["id"])
        assert (ended["status"], ended["rejection_reason"]) == ("REJECTED", "deadline_exceeded")
        assert (await final_order(http, stack.url, bystander, served["id"]))["status"] == "APPROVED"

        async def credit_exact() -> bool:
            used: int = (await me(http, stack.url, victim))["credit_used_cents"]
            return used == 0

        await eventually(credit_exact, what="the victim's credit back to 0")
    [letter] = await list_dead_letters(stack.broker.operator_url, service)
    assert letter.reason != "delivery limit"  # it failed its retries: dead-lettered by the consumer
    await _replayed_and_harmless(stack, http, victim, doomed["id"], service, letter)


async def _replayed_and_harmless(
    stack: Stack, http: aiohttp.ClientSession, user: User, order_id: str, service: str, letter: DeadLetter
) -> None:
    """Replay the dead letter, once its cause is gone: the order stays as its deadline left it, the
    credit stays exact, and the invariants hold (the replayed event reaches its service's inbox)."""
    before = await get_order(http, stack.url, user, order_id)
    replayed = await replay_dead_letters(stack.broker.operator_url, service, letter.message_id)
    assert [entry.message_id for entry in replayed] == [letter.message_id]
    await assert_invariants_once_quiet(stack)
    assert await get_order(http, stack.url, user, order_id) == before
    assert (await me(http, stack.url, user))["credit_used_cents"] == 0


async def test_sigterm_finishes_the_message_in_hand_rather_than_rolling_it_back(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """users_service gets SIGTERM while its reservation waits at COMMIT. It takes no more messages,
    finishes that one (commit, then ack) and exits 0; its successor is given nothing again."""
    stack = await fresh_stack(gateway=UNTHROTTLED)
    admin = stack.keys.admin_headers()
    user = await new_user(http, stack.url)
    async with commit_gate(stack.admin_dsn("users_service"), "credit_reservations", "INSERT") as gate:
        order = await place_order(http, stack.url, user, 100, admin=admin)
        await gate.wait_for_one("users_service's reservation waiting at its COMMIT")
        stack.users.terminate()

        async def draining() -> bool:
            return "finishing the messages in hand" in stack.users.log_text()

        await eventually(draining, what="users_service to stop taking messages and wait for its own")
        await gate.open()
        assert await stack.users.stopped() == 0
    first_life = stack.users.log_text()
    consumed = [
        line for line in first_life.splitlines() if "consumed" in line and f"order={order['id'][:8]}" in line
    ]
    assert consumed, "the message in hand was not finished before the exit"
    assert first_life.index(consumed[0]) > first_life.index("finishing the messages in hand")
    await stack.start("users_service")
    assert (await final_order(http, stack.url, user, order["id"]))["status"] == "APPROVED"
    await assert_invariants_once_quiet(stack)
    second_life = stack.users.log_text()[len(first_life) :]
    assert "duplicate skipped" not in second_life, "the finished message was delivered again"


async def test_a_cancel_that_overtakes_its_create_on_the_broker_leaves_no_credit_held(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """users_service's binding for orders.order.created is deleted, so the create comes back to
    orders_service's relay and waits there, while the cancel is delivered. users_service remembers the
    cancel, and the create, once its binding is back (declared again at start), reserves nothing."""
    slow_repair = {"QUEUE_CHECK_INTERVAL": "3600"}  # the binding comes back when the test says
    stack = await fresh_stack(gateway=UNTHROTTLED, users_service=slow_repair, orders_service=slow_repair)
    admin = stack.keys.admin_headers()
    user = await new_user(http, stack.url)
    orders_dsn, users_dsn = stack.admin_dsn("orders_service"), stack.admin_dsn("users_service")
    binding = f"bindings/{vhost_path(stack)}/e/{EXCHANGE}/q/{USERS_QUEUE.main}/orders.order.created"
    await stack.servers.rabbitmq.management.request("DELETE", binding)

    order = await place_order(http, stack.url, user, 100, admin=admin)

    async def create_came_back() -> bool:
        query = "SELECT count(*) FROM outbox WHERE event_type = 'orders.order.created' AND attempts > 0"
        return await count(orders_dsn, query) == 1

    await eventually(create_came_back, what="the unroutable OrderCreated returned to the relay")
    await cancel(http, stack, user, order["id"])

    async def cancel_remembered() -> bool:
        query = """
            SELECT count(*) FROM credit_reservations
            WHERE order_id = $1::uuid AND status = 'CANCELLED_BEFORE_CREATED'
        """
        return await count(users_dsn, query, order["id"]) == 1

    await eventually(cancel_remembered, what="users_service to take the cancel before any create")
    await stack.restart("users_service")

    async def create_delivered_late() -> bool:
        query = "SELECT count(*) FROM inbox WHERE event_type = 'orders.order.created'"
        return await count(users_dsn, query) == 1

    await eventually(create_delivered_late, within=60, what="the create delivered after the cancel")
    assert (await get_order(http, stack.url, user, order["id"]))["status"] == "CANCELLED"
    assert (await me(http, stack.url, user))["credit_used_cents"] == 0
    await assert_invariants_once_quiet(stack)


async def test_events_for_a_queue_deleted_while_its_service_was_down_are_kept_until_it_is_back(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """An operator deletes users_service's queue while it is down. Orders placed meanwhile are not
    lost in a broker that had nowhere to put them: each is decided once users_service is back."""
    stack = await fresh_stack(gateway=UNTHROTTLED)
    admin = stack.keys.admin_headers()
    user = await new_user(http, stack.url)
    assert await stack.users.stop() == 0
    await stack.servers.rabbitmq.management.request(
        "DELETE", f"queues/{vhost_path(stack)}/{USERS_QUEUE.main}"
    )
    orders = [await place_order(http, stack.url, user, 100 + n, admin=admin) for n in range(5)]
    await stack.start("users_service")
    decided = [await final_order(http, stack.url, user, order["id"], within=60) for order in orders]
    assert {order["status"] for order in decided} == {"APPROVED"}
    await assert_invariants_once_quiet(stack)
