"""The flow page's stream (/flow/events) against the real thing: the gateway and both services
in-process, on fresh databases and a RabbitMQ virtual host of the test's own.

Each test reads the stream as the page does, with a deadline, never a fixed sleep.
"""

import asyncio
import contextlib
import dataclasses
import functools
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer
from yarl import URL

from devstack.keys import KeyPair
from devstack.ports import free_port
from devstack.servers import Servers
from devstack.waiting import eventually
from gateway.app import create_app as create_gateway_app
from gateway.config import GatewayConfig
from gateway.flow.hub import SUBSCRIBER_QUEUE
from gateway.flow.records import FlowRecord, Kind
from gateway.flow.routes import FLOW_CONTENT_SECURITY_POLICY, FLOW_HUB, FLOW_TAP
from shared.config import ConfigError, Secret
from shared.topology import EXCHANGE
from tests.integration.conftest import Client, new_product
from tests.support import TcpRelay, with_port

PASSWORD = "correct-horse-battery"
GatewayFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def lone_config(key_pair: KeyPair, rabbitmq_url: str) -> GatewayConfig:
    """A gateway with no service behind it (for what concerns the gateway alone), its flow tap on
    the test's own vhost."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    return GatewayConfig(
        users_service_url=nowhere,
        orders_service_url=nowhere,
        jwt_public_key_file=str(key_pair.public),
        rabbitmq_url=Secret(rabbitmq_url),
        startup_timeout=5,
        rate_limit_per_second=0,  # the limits are not what these tests are about
    )


@pytest.fixture
def gateway_config(lone_config: GatewayConfig, users_client: Client, orders_client: Client) -> GatewayConfig:
    """The gateway in front of both services."""
    return dataclasses.replace(
        lone_config,
        users_service_url=str(users_client.make_url("")),
        orders_service_url=str(orders_client.make_url("")),
    )


@pytest.fixture
def gateway_with(gateway_config: GatewayConfig, aiohttp_client: AiohttpClient) -> GatewayFactory:
    async def start(**settings: Any) -> Client:
        return await aiohttp_client(create_gateway_app(dataclasses.replace(gateway_config, **settings)))

    return start


@pytest.fixture
async def gateway(gateway_with: GatewayFactory) -> Client:
    return await gateway_with()


@pytest.fixture
async def lone_gateway(lone_config: GatewayConfig, aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(create_gateway_app(lone_config))


# --- reading the stream as the page does -------------------------------------------------------


class FlowStream:
    """The Server-Sent Events of /flow/events, parsed; everything read is kept, raw and parsed."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.raw = bytearray()
        self.records: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.tap_states: list[str] = []
        self.lost = 0

    async def read_one(self) -> bool:
        """Read one message (or comment); False at the end of the stream."""
        fields: dict[str, str] = {}
        while True:
            line = await self.response.content.readline()
            if not line:
                return False
            self.raw += line
            text = line.decode().rstrip("\n")
            if not text:
                break
            name, _, value = text.partition(": ")
            fields[name] = value
        if fields.get("event") == "record":
            self.records.append(orjson.loads(fields["data"]))
            self.ids.append(fields["id"])
        elif fields.get("event") == "status":
            self.tap_states.append(orjson.loads(fields["data"])["tap"])
        elif fields.get("event") == "lost":
            self.lost += orjson.loads(fields["data"])["records"]
        return True

    async def until(self, condition: Callable[[], bool], *, what: str, within: float = 20.0) -> None:
        try:
            async with asyncio.timeout(within):
                while not condition():
                    assert await self.read_one(), f"the stream ended before {what}"
        except TimeoutError:
            raise AssertionError(f"not within {within} s: {what}") from None

    async def tap_connected(self) -> None:
        await self.until(lambda: self.tap_states[-1:] == ["connected"], what="the tap connected")

    def find(self, **expected: Any) -> list[dict[str, Any]]:
        return [r for r in self.records if all(r.get(key) == value for key, value in expected.items())]


@contextlib.asynccontextmanager
async def flow_stream(
    client: Client | aiohttp.ClientSession, url: str = "/flow/events"
) -> AsyncIterator[FlowStream]:
    async with client.get(url) as response:
        assert response.status == 200
        yield FlowStream(response)


