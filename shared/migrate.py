"""Apply one service's database migrations, and nothing else, then exit.

    python -m shared.migrate PROCESS     # the process's package: a service, or the gateway

DATABASE_URL names the database, and it must be set: this command never guesses which database to
change. STARTUP_TIMEOUT, LOG_LEVEL and LOG_FORMAT mean what they mean for the services. It prints each
migration it applied (`applied <process>/001_....sql`), or that the database was up to date.

Every service also applies its own migrations when it starts (shared/service.py), with the same
runner, the same folders and under the same advisory lock, so the two never apply one migration
twice, whichever comes first. Both exist on purpose. Kubernetes runs this command once per release,
as a Job (deploy/k8s/base/migrations.yaml): a migration that fails shows as one failed Job with its
log, and a long one completes in the Job, which no probe restarts, while the new replicas wait on the
lock and then find nothing left to do. Where no Job runs (docker compose, `make dev`, the tests), the
services' own step suffices.
"""

import argparse
import asyncio
import dataclasses
import importlib.util
import sys
from pathlib import Path

from shared.bus_contract import bus
from shared.config import BaseConfig, ConfigError, Secret, config_class_of, setting
from shared.db import SHARED_MIGRATIONS, apply_migrations, create_pool
from shared.logging import configure_logging


@dataclasses.dataclass(frozen=True)
class MigrationConfig(BaseConfig):
    """What the command reads: the database only. A service's config would also demand a broker."""

    # Empty by default, unlike the services' local defaults: applying a schema to a database picked
    # by default is a mistake this command refuses to make.
    database_url: Secret = setting("DATABASE_URL", Secret(""), "The database to migrate (required).")


def with_events(process: str) -> bool:
    """Whether the process's database holds, besides its own tables, the shared library's outbox and
    inbox: it does when the process publishes or receives events (the bus's contract); a process
    that only watches them (the gateway's flow page) holds only its own."""
    contract = bus()
    return process in contract.publisher.values() or any(process in r for r in contract.receivers.values())


def migration_directories(process: str) -> list[Path]:
    """The folders the process applies at start, in the same order.

    The same folders, so that a migration has the same name (`<process>/001_....sql`) whether this
    command or the process applied it, and neither applies it again.
    """
    config_class_of(process)  # a process of the system: its package declares its config (not `shared`)
    spec = importlib.util.find_spec(process)
    own = Path(spec.origin).parent / "migrations" if spec is not None and spec.origin else None
    if own is None or not own.is_dir():
        raise ValueError(f"{process} has no migrations folder")
    return [SHARED_MIGRATIONS, own] if with_events(process) else [own]


async def migrate(dsn: str, service: str, *, startup_timeout: float) -> list[str]:
    """Apply what is missing; return the names of the migrations applied now."""
    directories = migration_directories(service)
    pool = await create_pool(dsn, max_size=1, startup_timeout=startup_timeout)
    try:
        return await apply_migrations(pool, directories)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.migrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("service", help="the process's package, e.g. users_service or gateway")
    arguments = parser.parse_args(argv)
    try:
        migration_directories(arguments.service)
    except (ValueError, ImportError) as error:
        parser.error(str(error))
    try:
        config = MigrationConfig.from_env()
    except ConfigError as error:
        parser.error(str(error))
    if not config.database_url.value:
        parser.error("set DATABASE_URL to the service's database")
    configure_logging(service="migrate", level=config.log_level, fmt=config.log_format)
    applied = asyncio.run(
        migrate(config.database_url.value, arguments.service, startup_timeout=config.startup_timeout)
    )
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print(f"{arguments.service}: the database is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
