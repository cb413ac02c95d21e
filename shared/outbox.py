"""The transactional outbox and its relay.

A state change and the event announcing it commit together, in one transaction (`unit_of_work`);
nothing is published from inside a request or a handler. The relay then publishes committed rows
with publisher confirms and marks a row published only after the broker has confirmed it.

So an event is never lost (I4): a crash after the commit leaves the row for the relay to publish,
and a crash after the publish but before the mark publishes it again, which the consumers' inbox
makes harmless.
"""

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable

import aio_pika
import asyncpg
import structlog
from aio_pika.abc import AbstractExchange, HeadersType

from shared.db import TRANSIENT_ERRORS, Connection
from shared.events import Cause, Envelope, Event, check_outgoing
from shared.metrics import MessagingMetrics
from shared.tracing import Tracing

log = structlog.get_logger("outbox")

CLOUDEVENTS_JSON = "application/cloudevents+json; charset=utf-8"
PRUNE_EVERY_SECONDS = 600.0
KEEP_PUBLISHED = "1 day"


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


async def outbox_backlog(pool: asyncpg.Pool) -> tuple[int, float]:
    """How many rows wait to be published, and the age in seconds of the oldest (0 when none)."""
    row = await pool.fetchrow(
        """
        SELECT count(*) AS waiting,
               coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_seconds
        FROM outbox WHERE published_at IS NULL
        """
    )
    assert row is not None
    return row["waiting"], row["oldest_seconds"]


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


@contextlib.asynccontextmanager
async def unit_of_work(pool: asyncpg.Pool, outbox: Outbox, cause: Cause) -> AsyncIterator[UnitOfWork]:
    async with pool.acquire() as connection:
        async with connection.transaction():
            work = UnitOfWork(connection=connection, outbox=outbox, cause=cause)
            yield work
        # Committed: only now has the change happened and do its events exist, so only now is it
        # told (the callbacks first: the cause before the events it led to) and the relay woken.
        for callback in work.committed:
            callback()
        if work.emitted:
            outbox.nudge()
            for envelope in work.emitted:
                log.info("outbox written", **envelope.log_fields())


class OutboxRelay:
    """Publishes committed outbox rows. Any number of replicas may run: each claims its rows with
    FOR UPDATE SKIP LOCKED, so two relays never hold the same row at the same time."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        outbox: Outbox,
        exchange: AbstractExchange,
        batch_size: int,
        poll_interval: float,
        publish_timeout: float,
        metrics: MessagingMetrics,
    ) -> None:
        self.pool = pool
        self.outbox = outbox
        self.exchange = exchange
        self.metrics = metrics
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.publish_timeout = publish_timeout
        self._last_prune = 0.0
        self._stopping = False

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run`."""
        self._stopping = True
        self.outbox.nudge()

    async def run(self) -> None:
        """Publish until stopped. Failures back off and retry; the rows wait in the table."""
        backoff = 0.1
        while not self._stopping:
            # Cleared before looking, so a commit that lands during the batch still wakes us after.
            self.outbox.nudged.clear()
            try:
                published = await self.publish_batch()
                await self._prune_now_and_then()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the relay must outlive any failure; nothing is lost meanwhile
                if self._stopping:
                    return
                log.warning("outbox relay failed; retrying", error=repr(error), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if published < self.batch_size and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.outbox.nudged.wait(), self.poll_interval)

    async def publish_batch(self) -> int:
        """Claim a batch of unpublished rows, publish them, mark the confirmed ones; return the count."""
        async with self.pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                """
                SELECT id, event_type, body FROM outbox
                WHERE published_at IS NULL
                ORDER BY id
                LIMIT $1
                FOR UPDATE SKIP LOCKED
                """,
                self.batch_size,
            )
            if not rows:
                return 0
            outcomes = await asyncio.gather(*(self._publish(row) for row in rows), return_exceptions=True)
            confirmed = [row["id"] for row, outcome in zip(rows, outcomes, strict=True) if outcome is None]
            await connection.execute(
                "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", confirmed
            )
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            # The unconfirmed rows stay unpublished and are tried again; say why they failed.
            raise failures[0]
        return len(rows)

    async def _publish(self, row: asyncpg.Record) -> None:
        envelope = Envelope.from_own_json(row["body"].encode())
        headers: HeadersType = {}
        with self.outbox.tracing.producer_span(
            envelope.type, traceparent=envelope.traceparent, headers=headers
        ):
            message = aio_pika.Message(
                row["body"].encode(),
                headers=headers,  # the publish span's trace context, for the consumer's span
                content_type=CLOUDEVENTS_JSON,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=str(envelope.id),
                type=row["event_type"],
                correlation_id=envelope.correlationid,
            )
            started = time.perf_counter()
            # Mandatory: an event no queue would receive comes back as an error instead of vanishing.
            # The timeout: a publish whose confirm never comes must not hold the relay forever.
            await asyncio.wait_for(
                self.exchange.publish(message, routing_key=row["event_type"], mandatory=True),
                self.publish_timeout,
            )
        self.metrics.published.labels(envelope.type).inc()
        log.info(
            "published, confirmed",
            confirm_ms=round((time.perf_counter() - started) * 1000, 1),
            **envelope.log_fields(),
        )

    async def _prune_now_and_then(self) -> None:
        if time.monotonic() - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = time.monotonic()
        try:
            await self.pool.execute(
                f"DELETE FROM outbox WHERE published_at < now() - interval '{KEEP_PUBLISHED}'"
            )
        except TRANSIENT_ERRORS:
            self._last_prune = 0.0