# --- the API, through the gateway --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Customer:
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def sign_up(gateway: Client) -> Customer:
    """A new user, with the policy's credit limit (100000 cents: more than any order here costs)."""
    email = f"flow-{uuid.uuid4().hex[:10]}@example.com"
    body = {"email": email, "name": "Flow", "password": PASSWORD}
    async with gateway.post("/api/v2/users", json=body) as response:
        assert response.status == 201, await response.text()
    async with gateway.post("/api/v2/auth/token", json={"email": email, "password": PASSWORD}) as response:
        assert response.status == 200, await response.text()
        return Customer((await response.json())["access_token"])


async def place_order(
    gateway: Client, customer: Customer, total_cents: int, admin: dict[str, str]
) -> tuple[str, str]:
    """The new order's id and the X-Request-ID of the request that placed it: one of a product that
    `admin` sells at `total_cents` for it."""
    body = {"items": [{"sku": await new_product(gateway, admin, total_cents), "quantity": 1}]}
    async with gateway.post("/api/v2/orders", json=body, headers=customer.headers) as response:
        assert response.status == 202, await response.text()
        return (await response.json())["id"], response.headers["X-Request-ID"]


def event_arrows(stream: FlowStream, order_id: str) -> set[tuple[str, str, str, str]]:
    return {
        (record["kind"], record["type"], record["from"], record["to"])
        for record in stream.records
        if record["kind"].startswith("event.") and record["order_id"] == order_id
    }


def has_events(stream: FlowStream, order_id: str) -> bool:
    return bool(event_arrows(stream, order_id))


# --- the tests ---------------------------------------------------------------------------------


async def test_an_order_placed_through_the_gateway_is_drawn_as_its_http_calls_and_events(
    gateway: Client, admin_headers: dict[str, str]
) -> None:
    async with flow_stream(gateway) as stream:
        assert stream.response.content_type == "text/event-stream"
        assert stream.response.headers["Cache-Control"] == "no-store"
        assert stream.response.headers["X-Content-Type-Options"] == "nosniff"
        await stream.tap_connected()
        customer = await sign_up(gateway)
        order_id, story = await place_order(gateway, customer, 2_500, admin_headers)
        approved = ("event.published", "orders.order.approved", "orders_service", "broker")
        await stream.until(lambda: approved in event_arrows(stream, order_id), what="the order approved")

        # The HTTP calls of the POST, each leg of them, all of one story.
        placing = stream.find(correlation_id=story, path="/api/v2/orders")
        assert [(r["kind"], r["from"], r["to"], r["label"].split(" · ")[0]) for r in placing] == [
            ("http.request", "client", "gateway", "POST /api/v2/orders"),
            ("http.request", "gateway", "orders_service", "POST /api/v2/orders"),
            ("http.response", "orders_service", "gateway", "202"),
            ("http.response", "gateway", "client", "202"),
        ]
        answers = [r for r in placing if r["kind"] == "http.response"]
        assert all(r["status"] == 202 and r["ms"] >= 0 for r in answers)
        assert {r["order_id"] for r in answers} == {order_id}  # from the Location header
        assert placing[0]["envelope"] is None

        # The saga, as the broker routed it: each event from its producer, then to each consumer.
        assert event_arrows(stream, order_id) == {
            ("event.published", "orders.order.created", "orders_service", "broker"),
            ("event.delivered", "orders.order.created", "broker", "users_service"),
            ("event.published", "users.credit.reserved", "users_service", "broker"),
            ("event.delivered", "users.credit.reserved", "broker", "orders_service"),
            approved,  # consumed by no service: no delivery arrow
        }
        events = [r for r in stream.records if r["kind"].startswith("event.") and r["order_id"] == order_id]
        assert {r["correlation_id"] for r in events} == {story}
        [created] = stream.find(kind="event.published", type="orders.order.created")
        envelope = created["envelope"]
        assert (envelope["specversion"], envelope["source"], envelope["type"]) == (
            "1.0",
            "orders_service",
            "orders.order.created",
        )
        assert envelope["data"]["order_id"] == order_id
        assert envelope["data"]["total_cents"] == 2_500
        assert created["problem"] is None
        # Ids are unique and increasing, so a reconnecting page resumes where it left off.
        numbers = [int(record_id.rpartition("-")[2]) for record_id in stream.ids]
        assert numbers == sorted(set(numbers))


