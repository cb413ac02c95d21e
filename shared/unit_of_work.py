"""One transaction: a state change and the events announcing it, committed together (the
transactional outbox's writing half).

Nothing is published from inside a request or a handler. A service changes its state and `emit`s
its events in one `unit_of_work`; the events are rows of the `outbox` table in the same transaction,
so they exist if and only if the change does. After the commit the relay is woken (shared/relay.py),
and it publishes them.
"""

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

import asyncpg
import structlog

from shared.bus_contract import bus
from shared.db import Connection
from shared.envelope import Cause, ContractViolation, Envelope, check_outgoing
from shared.events import Event
from shared.tracing import Tracing

log = structlog.get_logger("outbox")


class Outbox:
    """Where a service writes the events it emits; the relay is woken after each commit."""

    def __init__(self, source: str, tracing: Tracing | None = None) -> None:
        self.source = source
        self.tracing = tracing or Tracing(source, enabled=False)
        self.nudged = asyncio.Event()

    async def add(self, connection: Connection, event: Event, cause: Cause) -> Envelope:
        """Write the event in the caller's transaction. An event that breaks its contract raises
        ContractViolation: a bug, so the transaction rolls back rather than every consumer failing."""
        envelope = Envelope.wrap(
            event, source=self.source, cause=cause, traceparent=self.tracing.current_traceparent()
        )
        body = envelope.to_json()
        check_outgoing(body)
        publisher = bus().publisher.get(event.TYPE)
        if publisher != self.source:
            # Its consumers would refuse it anyway: they accept a type from its publisher only.
            raise ContractViolation(
                f"{self.source} emits {event.TYPE}, which the bus's contract has {publisher} publish"
            )
        await connection.execute(
            "INSERT INTO outbox (event_id, event_type, body) VALUES ($1, $2, $3)",
            envelope.id,
            envelope.type,
            body.decode(),
        )
        return envelope

    def nudge(self) -> None:
        """Wake the relay now rather than at its next poll (called after a commit, never before)."""
        self.nudged.set()


@dataclasses.dataclass
class UnitOfWork:
    """One transaction: the state changes made on `connection` and the events `emit`-ted in it."""

    connection: Connection
    outbox: Outbox
    cause: Cause
    emitted: list[Envelope] = dataclasses.field(default_factory=list)
    committed: list[Callable[[], None]] = dataclasses.field(default_factory=list)

    async def emit(self, event: Event) -> None:
        self.emitted.append(await self.outbox.add(self.connection, event, self.cause))

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the transaction has committed, and never if it rolls back (for what
        must count only what really happened, such as a metric)."""
        self.committed.append(callback)


class ConnectionLost(ConnectionError):
    """The connection broke under a unit of work: the server went away mid-transaction (a restart,
    a failover), and asyncpg reports it as an error of its own ("the underlying connection is
    closed", a protocol state it cannot switch). The database is unavailable; the work is not wrong,
    so it is answered 503, or tried again in place, like any lost connection (shared/db.py)."""


@contextlib.asynccontextmanager
async def unit_of_work(pool: asyncpg.Pool, outbox: Outbox, cause: Cause) -> AsyncIterator[UnitOfWork]:
    async with pool.acquire() as connection:
        try:
            async with connection.transaction():
                work = UnitOfWork(connection=connection, outbox=outbox, cause=cause)
                yield work
        except (asyncpg.InterfaceError, asyncpg.InternalClientError) as error:
            if _lost(connection):
                raise ConnectionLost(repr(error)) from error
            raise  # a misuse of an open connection: a bug

        # Committed: only now has the change happened and do its events exist, so only now is it
        # told (the callbacks first: the cause before the events it led to) and the relay woken.
        for callback in work.committed:
            callback()
        if work.emitted:
            outbox.nudge()
            for envelope in work.emitted:
                log.info("outbox written", **envelope.log_fields())


def _lost(connection: asyncpg.pool.PoolConnectionProxy) -> bool:
    try:
        return connection.is_closed()
    except asyncpg.InterfaceError:  # closed, and already taken back by the pool
        return True
