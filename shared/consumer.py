"""Consuming events: at-least-once delivery from RabbitMQ, effectively-once effects in Postgres.

For each message:

1. Parse the envelope and check the event against its schema (shared/contracts/). A message that
   cannot be parsed, breaks its schema, or has an unknown type or data version can never succeed:
   it goes to the dead-letter queue at once.
2. In ONE transaction: record the event id in the inbox (a duplicate finds it there and is skipped),
   apply the handler's change, and write any new events to the outbox.
3. Only after the commit, ack. A crash before the ack means a redelivery, which step 2 skips.

A handler that raises is retried later through the retry queues (growing delays), then
dead-lettered; either way the consumer moves on. A database that is down is not the message's
fault: the same message is tried again in place until the database is back, without burning its
retries.
"""

import asyncio
import contextlib
import datetime
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from shared.db import TRANSIENT_ERRORS
from shared.envelope import Envelope, InvalidEvent
from shared.events import EVENT_TYPES, Event
from shared.messages import copy_of
from shared.metrics import MessagingMetrics
from shared.topology import ConsumerQueues
from shared.unit_of_work import Outbox, UnitOfWork, unit_of_work

log = structlog.get_logger("consumer")

# A handler gets the unit of work (its connection and `emit`) and the typed event. The table that
# maps event classes to handlers is the one place a service says what it reacts to.
Handler = Callable[[UnitOfWork, Any], Awaitable[None]]
HandlerTable = Mapping[type[Event], Handler]

ATTEMPT_HEADER = "x-attempt"
MAX_ERROR_TEXT = 500


