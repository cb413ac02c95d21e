"""The broker's topology, declared in full and idempotently by every service at start.

    events (topic exchange) ──routing key = event type──▶ users_service   (quorum queue)
                                                      └──▶ orders_service  (quorum queue)
                                                      └──▶ events.tap      (bounded, every event)

Each consuming service has, beside its queue, retry queues (one per delay; a message waits there
for its TTL, then is dead-lettered back to the service's queue) and a dead-letter queue.

Every service declares every queue, not only its own: an event published before its consumer has
ever started is then queued, not dropped, whatever order the services start in.
"""

import dataclasses
from typing import Any

from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractExchange

from shared.broker import broker_version
from shared.events import CreditRejected, CreditReserved, OrderCancelled, OrderCreated

EXCHANGE = "events"
TAP_QUEUE = "events.tap"
TAP_MAX_LENGTH = 10_000
TAP_TTL_MS = 3_600_000


@dataclasses.dataclass(frozen=True)
class ConsumerQueues:
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


USERS = ConsumerQueues("users_service", (OrderCreated.TYPE, OrderCancelled.TYPE))
ORDERS = ConsumerQueues("orders_service", (CreditReserved.TYPE, CreditRejected.TYPE))
CONSUMERS = {consumer.service: consumer for consumer in (USERS, ORDERS)}

# Quorum queues replicate and survive node loss. "At-least-once" dead-lettering keeps a message
# in its queue until the target queue has confirmed it, so a retry or a dead letter is never lost.
_RELIABLE_DEAD_LETTERING = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def dead_letter_queue_arguments(version: tuple[int, ...]) -> dict[str, Any]:
    """A dead-letter queue keeps every letter until a person replays it: it has no delivery limit.

    Nothing consumes it but `python -m shared.dlq`, which lists the letters by taking each one and
    giving it back (nack with requeue), and a person looking in the management UI. RabbitMQ 4 gives
    every quorum queue a delivery limit of 20 unless told otherwise; 4.0 to 4.2 count every return
    towards it (4.3 and later only failed ones: a consumer gone, a reject), and past the limit a
    message is dropped, since a dead-letter queue has nowhere to send it on: listing the letters 21
    times lost them all. RabbitMQ 4 reads a limit of -1 as "none". RabbitMQ 3 sets no limit by
    itself, and reads -1 as a limit below zero that drops a message at its first return: there, the
    argument is left out. (The services' own queues keep their limit: it is what moves a message
    that crashes its consumer every time to these dead letters.)
    """
    arguments: dict[str, Any] = {"x-queue-type": "quorum"}
    if version >= (4,):
        arguments["x-delivery-limit"] = -1
    return arguments


async def declare_topology(
    channel: AbstractChannel, *, retry_delays_ms: tuple[int, ...], delivery_limit: int
) -> AbstractExchange:
    exchange = await channel.declare_exchange(EXCHANGE, ExchangeType.TOPIC, durable=True)
    # The tap (a sink; the flow page reads queues of its own) makes every event routable, so a publish that
    # the broker returns as unroutable means the topology is broken, never "nobody listens yet".
    tap = await channel.declare_queue(
        TAP_QUEUE,
        durable=True,
        arguments={"x-max-length": TAP_MAX_LENGTH, "x-overflow": "drop-head", "x-message-ttl": TAP_TTL_MS},
    )
    await tap.bind(exchange, routing_key="#")
    dead_letter_arguments = dead_letter_queue_arguments(await broker_version(channel))
    for consumer in CONSUMERS.values():
        await channel.declare_queue(consumer.dead_letter, durable=True, arguments=dead_letter_arguments)
        main = await channel.declare_queue(
            consumer.main,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                # RabbitMQ 3 sets no limit (4 sets 20): a message that crashes its consumer every time
                # would be redelivered forever. After this many deliveries it goes to the dead letters.
                "x-delivery-limit": delivery_limit,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": consumer.dead_letter,
                **_RELIABLE_DEAD_LETTERING,
            },
        )
        for event_type in consumer.event_types:
            await main.bind(exchange, routing_key=event_type)
        for delay_ms in retry_delays_ms:
            await channel.declare_queue(
                consumer.retry(delay_ms),
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-message-ttl": delay_ms,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": consumer.main,
                    **_RELIABLE_DEAD_LETTERING,
                },
            )
    return exchange
