"""`python -m shared.migrate`, as Kubernetes' migration Job runs it, against fresh databases.

It runs as a process, the way the Job runs it, so its argument parsing, its configuration from the
environment and its exit status are what is tested, not just the function underneath.
"""

import asyncio
import dataclasses
import os
import sys
from pathlib import Path

import asyncpg
import pytest

from shared.db import SHARED_MIGRATIONS, apply_migrations, migration_files
from shared.migrate import migration_directories
from tests.conftest import CreateDatabase

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("users_service", "orders_service")


@dataclasses.dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def applied(self) -> list[str]:
        return [
            line.removeprefix("applied ") for line in self.stdout.splitlines() if line.startswith("applied ")
        ]


async def run_migrate(*arguments: str, database_url: str | None) -> Run:
    environ = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    environ |= {"ENVIRONMENT": "development", "STARTUP_TIMEOUT": "10", "LOG_FORMAT": "json"}
    if database_url is not None:
        environ["DATABASE_URL"] = database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.migrate",
        *arguments,
        cwd=ROOT,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())


def every_migration_of(service: str) -> list[str]:
    """What the service itself applies at start, named as the runner names them."""
    own = ROOT / service / "migrations"
    return [
        f"{folder.parent.name}/{path.name}"
        for folder in (SHARED_MIGRATIONS, own)
        for _, path in migration_files(folder)
    ]


async def recorded(dsn: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        return [
            row["name"] for row in await connection.fetch("SELECT name FROM schema_migrations ORDER BY name")
        ]
    finally:
        await connection.close()


@pytest.mark.parametrize("service", SERVICES)
async def test_it_applies_every_migration_of_the_service_and_then_nothing(
    create_database: CreateDatabase, service: str
) -> None:
    dsn = await create_database("migrate")

    first = await run_migrate(service, database_url=dsn)
    assert first.returncode == 0, first.stderr
    assert first.applied == every_migration_of(service)
    assert sorted(await recorded(dsn)) == sorted(every_migration_of(service))

    again = await run_migrate(service, database_url=dsn)
    assert again.returncode == 0, again.stderr
    assert again.applied == []
    assert "up to date" in again.stdout
    assert sorted(await recorded(dsn)) == sorted(every_migration_of(service))


async def test_the_gateway_gets_its_own_migrations_and_not_the_outbox(
    create_database: CreateDatabase,
) -> None:
    dsn = await create_database("migrate")
    run = await run_migrate("gateway", database_url=dsn)
    assert run.returncode == 0, run.stderr
    assert run.applied == ["gateway/001_rate_limits.sql"]
    assert await recorded(dsn) == ["gateway/001_rate_limits.sql"]


async def test_the_service_finds_nothing_left_to_do_after_it(create_database: CreateDatabase) -> None:
    # The Job and the service's own start-up step must name migrations alike, or the service would
    # apply the Job's migrations a second time (and fail on tables that exist already).
    dsn = await create_database("migrate")
    assert (await run_migrate("orders_service", database_url=dsn)).returncode == 0
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        assert await apply_migrations(pool, [SHARED_MIGRATIONS, ROOT / "orders_service" / "migrations"]) == []
    finally:
        await pool.close()


async def test_two_runs_at_once_apply_each_migration_exactly_once(create_database: CreateDatabase) -> None:
    # A Job retried while its first pod still runs, or the Job racing a starting replica: the advisory
    # lock makes the second wait, and it then finds everything applied.
    dsn = await create_database("migrate")
    runs = await asyncio.gather(*(run_migrate("users_service", database_url=dsn) for _ in range(2)))
    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    first, second = (set(run.applied) for run in runs)
    assert not first & second, "a migration was applied by both"
    assert sorted(first | second) == sorted(every_migration_of("users_service"))
    assert sorted(await recorded(dsn)) == sorted(every_migration_of("users_service"))


async def test_it_refuses_to_run_without_a_database_url() -> None:
    run = await run_migrate("users_service", database_url=None)
    assert run.returncode == 2
    assert "DATABASE_URL" in run.stderr


async def test_it_refuses_a_service_whose_migrations_it_does_not_know() -> None:
    run = await run_migrate("shared", database_url="postgresql://127.0.0.1/unused")
    assert run.returncode == 2
    assert "'shared' is not a process of this system" in run.stderr
    with pytest.raises(ValueError, match="not a process"):
        migration_directories("json")
