"""R5: orders_service's outbox relay against a raw aio-pika publisher doing the same publishes.

Both publish the same `orders.order.approved` envelopes to the events exchange, persistent, with
publisher confirms, a hundred at a time (the relay's batch size). No service consumes that type, so
the publishes are not mandatory and no consumer does work meanwhile.
"""

import asyncio
import time
import uuid
from typing import Any

import aio_pika
import asyncpg

from devstack.waiting import eventually
from shared.envelope import Cause, Envelope
from shared.events import OrderApproved
from shared.messages import event_message
from shared.unit_of_work import Outbox

BATCH = 100


def envelopes(count: int) -> list[Envelope]:
    cause = Cause(correlation_id=str(uuid.uuid4()), causation_id=str(uuid.uuid4()))
    return [
        Envelope.wrap(OrderApproved(uuid.uuid4(), uuid.uuid4()), source="orders_service", cause=cause)
        for _ in range(count)
    ]


async def relay_throughput(orders_dsn: str, count: int, within: float) -> dict[str, Any]:
    """Commit `count` outbox rows at once and let the running relay publish them.

    No nudge reaches the relay from outside its process, so it finds them at its next poll; the
    rate is taken between the starts of its first and its last batch (each batch's published_at is
    its transaction's start), which leaves the poll wait out.
    """
    written = envelopes(count)
    connection = await asyncpg.connect(orders_dsn)
    try:
        # Written as the services write them: the relay publishes a row with fields stored beside its
        # body, and sets aside one written otherwise.
        async with connection.transaction():
            await Outbox.write(connection, written)
        ids = [envelope.id for envelope in written]

        async def published() -> bool:
            waiting = await connection.fetchval(
                "SELECT count(*) FROM outbox WHERE event_id = ANY($1::uuid[]) AND published_at IS NULL", ids
            )
            return bool(waiting == 0)

        await eventually(published, within=within, what="the relay published every row", interval=0.02)
        batches = await connection.fetch(
            """
            SELECT published_at, count(*) AS rows FROM outbox WHERE event_id = ANY($1::uuid[])
            GROUP BY published_at ORDER BY published_at
            """,
            ids,
        )
    finally:
        await connection.close()
    span = (batches[-1]["published_at"] - batches[0]["published_at"]).total_seconds()
    before_last = count - batches[-1]["rows"]
    return {
        "events_per_second": before_last / span if span > 0 else float("nan"),
        "events": count,
        "batches": len(batches),
    }


async def raw_throughput(rabbitmq_url: str, count: int) -> dict[str, Any]:
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange("events")
        bodies = [(envelope, envelope.to_json()) for envelope in envelopes(count)]
        started = time.perf_counter()
        for offset in range(0, count, BATCH):

            async def publish(envelope: Envelope, body: bytes) -> None:
                message = event_message(body, envelope, user_id=None)
                # As the relay publishes a type that no service must receive: not mandatory.
                await asyncio.wait_for(
                    exchange.publish(message, routing_key=envelope.type, mandatory=False), 10
                )

            await asyncio.gather(*(publish(*item) for item in bodies[offset : offset + BATCH]))
        elapsed = time.perf_counter() - started
    finally:
        await connection.close()
    return {"events_per_second": count / elapsed, "events": count}
