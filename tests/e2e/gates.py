"""A gate on a service's transactions, made from outside the code under test, to stop the system at a
moment of the test's choosing.

A deferred constraint trigger, installed by the test in the service's database, makes every
transaction that writes matching rows take an advisory lock at COMMIT. The test holds that lock, so
such a transaction waits at its COMMIT, with all its work done but nothing of it committed, until
the test opens the gate. Meanwhile the test can crash the service, send it SIGTERM, or look at the
broker; `abort_waiting` then ends the waiting transactions as the crash of their client would have,
had Postgres noticed it (a backend waiting on a lock notices nothing until the lock is free).
"""

import contextlib
from collections.abc import AsyncIterator
from typing import Literal

import asyncpg

from devstack.waiting import eventually

GATE_KEY = 4_242_424  # the advisory lock's key; advisory locks are per database, so per stack


class CommitGate:
    def __init__(self, holder: asyncpg.Connection, table: str) -> None:
        self._holder = holder  # holds the lock, and looks at the waiters
        self._table = table

    async def waiting(self) -> int:
        """How many transactions wait at the gate."""
        count: int = await self._holder.fetchval(
            """
            SELECT count(*) FROM pg_stat_activity
            WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'
            """
        )
        return count

    async def wait_for_one(self, what: str, within: float = 30.0) -> None:
        async def someone_waiting() -> bool:
            return await self.waiting() > 0

        await eventually(someone_waiting, within=within, what=what)

    async def abort_waiting(self) -> None:
        """End the waiting transactions: rolled back, as after a crash of their client."""
        # With a timeout, pg_terminate_backend returns once the backend is gone: none is left to take
        # the lock, and commit, when the gate opens.
        await self._holder.execute(
            """
            SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
            WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'
            """
        )

    async def open(self) -> None:
        """Let the waiting transactions commit, and no longer stop any. The lock goes first: dropping
        the trigger waits for the transactions that wrote the table, which wait for the lock."""
        await self._holder.execute("SELECT pg_advisory_unlock_all()")
        await self._holder.execute(f"DROP TRIGGER IF EXISTS test_commit_gate ON {self._table}")


@contextlib.asynccontextmanager
async def commit_gate(
    dsn: str, table: str, on: Literal["INSERT", "UPDATE"], when: str = "true"
) -> AsyncIterator[CommitGate]:
    """Close a gate on transactions that `on` rows of `table` matching `when` (a trigger's WHEN
    condition over NEW and, for UPDATE, OLD); it is opened on the way out whatever happens."""
    holder = await asyncpg.connect(dsn)
    try:
        await _trigger(
            holder,
            "test_commit_gate",
            f"PERFORM pg_advisory_xact_lock({GATE_KEY}); RETURN NULL;",
            f"CONSTRAINT TRIGGER test_commit_gate AFTER {on} ON {table} DEFERRABLE INITIALLY DEFERRED"
            f" FOR EACH ROW WHEN ({when})",
        )
        await holder.execute("SELECT pg_advisory_lock($1)", GATE_KEY)
        gate = CommitGate(holder, table)
        try:
            yield gate
        finally:
            await gate.open()
    finally:
        await holder.close()


@contextlib.asynccontextmanager
async def refusing(dsn: str, table: str, when: str) -> AsyncIterator[None]:
    """A fault in a service's database while the context lasts: every insert or update of `table`
    whose new row matches `when` raises, as a bug or a broken constraint would, and the service's
    transaction rolls back."""
    connection = await asyncpg.connect(dsn)
    try:
        await _trigger(
            connection,
            "test_refuse",
            "RAISE EXCEPTION 'refused by the test';",
            f"TRIGGER test_refuse BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW WHEN ({when})",
        )
        try:
            yield
        finally:
            await connection.execute(f"DROP TRIGGER IF EXISTS test_refuse ON {table}")
    finally:
        await connection.close()


async def _trigger(connection: asyncpg.Connection, name: str, body: str, trigger: str) -> None:
    """Install trigger `name`, made by `CREATE <trigger>`, running the PL/pgSQL `body`."""
    await connection.execute(
        f"""
        CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} END $$;
        CREATE {trigger} EXECUTE FUNCTION {name}();
        """
    )
