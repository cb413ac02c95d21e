"""Tracing across HTTP and AMQP: one order is one trace, from the gateway through both services.

The three apps run in this process with the real Postgres and RabbitMQ, and their spans go to an
in-memory exporter instead of an OTLP collector. Tracing is switched on per app by its config
(OTEL_EXPORTER_OTLP_ENDPOINT); the exporter that the endpoint would get in a real process
(`shared.tracing.configure_tracing`) is replaced by the test's provider.
"""

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry import trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pytest_aiohttp import AiohttpClient, AiohttpServer

from devstack.keys import KeyPair
from devstack.rabbitmq import Vhost
from devstack.waiting import eventually
from gateway.app import create_app as create_gateway_app
from gateway.config import GatewayConfig
from orders_service.app import create_app as create_orders_app
from orders_service.config import OrdersConfig
from shared.config import Secret
from tests.conftest import CreateDatabase
from tests.integration.conftest import new_product
from users_service.app import create_app as create_users_app
from users_service.config import UsersConfig

# Never contacted: it only switches tracing on; the spans go to the test's exporter.
UNUSED_COLLECTOR = "http://127.0.0.1:9/unused"
PASSWORD = "correct-horse-battery"
SERVICES = {"gateway", "users_service", "orders_service"}


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    # The API allows one global provider per process; the apps' tracers reach it through the API.
    trace.set_tracer_provider(provider)
    yield spans
    spans.clear()


@pytest.fixture
def database_spans(exporter: InMemorySpanExporter) -> Iterator[None]:
    """The asyncpg instrumentation, as `configure_tracing` installs it in a process with tracing on."""
    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]  # untyped
    instrumentor.instrument()
    yield
    instrumentor.uninstrument()


@dataclasses.dataclass
class Stack:
    gateway: TestServer
    orders_database: str

    def url(self, path: str) -> str:
        return str(self.gateway.make_url(path))


async def start_stack(
    *,
    tracing: bool,
    create_database: CreateDatabase,
    key_pair: KeyPair,
    broker: Vhost,
    aiohttp_server: AiohttpServer,
) -> Stack:
    endpoint = UNUSED_COLLECTOR if tracing else ""
    public_key = str(key_pair.public)
    users = await aiohttp_server(
        create_users_app(
            UsersConfig(
                database_url=Secret(await create_database("users")),
                rabbitmq_url=Secret(broker.url_for("users_service")),
                jwt_private_key_file=str(key_pair.private),
                jwt_public_key_file=public_key,
                startup_timeout=5,
                otel_exporter_otlp_endpoint=endpoint,
            )
        )
    )
    orders_database = await create_database("orders")
    orders = await aiohttp_server(
        create_orders_app(
            OrdersConfig(
                database_url=Secret(orders_database),
                rabbitmq_url=Secret(broker.url_for("orders_service")),
                jwt_public_key_file=public_key,
                startup_timeout=5,
                otel_exporter_otlp_endpoint=endpoint,
            )
        )
    )
    gateway = await aiohttp_server(
        create_gateway_app(
            GatewayConfig(
                users_service_url=str(users.make_url("")),
                orders_service_url=str(orders.make_url("")),
                jwt_public_key_file=public_key,
                otel_exporter_otlp_endpoint=endpoint,
                rate_limit_per_second=0,  # no limits, so no database of its own to set up
            )
        )
    )
    return Stack(gateway=gateway, orders_database=orders_database)


async def place_an_order_and_wait_for_approval(
    stack: Stack, aiohttp_client: AiohttpClient, admin: dict[str, str]
) -> str:
    client: TestClient[web.Request, None] = await aiohttp_client(stack.gateway)
    email = f"trace-{uuid.uuid4().hex[:8]}@example.com"
    async with client.post(
        "/api/v2/users", json={"email": email, "name": "Ada", "password": PASSWORD}
    ) as answer:
        assert answer.status == 201
    async with client.post("/api/v2/auth/token", json={"email": email, "password": PASSWORD}) as answer:
        headers = {"Authorization": f"Bearer {(await answer.json())['access_token']}"}
    order = {"items": [{"sku": await new_product(client, admin, 250), "quantity": 1}]}
    async with client.post("/api/v2/orders", json=order, headers=headers) as answer:
        assert answer.status == 202
        order_id: str = (await answer.json())["id"]

    async def approved() -> bool:
        async with client.get(f"/api/v2/orders/{order_id}", headers=headers) as answer:
            status: str = (await answer.json())["status"]
            return status == "APPROVED"

    await eventually(approved, what="the order approved")
    return order_id


