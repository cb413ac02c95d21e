"""The abuse table, bus side (issue 14): what a peer on the bus, hostile or buggy, can publish, run
against the real processes. Each test publishes what the attack publishes, checks where it ended up,
and then checks a bystander: another user's order still ends APPROVED within a deadline, and the
credit invariant holds exactly.
"""

import asyncio
import os
import sys
import uuid
from typing import Any

import aio_pika
import aiormq
import asyncpg
import pytest

from devstack.waiting import eventually
from shared.broker import connect_once
from shared.dlq import list_dead_letters
from shared.envelope import Cause, Envelope
from shared.events import CreditReserved, OrderCreated
from shared.topology import EXCHANGE
from tests.abuse.clients import BYSTANDER_DEADLINE, assert_bystander_served
from tests.e2e.api import User, get_order, new_user, place_order
from tests.e2e.conftest import Stack, StackFactory
from tests.e2e.saga_checker import assert_invariants_once_quiet
from tests.support import publish_raw

pytestmark = pytest.mark.e2e

# Retries in a blink, and few messages in hand at once: a stuck message shows at once.
QUICK = {"RETRY_DELAYS_MS": "50,100", "CONSUMER_PREFETCH": "4"}


async def dead_letters_of(stack: Stack, service: str, *, reason: str) -> int:
    letters = await list_dead_letters(stack.rabbitmq_url, service)
    return sum(1 for letter in letters if letter.reason == reason)


async def until_dead_lettered(stack: Stack, service: str, count: int, *, reason: str) -> None:
    async def all_there() -> bool:
        return await dead_letters_of(stack, service, reason=reason) == count

    await eventually(all_there, within=60, interval=0.5, what=f"{count} dead letters ({reason}) of {service}")


async def test_retry_counters_from_a_peer_never_stop_a_consumer(fresh_stack: StackFactory, http: Any) -> None:
    # Before: a negative x-attempt made the retry code raise IndexError inside its own error handling;
    # the message stayed unacked, and 24 of them held every prefetch slot: every later order PENDING.
    stack = await fresh_stack(orders_service=QUICK)
    bystander = await new_user(http, stack.url)
    for attempt in [-1] * 20 + ["-1", 2**62, True, None]:
        orphan = Envelope.wrap(
            CreditReserved(uuid.uuid4(), uuid.uuid4(), 100), source="users_service", cause=Cause("x", "x")
        )
        # As users_service itself would, so that only the header is hostile: a credit answer for an
        # order that does not exist, which its handler refuses every time.
        await publish_raw(stack.broker, orphan.to_json(), CreditReserved.TYPE, headers={"x-attempt": attempt})
    await assert_bystander_served(http, stack.url, bystander)
    # Each went through its retries and on to the dead letters, as any failing message does.
    await until_dead_lettered(stack, "orders_service", 24, reason="retries exhausted")
    await assert_invariants_once_quiet(stack)


async def test_oversized_ids_are_refused_at_the_door_and_never_copied_on(
    fresh_stack: StackFactory, http: Any
) -> None:
    # Before: users_service accepted 150 orders.order.created with a 300-character correlationid and
    # copied it into its answers, which the relay could never publish (an AMQP short string holds 255
    # bytes); it backed off the whole batch, and no event of users_service was published again.
    stack = await fresh_stack()
    bystander = await new_user(http, stack.url)
    victim = await new_user(http, stack.url)
    story = "x" * 300
    for _ in range(150):
        created = Envelope.wrap(
            OrderCreated(uuid.uuid4(), uuid.UUID(victim.id), 100),
            source="orders_service",
            cause=Cause(story, story),
        )
        await publish_raw(stack.broker, created.to_json(), OrderCreated.TYPE)
    await until_dead_lettered(stack, "users_service", 150, reason="invalid")
    await assert_bystander_served(http, stack.url, bystander)
    users_db = await asyncpg.connect(stack.admin_dsn("users_service"))
    try:
        assert await users_db.fetchval("SELECT count(*) FROM outbox WHERE length(body) > 1000") == 0
        assert await users_db.fetchval("SELECT credit_used_cents FROM users WHERE id = $1", victim.id) == 0
    finally:
        await users_db.close()
    await assert_invariants_once_quiet(stack)


async def test_rows_that_cannot_be_published_are_set_aside_and_the_relay_goes_on(
    fresh_stack: StackFactory, http: Any
) -> None:
    # The relay's own protection, whatever the contract lets through: rows that can never be made
    # into a message (their ids too long for an AMQP property), written before the bystander's.
    stack = await fresh_stack()
    bystander = await new_user(http, stack.url)
    story = "y" * 300
    bad = [
        Envelope.wrap(
            CreditReserved(uuid.uuid4(), uuid.uuid4(), 1), source="users_service", cause=Cause(story, story)
        )
        for _ in range(150)
    ]
    users_db = await asyncpg.connect(stack.admin_dsn("users_service"))
    try:
        await users_db.executemany(
            "INSERT INTO outbox (event_id, event_type, body, correlation_id) VALUES ($1, $2, $3, $4)",
            [(envelope.id, envelope.type, envelope.to_json().decode(), story) for envelope in bad],
        )
        await assert_bystander_served(http, stack.url, bystander)

        async def all_set_aside() -> bool:
            aside: int = await users_db.fetchval("SELECT count(*) FROM outbox WHERE set_aside_at IS NOT NULL")
            return aside == 150

        await eventually(all_set_aside, what="150 rows set aside")
        error = await users_db.fetchval(
            "SELECT last_error FROM outbox WHERE set_aside_at IS NOT NULL LIMIT 1"
        )
        assert "255" in error, error
        # The operator sees them, mends them (here: a shorter story), and puts them back.
        listed = await run_parked(stack, "list")
        assert "Found 150 set-aside outbox row(s) of users_service" in listed
        await users_db.execute(
            """
            UPDATE outbox SET body = replace(body, $1, 'mended'), correlation_id = 'mended'
            WHERE set_aside_at IS NOT NULL
            """,
            story,
        )
        assert "Put back 150 outbox row(s)" in await run_parked(stack, "retry")

        async def all_published() -> bool:
            waiting: int = await users_db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            return waiting == 0

        await eventually(all_published, what="the mended rows published")
    finally:
        await users_db.close()