async def test_only_api_traffic_is_recorded(lone_gateway: Client) -> None:
    gateway = lone_gateway
    async with flow_stream(gateway) as stream:
        await stream.tap_connected()
        for path in ("/healthz", "/readyz", "/flow", "/flow/flow.js", "/openapi.json", "/docs"):
            async with gateway.get(path) as response:
                assert response.status in {200, 503}, path  # no service behind: not ready
        async with gateway.get("/api/nowhere") as response:
            assert response.status == 404
        await stream.until(lambda: bool(stream.find(path="/api/nowhere", kind="http.response")), what="a 404")
    assert {record["path"] for record in stream.records} == {"/api/nowhere"}
    assert [record["status"] for record in stream.records] == [None, 404]


async def test_no_token_or_password_ever_reaches_the_page(
    gateway: Client, admin_headers: dict[str, str]
) -> None:
    async with flow_stream(gateway) as stream:
        await stream.tap_connected()
        customer = await sign_up(gateway)
        async with gateway.get("/api/v2/users/me", headers=customer.headers) as response:
            assert response.status == 200
        order_id, _ = await place_order(gateway, customer, 100, admin_headers)
        await stream.until(
            lambda: (
                ("event.published", "orders.order.approved", "orders_service", "broker")
                in event_arrows(stream, order_id)
            ),
            what="the order approved",
        )
    seen = bytes(stream.raw)
    assert stream.find(type="users.user.registered"), "the sign-up's event is there, with its envelope"
    admin_token = admin_headers["Authorization"].removeprefix("Bearer ")
    tokens = [customer.token, customer.token.split(".")[2], admin_token, admin_token.split(".")[2]]
    for secret in (*tokens, PASSWORD, "Bearer", "Authorization"):
        assert secret.encode() not in seen, secret


async def test_a_message_that_is_no_valid_event_is_drawn_with_the_reason_it_will_be_refused(
    lone_gateway: Client, rabbitmq_url: str
) -> None:
    async with flow_stream(lone_gateway) as stream:
        await stream.tap_connected()
        connection = await aio_pika.connect(rabbitmq_url)
        async with connection:
            channel = await connection.channel()
            # Declared as the services declare it: no service runs here, the gateway declares none.
            exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
            await exchange.publish(aio_pika.Message(b"{not json"), routing_key="orders.order.created")
            wrong = {"specversion": "1.0", "type": "orders.order.created", "source": "orders_service"}
            await exchange.publish(aio_pika.Message(orjson.dumps(wrong)), routing_key="orders.order.created")
        await stream.until(lambda: len(stream.records) == 4, what="both messages, published and delivered")
    garbled, _, incomplete, _ = stream.records
    assert (garbled["from"], garbled["to"], garbled["type"]) == ("unknown", "broker", "orders.order.created")
    assert garbled["envelope"] == "{not json"
    assert garbled["problem"] == "the body is not JSON"
    assert (incomplete["from"], incomplete["envelope"]) == ("orders_service", wrong)
    assert incomplete["problem"].startswith("not an event envelope")
    assert [r["to"] for r in stream.records if r["kind"] == "event.delivered"] == ["users_service"] * 2


async def test_every_gateway_has_a_bounded_exclusive_tap_queue_of_its_own(
    gateway_with: GatewayFactory, servers: Servers, rabbitmq_url: str, admin_headers: dict[str, str]
) -> None:
    first, second = await gateway_with(), await gateway_with()
    async with flow_stream(first) as one, flow_stream(second) as other:
        await one.tap_connected()
        await other.tap_connected()
        order_id, _ = await place_order(first, await sign_up(first), 100, admin_headers)
        for stream in (one, other):
            await stream.until(functools.partial(has_events, stream, order_id), what="the events, on each")
        assert one.find(path="/api/v2/orders"), "the first gateway drew its HTTP calls"
        assert not other.find(path="/api/v2/orders"), "HTTP calls are the gateway's own"
    queues = await list_queues(servers, rabbitmq_url)
    taps = {queues[app[FLOW_TAP].queue_name] for app in (first.app, second.app)}
    assert taps == {("classic", "true", "true", "false", "1000", "drop-head")}