def spans_of_the_trace_of(
    spans: tuple[ReadableSpan, ...], *, scope: str, name: str, kind: SpanKind
) -> list[ReadableSpan]:
    [root] = [
        span
        for span in spans
        if span.instrumentation_scope is not None
        and span.instrumentation_scope.name == scope
        and span.name == name
        and span.kind is kind
    ]
    assert root.context is not None
    trace_id = root.context.trace_id
    return sorted(
        (span for span in spans if span.context is not None and span.context.trace_id == trace_id),
        key=lambda span: span.start_time or 0,
    )


def scope_of(span: ReadableSpan) -> str:
    return span.instrumentation_scope.name if span.instrumentation_scope is not None else "?"


OrderApproved = Callable[..., Awaitable[Stack]]


@pytest.fixture
def an_order_approved(
    exporter: InMemorySpanExporter,
    create_database: CreateDatabase,
    key_pair: KeyPair,
    broker: Vhost,
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    admin_headers: dict[str, str],
) -> OrderApproved:
    """`await an_order_approved(tracing=...)`: the three apps started, one order placed through the
    gateway and approved, with only the spans of the apps' work in the exporter (the order's trace,
    and those of the calls that prepared it: the sign-up, the sign-in, the product it is of)."""

    async def run(*, tracing: bool) -> Stack:
        exporter.clear()
        stack = await start_stack(
            tracing=tracing,
            create_database=create_database,
            key_pair=key_pair,
            broker=broker,
            aiohttp_server=aiohttp_server,
        )
        await place_an_order_and_wait_for_approval(stack, aiohttp_client, admin_headers)
        return stack

    return run


@pytest.mark.usefixtures("database_spans")
async def test_one_order_is_one_trace_from_the_gateway_through_both_services(
    exporter: InMemorySpanExporter, an_order_approved: OrderApproved
) -> None:
    await an_order_approved(tracing=True)

    expected = [
        ("gateway", SpanKind.SERVER, "POST /api/v2/orders"),
        ("gateway", SpanKind.CLIENT, "POST orders_service"),
        ("orders_service", SpanKind.SERVER, "POST /api/v2/orders"),
        ("orders_service", SpanKind.PRODUCER, "publish orders.order.created"),
        ("users_service", SpanKind.CONSUMER, "process orders.order.created"),
        ("users_service", SpanKind.PRODUCER, "publish users.credit.reserved"),
        ("orders_service", SpanKind.CONSUMER, "process users.credit.reserved"),
        ("orders_service", SpanKind.PRODUCER, "publish orders.order.approved"),
    ]

    def our_spans() -> list[tuple[str, SpanKind, str]]:
        trace_spans = spans_of_the_trace_of(
            exporter.get_finished_spans(), scope="gateway", name="POST /api/v2/orders", kind=SpanKind.SERVER
        )
        return [(scope_of(span), span.kind, span.name) for span in trace_spans if scope_of(span) in SERVICES]

    async def whole_trace_exported() -> bool:
        # A span is exported when it ends; the last publish ends just after the order is approved.
        return our_spans() == expected

    await eventually(whole_trace_exported, what=f"the whole trace: {expected}")

    trace_spans = spans_of_the_trace_of(
        exporter.get_finished_spans(), scope="gateway", name="POST /api/v2/orders", kind=SpanKind.SERVER
    )
    # One trace, one tree: every span but the gateway's first has its parent in the trace.
    ids = {span.context.span_id for span in trace_spans if span.context is not None}
    [root] = [span for span in trace_spans if span.parent is None]
    assert (scope_of(root), root.name) == ("gateway", "POST /api/v2/orders")
    assert all(span.parent.span_id in ids for span in trace_spans if span.parent is not None)
    # The services in the order the order travelled through them, and the database inside them.
    travelled = [scope for scope, _, _ in expected]
    assert [s for i, s in enumerate(travelled) if i == 0 or travelled[i - 1] != s] == [
        "gateway",
        "orders_service",
        "users_service",
        "orders_service",
    ]
    database_spans = [
        span for span in trace_spans if (span.attributes or {}).get("db.system") == "postgresql"
    ]
    assert database_spans, "no database spans in the trace"


async def test_with_tracing_off_nothing_is_recorded_and_no_event_carries_a_trace(
    exporter: InMemorySpanExporter, an_order_approved: OrderApproved
) -> None:
    stack = await an_order_approved(tracing=False)

    assert [span for span in exporter.get_finished_spans() if scope_of(span) in SERVICES] == []
    connection = await asyncpg.connect(stack.orders_database)
    try:
        bodies = await connection.fetch("SELECT body FROM outbox")
    finally:
        await connection.close()
    assert bodies
    assert all("traceparent" not in row["body"] for row in bodies)
