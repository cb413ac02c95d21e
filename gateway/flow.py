"""The live flow page's data: every HTTP call through the gateway and every event on the broker, as
records streamed to the page at /flow (Server-Sent Events) while they happen.

    the firehose (amq.rabbitmq.trace) ──▶ EventTap ──────────────┐
    the gateway's middleware (client ⇄ gateway) ─────────────────┼──▶ FlowHub ──SSE──▶ each open page
    the proxy's hook (gateway ⇄ service, gateway/proxy.py) ──────┘   (+ recent records for a new page)

Each record is one arrow of a sequence diagram: its kind, the lane it starts from and the lane it
points to, a label, its time, the story it belongs to (the correlation id, which is the X-Request-ID)
and the order it concerns when there is one; an event's record carries its whole envelope.

The hub never waits for a page. Each page has a bounded queue: one that reads too slowly loses its
oldest records (and is told how many), so a stalled browser tab neither slows the gateway nor grows
its memory. With no page open, an HTTP request costs one attribute check here and nothing more (the
benchmark of the gateway runs that way); only events are kept, in a small ring buffer, so that a page
opened later starts with the recent past.

Nothing secret reaches a page: an HTTP record holds the method, the path, the status and the duration,
never a header, a query string or a body, so no token and no password. Events are shown whole, data
included, which is why the page is for development only (gateway/config.py refuses it elsewhere).
"""

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import enum
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from shared.broker import connect_broker
from shared.bus_contract import bus
from shared.envelope import Envelope, InvalidEvent
from shared.http import REQUEST_ID, REQUEST_ID_HEADER, SECURITY_HEADER_DEFAULTS, SECURITY_HEADERS
from shared.problems import Problem
from shared.retry import NOT_UP_YET
from shared.topology import EXCHANGE

log = structlog.get_logger("flow")

CLIENT, GATEWAY, BROKER = "client", "gateway", "broker"

HISTORY = 300  # recent records a newly opened page starts with
SUBSCRIBER_QUEUE = 1000  # records a page may fall behind by before it loses the oldest
HEARTBEAT_SECONDS = 15.0  # a comment line keeps idle proxies and browsers from closing the stream
WRITE_TIMEOUT = 5.0  # a page whose connection takes no bytes for this long is dropped (it reconnects)
RECONNECT_MS = 2000  # what the page's EventSource waits before reconnecting
FIREHOSE = "amq.rabbitmq.trace"  # the broker's exchange of copies of what is published, when tracing is on
TAP_MAX_LENGTH = 1000  # events the broker keeps for a gateway that reads slowly; the oldest go first
MAX_LABEL_PATH = 120
MAX_UNDECODABLE_BODY = 2000

_ORDER_IN_PATH = re.compile(r"/api/orders/([0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})(?:/|$)")


class Kind(enum.StrEnum):
    HTTP_REQUEST = "http.request"
    HTTP_RESPONSE = "http.response"
    EVENT_PUBLISHED = "event.published"
    EVENT_DELIVERED = "event.delivered"


