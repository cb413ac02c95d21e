"""The outbox relay: the publishing half of the transactional outbox.

It publishes committed outbox rows with publisher confirms and marks a row published only after the
broker has confirmed it. So an event is never lost (I4): a crash after the commit leaves the row for
the relay to publish, and a crash after the publish but before the mark publishes it again, which the
consumers' inbox makes harmless.

It never stalls on a row. While the broker is away, every row waits and the relay backs off. A row
the broker returns (no queue would take it) or refuses, or one that cannot be made into a message at
all, is the row's own trouble: it is tried again later, less and less often, and the rows behind it go
on being published; after MAX_ATTEMPTS, or at once when it can never be published as it is, it is set
aside for an operator (shared/parked.py), counted and logged.

It costs little per event. A batch is claimed in one statement and marked in one; its rows carry what
the message needs beside the body (shared/migrations/004), so a body goes out as it was stored,
never parsed again; and two batches are in hand at once, so that the next is claimed and sent while
the broker confirms the last. Claims take turns, and a batch's publishes start within its turn, so
they queue for the channel before the next batch's rows have even come back from Postgres: one relay
sends its rows in the order they were written.
"""

import asyncio
import contextlib
import dataclasses
import datetime
import time

import asyncpg
import structlog
from aio_pika.abc import AbstractExchange, HeadersType

from shared.broker import BROKER_UNAVAILABLE
from shared.bus_contract import bus
from shared.db import Connection
from shared.envelope import log_fields
from shared.messages import stored_event_message
from shared.metrics import MessagingMetrics, known_type
from shared.unit_of_work import Outbox

log = structlog.get_logger("outbox")

# A row that fails on its own is tried again after 1, 2, 4 ... seconds, at most RETRY_CAP apart, and set
# aside after MAX_ATTEMPTS (about an hour of attempts): by then an alert has long said why.
MAX_ATTEMPTS = 20
RETRY_CAP = datetime.timedelta(minutes=5)
# Failures that no later attempt can mend: the row cannot be made into a message as it is.
CANNOT_BE_PUBLISHED = (TypeError, ValueError, KeyError)
MAX_ERROR_TEXT = 500
# Batches in hand at once: one waiting for its confirms while the next is claimed and sent. More would
# add connections held, not speed: the claims take turns.
BATCHES_IN_HAND = 2


@dataclasses.dataclass(frozen=True)
class Backlog:
    waiting: int  # rows to publish, set-aside ones apart
    oldest_seconds: float  # the age of the oldest of those (0 when none)
    set_aside: int  # rows waiting for an operator