async def test_a_slow_page_loses_old_records_and_never_holds_up_the_gateway(lone_gateway: Client) -> None:
    gateway = lone_gateway
    hub = gateway.app[FLOW_HUB]
    stalled = await stalled_reader(gateway.make_url("/flow/events"))
    try:
        await eventually(lambda: _true(len(hub.subscribers) == 1), what="the stalled page subscribed")
        [slow] = hub.subscribers
        async with flow_stream(gateway) as fast:
            await fast.tap_connected()  # not stopped while it connects (aio-pika would leak the attempt)
            padding = "x" * 4000  # 5000 records of 4 kB: far more than any socket buffer holds
            started = time.perf_counter()
            for batch in range(50):
                for n in range(batch * 100, batch * 100 + 100):
                    hub.publish(
                        FlowRecord(Kind.EVENT_PUBLISHED, "tests", "broker", f"n{n}", None, envelope=padding)
                    )
                await asyncio.sleep(0)  # let the streams write (not a wait: a turn of the loop)
                assert slow.pending <= SUBSCRIBER_QUEUE
            assert time.perf_counter() - started < 2.0, "publishing waited for a page"
            answered = time.perf_counter()
            async with gateway.get("/healthz") as response:
                assert response.status == 200
            assert time.perf_counter() - answered < 1.0
            await fast.until(lambda: bool(fast.find(label="n4999")), what="the last record on the fast page")
        assert slow.lost_in_all > 0, "the stalled page's oldest records were dropped"
        # Its stream is cut once writing to it has stalled for WRITE_TIMEOUT; its page would reconnect.
        await eventually(lambda: _true(not hub.subscribers), within=15, what="the stalled page dropped")
    finally:
        stalled.close()


async def test_streams_end_at_shutdown_without_holding_it_up(
    lone_config: GatewayConfig, aiohttp_server: AiohttpServer
) -> None:
    server: TestServer = await aiohttp_server(create_gateway_app(lone_config))
    async with (
        aiohttp.ClientSession() as http,
        flow_stream(http, str(server.make_url("/flow/events"))) as stream,
    ):
        await stream.tap_connected()
        started = time.perf_counter()
        await server.close()  # the test server's shutdown timeout is 60 s: an open stream would wait
        assert time.perf_counter() - started < 5.0
        assert not await stream.read_one(), "the stream ends cleanly"


async def test_the_tap_comes_back_after_the_broker_connection_is_lost(
    gateway_with: GatewayFactory, servers: Servers, rabbitmq_url: str, admin_headers: dict[str, str]
) -> None:
    relay = TcpRelay(servers.rabbitmq.host, servers.rabbitmq.amqp_port)
    await relay.start()
    try:
        relayed = with_port(rabbitmq_url, relay.port)
        gateway = await gateway_with(rabbitmq_url=Secret(relayed))
        async with flow_stream(gateway) as stream:
            await stream.tap_connected()
            relay.sever()  # a broken link, as when the broker dies: no goodbye on the connection
            await stream.until(lambda: "reconnecting" in stream.tap_states, what="the tap noticed")
            await stream.tap_connected()  # aio-pika reconnected and declared the queue again
            order_id, _ = await place_order(gateway, await sign_up(gateway), 100, admin_headers)
            await stream.until(
                lambda: (
                    ("event.published", "orders.order.approved", "orders_service", "broker")
                    in event_arrows(stream, order_id)
                ),
                what="the events after the reconnect",
            )
    finally:
        relay.sever()
        await relay.close()


