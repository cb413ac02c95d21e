"""What the fault tests share: a stack that does not throttle them, a relay in front of the broker to
freeze orders_service's traffic with, and a look into a database from outside the system."""

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from tests.e2e.conftest import Stack
from tests.support import TcpRelay, with_port

# These tests drive bursts as fast as the stack answers, retrying a 503 at once: they test the saga
# under faults, not the gateway's rate limit, which would otherwise (rightly) answer 429.
UNTHROTTLED = {"RATE_LIMIT_PER_SECOND": "1000000", "RATE_LIMIT_BURST": "1000000"}


@contextlib.asynccontextmanager
async def broker_relay(stack: Stack) -> AsyncIterator[tuple[TcpRelay, str]]:
    broker = stack.servers.rabbitmq
    relay = TcpRelay(broker.host, broker.amqp_port)
    await relay.start()
    try:
        # orders_service's own broker URL, through the relay.
        yield relay, with_port(stack.broker.url_for("orders_service"), relay.port)
    finally:
        relay.sever()
        await relay.close()


async def count(dsn: str, query: str, *arguments: object) -> int:
    """The one number `query` answers, asked from outside the system (a superuser's `dsn`)."""
    connection = await asyncpg.connect(dsn)
    try:
        value: int = await connection.fetchval(query, *arguments)
        return value
    finally:
        await connection.close()
