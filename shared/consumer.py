"""Consuming events: at-least-once delivery from RabbitMQ, effectively-once effects in Postgres.

For each message:

1. Admit it, cheaply, before anything else: its size, its envelope, its event against the schema
   (shared/contracts/), and its sender (the broker user that publishes its type, by the bus's
   contract). A message that is too large, cannot be parsed, breaks its schema, has an unknown type
   or data version, or comes from anyone but its type's publisher can never succeed: it goes to the
   dead-letter queue at once.
2. Apply it through the inbox (shared/inbox.py): in ONE transaction, record the event id in the inbox
   (a duplicate finds it there and is skipped), apply the handler's change, and write any new events
   to the outbox; the messages that wait together are applied together, in one transaction.
3. Only after the commit, ack. A crash before the ack means a redelivery, which step 2 skips.

A handler that raises is retried later through the retry queues (growing delays), then
dead-lettered; either way the consumer moves on. A database that cannot be reached is not the
message's fault: the same message is tried again in place, without burning its retries, for at most
`unavailable_wait` seconds; after that it takes the retry path like any other failure.

Whatever a message carries (any body, header or property), it costs bounded work and ends acked:
applied, retried or dead-lettered. Nothing it holds keeps a prefetch slot: a last resort dead-letters
what nothing else handled, and if even that cannot be published, rejects it without requeueing, which
the queue's own dead-lettering takes to the same dead-letter queue.
"""

import asyncio
import contextlib
import datetime
from collections.abc import Mapping
from typing import Any, Literal

import aiormq
import asyncpg
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from shared.broker import BROKER_UNAVAILABLE
from shared.envelope import Envelope, InvalidEvent
from shared.events import Event
from shared.inbox import Abandoned, Delivery, Handler, Inbox
from shared.messages import copy_of, sender_of
from shared.metrics import MessagingMetrics, known_type
from shared.topology import ConsumerQueues
from shared.unit_of_work import Outbox

log = structlog.get_logger("consumer")

# The table that maps event classes to handlers is the one place a service says what it reacts to.
HandlerTable = Mapping[type[Event], Handler]

# What becomes of a message that could not be moved to a retry or dead-letter queue: given back to its
# queue, or rejected to the queue's own dead-lettering.
NotMoved = Literal["requeue", "reject"]