class TapState(enum.StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    CLOSED = "closed"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclasses.dataclass(frozen=True)
class FlowRecord:
    """One arrow of the diagram, from lane `source` to lane `target`."""

    kind: Kind
    source: str
    target: str
    label: str
    correlation_id: str | None
    order_id: str | None = None
    type: str | None = None  # the event type
    method: str | None = None
    path: str | None = None
    status: int | None = None  # None on a response arrow: no answer came
    ms: float | None = None
    envelope: Any = None  # the event as it was on the wire (parsed JSON, or its text if it was not JSON)
    problem: str | None = None  # why a consumer will refuse this message (it is dead-lettered)
    time: datetime.datetime = dataclasses.field(default_factory=_now)

    def to_json(self, record_id: str) -> bytes:
        return orjson.dumps(
            {
                "id": record_id,
                "kind": self.kind,
                "from": self.source,
                "to": self.target,
                "label": self.label,
                "time": self.time,
                "correlation_id": self.correlation_id,
                "order_id": self.order_id,
                "type": self.type,
                "method": self.method,
                "path": self.path,
                "status": self.status,
                "ms": self.ms,
                "envelope": self.envelope,
                "problem": self.problem,
            },
            option=orjson.OPT_UTC_Z,
        )


def _sse(event: str, data: bytes, record_id: str | None = None) -> bytes:
    # orjson writes no raw newline, so each payload is one `data:` line.
    head = b"id: %s\n" % record_id.encode() if record_id is not None else b""
    return head + b"event: %s\ndata: %s\n\n" % (event.encode(), data)


class Subscriber:
    """One open page: the frames it has yet to be sent, at most `capacity`, the oldest lost first."""

    def __init__(self, capacity: int) -> None:
        self._frames: collections.deque[bytes] = collections.deque(maxlen=capacity)
        self._ready = asyncio.Event()
        self._lost = 0  # since the last take
        self.lost_in_all = 0

    @property
    def pending(self) -> int:
        return len(self._frames)

    def offer(self, frame: bytes) -> None:
        if len(self._frames) == self._frames.maxlen:
            self._lost += 1
            self.lost_in_all += 1
        self._frames.append(frame)
        self._ready.set()

    def take(self) -> tuple[list[bytes], int]:
        """The frames waiting, and how many were lost before them."""
        frames, lost = list(self._frames), self._lost
        self._frames.clear()
        self._lost = 0
        self._ready.clear()
        return frames, lost

    async def wait(self, timeout: float) -> bool:
        """Wait until there is something to send; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    def wake(self) -> None:
        self._ready.set()


class FlowHub:
    """Fans records out to every open page; keeps the recent ones for pages opened later."""

    def __init__(self, *, history: int = HISTORY, queue_size: int = SUBSCRIBER_QUEUE) -> None:
        # Record ids are "<epoch>-<n>": a page reconnecting to a restarted gateway (another epoch)
        # gets the new process's recent records, not a guess based on numbers from the old one.
        self._epoch = uuid.uuid4().hex[:8]
        self._sequence = 0
        self._recent: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=history)
        self._queue_size = queue_size
        self._subscribers: set[Subscriber] = set()
        self._tap_state = TapState.CONNECTING
        self.closed = False

    @property
    def watching(self) -> bool:
        return bool(self._subscribers)

    @property
    def subscribers(self) -> frozenset[Subscriber]:
        return frozenset(self._subscribers)

    def publish(self, record: FlowRecord) -> None:
        """Hand `record` to every page, now; never waits."""
        self._sequence += 1
        record_id = f"{self._epoch}-{self._sequence}"
        frame = _sse("record", record.to_json(record_id), record_id)
        self._recent.append((self._sequence, frame))
        for subscriber in self._subscribers:
            subscriber.offer(frame)

    def set_tap_state(self, state: TapState) -> None:
        self._tap_state = state
        frame = self._status_frame()
        for subscriber in self._subscribers:
            subscriber.offer(frame)

    def subscribe(self, last_event_id: str = "") -> Subscriber:
        """A new page, given the tap's state and the recent records it has not seen yet."""
        subscriber = Subscriber(self._queue_size)
        subscriber.offer(self._status_frame())
        epoch, _, number = last_event_id.partition("-")
        seen = int(number) if epoch == self._epoch and number.isdigit() else 0
        for sequence, frame in self._recent:
            if sequence > seen:
                subscriber.offer(frame)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def close(self) -> None:
        """The gateway is stopping: every stream ends now, so that none holds up the shutdown."""
        self.closed = True
        for subscriber in self._subscribers:
            subscriber.wake()

    def _status_frame(self) -> bytes:
        return _sse("status", orjson.dumps({"tap": self._tap_state}))

    # --- HTTP: the proxy's hook (gateway/proxy.py: CallObserver) ---------------------------------

    def observe(
        self, request: web.Request, upstream: str, call: Awaitable[web.Response]
    ) -> Awaitable[web.Response]:
        if not self._subscribers:
            return call  # nobody is watching: the call, untouched
        return self._observed(request, upstream, call)

    async def _observed(
        self, request: web.Request, upstream: str, call: Awaitable[web.Response]
    ) -> web.Response:
        self.publish(_request_record(request, GATEWAY, upstream))
        started = time.perf_counter()
        try:
            response = await call
        except BaseException as error:
            self.publish(_response_record(request, upstream, GATEWAY, started, None, _no_answer(error)))
            raise
        self.publish(
            _response_record(
                request, upstream, GATEWAY, started, response.status, response.headers.get("Location")
            )
        )
        return response


def http_recorder(hub: FlowHub) -> Middleware:
    """Records each /api/ request as the client sees it: its arrival and the answer it gets."""

    @web.middleware
    async def record_http(request: web.Request, handler: Handler) -> web.StreamResponse:
        # First, and all a request pays while no page is open. The flow page, docs and health
        # probes are not part of any story.
        if not hub.watching or not request.path.startswith("/api/"):
            return await handler(request)
        hub.publish(_request_record(request, CLIENT, GATEWAY))
        started = time.perf_counter()
        status: int | None = None
        detail: str | None = "client went away"
        try:
            response = await handler(request)
            status, detail = response.status, response.headers.get("Location")
            return response
        except (Problem, web.HTTPException) as refusal:
            status, detail = refusal.status, None
            raise
        except Exception:
            status, detail = 500, None  # the problem middleware answers it so
            raise
        finally:
            hub.publish(_response_record(request, GATEWAY, CLIENT, started, status, detail))

    return record_http


def _order_id(*texts: str | None) -> str | None:
    """The order a path or a Location header names (/api/orders/{id}...), if any."""
    for text in texts:
        if text and (found := _ORDER_IN_PATH.search(text)):
            return found.group(1).lower()
    return None


def _short(path: str) -> str:
    return path if len(path) <= MAX_LABEL_PATH else path[: MAX_LABEL_PATH - 1] + "…"


def _request_record(request: web.Request, source: str, target: str) -> FlowRecord:
    return FlowRecord(
        Kind.HTTP_REQUEST,
        source,
        target,
        f"{request.method} {_short(request.path)}",
        request.get(REQUEST_ID),
        order_id=_order_id(request.path),
        method=request.method,
        path=_short(request.path),
    )


def _response_record(
    request: web.Request,
    source: str,
    target: str,
    started: float,
    status: int | None,
    detail: str | None,
) -> FlowRecord:
    """`detail` is the answer's Location header when there is an answer (a new order's id is only
    there), or why none came."""
    ms = round((time.perf_counter() - started) * 1000, 1)
    answered = status is not None
    return FlowRecord(
        Kind.HTTP_RESPONSE,
        source,
        target,
        f"{status} · {ms:g} ms" if answered else f"no answer: {detail} · {ms:g} ms",
        request.get(REQUEST_ID),
        order_id=_order_id(request.path, detail if answered else None),
        method=request.method,
        path=_short(request.path),
        status=status,
        ms=ms,
    )


def _no_answer(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, aiohttp.ClientConnectorError):
        return "unreachable"
    if isinstance(error, aiohttp.ClientError):
        return "broken answer"
    if isinstance(error, asyncio.CancelledError):
        return "client went away"
    return type(error).__name__


# --- events: this gateway's own tap queue ------------------------------------------------------


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

    async def stop(self, timeout: float) -> None:
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None:
            try:
                await asyncio.wait_for(self._connection.close(), timeout)
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


FLOW_HUB = web.AppKey("flow_hub", FlowHub)
FLOW_TAP = web.AppKey("flow_tap", EventTap)


# --- the stream to the page ----------------------------------------------------------------------


async def flow_events(request: web.Request) -> web.StreamResponse:
    """GET /flow/events: the records as Server-Sent Events, the recent ones first."""
    hub = request.app[FLOW_HUB]
    # The security middleware adds its headers once the handler returns, but a stream's headers
    # leave at prepare(): so they are set here.
    response = web.StreamResponse(
        headers={
            **SECURITY_HEADERS,
            **SECURITY_HEADER_DEFAULTS,
            REQUEST_ID_HEADER: request[REQUEST_ID],
            "Content-Type": "text/event-stream; charset=utf-8",
            "X-Accel-Buffering": "no",  # a reverse proxy in front must not hold events back
        }
    )
    subscriber = hub.subscribe(request.headers.get("Last-Event-ID", ""))
    try:
        await response.prepare(request)
        await response.write(b"retry: %d\n\n" % RECONNECT_MS)
        while not hub.closed:
            frames, lost = subscriber.take()
            if lost:
                frames.insert(0, _sse("lost", orjson.dumps({"records": lost})))
            if frames:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await response.write(b"".join(frames))
            elif not await subscriber.wait(HEARTBEAT_SECONDS):
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await response.write(b": heartbeat\n\n")
    except TimeoutError:
        # The page's connection takes nothing: drop it rather than let its unsent bytes pile up;
        # its EventSource reconnects and is given the recent records again.
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError:
        pass  # the page went away
    finally:
        hub.unsubscribe(subscriber)
    return response


def flow_tap(
    url: str, *, startup_timeout: float, shutdown_timeout: float
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup context of the tap: started with the app, stopped after the streams ended."""

    async def tap(app: web.Application) -> AsyncIterator[None]:
        app[FLOW_TAP] = EventTap(app[FLOW_HUB], url=url, startup_timeout=startup_timeout)
        app[FLOW_TAP].start()
        yield
        await app[FLOW_TAP].stop(shutdown_timeout)

    return tap


async def end_streams(app: web.Application) -> None:
    """on_shutdown: runs before aiohttp waits for in-flight requests, so that open pages' streams,
    which would otherwise never end, do not hold up a graceful shutdown."""
    app[FLOW_HUB].close()
