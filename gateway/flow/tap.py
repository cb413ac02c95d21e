"""The event arrows of the flow page: a copy of every message published to `events`, read from
the broker's firehose (amq.rabbitmq.trace) through a queue of this gateway's own, each one drawn as
its producer publishing it and the broker routing it to each service that consumes its type.

Events are shown whole, data included, which is why the page is for development only
(gateway/config.py refuses it elsewhere).
"""

import asyncio
import contextlib
import dataclasses
import uuid
from typing import Any

import orjson
import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)

from gateway.flow.hub import FlowHub, TapState
from gateway.flow.records import BROKER, FlowRecord, Kind
from shared.broker import connect_broker
from shared.bus_contract import bus
from shared.envelope import Envelope, InvalidEvent
from shared.retry import NOT_UP_YET
from shared.topology import EXCHANGE

log = structlog.get_logger("flow")

FIREHOSE = "amq.rabbitmq.trace"  # the broker's exchange of copies of what is published, when tracing is on
TAP_MAX_LENGTH = 1000  # events the broker keeps for a gateway that reads slowly; the oldest go first
MAX_UNDECODABLE_BODY = 2000


def event_records(body: bytes, routing_key: str | None) -> list[FlowRecord]:
    """The arrows of one message on the events exchange: its producer publishing it, then the broker
    routing it to each service that consumes its type. A message that is not a valid event is shown
    all the same, with the reason its consumers will dead-letter it."""
    problem: str | None = None
    try:
        envelope = Envelope.from_json(body)
        envelope.event()  # the data against its schema, as a consumer checks it
    except InvalidEvent as invalid:
        problem = str(invalid)
    try:
        document: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = body[:MAX_UNDECODABLE_BODY].decode(errors="replace")
    fields: dict[str, Any] = document if isinstance(document, dict) else {}
    data = fields.get("data")
    event_type = _text(fields.get("type")) or routing_key or "(no type)"
    published = FlowRecord(
        Kind.EVENT_PUBLISHED,
        _text(fields.get("source")) or "unknown",
        BROKER,
        event_type,
        _text(fields.get("correlationid")),
        order_id=_text(data.get("order_id")) if isinstance(data, dict) else None,
        type=event_type,
        envelope=document,
        problem=problem,
    )
    delivered = [
        dataclasses.replace(published, kind=Kind.EVENT_DELIVERED, source=BROKER, target=receiver)
        for receiver in bus().receivers.get(event_type, ())
    ]
    return [published, *delivered]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class EventTap:
    """This gateway's own queue of every event: a copy of each message published to `events`, taken
    from the broker's firehose (amq.rabbitmq.trace), never a binding on `events` itself, so that what
    the page watches changes nothing about where events go. Server-side bounded, exclusive and
    auto-deleted: it lives exactly as long as this gateway's connection, and each gateway replica
    sees every event.

    The broker connection is opened in the background: the API never waits for it (the gateway's
    /readyz does not look at RabbitMQ), and until it is up the page shows HTTP calls only. Once
    connected, aio-pika's robust connection reconnects by itself and re-declares the queue, its
    binding and the consumer on its new connection.
    """

    def __init__(self, hub: FlowHub, *, url: str, startup_timeout: float) -> None:
        self._hub = hub
        self._url = url
        self._startup_timeout = startup_timeout
        # Named here rather than by the server: a server-made name (amq.gen-…) may not be declared
        # again by a client, and the robust channel re-declares the queue by name after a reconnect.
        self.queue_name = f"gateway.flow.{uuid.uuid4().hex[:12]}"
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Kept here: aio-pika holds robust connections, channels and queues only weakly.
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractRobustQueue | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="flow tap")

    async def stop(self, close_within: float) -> None:
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None:
            try:
                await asyncio.wait_for(self._connection.close(), close_within)
            except TimeoutError:
                log.warning("the flow tap's broker connection did not close cleanly in time")
        self._hub.set_tap_state(TapState.CLOSED)

    async def _run(self) -> None:
        while True:
            try:
                connection = await connect_broker(self._url, startup_timeout=self._startup_timeout)
                break
            except NOT_UP_YET:
                log.warning("flow tap: RabbitMQ still unreachable; the flow page shows HTTP calls only")
        self._connection = connection
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        try:
            self._channel = channel = await connection.channel()
            self._queue = queue = await channel.declare_queue(
                self.queue_name,
                exclusive=True,
                auto_delete=True,
                arguments={"x-max-length": TAP_MAX_LENGTH, "x-overflow": "drop-head"},
            )
            # The broker's own copy of every message published to `events` (its firehose, which
            # shared/broker_setup.py turns on in development): a binding on `events` itself would
            # make every event routable, and a publish to a deleted queue would go unnoticed.
            await queue.bind(FIREHOSE, routing_key=f"publish.{EXCHANGE}")
            # Without acks: a record the page misses when the gateway stops is not worth a redelivery.
            await queue.consume(self._on_message, no_ack=True)
        except Exception:
            log.exception("flow tap: could not set up its queue; the flow page shows HTTP calls only")
            self._hub.set_tap_state(TapState.FAILED)
            return
        log.info("flow tap consuming", queue=self.queue_name)
        self._hub.set_tap_state(TapState.CONNECTED)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # A firehose copy carries the original's routing keys in a header.
        routing_keys = (message.headers or {}).get("routing_keys")
        routing_key = routing_keys[0] if isinstance(routing_keys, list) and routing_keys else None
        for record in event_records(message.body, routing_key if isinstance(routing_key, str) else None):
            self._hub.publish(record)

    def _on_connection_lost(self, _: object, __: BaseException | None = None) -> None:
        if not self._closing:
            self._hub.set_tap_state(TapState.RECONNECTING)

    def _on_reconnected(self, _: object) -> None:
        # Called once the robust connection has restored its channels: the queue is back.
        log.info("flow tap consuming again", queue=self.queue_name)
        self._hub.set_tap_state(TapState.CONNECTED)
