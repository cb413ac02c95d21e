"""Two probes of how the broker treats dead letters, for the tests to run against a real RabbitMQ:
the local suite against this machine's (RabbitMQ 3), tests/compose/ inside the compose network
against the stack's (RabbitMQ 4). Each prints what it saw as one JSON object; the tests judge it.

    python tests/dead_letter_probes.py list SERVICE [--letters N] [--listings N] [--vhost NAME]
    python tests/dead_letter_probes.py crash-loop SERVICE [--vhost NAME]

It imports only what the application image holds (shared/, aio-pika and its yarl, the standard
library), so that tests/compose/ can run it in a container of the stack, given on standard input
(`python - list users_service`). It reads RABBITMQ_URL (an administrator's; --vhost replaces its
virtual host) and RETRY_DELAYS_MS as the services do, and the management API's settings and
DELIVERY_LIMIT as shared/broker_setup.py does: it applies that module's policies (only the policies)
with that DELIVERY_LIMIT, and declares the service's topology as it does (a no-op where it has).

list: puts LETTERS dead letters of its own in SERVICE's dead-letter queue, lists the dead letters
LISTINGS times with the code `make dlq` runs (`python -m shared.dlq list SERVICE`), and reports which
of its letters each listing showed.

crash-loop: puts one message of its own on SERVICE's queue, which must be empty and have no consumer
(in a vhost of the probe's own, or with the service stopped), then hands it to one consumer process
after another, each of which is killed (SIGKILL) while it holds the message, until no consumer
receives it any more. It reports every delivery, and how the dead-letter listing describes the
message afterwards.
"""

import argparse
import asyncio
import contextlib
import io
import json
import multiprocessing
import os
import signal
import sys
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

import aio_pika
from yarl import URL

from shared import broker_setup, dlq
from shared.broker import broker_version, connect_once
from shared.bus_contract import bus
from shared.config import ServiceConfig
from shared.topology import ConsumerQueues, declare_topology

# How long a consumer waits for a message before it concludes that none is coming.
HOLD_TIMEOUT = 3.0
# How long the broker may take to move a message past its delivery limit to the dead letters (its
# at-least-once dead-lettering is a consumer of its own, so it takes a moment).
DEAD_LETTER_DEADLINE = 30.0
DEAD_LETTER_POLL_INTERVAL = 0.2
# Consumers killed beyond the delivery limit before the probe gives up on the broker enforcing it.
SPARE_DELIVERIES = 5


def queues_of(service: str) -> ConsumerQueues:
    return ConsumerQueues(service, bus().receives(service))


async def declare(config: ServiceConfig, setup: broker_setup.BrokerSetupConfig, service: str) -> str:
    """Declare the service's topology as it does, under the policies broker_setup applies with this
    DELIVERY_LIMIT (only the policies: the users and their passwords stay as the system has them);
    return the broker's version."""
    management = broker_setup.ManagementApi(
        setup.rabbitmq_management_url, setup.rabbitmq_admin_user, setup.rabbitmq_admin_password.value
    )
    try:
        plan = broker_setup.plan(
            bus(),
            operator=setup.rabbitmq_operator_user,
            delivery_limit=setup.delivery_limit,
            broker_major=await management.broker_major(),
        )
        vhost = URL(config.rabbitmq_url.value).path.removeprefix("/") or "/"
        await broker_setup.apply_policies(management, vhost, plan.policies)
    finally:
        await management.close()
    connection = await connect_once(config.rabbitmq_url.value)
    async with connection:
        channel = await connection.channel()
        await declare_topology(
            channel, own=queues_of(service), receivers=[], retry_delays_ms=config.retry_delays
        )
        return ".".join(map(str, await broker_version(channel)))


