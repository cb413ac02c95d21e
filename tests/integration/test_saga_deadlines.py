"""Every saga ends (orders_service/deadlines.py), with orders_service's real app on the real Postgres
and RabbitMQ: an order that no answer decides is rejected when its deadline passes, once, however many
replicas sweep; an end that users_service has not answered is announced again until it is."""

import asyncio
import dataclasses
import datetime
import uuid
from typing import Any

import asyncpg
import orjson
import pytest
from pytest_aiohttp import AiohttpClient

from devstack.keys import KeyPair
from devstack.rabbitmq import Vhost
from devstack.waiting import eventually
from orders_service import db as orders_db
from orders_service.app import create_app
from orders_service.config import OrdersConfig
from shared.app_keys import DB_POOL
from shared.config import Secret
from tests.conftest import CreateDatabase
from tests.integration.conftest import Client, new_product
from users_service.tokens import TokenIssuer


@pytest.fixture
async def orders_config(create_database: CreateDatabase, key_pair: KeyPair, broker: Vhost) -> OrdersConfig:
    """orders_service alone: no users_service answers it, so every order waits for its deadline."""
    return OrdersConfig(
        database_url=Secret(await create_database("orders")),
        rabbitmq_url=Secret(broker.url_for("orders_service")),
        jwt_public_key_file=str(key_pair.public),
        startup_timeout=5,
        saga_deadline_seconds=1.0,
        saga_sweep_interval=0.1,
    )


async def an_order_of_a_product(client: Client, admin: dict[str, str]) -> dict[str, Any]:
    """The body of an order of one of a product of the test's own."""
    return {"items": [{"sku": await new_product(client, admin, 500), "quantity": 1}]}


async def place(client: Client, issuer: TokenIssuer, body: dict[str, Any], request_id: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {issuer.issue(uuid.uuid4())}", "X-Request-ID": request_id}
    response = await client.post("/api/v2/orders", json=body, headers=headers)
    assert response.status == 202, await response.text()
    order: dict[str, Any] = await response.json()
    return order


async def ends(pool: asyncpg.Pool, order_id: str, event_type: str) -> list[dict[str, Any]]:
    """The envelopes of `event_type` about the order in the outbox, oldest first."""
    rows = await pool.fetch(
        """
        SELECT body FROM outbox
        WHERE event_type = $1 AND body::jsonb -> 'data' ->> 'order_id' = $2 ORDER BY id
        """,
        event_type,
        order_id,
    )
    return [orjson.loads(row["body"]) for row in rows]


async def test_an_order_nobody_answers_is_rejected_at_its_deadline_in_its_own_story(
    orders_config: OrdersConfig,
    issuer: TokenIssuer,
    admin_headers: dict[str, str],
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(create_app(orders_config))
    order = await place(
        client, issuer, await an_order_of_a_product(client, admin_headers), "story-of-the-slow-order"
    )
    pool = client.app[DB_POOL]

    async def rejected() -> list[dict[str, Any]] | None:
        return await ends(pool, order["id"], "orders.order.rejected") or None

    [end] = await eventually(rejected, what="the order rejected by its deadline")
    assert end["data"]["reason"] == "deadline_exceeded"
    assert end["dataversion"] == 2
    assert end["correlationid"] == "story-of-the-slow-order"  # told in the order's own story
    stored = await pool.fetchrow(
        "SELECT status, rejection_reason FROM orders WHERE id = $1", uuid.UUID(order["id"])
    )
    assert stored is not None
    assert dict(stored) == {
        "status": "REJECTED",
        "rejection_reason": "deadline_exceeded",
    }


async def test_three_replicas_sweeping_together_reject_each_order_once(
    orders_config: OrdersConfig,
    issuer: TokenIssuer,
    admin_headers: dict[str, str],
    aiohttp_client: AiohttpClient,
) -> None:
    replicas = [await aiohttp_client(create_app(orders_config)) for _ in range(3)]
    body = await an_order_of_a_product(replicas[0], admin_headers)  # one database: every replica sells it
    placed = await asyncio.gather(*(place(replicas[n % 3], issuer, body, f"swept-{n}") for n in range(30)))
    pool = replicas[0].app[DB_POOL]

    async def all_decided() -> bool:
        pending: int = await pool.fetchval("SELECT count(*) FROM orders WHERE status = 'PENDING'")
        return pending == 0

    await eventually(all_decided, what="every order past its deadline rejected")
    for order in placed:
        assert len(await ends(pool, order["id"], "orders.order.rejected")) == 1, order["id"]


async def test_an_end_users_service_has_not_answered_is_announced_again_until_it_is(
    orders_config: OrdersConfig,
    issuer: TokenIssuer,
    admin_headers: dict[str, str],
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(create_app(dataclasses.replace(orders_config, saga_deadline_seconds=0.5)))
    user = uuid.uuid4()
    headers = {"Authorization": f"Bearer {issuer.issue(user)}"}
    placed = await client.post(
        "/api/v2/orders", json=await an_order_of_a_product(client, admin_headers), headers=headers
    )
    order = await placed.json()
    assert (await client.post(f"/api/v2/orders/{order['id']}/cancel", headers=headers)).status == 202
    pool = client.app[DB_POOL]

    async def announced_again() -> bool:
        return len(await ends(pool, order["id"], "orders.order.cancelled")) >= 2

    await eventually(announced_again, what="the cancel announced again")
    # users_service's answer (here, as its handler notes it): it holds nothing for the order. The
    # sweep looks only for unanswered ends, so there is nothing left for it to announce.
    async with pool.acquire() as connection:
        await orders_db.note_credit_settled(connection, uuid.UUID(order["id"]))
    assert await orders_db.unsettled(pool, datetime.timedelta(0), 10) == []
