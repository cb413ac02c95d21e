"""The outbox relay: the publishing half of the transactional outbox.

It publishes committed outbox rows with publisher confirms and marks a row published only after the
broker has confirmed it. So an event is never lost (I4): a crash after the commit leaves the row for
the relay to publish, and a crash after the publish but before the mark publishes it again, which the
consumers' inbox makes harmless.
"""

import asyncio
import contextlib
import time

import asyncpg
import structlog
from aio_pika.abc import AbstractExchange, HeadersType

from shared.db import TRANSIENT_ERRORS
from shared.envelope import Envelope
from shared.messages import event_message
from shared.metrics import MessagingMetrics
from shared.unit_of_work import Outbox

log = structlog.get_logger("outbox")

PRUNE_EVERY_SECONDS = 600.0
KEEP_PUBLISHED = "1 day"


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
            # The headers: the publish span's trace context, for the consumer's span.
            message = event_message(row["body"].encode(), envelope, headers)
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