async def publish(url: str, queue: str, message_ids: list[str]) -> None:
    """Put messages straight on a queue, confirmed."""
    connection = await connect_once(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        for message_id in message_ids:
            message = aio_pika.Message(
                f"probe {message_id}".encode(),
                message_id=message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)


async def ready_messages(url: str, queue: str) -> tuple[int, int]:
    """How many messages wait on the queue, and how many consumers it has."""
    connection = await connect_once(url)
    async with connection:
        channel = await connection.channel()
        declared = (await channel.declare_queue(queue, passive=True)).declaration_result
        return declared.message_count or 0, declared.consumer_count or 0


# --- list ---------------------------------------------------------------------------------------


def listing(service: str) -> str:
    """What `make dlq SERVICE=…` prints."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        dlq.main(["list", service])
    return printed.getvalue()


def list_repeatedly(
    config: ServiceConfig, setup: broker_setup.BrokerSetupConfig, service: str, letters: int, listings: int
) -> dict[str, Any]:
    version = asyncio.run(declare(config, setup, service))
    ours = [f"dlq-probe-{uuid.uuid4().hex[:12]}" for _ in range(letters)]
    asyncio.run(publish(config.rabbitmq_url.value, queues_of(service).dead_letter, ours))
    shown = []
    for _ in range(listings):
        printed = listing(service)
        shown.append([message_id for message_id in ours if message_id in printed])
    return {"broker": version, "letters": ours, "shown": shown}


# --- crash-loop ---------------------------------------------------------------------------------


async def hold_one(url: str, queue_name: str, report: Connection) -> None:
    """Consume one message and die holding it, unacknowledged, as a crashing process does: the
    broker sees the connection drop, and nothing else. Report None if no message comes."""
    connection = await connect_once(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1)
    queue = await channel.get_queue(queue_name, ensure=False)
    async with queue.iterator() as messages:
        try:
            message = await asyncio.wait_for(anext(messages), HOLD_TIMEOUT)
        except TimeoutError:
            report.send(None)
            await connection.close()
            return
        headers = message.headers or {}
        report.send({"message_id": message.message_id, "x-delivery-count": headers.get("x-delivery-count")})
        report.close()
        os.kill(os.getpid(), signal.SIGKILL)


def consume_in_a_process_that_dies(url: str, queue_name: str) -> dict[str, Any] | None:
    """One consumer process's life: the delivery it held when it died, or None if it got none.

    Forked, not spawned, so that it runs this module's code however the module was started (from
    standard input, in the compose test). The parent runs no event loop and no thread meanwhile."""
    receiving, sending = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.get_context("fork").Process(
        target=lambda: asyncio.run(hold_one(url, queue_name, sending)), daemon=True
    )
    process.start()
    sending.close()
    process.join(HOLD_TIMEOUT + 30)
    if process.is_alive():
        process.kill()
        raise RuntimeError("a consumer process neither got a message nor gave up in time")
    if not receiving.poll():
        raise RuntimeError(f"a consumer process exited with {process.exitcode} and reported nothing")
    held: dict[str, Any] | None = receiving.recv()
    return held


def crash_loop(config: ServiceConfig, setup: broker_setup.BrokerSetupConfig, service: str) -> dict[str, Any]:
    version = asyncio.run(declare(config, setup, service))
    url, queues = config.rabbitmq_url.value, queues_of(service)
    waiting, consumers = asyncio.run(ready_messages(url, queues.main))
    if waiting or consumers:
        raise RuntimeError(
            f"{queues.main} has {waiting} messages and {consumers} consumers: stop {service} first"
        )
    ours = f"crash-loop-probe-{uuid.uuid4().hex[:12]}"
    asyncio.run(publish(url, queues.main, [ours]))
    deliveries = []
    for _ in range(setup.delivery_limit + 1 + SPARE_DELIVERIES):
        held = consume_in_a_process_that_dies(url, queues.main)
        if held is None:
            break
        deliveries.append(held)
    deadline = time.monotonic() + DEAD_LETTER_DEADLINE
    dead_letter = None
    while dead_letter is None and time.monotonic() < deadline:
        letters = asyncio.run(dlq.list_dead_letters(url, service))
        dead_letter = next((vars(letter) for letter in letters if letter.message_id == ours), None)
        if dead_letter is None:
            time.sleep(DEAD_LETTER_POLL_INTERVAL)
    return {
        "broker": version,
        "delivery_limit": setup.delivery_limit,
        "message_id": ours,
        "deliveries": deliveries,
        "dead_letter": dead_letter,
        "left_on_the_queue": asyncio.run(ready_messages(url, queues.main))[0],
    }


# --- judging a report (the tests, on the host) ---------------------------------------------------


def assert_every_listing_showed_every_letter(report: dict[str, Any]) -> None:
    letters, listings = report["letters"], report["shown"]
    assert len(listings) > 20, "fewer listings than RabbitMQ 4's default delivery limit prove nothing"
    for number, shown in enumerate(listings, 1):
        assert shown == letters, (
            f"RabbitMQ {report['broker']}: listing {number} of {len(listings)} showed {len(shown)}"
            f" of the {len(letters)} dead letters; the others are lost"
        )


def assert_dead_lettered_after_the_limit(report: dict[str, Any]) -> None:
    deliveries, limit = report["deliveries"], report["delivery_limit"]
    assert {delivery["message_id"] for delivery in deliveries} <= {report["message_id"]}, (
        f"another message reached the dying consumers: {deliveries}"
    )
    # DELIVERY_LIMIT counts redeliveries: the first delivery and that many more, then the dead letters.
    assert len(deliveries) == limit + 1, (
        f"RabbitMQ {report['broker']}: delivered {len(deliveries)} times with DELIVERY_LIMIT={limit}"
    )
    assert report["left_on_the_queue"] == 0
    assert report["dead_letter"] is not None, (
        f"RabbitMQ {report['broker']}: not in the dead letters (dropped?)"
    )
    assert report["dead_letter"]["reason"] == "delivery limit", report["dead_letter"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("probe", choices=["list", "crash-loop"])
    parser.add_argument("service", choices=sorted({r for names in bus().receivers.values() for r in names}))
    parser.add_argument("--letters", type=int, default=3)
    parser.add_argument("--listings", type=int, default=25)
    parser.add_argument("--vhost", help="the virtual host to probe in, instead of RABBITMQ_URL's")
    arguments = parser.parse_args(argv)
    config = ServiceConfig.from_env()
    if arguments.vhost is not None:
        os.environ["RABBITMQ_URL"] = str(URL(config.rabbitmq_url.value).with_path(f"/{arguments.vhost}"))
        config = ServiceConfig.from_env()
    # Through the environment, so that `make dlq`'s own code (which reads it) lists there too.
    os.environ["RABBITMQ_OPERATOR_URL"] = config.rabbitmq_url.value
    setup = broker_setup.BrokerSetupConfig.from_env()
    if arguments.probe == "list":
        report = list_repeatedly(config, setup, arguments.service, arguments.letters, arguments.listings)
    else:
        report = crash_loop(config, setup, arguments.service)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
