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
from collections.abc import AsyncIterator, Callable, Sequence

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

    def envelope(self, event: Event, cause: Cause) -> Envelope:
        """The event in its envelope, checked against its contract. An event that breaks it raises
        ContractViolation: a bug, so the transaction rolls back rather than every consumer failing."""
        envelope = Envelope.wrap(
            event, source=self.source, cause=cause, traceparent=self.tracing.current_traceparent()
        )
        check_outgoing(envelope.to_json())
        publisher = bus().publisher.get(event.TYPE)
        if publisher != self.source:
            # Its consumers would refuse it anyway: they accept a type from its publisher only.
            raise ContractViolation(
                f"{self.source} emits {event.TYPE}, which the bus's contract has {publisher} publish"
            )
        return envelope

    @staticmethod
    async def write(connection: Connection, envelopes: Sequence[Envelope]) -> None:
        """The rows of `envelopes`, in the caller's transaction, in one statement however many there
        are: with the fields the relay publishes them with, so that it never parses a body again."""
        await connection.execute(
            """
            INSERT INTO outbox (event_id, event_type, body, correlation_id, traceparent, subject)
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
            """,
            [envelope.id for envelope in envelopes],
            [envelope.type for envelope in envelopes],
            [envelope.to_json().decode() for envelope in envelopes],
            [envelope.correlationid for envelope in envelopes],
            [envelope.traceparent for envelope in envelopes],
            [envelope.subject for envelope in envelopes],
        )

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
        """Announce `event` with this unit's change: its outbox row is written with the unit's
        other events, just before the commit, in one statement."""
        self.emitted.append(self.outbox.envelope(event, self.cause))

    def for_cause(self, cause: Cause) -> "UnitOfWork":
        """The same transaction, for work with a cause of its own: each event of a batch that a
        consumer applies together (shared/inbox.py) leads to events of its own story."""
        return dataclasses.replace(self, cause=cause)

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
                if work.emitted:
                    await outbox.write(connection, work.emitted)
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