async def run_parked(stack: Stack, command: str) -> str:
    """`make outbox` / `make outbox-retry` for users_service, with its settings."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.parked",
        command,
        "users_service",
        env={**os.environ, **stack.env["users_service"]},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    return output.decode()


async def test_a_forged_event_from_another_identity_changes_nothing(
    fresh_stack: StackFactory, http: Any
) -> None:
    # Before: any event was applied whoever sent it: a forged users.credit.reserved approved a
    # PENDING order with no credit reserved for it.
    stack = await fresh_stack()
    admin = stack.keys.admin_headers()
    buyer = await new_user(http, stack.url, credit_limit_cents=500, admin=admin)
    assert await stack.users.stop() == 0  # so that the order waits for a credit answer
    order = await place_order(http, stack.url, buyer, 400_000, admin=admin)  # far above the buyer's limit
    management = stack.servers.rabbitmq.management
    vhost = stack.broker.name
    # An identity of its own on the bus, allowed to publish anything to `events`: a neighbour's.
    await management.request("PUT", "users/intruder", {"password": "intruder", "tags": ""})
    await management.set_permissions(vhost, "intruder")
    forged = Envelope.wrap(
        CreditReserved(uuid.UUID(order["id"]), uuid.UUID(buyer.id), 400_000),
        source="users_service",
        cause=Cause("forged", "forged"),
    )
    intruder = stack.broker.url_as("intruder", "intruder")
    for user_id in ("intruder", None):
        await publish_as(intruder, forged.to_json(), CreditReserved.TYPE, user_id=user_id)
    # Nor can it pass itself off as users_service: the broker checks the user id.
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        await publish_as(intruder, forged.to_json(), CreditReserved.TYPE, user_id="users_service")
    # And orders_service's own user may not publish users_service's events at all.
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await publish_as(
            stack.broker.url_for("orders_service"),
            forged.to_json(),
            CreditReserved.TYPE,
            user_id="orders_service",
        )
    await until_dead_lettered(stack, "orders_service", 2, reason="invalid")
    assert (await get_order(http, stack.url, buyer, order["id"]))["status"] == "PENDING"
    await stack.start("users_service")
    await assert_decided(http, stack, buyer, order["id"], "REJECTED")
    await assert_invariants_once_quiet(stack)


async def publish_as(url: str, body: bytes, routing_key: str, *, user_id: str | None) -> None:
    async with await connect_once(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE)
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, user_id=user_id)
        await asyncio.wait_for(exchange.publish(message, routing_key=routing_key), 10)


async def assert_decided(http: Any, stack: Stack, user: User, order_id: str, status: str) -> None:
    async def decided() -> str | None:
        current = (await get_order(http, stack.url, user, order_id))["status"]
        return current if current != "PENDING" else None

    assert await eventually(decided, within=BYSTANDER_DEADLINE, what=f"order {order_id} decided") == status


async def test_messages_of_any_shape_are_dead_lettered_and_the_consumer_goes_on(
    fresh_stack: StackFactory, http: Any
) -> None:
    stack = await fresh_stack(users_service=QUICK)
    bystander = await new_user(http, stack.url)
    await assert_bystander_served(http, stack.url, bystander)
    # A real event, applied already: sent again, with hostile headers, it is skipped by the inbox.
    # (An event about an order nobody placed would not do: its answer would reach orders_service,
    # which knows no such order, and it would end in orders_service's dead letters.)
    orders_db = await asyncpg.connect(stack.admin_dsn("orders_service"))
    try:
        valid = (
            await orders_db.fetchval("SELECT body FROM outbox WHERE event_type = $1", OrderCreated.TYPE)
        ).encode()
    finally:
        await orders_db.close()
    shapes: list[tuple[bytes, dict[str, Any]]] = [
        (b"\x00\xff" * 1000, {}),  # not text
        (b"{" * 100_000, {}),  # deep and broken
        (b"[" * 2_000_000, {}),  # two megabytes: larger than any event
        (b"", {}),
        (valid, {"x-death": [{"count": -5, "queue": 7}], "x-attempt": "many", "x-error": "\x1b[2J"}),
        (valid.replace(b'"dataversion":1', b'"dataversion":99'), {}),
    ]
    for body, headers in shapes:
        await publish_raw(stack.broker, body, OrderCreated.TYPE, headers=headers)
    # The one valid event among them is skipped as the duplicate it is; every other one is a dead letter.
    await until_dead_lettered(stack, "users_service", len(shapes) - 1, reason="invalid")

    async def duplicate_skipped() -> bool:
        return "duplicate skipped" in stack.users.log_text()

    await eventually(duplicate_skipped, what="the valid one skipped by the inbox")
    await assert_bystander_served(http, stack.url, bystander)
    await assert_invariants_once_quiet(stack)
