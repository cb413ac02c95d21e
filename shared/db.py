"""Postgres: a connection pool opened with retries, and a runner for numbered .sql migrations."""

import re
import socket
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import structlog

from shared.retry import retry_until_deadline

log = structlog.get_logger("db")

# What a query function accepts: a connection (inside a transaction, or borrowed from the pool) or
# the pool itself (for a single statement that needs no transaction).
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
Executor = Connection | asyncpg.Pool

# Failures that mean "the database cannot be reached right now", and nothing about the work that met
# them: a refused, reset or lost connection, a server starting up or shutting down, no connection slot
# left (a scale-up), or a standby that takes no writes (a failover not yet followed). Work that meets
# one waits and tries again, within a bound, rather than being counted as a failure of the work. A
# statement that timed out, a serialization conflict or a bug are failures of the work.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted, broken pipe
    socket.gaierror,  # its host name does not resolve (yet)
    asyncpg.PostgresConnectionError,  # class 08, the connection lost mid-query among them
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ReadOnlySQLTransactionError,
)
# For a caller that must answer now (an HTTP request, a rate limit): a statement that timed out is as
# good as no answer, whatever its reason, and the answer is "try again soon", not "a bug".
DATABASE_NOT_ANSWERING: tuple[type[BaseException], ...] = (*DATABASE_UNAVAILABLE, TimeoutError)
SHARED_MIGRATIONS = Path(__file__).parent / "migrations"

_MIGRATION_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# Two replicas starting at once must not both apply the same migration: they queue on this lock.
_MIGRATION_LOCK_ID = 0x6564615F6D6967  # "eda_mig"


async def _roll_back_if_needed(connection: asyncpg.Connection) -> None:
    """What a connection needs when it goes back to the pool: no transaction left open. asyncpg's
    default also resets session state (settings, advisory locks, LISTEN, cursors), which these
    services never leave behind, in one more round trip per transaction."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


async def create_pool(dsn: str, *, max_size: int, startup_timeout: float) -> asyncpg.Pool:
    async def connect() -> asyncpg.Pool:
        return await asyncpg.create_pool(
            dsn, min_size=1, max_size=max_size, command_timeout=30, reset=_roll_back_if_needed
        )

    pool = await retry_until_deadline(connect, what="postgres", deadline_seconds=startup_timeout)
    return pool


def migration_files(directory: Path) -> list[tuple[int, Path]]:
    """The migrations in a folder, in order; a misnamed or duplicated number is a bug."""
    found: dict[int, Path] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name!r} is not named NNN_lower_snake.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations share number {version:03d}")
        found[version] = path
    return sorted(found.items())


async def apply_migrations(pool: asyncpg.Pool, directories: Sequence[Path]) -> list[str]:
    """Apply, in order, the migrations of each folder not yet applied, each in its own transaction.

    A migration is known by its folder and file name ("shared/001_outbox_and_inbox.sql"), so the
    shared library's tables and the service's own are numbered independently. Returns what ran.
    """
    applied_now: list[str] = []
    async with pool.acquire() as connection:
        await connection.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
        try:
            await connection.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    name text PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            done = {row["name"] for row in await connection.fetch("SELECT name FROM schema_migrations")}
            for directory in directories:
                for _, path in migration_files(directory):
                    name = f"{directory.parent.name}/{path.name}"
                    if name in done:
                        continue
                    async with connection.transaction():
                        await connection.execute(path.read_text())
                        await connection.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                    log.info("migration applied", migration=name)
                    applied_now.append(name)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)
    return applied_now


async def check_database(pool: asyncpg.Pool) -> None:
    await pool.fetchval("SELECT 1")
