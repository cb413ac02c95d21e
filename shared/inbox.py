"""The inbox: each consumed event's effect applied once, and the events a consumer holds applied
together, in one transaction.

A consumer holds up to its prefetch of delivered messages. One at a time, each would cost a
transaction of its own: a commit, so a flush to disk, per event. The inbox applies whatever is waiting
when it is free in ONE transaction instead: their inbox rows in one statement (a duplicate, delivered
again or twice in the same batch, finds its id and is skipped), each handler in delivery order, and
every event they emit in one more statement (shared/unit_of_work.py). The batch adapts by itself: at
light load only one message waits, and it is applied alone, as soon as it arrives; under load, the
messages that arrive while one batch commits make the next one.

A batch keeps every guarantee of one message at a time:

- Nothing is acked before the commit that applied it: the consumer acks each message once `apply`
  has returned for it.
- One message's failure is its own. If anything in a batch fails (a handler raises, an event breaks
  its contract, two replicas' batches deadlock), the whole transaction rolls back and its messages are
  applied again one by one, each in its own transaction, so that the failure lands on the message that
  caused it (retried, then dead-lettered) and the others are applied once.
- Order is kept: messages are applied in the order they were delivered, one batch after the other.
- An unreachable database is no message's fault: the batch is tried again in place, for at most
  `unavailable_wait` seconds, then each message takes the retry path like any failure.
"""

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog
from opentelemetry.trace import Span, use_span

from shared.db import DATABASE_UNAVAILABLE
from shared.envelope import Envelope
from shared.events import Event
from shared.unit_of_work import Outbox, UnitOfWork, unit_of_work

log = structlog.get_logger("consumer")


class Abandoned(Exception):
    """The message was left unapplied on purpose (shutdown); unacked, the broker will redeliver it."""


# Why a batch may end with nothing applied and no message at fault: the database stayed unreachable
# (each message is retried later), or the consumer is stopping (each is redelivered).
_UNAPPLIED: tuple[type[BaseException], ...] = (*DATABASE_UNAVAILABLE, Abandoned)

# A handler gets the unit of work (its connection and `emit`) and the typed event.
Handler = Callable[[UnitOfWork, Any], Awaitable[None]]


@dataclasses.dataclass(eq=False)
class Delivery:
    """An admitted message, waiting to be applied: its event, its handler, and the span it is handled
    in (the batch runs its handler in that span, so the events it emits carry that trace)."""

    envelope: Envelope
    event: Event
    handler: Handler
    span: Span
    applied: "asyncio.Future[bool]" = dataclasses.field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Inbox:
    """Applies delivered events once each, in batches of at most `batch_size` (1: one at a time)."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        outbox: Outbox,
        batch_size: int,
        unavailable_wait: float,
        consumed: Callable[[Envelope], None],
        batched: Callable[[int], None],
    ) -> None:
        self.pool = pool
        self.outbox = outbox
        self.batch_size = batch_size
        self.unavailable_wait = unavailable_wait
        self.consumed = consumed  # told of each event applied, after the commit
        self.batched = batched  # told of each batch committed, with its size
        self._waiting: asyncio.Queue[Delivery] = asyncio.Queue()
        self._applier: asyncio.Task[None] | None = None
        self._stopping = False

    async def apply(self, delivery: Delivery) -> bool:
        """Apply the delivery's event with the others waiting; True once its effect has committed,
        False if it had been applied before. Raises what failed it, alone, or Abandoned."""
        if self._applier is None or self._applier.done():
            self._applier = asyncio.create_task(self._apply_forever(), name="inbox")
        await self._waiting.put(delivery)
        return await delivery.applied

    def stopping(self) -> None:
        """From now on, a database outage abandons the messages in hand rather than waiting."""
        self._stopping = True

    async def close(self) -> None:
        """Stop applying; whatever still waits is abandoned, to be redelivered."""
        self._stopping = True
        if self._applier is not None:
            self._applier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._applier
        while not self._waiting.empty():
            _settle(self._waiting.get_nowait(), error=Abandoned())

    async def _apply_forever(self) -> None:
        while True:
            batch = [await self._waiting.get()]
            while len(batch) < self.batch_size and not self._waiting.empty():
                batch.append(self._waiting.get_nowait())
            try:
                await self._apply_batch(batch)
            except BaseException as error:
                # Whatever went wrong, no delivery may wait for ever: each learns of it.
                for delivery in batch:
                    _settle(delivery, error=error if isinstance(error, Exception) else Abandoned())
                if not isinstance(error, Exception):
                    raise

    async def _apply_batch(self, batch: list[Delivery]) -> None:
        try:
            applied = await self._while_database_unavailable(batch)
        except _UNAPPLIED as error:
            # Unreachable for too long, each is retried later; abandoned at shutdown, redelivered.
            for delivery in batch:
                _settle(delivery, error=error)
            return
        except Exception as error:
            if len(batch) == 1:
                _settle(batch[0], error=error)
                return
            log.warning(
                "a batch failed; applying its messages one by one", size=len(batch), error=repr(error)
            )
            for delivery in batch:
                await self._apply_batch([delivery])
            return
        self.batched(len(batch))
        for delivery, first_time in zip(batch, applied, strict=True):
            _settle(delivery, result=first_time)

    async def _while_database_unavailable(self, batch: list[Delivery]) -> list[bool]:
        backoff = 0.1
        give_up_at = time.monotonic() + self.unavailable_wait
        while True:
            try:
                return await self._apply_together(batch)
            except DATABASE_UNAVAILABLE as error:
                if self._stopping:
                    raise Abandoned from error
                if time.monotonic() + backoff > give_up_at:
                    raise
                log.warning(
                    "database unavailable; will retry the messages",
                    count=len(batch),
                    error=repr(error),
                    retry_in=backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _apply_together(self, batch: list[Delivery]) -> list[bool]:
        """Inbox rows, changes and outbox rows of the whole batch in one transaction; for each
        delivery, whether this was its first time."""
        async with unit_of_work(self.pool, self.outbox, batch[0].envelope.as_cause()) as work:
            new_ids = set(
                await work.connection.fetchval(
                    """
                    WITH recorded AS (
                        INSERT INTO inbox (event_id, event_type)
                        SELECT * FROM unnest($1::uuid[], $2::text[])
                        ON CONFLICT DO NOTHING
                        RETURNING event_id
                    )
                    SELECT coalesce(array_agg(event_id), '{}') FROM recorded
                    """,
                    [delivery.envelope.id for delivery in batch],
                    [delivery.envelope.type for delivery in batch],
                )
            )
            first_times: list[bool] = []
            for delivery in batch:
                envelope = delivery.envelope
                # The first of two copies in one batch applies it; the second is a duplicate.
                first_time = envelope.id in new_ids
                new_ids.discard(envelope.id)
                first_times.append(first_time)
                if not first_time:
                    continue
                with (
                    use_span(delivery.span, end_on_exit=False),
                    structlog.contextvars.bound_contextvars(correlation_id=envelope.correlationid),
                ):
                    await delivery.handler(work.for_cause(envelope.as_cause()), delivery.event)
                work.after_commit(functools.partial(self.consumed, envelope))
        return first_times


def _settle(delivery: Delivery, *, result: bool | None = None, error: BaseException | None = None) -> None:
    if delivery.applied.done():
        return
    if error is not None:
        delivery.applied.set_exception(error)
    else:
        assert result is not None
        delivery.applied.set_result(result)