async def outbox_backlog(pool: asyncpg.Pool) -> Backlog:
    row = await pool.fetchrow(
        """
        SELECT count(*) FILTER (WHERE set_aside_at IS NULL) AS waiting,
               coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE set_aside_at IS NULL)), 0)
                   ::float8 AS oldest_seconds,
               count(*) FILTER (WHERE set_aside_at IS NOT NULL) AS set_aside
        FROM outbox WHERE published_at IS NULL
        """
    )
    assert row is not None
    return Backlog(row["waiting"], row["oldest_seconds"], row["set_aside"])


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
        user_id: str | None,
        metrics: MessagingMetrics,
    ) -> None:
        self.pool = pool
        self.user_id = user_id  # the broker user it publishes as, which the broker checks
        self.outbox = outbox
        self.exchange = exchange
        self.metrics = metrics
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.publish_timeout = publish_timeout
        self._stopping = False
        self._claiming = asyncio.Lock()

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run`."""
        self._stopping = True
        self.outbox.nudge()

    async def run(self) -> None:
        """Publish until stopped, BATCHES_IN_HAND batches at a time. Failures back off and retry; the
        rows wait in the table."""
        await asyncio.gather(*(self._publish_until_stopped() for _ in range(BATCHES_IN_HAND)))

    async def _publish_until_stopped(self) -> None:
        backoff = 0.1
        while not self._stopping:
            # Cleared before looking, so a commit that lands during the batch still wakes us after.
            self.outbox.nudged.clear()
            try:
                published = await self.publish_batch()
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
        """Claim a batch of rows due for publishing, publish them, mark the confirmed ones, postpone
        the ones that failed on their own; return how many were claimed. Raises when the broker is
        away, after marking what it did confirm."""
        async with self.pool.acquire() as connection, connection.transaction():
            async with self._claiming:
                rows = await connection.fetch(
                    """
                    SELECT id, event_id, event_type, body, correlation_id, traceparent, subject FROM outbox
                    WHERE published_at IS NULL AND set_aside_at IS NULL
                      AND (retry_at IS NULL OR retry_at <= now())
                    ORDER BY id
                    LIMIT $1
                    FOR UPDATE SKIP LOCKED
                    """,
                    self.batch_size,
                )
                # Started in the claim's turn: they queue for the channel before the next batch's.
                publishes = [asyncio.ensure_future(self._publish(row)) for row in rows]
            if not rows:
                return 0
            outcomes = await asyncio.gather(*publishes, return_exceptions=True)
            confirmed: list[int] = []
            failed: list[tuple[asyncpg.Record, Exception]] = []
            broker_away: list[BaseException] = []
            for row, outcome in zip(rows, outcomes, strict=True):
                if outcome is None:
                    confirmed.append(row["id"])
                elif isinstance(outcome, BROKER_UNAVAILABLE):
                    broker_away.append(outcome)
                elif isinstance(outcome, Exception):
                    failed.append((row, outcome))
                else:
                    raise outcome  # cancelled: the rows stay as they were
            await connection.execute(
                "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", confirmed
            )
            if failed:
                await self._postpone(connection, failed)
        if broker_away:
            # The rows it did not confirm stay unpublished and are tried again; say why.
            raise broker_away[0]
        return len(rows)

    async def _postpone(self, connection: Connection, failed: list[tuple[asyncpg.Record, Exception]]) -> None:
        """Each failed row waits longer before its next attempt; set aside after the last one, or at
        once when it can never be published as it is."""
        postponed = await connection.fetch(
            """
            UPDATE outbox AS o
            SET attempts = o.attempts + 1,
                last_error = f.error,
                retry_at = now() + least(interval '1 second' * power(2, o.attempts), $4::interval),
                set_aside_at = CASE WHEN f.permanent OR o.attempts + 1 >= $5 THEN now() END
            FROM unnest($1::bigint[], $2::text[], $3::bool[]) AS f(id, error, permanent)
            WHERE o.id = f.id
            RETURNING o.id, o.event_type, o.attempts, o.set_aside_at IS NOT NULL AS set_aside, o.last_error
            """,
            [row["id"] for row, _ in failed],
            [repr(error)[:MAX_ERROR_TEXT] for _, error in failed],
            [isinstance(error, CANNOT_BE_PUBLISHED) for _, error in failed],
            RETRY_CAP,
            MAX_ATTEMPTS,
        )
        for row in postponed:
            self.metrics.publish_failures.labels(known_type(row["event_type"])).inc()
            if row["set_aside"]:
                self.metrics.set_aside.labels(known_type(row["event_type"])).inc()
                log.error(
                    "outbox row set aside", row=row["id"], type=row["event_type"], error=row["last_error"]
                )
            else:
                log.warning(
                    "publish failed; the row is tried again later",
                    row=row["id"],
                    type=row["event_type"],
                    attempts=row["attempts"],
                    error=row["last_error"],
                )

    async def _publish(self, row: asyncpg.Record) -> None:
        if row["correlation_id"] is None:
            # Not written by Outbox.write (by hand, or a body the migration that added the column
            # could not read): there is nothing to send it with.
            raise ValueError("the row has no correlation_id: it was not written by the outbox")
        event_type: str = row["event_type"]
        headers: HeadersType = {}
        with self.outbox.tracing.producer_span(event_type, traceparent=row["traceparent"], headers=headers):
            # The headers: the publish span's trace context, for the consumer's span.
            message = stored_event_message(
                row["body"].encode(),
                event_id=str(row["event_id"]),
                event_type=event_type,
                correlation_id=row["correlation_id"],
                user_id=self.user_id,
                headers=headers,
            )
            started = time.perf_counter()
            # Mandatory where some service must receive it: an event that no queue takes (its queue
            # deleted by hand) comes back as an error, and its row waits, instead of it vanishing.
            # The timeout: a publish whose confirm never comes must not hold the relay forever.
            await asyncio.wait_for(
                self.exchange.publish(message, routing_key=event_type, mandatory=self._must_reach(row)),
                self.publish_timeout,
            )
        self.metrics.published.labels(known_type(event_type)).inc()
        log.info(
            "published, confirmed",
            confirm_ms=round((time.perf_counter() - started) * 1000, 1),
            **log_fields(event_type, row["correlation_id"], row["subject"]),
        )

    @staticmethod
    def _must_reach(row: asyncpg.Record) -> bool:
        return bool(bus().receivers.get(row["event_type"]))