ATTEMPT_HEADER = "x-attempt"
MAX_ERROR_TEXT = 500
# An event is a few hundred bytes; a body this large is not one, and is not parsed to find out.
MAX_EVENT_BYTES = 65_536


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
        unavailable_wait: float,
        batch_size: int,
        own_user: str | None,
        publishers: Mapping[str, str],
        metrics: MessagingMetrics,
    ) -> None:
        self.queues = queues
        self.metrics = metrics
        self.handlers = handlers
        self.outbox = outbox
        self.channel = channel
        self.retry_delays_ms = retry_delays_ms
        self.publish_timeout = publish_timeout
        self.inbox = Inbox(
            pool=pool,
            outbox=outbox,
            batch_size=batch_size,
            unavailable_wait=unavailable_wait,
            consumed=self._consumed,
            batched=metrics.batch_sizes.observe,
        )
        self.own_user = own_user  # this service's broker user, who signs the copies it makes
        self.publishers = publishers  # event type -> the broker user that publishes it
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def start(self) -> None:
        self._queue = await self.channel.get_queue(self.queues.main, ensure=True)
        self._consumer_tag = await self._queue.consume(self._on_message)
        log.info("consuming", queue=self.queues.main)

    async def consuming(self) -> bool:
        """Whether the broker still delivers to this consumer, as far as it has said: it cancels a
        consumer whose queue is deleted (basic.cancel)."""
        underlay = await self.channel.get_underlay_channel()
        return isinstance(underlay, aiormq.Channel) and self._consumer_tag in underlay.consumers

    async def consume_again(self, channel: AbstractChannel) -> None:
        """Consume anew on `channel`, once the queue is back (shared/resources.py's QueueKeeper).

        A new channel, because the old one may hold a consumer the broker never cancelled: a quorum
        queue deleted and at once declared again keeps delivering to it, and the old channel drops
        what arrives (RabbitMQ 3.10, where 4.0 does cancel it; tests/integration/test_queue_keeper.py).
        Closing that channel gives back whatever it held. The messages in hand finish first: their
        acks go on the old one."""
        if self._stopping:
            await channel.close()
            return
        old = self.channel
        if self._queue is not None and self._consumer_tag is not None:
            with contextlib.suppress(*BROKER_UNAVAILABLE):
                await asyncio.wait_for(self._queue.cancel(self._consumer_tag), self.publish_timeout)
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        with contextlib.suppress(*BROKER_UNAVAILABLE):
            await asyncio.wait_for(old.close(), self.publish_timeout)
        self.channel = channel
        await self.start()
        log.warning("consuming again, on a new channel: the queue had been deleted", queue=self.queues.main)

    async def stop(self) -> None:
        """Take no new messages, and let the ones in hand finish (their acks included)."""
        self._stopping = True
        self.inbox.stopping()
        if self._queue is not None and self._consumer_tag is not None:
            # Bounded: with the broker unreachable, a robust channel would wait for it forever.
            # Then no message is coming anyway, and the unacked ones will be redelivered.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._queue.cancel(self._consumer_tag), self.publish_timeout)
        if self._in_flight:
            log.info("finishing the messages in hand", count=len(self._in_flight))
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        await self.inbox.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            await self._process(message)
        except Exception as error:  # the last resort: no message may keep its prefetch slot
            await self._last_resort(message, error)
        finally:
            self._in_flight.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        with self.outbox.tracing.consumer_span(known_type(message.type), message.headers or {}) as span:
            fields = {"type": message.type or "unknown"}
            try:
                envelope = admitted(message)
                fields = envelope.log_fields()  # from here on, a dead letter is told with its story
                self._check_sender(message, envelope)
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
                    applied = await self.inbox.apply(Delivery(envelope, event, handler, span))
                except Abandoned:
                    return  # shutting down during a database outage: unacked, so it will be redelivered
                except Exception as error:
                    await self._retry_or_dead_letter(message, error, fields)
                    return
            if not applied:
                self.metrics.duplicates.labels(envelope.type).inc()
                log.info("duplicate skipped", **fields)
            await self._ack(message, fields)

    def _check_sender(self, message: AbstractIncomingMessage, envelope: Envelope) -> None:
        sender = sender_of(message, self.own_user)
        publisher = self.publishers.get(envelope.type)
        if publisher is not None and sender != publisher:
            # A forged event, or one published by mistake: whatever it says, it changes nothing.
            raise InvalidEvent(f"{envelope.type} from {sender or 'no user'}; only {publisher} publishes it")

    def _consumed(self, envelope: Envelope) -> None:
        self.metrics.consumed.labels(envelope.type).inc()
        log.info("consumed", **envelope.log_fields())

    async def _retry_or_dead_letter(
        self, message: AbstractIncomingMessage, error: Exception, fields: dict[str, str]
    ) -> None:
        attempt = attempts_so_far(message)
        if attempt >= len(self.retry_delays_ms):
            await self._dead_letter(message, reason="retries exhausted", error=repr(error), fields=fields)
            return
        delay_ms = self.retry_delays_ms[attempt]
        published = await self._republish(
            message, self.queues.retry(delay_ms), {ATTEMPT_HEADER: attempt + 1}, fields
        )
        if published:
            self.metrics.retried.labels(known_type(fields["type"])).inc()
            log.warning(
                "retry scheduled", attempt=attempt + 1, delay_ms=delay_ms, error=repr(error), **fields
            )
            await self._ack(message, fields)

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        *,
        reason: str,
        error: str,
        fields: dict[str, str],
        if_not_moved: NotMoved = "requeue",
    ) -> None:
        headers = _dead_letter_headers(message, reason, error)
        if await self._republish(
            message, self.queues.dead_letter, headers, fields, if_not_moved=if_not_moved
        ):
            self.metrics.dead_lettered.labels(known_type(fields["type"])).inc()
            log.error("dead-lettered", reason=reason, error=error[:MAX_ERROR_TEXT], **fields)
            await self._ack(message, fields)

    async def _last_resort(self, message: AbstractIncomingMessage, error: Exception) -> None:
        """What nothing else handled goes to the dead letters, with the reason. If it cannot be moved
        there, it is rejected without requeueing rather than given back: the failure may well be the
        message's own doing, and the queue's own dead-lettering takes a rejected message to the same
        dead-letter queue."""
        fields = {"type": message.type or "unknown"}
        try:
            await self._dead_letter(
                message, reason="unhandled", error=repr(error), fields=fields, if_not_moved="reject"
            )
        except Exception as last_error:
            log.error("could not dead-letter a message; rejecting it", error=repr(last_error), **fields)
            with contextlib.suppress(Exception):
                await message.reject(requeue=False)

    async def _republish(
        self,
        message: AbstractIncomingMessage,
        queue: str,
        extra_headers: dict[str, Any],
        fields: dict[str, str],
        *,
        if_not_moved: NotMoved = "requeue",
    ) -> bool:
        """Publish a copy to one of our queues, confirmed, before the original is acked.

        If the copy cannot be published, the original is given back to the queue instead ("requeue"),
        or rejected to the queue's own dead-lettering ("reject"), so the message exists in one place
        or another at every moment, never in none.
        """
        copy = copy_of(
            message,
            {**(message.headers or {}), **extra_headers},
            user_id=self.own_user,
            sender=sender_of(message, self.own_user),
        )
        try:
            await asyncio.wait_for(
                self.channel.default_exchange.publish(copy, routing_key=queue, mandatory=True),
                self.publish_timeout,
            )
            return True
        except Exception as error:
            log.warning(
                f"could not move the message; {if_not_moved}ing it", queue=queue, error=repr(error), **fields
            )
            with contextlib.suppress(Exception):
                if if_not_moved == "reject":
                    await message.reject(requeue=False)
                else:
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


def admitted(message: AbstractIncomingMessage) -> Envelope:
    """The message's envelope, if it is one we accept; an InvalidEvent otherwise. Its size is checked
    before anything is parsed."""
    if len(message.body) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"{len(message.body)} bytes: larger than any event ({MAX_EVENT_BYTES})")
    return Envelope.from_json(message.body)


def attempts_so_far(message: AbstractIncomingMessage) -> int:
    """How many times the message has been retried, from the header our retries set. A value we would
    never have written (negative, not an integer) counts as none: a header is never trusted to index."""
    value = (message.headers or {}).get(ATTEMPT_HEADER, 0)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


def _dead_letter_headers(message: AbstractIncomingMessage, reason: str, error: str) -> dict[str, Any]:
    return {
        "x-dead-letter-reason": reason,
        "x-error": error[:MAX_ERROR_TEXT],
        "x-dead-lettered-at": datetime.datetime.now(datetime.UTC).isoformat(),
        "x-original-routing-key": message.routing_key or "",
    }
