"""The unit of work on the real Postgres: a change and its events commit together or not at all, and a
connection that breaks under it is the database being unavailable, not the work being wrong."""

import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from shared.db import DATABASE_UNAVAILABLE
from shared.envelope import Cause
from shared.events import OrderCreated
from shared.unit_of_work import ConnectionLost, Outbox, UnitOfWork, unit_of_work

CAUSE = Cause(correlation_id="unit-of-work", causation_id="unit-of-work")


@pytest.fixture
async def pool(shared_tables: asyncpg.Pool) -> asyncpg.Pool:
    await shared_tables.execute("CREATE TABLE things (id uuid PRIMARY KEY)")
    return shared_tables


async def rows(pool: asyncpg.Pool) -> tuple[int, int]:
    things: int = await pool.fetchval("SELECT count(*) FROM things")
    events: int = await pool.fetchval("SELECT count(*) FROM outbox")
    return things, events


async def test_a_change_and_its_event_commit_together(pool: asyncpg.Pool) -> None:
    outbox = Outbox(source="orders_service")
    async with unit_of_work(pool, outbox, CAUSE) as work:
        await work.connection.execute("INSERT INTO things VALUES ($1)", uuid.uuid4())
        await work.emit(OrderCreated(uuid.uuid4(), uuid.uuid4(), 100))
    assert await rows(pool) == (1, 1)
    assert outbox.nudged.is_set()  # the relay is woken after the commit


async def write_then(
    pool: asyncpg.Pool, outbox: Outbox, then: Callable[[UnitOfWork], Awaitable[None]]
) -> None:
    """A change and its event, then `then` in the same unit of work."""
    async with unit_of_work(pool, outbox, CAUSE) as work:
        await work.connection.execute("INSERT INTO things VALUES ($1)", uuid.uuid4())
        await work.emit(OrderCreated(uuid.uuid4(), uuid.uuid4(), 100))
        await then(work)


async def a_bug(_: UnitOfWork) -> None:
    raise ZeroDivisionError


async def a_broken_connection(work: UnitOfWork) -> None:
    work.connection.terminate()
    await work.connection.execute("SELECT 1")


async def test_a_failure_rolls_back_the_change_and_its_event(pool: asyncpg.Pool) -> None:
    outbox = Outbox(source="orders_service")
    with pytest.raises(ZeroDivisionError):
        await write_then(pool, outbox, a_bug)
    assert await rows(pool) == (0, 0)
    assert not outbox.nudged.is_set()


async def test_a_connection_that_breaks_mid_transaction_is_the_database_unavailable(
    pool: asyncpg.Pool,
) -> None:
    # As when the server goes away (a restart, a failover): asyncpg then raises errors of its own
    # about a closed connection, which must not read as a bug (500) or a failed message.
    with pytest.raises(ConnectionLost) as raised:
        await write_then(pool, Outbox(source="orders_service"), a_broken_connection)
    assert isinstance(raised.value, DATABASE_UNAVAILABLE)
    assert await rows(pool) == (0, 0)
