"""The queue keeper (shared/resources.py) on the real RabbitMQ: a queue or a binding that an operator
deletes while the service runs is declared again within a check, and the service consumes again."""

import dataclasses
import uuid
from urllib.parse import quote

import aio_pika
import aiormq
import pytest
from pytest_aiohttp import AiohttpClient

from devstack.rabbitmq import Vhost
from devstack.servers import Servers
from devstack.waiting import eventually
from shared.app_keys import DB_POOL
from shared.envelope import Cause, Envelope
from shared.events import OrderCreated
from shared.topology import EXCHANGE, queues_for
from tests.integration.conftest import Client
from tests.support import publish_raw
from users_service.app import create_app
from users_service.config import UsersConfig

QUEUE = queues_for("users_service").main


@pytest.fixture
async def users(users_config: UsersConfig, aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(create_app(dataclasses.replace(users_config, queue_check_interval=0.2)))


async def consumers_on_the_queue(broker: Vhost) -> int:
    async with await aio_pika.connect(broker.admin_url) as connection:
        declared = await (await connection.channel()).declare_queue(QUEUE, passive=True)
        return declared.declaration_result.consumer_count or 0


async def queue_exists(broker: Vhost) -> bool:
    async with await aio_pika.connect(broker.admin_url) as connection:
        channel = await connection.channel()
        try:
            await channel.declare_queue(QUEUE, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        return True


async def bound(servers: Servers, broker: Vhost, routing_key: str) -> bool:
    path = f"bindings/{quote(broker.name, safe='')}/e/{EXCHANGE}/q/{QUEUE}"
    bindings = await servers.rabbitmq.management.request("GET", path)
    return routing_key in {binding["routing_key"] for binding in bindings}


async def reserves_credit(users: Client, broker: Vhost) -> None:
    """An order for a registered user is consumed: credit is reserved for it."""
    body = {"email": "kept@example.com", "name": "Kept", "password": "correct-horse"}
    registered = await users.post("/api/v2/users", json=body)
    assert registered.status == 201, await registered.text()
    created = OrderCreated(uuid.uuid4(), uuid.UUID((await registered.json())["id"]), 100)
    envelope = Envelope.wrap(created, source="orders_service", cause=Cause("kept", "kept"))
    await publish_raw(broker, envelope.to_json(), OrderCreated.TYPE)

    async def reserved() -> bool:
        query = "SELECT count(*) FROM credit_reservations WHERE order_id = $1"
        count: int = await users.app[DB_POOL].fetchval(query, created.order_id)
        return count == 1

    await eventually(reserved, what="the order consumed, its credit reserved")


async def test_a_queue_deleted_while_the_service_runs_is_declared_again_and_consumed_from(
    users: Client, servers: Servers, broker: Vhost
) -> None:
    # Deleted (the API answers once it is): repaired so fast that looking for its absence would race.
    await servers.rabbitmq.management.request("DELETE", f"queues/{quote(broker.name, safe='')}/{QUEUE}")
    await eventually(lambda: queue_exists(broker), what="the queue declared again")
    await reserves_credit(users, broker)
    # One consumer again, not two: the one the broker cancelled is never restored beside the new one.
    assert await consumers_on_the_queue(broker) == 1


async def test_a_binding_deleted_while_the_service_runs_is_declared_again(
    users: Client, servers: Servers, broker: Vhost
) -> None:
    binding = f"bindings/{quote(broker.name, safe='')}/e/{EXCHANGE}/q/{QUEUE}/{OrderCreated.TYPE}"
    await servers.rabbitmq.management.request("DELETE", binding)
    await eventually(lambda: bound(servers, broker, OrderCreated.TYPE), what="the binding declared again")
    await reserves_credit(users, broker)
