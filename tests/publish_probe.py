"""A probe of what the broker lets a user publish to `events`, for the tests to run where the system's
broker users exist: tests/compose/ runs it inside a container of the stack, as that container's own
user (its RABBITMQ_URL). It publishes one message, confirmed, and prints what the broker answered as
one JSON object; the tests judge it.

    python tests/publish_probe.py EVENT_TYPE [--user-id NAME]

`--user-id` sets the AMQP `user-id` property (by default the user's own name), which the broker
checks against the user who publishes. The body is no event: a message the broker refuses never
reaches anyone, and one it accepts (the tests' control, a type the user owns that no service
consumes) is shown at most on the flow page, and applied by no one.

It imports only what the application image holds (shared/, aio-pika and its yarl, the standard
library), so that it can be given on standard input (`python - users.user.registered`).
"""

import argparse
import asyncio
import json
import os
import sys

import aio_pika
import aiormq
from yarl import URL

from shared.broker import connect_once
from shared.topology import EXCHANGE

PUBLISH_TIMEOUT = 10.0


async def publish(url: str, event_type: str, user_id: str) -> dict[str, str]:
    """What the broker answered: "confirmed", or its refusal (which closes the channel)."""
    async with await connect_once(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        message = aio_pika.Message(b'{"probe": "not an event"}', user_id=user_id)
        try:
            await asyncio.wait_for(exchange.publish(message, routing_key=event_type), PUBLISH_TIMEOUT)
        except aiormq.exceptions.ChannelAccessRefused as refused:
            return {"outcome": "access refused", "reply": str(refused)}
        except aiormq.exceptions.ChannelPreconditionFailed as failed:
            return {"outcome": "precondition failed", "reply": str(failed)}
        return {"outcome": "confirmed", "reply": ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("event_type")
    parser.add_argument("--user-id", help="the message's user-id property (default: the user's own name)")
    arguments = parser.parse_args(argv)
    url = os.environ["RABBITMQ_URL"]
    user = URL(url).user or ""
    report = asyncio.run(publish(url, arguments.event_type, arguments.user_id or user))
    print(json.dumps({"user": user, "event_type": arguments.event_type, **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
