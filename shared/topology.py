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

from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractExchange

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
    for consumer in CONSUMERS.values():
        await channel.declare_queue(consumer.dead_letter, durable=True, arguments={"x-queue-type": "quorum"})
        main = await channel.declare_queue(
            consumer.main,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                # RabbitMQ 3.10 sets no limit: a message that crashes its consumer every time would
                # be redelivered forever. After this many deliveries it goes to the dead letters.
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