class Consumer:
    def __init__(
        self,
        *,
        queues: ConsumerQueues,
        handlers: HandlerTable,
        pool: asyncpg.Pool,
        outbox: Outbox,
        channel: AbstractChannel,
        retry_delays_ms: tuple[int, ...],
        publish_timeout: float,
        metrics: MessagingMetrics,
    ) -> None:
        self.queues = queues
        self.metrics = metrics
        self.handlers = handlers
        self.pool = pool
        self.outbox = outbox
        self.channel = channel
        self.retry_delays_ms = retry_delays_ms
        self.publish_timeout = publish_timeout
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def start(self) -> None:
        self._queue = await self.channel.get_queue(self.queues.main, ensure=True)
        self._consumer_tag = await self._queue.consume(self._on_message)
        log.info("consuming", queue=self.queues.main)

    async def stop(self) -> None:
        """Take no new messages, and let the ones in hand finish (their acks included)."""
        self._stopping = True
        if self._queue is not None and self._consumer_tag is not None:
            # Bounded: with the broker unreachable, a robust channel would wait for it forever.
            # Then no message is coming anyway, and the unacked ones will be redelivered.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._queue.cancel(self._consumer_tag), self.publish_timeout)
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            await self._process(message)
        finally:
            self._in_flight.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        with self.outbox.tracing.consumer_span(_known_type(message.type), message.headers or {}):
            fields = {"type": message.type or "unknown"}
            try:
                envelope = Envelope.from_json(message.body)
                fields = envelope.log_fields()  # from here on, a dead letter is told with its story
                event = envelope.event()
                handler = self.handlers.get(type(event))
                if handler is None:
                    raise InvalidEvent(f"{self.queues.service} does not handle {envelope.type}")
            except InvalidEvent as error:
                await self._dead_letter(message, reason="invalid", error=str(error), fields=fields)
                return

            # Bound for the whole handling, so that whatever a handler logs joins the same story.
            with structlog.contextvars.bound_contextvars(correlation_id=envelope.correlationid):
                try:
                    applied = await self._apply_until_database_answers(envelope, event, handler)
                except _Abandoned:
                    return  # shutting down during a database outage: unacked, so it will be redelivered
                except Exception as error:
                    await self._retry_or_dead_letter(message, error, fields)
                    return
            if not applied:
                self.metrics.duplicates.labels(envelope.type).inc()
                log.info("duplicate skipped", **fields)
            await self._ack(message, fields)

    async def _apply_until_database_answers(self, envelope: Envelope, event: Event, handler: Handler) -> bool:
        backoff = 0.1
        while True:
            try:
                return await self._apply_once(envelope, event, handler)
            except TRANSIENT_ERRORS as error:
                if self._stopping:
                    raise _Abandoned from error
                log.warning(
                    "database unavailable; will retry the message", error=repr(error), retry_in=backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _apply_once(self, envelope: Envelope, event: Event, handler: Handler) -> bool:
        """Inbox, change and outbox in one transaction; False if the event was applied before."""
        async with unit_of_work(self.pool, self.outbox, envelope.as_cause()) as work:
            first_time = await work.connection.fetchval(
                """
                INSERT INTO inbox (event_id, event_type) VALUES ($1, $2)
                ON CONFLICT DO NOTHING RETURNING true
                """,
                envelope.id,
                envelope.type,
            )
            if not first_time:
                return False
            work.after_commit(lambda: self._consumed(envelope))
            await handler(work, event)
        return True

    def _consumed(self, envelope: Envelope) -> None:
        self.metrics.consumed.labels(envelope.type).inc()
        log.info("consumed", **envelope.log_fields())

    async def _retry_or_dead_letter(
        self, message: AbstractIncomingMessage, error: Exception, fields: dict[str, str]
    ) -> None:
        previous = (message.headers or {}).get(ATTEMPT_HEADER, 0)
        attempt = previous if isinstance(previous, int) else 0
        if attempt >= len(self.retry_delays_ms):
            await self._dead_letter(message, reason="retries exhausted", error=repr(error), fields=fields)
            return
        delay_ms = self.retry_delays_ms[attempt]
        published = await self._republish(
            message, self.queues.retry(delay_ms), {ATTEMPT_HEADER: attempt + 1}, fields
        )
        if published:
            self.metrics.retried.labels(_known_type(fields["type"])).inc()
            log.warning(
                "retry scheduled", attempt=attempt + 1, delay_ms=delay_ms, error=repr(error), **fields
            )
            await self._ack(message, fields)

    async def _dead_letter(
        self, message: AbstractIncomingMessage, *, reason: str, error: str, fields: dict[str, str]
    ) -> None:
        headers = {
            "x-dead-letter-reason": reason,
            "x-error": error[:MAX_ERROR_TEXT],
            "x-dead-lettered-at": datetime.datetime.now(datetime.UTC).isoformat(),
            "x-original-routing-key": message.routing_key or "",
        }
        if await self._republish(message, self.queues.dead_letter, headers, fields):
            self.metrics.dead_lettered.labels(_known_type(fields["type"])).inc()
            log.error("dead-lettered", reason=reason, error=error[:MAX_ERROR_TEXT], **fields)
            await self._ack(message, fields)

    async def _republish(
        self,
        message: AbstractIncomingMessage,
        queue: str,
        extra_headers: dict[str, Any],
        fields: dict[str, str],
    ) -> bool:
        """Publish a copy to one of our queues, confirmed, before the original is acked.

        If the copy cannot be published, the original is returned to the queue instead, so the
        message exists in one place or the other at every moment, never in neither.
        """
        copy = copy_of(message, {**(message.headers or {}), **extra_headers})
        try:
            await asyncio.wait_for(
                self.channel.default_exchange.publish(copy, routing_key=queue, mandatory=True),
                self.publish_timeout,
            )
            return True
        except Exception as error:
            log.warning(
                "could not move the message; returning it to the queue",
                queue=queue,
                error=repr(error),
                **fields,
            )
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return False

    async def _ack(self, message: AbstractIncomingMessage, fields: dict[str, str]) -> None:
        try:
            await message.ack()
        except Exception as error:
            # The channel this message came on is gone (a reconnect). The broker will redeliver it,
            # and the inbox will skip it: the effect is already committed.
            log.warning(
                "ack lost with the channel; a redelivery will be skipped", error=repr(error), **fields
            )


def _known_type(event_type: str | None) -> str:
    """An event type fit to name a span or label a metric: a hostile or broken message must not
    create a new time series for every type it makes up."""
    return event_type if event_type in EVENT_TYPES else "unknown"


class _Abandoned(Exception):
    """The message was left unacknowledged on purpose (shutdown); the broker will redeliver it."""
