"""The broker's topology, declared by each service at start, for its part of it:

    events (topic exchange) ──routing key = event type──▶ users_service   (quorum queue)
                                                      └──▶ orders_service  (quorum queue)

A service declares the exchange; its own queue, bound for the types its handler table handles, with
retry queues (one per delay: a message waits there for its TTL, then is dead-lettered back to the
queue) and a dead-letter queue; and the queues of the services that must receive what it publishes
(the bus's contract, shared/bus_contract.py), bound for those types, so that an event published
before its consumer has ever started is queued, not lost, whatever order the services start in.

Declarations carry only what a queue is (its type, and a retry queue's delay, which its name
holds). What operators tune, and what two versions of a service could disagree on (delivery limits,
dead-lettering, bounds), is set by the broker's policies (shared/broker_setup.py), so that no
declaration is ever refused for arguments that differ.
"""

import dataclasses
from collections.abc import Collection, Iterable, Sequence

import aiormq
import structlog
from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue
from pamqp.common import Arguments

from shared.bus_contract import bus
from shared.events import Event

log = structlog.get_logger("topology")

EXCHANGE = "events"
QUORUM: Arguments = {"x-queue-type": "quorum"}
# At-least-once dead-lettering keeps a message in its queue until the target queue has confirmed it,
# so a retry coming back is never lost (it needs reject-publish, which a full queue then applies).
_RELIABLE_DEAD_LETTERING = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


@dataclasses.dataclass(frozen=True)
class ConsumerQueues:
    """A consuming service's queues, and the event types its queue is bound for."""

    service: str
    event_types: tuple[str, ...]

    @property
    def main(self) -> str:
        return self.service

    @property
    def dead_letter(self) -> str:
        return f"{self.service}.dlq"

    def retry(self, delay_ms: int) -> str:
        return f"{self.service}.retry.{delay_ms}ms"


def queues_for(service: str, handled: Iterable[type[Event]] = ()) -> ConsumerQueues:
    """A service's queues, bound for the event classes it handles (its handler table's keys)."""
    return ConsumerQueues(service, tuple(sorted(event.TYPE for event in handled)))


def receivers_of(service: str) -> list[ConsumerQueues]:
    """The queues of the services that must receive what `service` publishes, bound for just that."""
    return [ConsumerQueues(receiver, types) for receiver, types in bus().receivers_of_what(service).items()]


async def declare_topology(
    channel: AbstractChannel,
    *,
    own: ConsumerQueues | None,
    receivers: Sequence[ConsumerQueues],
    retry_delays_ms: tuple[int, ...],
    present: Collection[str] = (),
) -> AbstractExchange:
    """Declare the exchange, the queues and their bindings. A queue named in `present` (just seen to
    exist) is only looked up, never declared: declaring a quorum queue while an operator's deletion of
    it completes re-creates it under its consumers, and the broker then never tells them they were
    cancelled (RabbitMQ 3.10; tests/integration/test_queue_keeper.py). Looked up, a queue deleted
    meanwhile is an error, and the next look finds it missing."""

    async def queue(name: str, arguments: Arguments) -> AbstractQueue:
        if name in present:
            return await channel.declare_queue(name, passive=True)
        return await channel.declare_queue(name, durable=True, arguments=arguments)

    exchange = await channel.declare_exchange(EXCHANGE, ExchangeType.TOPIC, durable=True)
    if own is not None:
        await queue(own.dead_letter, QUORUM)
        for delay_ms in retry_delays_ms:
            await queue(
                own.retry(delay_ms),
                {
                    "x-queue-type": "quorum",
                    "x-message-ttl": delay_ms,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": own.main,
                    **_RELIABLE_DEAD_LETTERING,
                },
            )
    for queues in [*([own] if own is not None else []), *receivers]:
        declared = await queue(queues.main, QUORUM)
        for event_type in queues.event_types:
            await declared.bind(exchange, routing_key=event_type)
    return exchange


async def queue_depths(connection: AbstractConnection, names: Sequence[str]) -> dict[str, int | None]:
    """How many messages wait in each queue now; None for a queue that does not exist (deleted by
    hand, say). Each is looked at on a channel of its own: looking for a missing queue closes the
    channel it was asked on."""
    depths: dict[str, int | None] = {}
    for name in names:
        channel = await connection.channel()
        try:
            declared = await channel.declare_queue(name, passive=True)
            depths[name] = declared.declaration_result.message_count or 0
        except aiormq.exceptions.ChannelNotFoundEntity:
            depths[name] = None
        finally:
            if not channel.is_closed:
                await channel.close()
    return depths