async def test_with_flow_disabled_there_is_no_page_no_stream_and_no_queue(
    lone_config: GatewayConfig, aiohttp_client: AiohttpClient, servers: Servers, rabbitmq_url: str
) -> None:
    gateway = await aiohttp_client(create_gateway_app(dataclasses.replace(lone_config, flow_enabled=False)))
    for path in ("/flow", "/flow/flow.js", "/flow/flow.css", "/flow/events"):
        async with gateway.get(path) as response:
            assert response.status == 404, path
            assert response.content_type == "application/problem+json"
    assert FLOW_HUB not in gateway.app
    assert FLOW_TAP not in gateway.app
    assert await list_queues(servers, rabbitmq_url) == {}
    async with gateway.get("/healthz") as response:
        assert response.status == 200


@pytest.mark.parametrize("enabled", [False, True])
def test_the_page_s_code_is_loaded_only_when_it_is_enabled(key_pair: KeyPair, enabled: bool) -> None:
    """A gateway with FLOW_ENABLED off, as in production, loads none of gateway/flow/."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    script = (
        "import sys\n"
        "from gateway.app import create_app\n"
        "from gateway.config import GatewayConfig\n"
        f"create_app(GatewayConfig(users_service_url={nowhere!r}, orders_service_url={nowhere!r}, "
        f"jwt_public_key_file={str(key_pair.public)!r}, rate_limit_per_second=0, flow_enabled={enabled}))\n"
        "print(sorted(name for name in sys.modules if name.startswith('gateway.flow')))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert ("gateway.flow" in run.stdout) is enabled, run.stdout


async def test_the_page_is_served_with_a_strict_content_security_policy(lone_gateway: Client) -> None:
    gateway = lone_gateway
    async with flow_stream(gateway) as stream:
        await stream.tap_connected()  # not stopped while it connects (aio-pika would leak the attempt)
    async with gateway.get("/flow") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert response.headers["Content-Security-Policy"] == FLOW_CONTENT_SECURITY_POLICY
        page = await response.text()
    assert "<script>" not in page
    assert "style=" not in page
    assert "http://" not in page
    for asset, content_type in (
        ("/flow/flow.js", "text/javascript"),
        ("/flow/flow.css", "text/css"),
        ("/flow/flow.svg", "image/svg+xml"),
    ):
        assert f'"{asset}"' in page
        async with gateway.get(asset) as response:
            assert response.status == 200, asset
            assert response.content_type == content_type, asset
    assert "'unsafe-inline'" not in FLOW_CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in FLOW_CONTENT_SECURITY_POLICY


def test_outside_development_the_gateway_refuses_to_start_with_the_flow_page() -> None:
    # The page shows every event's data to whoever reaches the gateway, with no sign-in.
    with pytest.raises(ConfigError, match="set FLOW_ENABLED=false"):
        GatewayConfig.from_env({"ENVIRONMENT": "production"})
    # Without the page the gateway never connects to the broker: its URL may stay unset.
    production = {
        "ENVIRONMENT": "production",
        "FLOW_ENABLED": "false",
        "DATABASE_URL": "postgresql://gw:s@db/gw",
    }
    assert not GatewayConfig.from_env(production).flow_enabled
    assert GatewayConfig.from_env({}).flow_enabled  # on by default, for local development


# --- helpers -----------------------------------------------------------------------------------


async def _true(value: bool) -> bool:
    return value


async def list_queues(servers: Servers, rabbitmq_url: str) -> dict[str, tuple[str, ...]]:
    """name -> (type, exclusive, auto_delete, durable, x-max-length, x-overflow) of the vhost's queues."""
    vhost = URL(rabbitmq_url).path.lstrip("/") or "/"
    queues: dict[str, tuple[str, ...]] = {}
    for queue in await servers.rabbitmq.management.queues(vhost):
        arguments = queue["arguments"]
        queues[queue["name"]] = (
            queue["type"],
            _flag(queue["exclusive"]),
            _flag(queue["auto_delete"]),
            _flag(queue["durable"]),
            str(arguments.get("x-max-length")),
            str(arguments.get("x-overflow")),
        )
    return queues


def _flag(value: object) -> str:
    return "true" if value in (True, "true") else "false"


async def stalled_reader(url: URL) -> socket.socket:
    """A page that asks for the stream and then reads nothing at all: a tiny receive buffer, filled."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
    request = f"GET {url.path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nAccept: text/event-stream\r\n\r\n"
    await asyncio.get_running_loop().sock_sendall(sock, request.encode())
    return sock
