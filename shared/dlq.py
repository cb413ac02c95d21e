"""List and replay dead letters.

    python -m shared.dlq list SERVICE
    python -m shared.dlq replay SERVICE              # every dead letter
    python -m shared.dlq replay SERVICE --id EVENT_ID   # just one (the id `list` shows)

A message is dead-lettered when it can never succeed (unparseable, unknown type or data version,
breaking its schema, or from a sender that does not publish its type) or when its handler kept
failing through every retry. Once the cause is fixed, replaying puts it back on the service's
queue, as a first attempt, under the identity of whoever sent it in the first place (the operator
is an impersonator: shared/broker_setup.py): a forged message stays forged, and is dead-lettered
again. Replaying is safe even for a message that was applied after all: the inbox skips an event id
it has seen.

RABBITMQ_OPERATOR_URL names the broker, as the operator.
"""

import argparse
import asyncio
import dataclasses
import sys
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from shared.broker import connect_once
from shared.bus_contract import bus
from shared.config import OperatorConfig
from shared.envelope import Envelope, InvalidEvent
from shared.messages import SENDER_HEADER, copy_of, sender_of
from shared.topology import ConsumerQueues, queues_for

FETCH_TIMEOUT = 2.0
# Headers the consumer adds on its way to the dead letters; a replay starts the message afresh.
FAILURE_HEADERS = (
    SENDER_HEADER,
    "x-attempt",
    "x-dead-letter-reason",
    "x-error",
    "x-dead-lettered-at",
    "x-original-routing-key",
)


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    message_id: str
    event_type: str
    reason: str
    error: str
    dead_lettered_at: str

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> "DeadLetter":
        headers: dict[str, Any] = dict(message.headers or {})
        # The broker's own dead-lettering (delivery limit exceeded) leaves x-death instead of ours.
        reason = str(
            headers.get("x-dead-letter-reason") or ("delivery limit" if "x-death" in headers else "?")
        )
        return cls(
            message_id=_event_id(message),
            event_type=message.type or "-",
            reason=reason,
            error=str(headers.get("x-error", "")),
            dead_lettered_at=str(headers.get("x-dead-lettered-at", "")),
        )


def _event_id(message: AbstractIncomingMessage) -> str:
    """The event's id from its envelope; a message that is no envelope falls back to its AMQP id."""
    try:
        return str(Envelope.from_json(message.body).id)
    except InvalidEvent:
        return message.message_id or "-"


async def _drain(channel: AbstractChannel, queues: ConsumerQueues) -> list[AbstractIncomingMessage]:
    """Take every dead letter, unacknowledged: they stay the broker's until acked or returned."""
    queue = await channel.get_queue(queues.dead_letter)
    taken = []
    while (message := await queue.get(no_ack=False, fail=False, timeout=FETCH_TIMEOUT)) is not None:
        taken.append(message)
    return taken


async def list_dead_letters(rabbitmq_url: str, service: str) -> list[DeadLetter]:
    connection = await connect_once(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        messages = await _drain(channel, queues_for(service))
        letters = [DeadLetter.of(message) for message in messages]
        # Given back, in the order taken. A return counts as a delivery on RabbitMQ 4.0 to 4.2; the
        # dead-letter queue's policy gives it no delivery limit (shared/broker_setup.py), so listing
        # any number of times drops none.
        for message in messages:
            await message.nack(requeue=True)
        return letters


async def replay_dead_letters(
    rabbitmq_url: str, service: str, message_id: str | None = None
) -> list[DeadLetter]:
    """Move dead letters (all, or the one with `message_id`) back to the service's queue."""
    queues = queues_for(service)
    connection = await connect_once(rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        replayed = []
        for message in await _drain(channel, queues):
            if message_id is not None and _event_id(message) != message_id:
                await message.nack(requeue=True)
                continue
            headers = {k: v for k, v in (message.headers or {}).items() if k not in FAILURE_HEADERS}
            headers.pop("x-death", None)
            # As whoever sent it first, which the service's own copy says (it is the service's user
            # that moved it here); a message that the broker itself dead-lettered is the original.
            original = copy_of(message, headers, user_id=sender_of(message, service), sender=None)
            # Confirmed on the service's queue first, acked from the dead letters second: the
            # message is never in neither place.
            await channel.default_exchange.publish(original, routing_key=queues.main, mandatory=True)
            replayed.append(DeadLetter.of(message))
            await message.ack()
        return replayed


def _print(letters: list[DeadLetter], verb: str, service: str) -> None:
    print(f"{verb} {len(letters)} dead letter(s) of {service}")
    for letter in letters:
        print(f"  {letter.message_id}  {letter.event_type:<24} {letter.reason:<18} {letter.dead_lettered_at}")
        if letter.error:
            print(f"      {letter.error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.dlq", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["list", "replay"])
    parser.add_argument("service", choices=sorted({r for names in bus().receivers.values() for r in names}))
    parser.add_argument("--id", dest="message_id", help="replay only the message with this id")
    arguments = parser.parse_args(argv)
    url = OperatorConfig.from_env().rabbitmq_operator_url.value
    if arguments.command == "list":
        _print(asyncio.run(list_dead_letters(url, arguments.service)), "Found", arguments.service)
    else:
        replayed = asyncio.run(replay_dead_letters(url, arguments.service, arguments.message_id))
        _print(replayed, "Replayed", arguments.service)
    return 0


if __name__ == "__main__":
    sys.exit(main())
