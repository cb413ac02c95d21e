"""Starting against real dependencies: migrations once and only once, and dependencies that come late."""

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog

from devstack.ports import free_port
from devstack.servers import Servers
from devstack.waiting import eventually
from shared.broker import check_broker, connect_broker
from shared.db import SHARED_MIGRATIONS, apply_migrations, create_pool
from tests.conftest import CreateDatabase
from tests.support import tcp_relay, with_port

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = [SHARED_MIGRATIONS, ROOT / "orders_service" / "migrations"]


async def test_migrations_apply_once_even_when_two_replicas_start_together(
    create_database: CreateDatabase,
) -> None:
    dsn = await create_database("migrations")
    first = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    second = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        applied = await asyncio.gather(
            apply_migrations(first, MIGRATIONS),
            apply_migrations(second, MIGRATIONS),
        )
        assert sorted(applied, key=len) == [
            [],
            [
                "shared/001_outbox_and_inbox.sql",
                "shared/002_outbox_failures.sql",
                "shared/003_retention_indexes.sql",
                "shared/004_outbox_publishing_fields.sql",
                "orders_service/001_orders.sql",
                "orders_service/002_idempotency_keys.sql",
                "orders_service/003_saga_endings.sql",
                "orders_service/004_products.sql",
            ],
        ]
        assert await first.fetchval("SELECT count(*) FROM schema_migrations") == 8
        assert await apply_migrations(first, MIGRATIONS) == []
    finally:
        await first.close()
        await second.close()


async def test_a_failing_migration_leaves_nothing_behind(
    create_database: CreateDatabase, tmp_path: Path
) -> None:
    (tmp_path / "001_good.sql").write_text("CREATE TABLE kept (id int);")
    (tmp_path / "002_bad.sql").write_text("CREATE TABLE half_done (id int); SELECT no_such_column FROM kept;")
    pool = await asyncpg.create_pool(await create_database("migrations"), min_size=1, max_size=1)
    try:
        with pytest.raises(asyncpg.UndefinedColumnError):
            await apply_migrations(pool, [tmp_path])
        assert await pool.fetchval("SELECT to_regclass('half_done')") is None
        assert await pool.fetchval("SELECT array_agg(name) FROM schema_migrations") == [
            f"{tmp_path.parent.name}/001_good.sql"
        ]
    finally:
        await pool.close()


async def test_postgres_that_comes_up_late_is_waited_for(
    servers: Servers, create_database: CreateDatabase
) -> None:
    dsn = await create_database("late")
    port = free_port()
    with structlog.testing.capture_logs() as logs:
        connecting = asyncio.create_task(create_pool(with_port(dsn, port), max_size=1, startup_timeout=20))
        await _until_logged(logs, "postgres")
        async with tcp_relay(servers.postgres.host, servers.postgres.port, port):
            pool = await connecting
            assert await pool.fetchval("SELECT 1") == 1
            await pool.close()


async def test_rabbitmq_that_comes_up_late_is_waited_for(servers: Servers, rabbitmq_url: str) -> None:
    port = free_port()
    with structlog.testing.capture_logs() as logs:
        connecting = asyncio.create_task(connect_broker(with_port(rabbitmq_url, port), startup_timeout=20))
        await _until_logged(logs, "rabbitmq")
        async with tcp_relay(servers.rabbitmq.host, servers.rabbitmq.amqp_port, port):
            connection = await connecting
            await check_broker(connection)
            await connection.close()


async def test_a_dependency_that_never_comes_fails_start_up_after_the_deadline() -> None:
    with pytest.raises(OSError, match="Connect call failed"):
        await connect_broker(f"amqp://guest:guest@127.0.0.1:{free_port()}/", startup_timeout=0.5)


async def _until_logged(logs: list[MutableMapping[str, Any]], dependency: str) -> None:
    """Wait until the start-up code has failed once and said it is waiting (so it really retries)."""

    async def waiting() -> bool:
        return any(entry.get("dependency") == dependency for entry in logs)

    await eventually(waiting, within=10, what=f"a 'waiting for {dependency}' log line")
