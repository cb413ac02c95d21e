"""Retention (shared/retention.py) on the real Postgres: old rows go, young and unpublished ones stay,
replicas pruning together share the work; and an event that comes again after its inbox row was pruned
changes nothing, on either side of the saga, with both services' real apps on the real RabbitMQ."""

import asyncio
import datetime
import uuid
from collections.abc import Callable

import asyncpg
import pytest

from devstack.rabbitmq import Vhost
from devstack.waiting import eventually
from shared.app_keys import DB_POOL
from shared.retention import prune_inbox, prune_published_outbox
from tests.integration.conftest import Client, new_product
from tests.support import publish_raw

HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)
NOW = datetime.timedelta(0)


@pytest.fixture
def pool(shared_tables: asyncpg.Pool) -> asyncpg.Pool:
    return shared_tables


async def add_outbox_row(pool: asyncpg.Pool, *, age: datetime.timedelta, published: bool) -> uuid.UUID:
    event_id = uuid.uuid4()
    await pool.execute(
        """
        INSERT INTO outbox (event_id, event_type, body, created_at, published_at)
        VALUES ($1, 'test.thing.happened', '{}', now() - $2::interval,
                CASE WHEN $3 THEN now() - $2::interval END)
        """,
        event_id,
        age,
        published,
    )
    return event_id


async def add_inbox_row(pool: asyncpg.Pool, *, age: datetime.timedelta) -> uuid.UUID:
    event_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO inbox (event_id, event_type, received_at) VALUES ($1, 'test', now() - $2::interval)",
        event_id,
        age,
    )
    return event_id


async def outbox_ids(pool: asyncpg.Pool) -> set[uuid.UUID]:
    return {row["event_id"] for row in await pool.fetch("SELECT event_id FROM outbox")}


async def test_published_outbox_rows_go_when_old_and_unpublished_ones_never(pool: asyncpg.Pool) -> None:
    old = await add_outbox_row(pool, age=2 * HOUR, published=True)
    young = await add_outbox_row(pool, age=datetime.timedelta(minutes=5), published=True)
    stuck = await add_outbox_row(pool, age=30 * DAY, published=False)  # waiting for the relay, or set aside

    assert await prune_published_outbox(pool, HOUR) == 1
    assert await outbox_ids(pool) == {young, stuck}
    assert old not in await outbox_ids(pool)
    assert await prune_published_outbox(pool, NOW) == 1  # the young one, once it is old enough
    assert await outbox_ids(pool) == {stuck}


async def test_inbox_rows_go_when_old(pool: asyncpg.Pool) -> None:
    await add_inbox_row(pool, age=2 * DAY)
    young = await add_inbox_row(pool, age=HOUR)

    assert await prune_inbox(pool, DAY) == 1
    assert [row["event_id"] for row in await pool.fetch("SELECT event_id FROM inbox")] == [young]


async def test_replicas_pruning_together_delete_every_row_once_between_them(pool: asyncpg.Pool) -> None:
    await pool.execute(
        """
        INSERT INTO outbox (event_id, event_type, body, created_at, published_at)
        SELECT gen_random_uuid(), 'test.thing.happened', '{}', now() - interval '2 hours',
               now() - interval '2 hours'
        FROM generate_series(1, 25000)
        """
    )
    deleted = await asyncio.gather(*(prune_published_outbox(pool, HOUR) for _ in range(3)))
    assert sum(deleted) == 25000
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def _wait_applied_again(pool: asyncpg.Pool, event_id: uuid.UUID, what: str) -> None:
    async def in_inbox() -> bool:
        found: bool = await pool.fetchval("SELECT exists(SELECT FROM inbox WHERE event_id = $1)", event_id)
        return found

    await eventually(in_inbox, what=what)


async def _state(pool: asyncpg.Pool, query: str) -> list[dict[str, object]]:
    return [dict(row) for row in await pool.fetch(query)]


async def test_an_event_that_comes_again_after_its_inbox_row_was_pruned_changes_nothing(
    users_client: Client,
    orders_client: Client,
    token_for: Callable[[uuid.UUID], dict[str, str]],
    admin_headers: dict[str, str],
    broker: Vhost,
) -> None:
    users_pool, orders_pool = users_client.app[DB_POOL], orders_client.app[DB_POOL]
    registered = await users_client.post(
        "/api/v2/users", json={"email": "late@example.com", "name": "Late", "password": "correct-horse"}
    )
    user_id = uuid.UUID((await registered.json())["id"])
    tea = await new_product(orders_client, admin_headers, 1500)
    placed = await orders_client.post(
        "/api/v2/orders", json={"items": [{"sku": tea, "quantity": 2}]}, headers=token_for(user_id)
    )
    order_id = uuid.UUID((await placed.json())["id"])

    async def approved() -> bool:
        status: str = await orders_pool.fetchval("SELECT status FROM orders WHERE id = $1", order_id)
        return status == "APPROVED"

    await eventually(approved, what="the order approved")
    users_before = await _state(users_pool, "SELECT id, credit_used_cents FROM users")
    users_outbox_before = await _state(users_pool, "SELECT event_id FROM outbox ORDER BY id")
    orders_before = await _state(orders_pool, "SELECT id, status, updated_at FROM orders")
    orders_outbox_before = await _state(orders_pool, "SELECT event_id FROM outbox ORDER BY id")
    assert users_before == [{"id": user_id, "credit_used_cents": 3000}]

    # Every inbox row is pruned; then each side's event comes again, as a replayed dead letter would.
    assert await prune_inbox(users_pool, NOW) >= 1
    assert await prune_inbox(orders_pool, NOW) >= 1
    created = await orders_pool.fetchrow(
        "SELECT event_id, body FROM outbox WHERE event_type = 'orders.order.created'"
    )
    reserved = await users_pool.fetchrow(
        "SELECT event_id, body FROM outbox WHERE event_type = 'users.credit.reserved'"
    )
    assert created is not None
    assert reserved is not None
    await publish_raw(broker, created["body"].encode(), "orders.order.created")
    await publish_raw(broker, reserved["body"].encode(), "users.credit.reserved")
    await _wait_applied_again(users_pool, created["event_id"], "users_service took the create again")
    await _wait_applied_again(orders_pool, reserved["event_id"], "orders_service took the reservation again")

    assert await _state(users_pool, "SELECT id, credit_used_cents FROM users") == users_before
    assert await _state(users_pool, "SELECT event_id FROM outbox ORDER BY id") == users_outbox_before
    assert await _state(orders_pool, "SELECT id, status, updated_at FROM orders") == orders_before
    assert await _state(orders_pool, "SELECT event_id FROM outbox ORDER BY id") == orders_outbox_before
