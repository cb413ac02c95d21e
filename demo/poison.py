"""The poison message: an event that no fix of the consumer's code will make acceptable.

It is a well-formed CloudEvents envelope of type orders.order.created, as orders_service would
publish it, except for its data: a negative total. Applied, it would *give* the user credit;
users_service checks every event against its schema on arrival, so it never gets that far: the
consumer dead-letters it at once, with the reason, and goes on with the next message.

The dead letters are read and replayed with shared/dlq.py, the same functions `make dlq` and
`make dlq-replay` use.
"""

import asyncio
import dataclasses
import uuid

from aio_pika.abc import AbstractConnection
from yarl import URL

from shared.broker import connect_once
from shared.bus_contract import bus
from shared.dlq import DeadLetter, list_dead_letters, replay_dead_letters
from shared.envelope import Cause, Envelope
from shared.events import OrderCreated
from shared.messages import event_message
from shared.topology import EXCHANGE, queues_for

# The poison is an event for users_service's queue; its dead letters are read there.
POISONED = queues_for(bus().receivers[OrderCreated.TYPE][0])
SERVICE = POISONED.service
DEAD_LETTER_QUEUE = POISONED.dead_letter
CONNECT_TIMEOUT = 5.0
PUBLISH_TIMEOUT = 5.0


def poison_order_created(user_id: str, total_cents: int, *, story: str) -> Envelope:
    """orders.order.created for `user_id` with the (negative) `total_cents`, under the story's id."""
    valid = Envelope.wrap(
        OrderCreated(order_id=uuid.uuid4(), user_id=uuid.UUID(user_id), total_cents=0),
        source="demo",
        cause=Cause(correlation_id=story, causation_id=story),
    )
    return dataclasses.replace(valid, data={**valid.data, "total_cents": total_cents})


async def connect(rabbitmq_url: str) -> AbstractConnection:
    return await connect_once(rabbitmq_url, handshake_timeout=CONNECT_TIMEOUT)


async def publish(connection: AbstractConnection, envelope: Envelope) -> None:
    """Publish as the outbox relay does: persistent, confirmed, and mandatory, so that a message no
    queue takes comes back as an error rather than vanishing."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    async with channel:
        # Passive: the services declare the topology; the demo only uses it.
        exchange = await channel.get_exchange(EXCHANGE, ensure=True)
        # Signed as its type's publisher, as the operator may (an impersonator, shared/broker_setup.py):
        # what makes it poison is its data alone, not who sent it.
        message = event_message(envelope.to_json(), envelope, user_id=bus().publisher[envelope.type])
        await asyncio.wait_for(
            exchange.publish(message, routing_key=envelope.type, mandatory=True), PUBLISH_TIMEOUT
        )


async def find_dead_letter(
    rabbitmq_url: str, event_id: str, *, not_at: str | None = None
) -> DeadLetter | None:
    """The event's dead letter, if it is in the queue; `not_at` skips the one dead-lettered at that
    time (to tell a second dead-lettering from the first)."""
    for letter in await list_dead_letters(rabbitmq_url, SERVICE):
        if letter.message_id == event_id and letter.dead_lettered_at != not_at:
            return letter
    return None


async def replay(rabbitmq_url: str, event_id: str) -> list[DeadLetter]:
    return await replay_dead_letters(rabbitmq_url, SERVICE, event_id)


def broker_address(rabbitmq_url: str) -> str:
    """Where the broker is, without its credentials (the URL may hold a password)."""
    url = URL(rabbitmq_url)
    return f"{url.host}:{url.port}{url.path}"
