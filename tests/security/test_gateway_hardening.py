"""The gateway's protections at the edge, each attacked for real, through gateway processes.

Named after the OWASP API Security Top 10 (2023) item each one answers. Where a test must see what
reached a service, the gateway runs in front of a fake upstream that records every request.
"""

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from devstack.keys import KeyPair
from devstack.ports import free_port
from gateway.edge import MAX_HEADER_COUNT, PARSER_HEADER_HEADROOM, PARSER_HEADROOM
from tests.conftest import CreateDatabase
from tests.e2e.api import new_user
from tests.e2e.conftest import ServiceProcess, Stack, gateway_env, start_gateway
from tests.support import serving

pytestmark = pytest.mark.e2e  # gateway processes in front of a fake upstream

REGISTRATION = {"email": "a@example.com", "name": "A", "password": "12345678"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'"


@dataclasses.dataclass
class Received:
    method: str
    path: str
    headers: CIMultiDictProxy[str]


@dataclasses.dataclass
class FakeUpstream:
    """Stands in for a service: records every request but its readiness probes, answers `status`
    (or never, when `hang`)."""

    url: str = ""
    status: int = 201
    hang: bool = False
    received: list[Received] = dataclasses.field(default_factory=list)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    never = asyncio.Event()

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"status": "ready", "checks": {}})

    async def answer(request: web.Request) -> web.Response:
        fake.received.append(Received(request.method, request.path, request.headers))
        if fake.hang:
            await never.wait()
        return web.json_response({}, status=fake.status)

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_route("*", "/{tail:.*}", answer)
    async with serving(app) as fake.url:
        yield fake


StartGateway = Callable[..., Awaitable[ServiceProcess]]


@pytest.fixture
async def gateway_before(
    upstream: FakeUpstream, key_pair: KeyPair, tmp_path: Path, create_database: CreateDatabase
) -> AsyncIterator[StartGateway]:
    """Start gateways whose users_service and orders_service are both the fake upstream. They share
    one database, as replicas of one gateway do."""
    started: list[ServiceProcess] = []
    database_url = await create_database("gateway")

    async def start(**settings: str) -> ServiceProcess:
        env = gateway_env(free_port(), key_pair, upstream.url, upstream.url, database_url, **settings)
        gateway = await start_gateway(f"gateway-{len(started)}", env, tmp_path, ready_path="/healthz")
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        assert await gateway.stop() == 0


async def raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, str]]:
    """Send bytes no well-behaved client would send; the status and headers of the answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    status_line, *header_lines = head.decode("latin-1").strip().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers


async def test_api8_security_headers_on_every_response(stack: Stack, http: aiohttp.ClientSession) -> None:
    answers = [
        ("GET", f"{stack.url}/healthz"),
        ("POST", f"{stack.url}/api/v2/users"),  # 415 problem, from users_service through the gateway
        ("GET", f"{stack.url}/api/v2/users/me"),  # 401 problem, from the gateway itself
        ("GET", f"{stack.url}/api/users/me"),  # 401 problem, version 1's (with its deprecation notice)
        ("GET", f"{stack.url}/nowhere"),  # 404 problem
        ("GET", f"{stack.url}/openapi.json"),
        ("GET", f"{stack.users.url}/readyz"),  # each service, asked directly
        ("GET", f"{stack.orders.url}/api/v2/orders"),
    ]
    for method, url in answers:
        async with http.request(method, url) as response:
            for name, value in SECURITY_HEADERS.items():
                assert response.headers.get(name) == value, (url, name)
            assert response.headers.get("Content-Security-Policy") == API_CSP, url
            assert response.headers.get("Cache-Control") == "no-store", url

    # The docs page may run the gateway's own scripts and styles, and nothing inline or foreign.
    async with http.get(f"{stack.url}/docs") as response:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, name
        policy = response.headers["Content-Security-Policy"]
        page = await response.text()
    assert "default-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "script-src" not in policy  # scripts fall back to 'self': no inline script, no eval
    assert "<script>" not in page  # every script of the page is a same-origin file


async def test_api8_no_version_in_server_header(stack: Stack, http: aiohttp.ClientSession) -> None:
    servers = []
    for url in (f"{stack.url}/healthz", f"{stack.url}/nowhere", f"{stack.users.url}/healthz"):
        async with http.get(url) as response:
            servers.append(response.headers.get("Server", ""))
    # A request too broken for aiohttp to parse is answered before any middleware runs.
    _, headers = await raw_exchange(stack.url, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header : 1\r\n\r\n")
    servers.append(headers.get("Server", ""))
    for server in servers:
        assert "aiohttp" not in server, server
        assert "Python" not in server, server
        assert not any(character.isdigit() for character in server), server


async def test_api1_identity_headers_from_clients_are_stripped(
    gateway_before: StartGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await gateway_before()
    forged = {
        "X-User-Id": "00000000-0000-0000-0000-000000000001",
        "X-Authenticated-User": "admin",
        "X-Forwarded-User": "admin",
        "X-Remote-User": "admin",
        "Remote-User": "admin",
        "Forwarded": "for=10.0.0.1;by=10.0.0.2",
        "X-Forwarded-For": "10.0.0.1",
        "X-Forwarded-Host": "admin.internal",
        "X-Real-IP": "10.0.0.1",
    }
    async with http.post(f"{gateway.url}/api/v2/users", json=REGISTRATION, headers=forged) as response:
        assert response.status == 201
    [arrived] = upstream.received
    assert arrived.path == "/api/v2/users"
    for name in forged:
        if name != "X-Forwarded-For":
            assert name not in arrived.headers, name
    assert arrived.headers.getall("X-Forwarded-For") == ["127.0.0.1"]  # the gateway's own finding


async def test_api4_oversized_url_is_414(
    gateway_before: StartGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await gateway_before(MAX_URL_BYTES="2048")
    for length in (2048, 2048 + PARSER_HEADROOM - 100):  # over our limit, under the parser's
        async with http.get(f"{gateway.url}/api/v2/orders?cursor={'a' * length}") as response:
            assert response.status == 414
            assert response.content_type == "application/problem+json"
            assert (await response.json())["status"] == 414
    # Far over it, aiohttp's parser refuses the request line itself, before any middleware: a plain
    # 400, and the line is never held whole.
    async with http.get(f"{gateway.url}/api/v2/orders?cursor={'a' * 20_000}") as response:
        assert response.status == 400
    async with http.post(f"{gateway.url}/api/v2/users?{'a' * 1900}", json=REGISTRATION) as response:
        assert response.status == 201  # under the limit: served
    assert [arrived.method for arrived in upstream.received] == ["POST"]


async def test_api4_oversized_headers_are_431(
    gateway_before: StartGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await gateway_before(MAX_HEADER_BYTES="8192", MAX_HEADERS_TOTAL_BYTES="16384")
    one_huge = {"X-Padding": "a" * 9000}  # over aiohttp's own default limit, too
    many_large = {f"X-Padding-{n}": "a" * 4000 for n in range(5)}
    many_small = {f"X-Padding-{n}": "a" for n in range(MAX_HEADER_COUNT)}  # and the client's own
    for headers in (one_huge, many_large, many_small):
        async with http.post(f"{gateway.url}/api/v2/users", json=REGISTRATION, headers=headers) as response:
            assert response.status == 431
            assert response.content_type == "application/problem+json"
    # Far over, aiohttp's parser refuses them before any middleware (a plain 400): a request can make
    # it hold no more than about MAX_HEADER_COUNT headers of about MAX_HEADER_BYTES each.
    for headers in (
        {"X-Padding": "a" * (8192 + PARSER_HEADROOM + 1)},
        {f"X-Padding-{n}": "a" for n in range(MAX_HEADER_COUNT + PARSER_HEADER_HEADROOM + 1)},
    ):
        async with http.post(f"{gateway.url}/api/v2/users", json=REGISTRATION, headers=headers) as response:
            assert response.status == 400
    assert upstream.received == []
    assert "Failed to create request handler" not in gateway.log_text()  # our server limits were taken


async def test_api4_rate_limit_answers_429_with_retry_after(
    gateway_before: StartGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await gateway_before(RATE_LIMIT_PER_SECOND="0.5", RATE_LIMIT_BURST="5")
    statuses = []
    for _ in range(8):
        async with http.post(f"{gateway.url}/api/v2/users", json=REGISTRATION) as response:
            statuses.append(response.status)
            if response.status == 429:
                assert response.content_type == "application/problem+json"
                assert int(response.headers["Retry-After"]) >= 1
                assert (await response.json())["type"] == "urn:eda-reference:problem:rate-limited"
    assert statuses == [201] * 5 + [429] * 3
    assert len(upstream.received) == 5
    async with http.get(f"{gateway.url}/healthz") as response:
        assert response.status == 200  # probes are never limited


async def test_api4_two_gateway_replicas_share_one_rate_limit(
    gateway_before: StartGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # Limits kept in each process's memory would let a client through once per replica.
    limits = {"RATE_LIMIT_PER_SECOND": "0.01", "RATE_LIMIT_BURST": "6", "RATE_LIMIT_LEASE": "2"}
    replicas = [await gateway_before(**limits), await gateway_before(**limits)]
    statuses = []
    for _ in range(6):
        for gateway in replicas:
            async with http.post(f"{gateway.url}/api/v2/users", json=REGISTRATION) as response:
                statuses.append(response.status)
    assert statuses.count(201) == 6
    assert statuses[-2:] == [429, 429]
    assert len(upstream.received) == 6


# The API version of each of five attempts (the path prefix): the stricter allowances are one per
# operation, whichever version asks, so that a client cannot double one by alternating versions.
VERSION_MIXES = {
    "version-1": ["/api"] * 5,
    "version-2": ["/api/v2"] * 5,
    "alternating": ["/api", "/api/v2", "/api", "/api/v2", "/api"],
}


@pytest.mark.parametrize("prefixes", VERSION_MIXES.values(), ids=VERSION_MIXES.keys())
async def test_api4_sign_in_is_rate_limited_more_strictly_in_every_version_at_once(
    gateway_before: StartGateway, upstream: FakeUpstream, http: aiohttp.ClientSession, prefixes: list[str]
) -> None:
    gateway = await gateway_before(LOGIN_RATE_LIMIT_PER_MINUTE="3")
    upstream.status = 401
    credentials = {"email": "a@example.com", "password": "guess-1234"}
    statuses = []
    for prefix in prefixes:
        async with http.post(f"{gateway.url}{prefix}/auth/token", json=credentials) as response:
            statuses.append(response.status)
            # Version 1's answers say it is deprecated, the gateway's own refusals (429) too.
            assert ("Deprecation" in response.headers) == (prefix == "/api"), (prefix, response.status)
    assert statuses == [401, 401, 401, 429, 429]
    assert [arrived.path for arrived in upstream.received] == [
        f"{prefix}/auth/token" for prefix in prefixes[:3]
    ]
    upstream.status = 201
    async with http.post(f"{gateway.url}/api/v2/users", json=REGISTRATION) as response:
        assert response.status == 201  # other operations keep the general, larger allowance


@pytest.mark.parametrize("prefixes", VERSION_MIXES.values(), ids=VERSION_MIXES.keys())
async def test_api4_registration_is_rate_limited_more_strictly_in_every_version_at_once(
    gateway_before: StartGateway, upstream: FakeUpstream, http: aiohttp.ClientSession, prefixes: list[str]
) -> None:
    gateway = await gateway_before(REGISTRATION_RATE_LIMIT_PER_MINUTE="3")
    statuses = []
    for prefix in prefixes:
        async with http.post(f"{gateway.url}{prefix}/users", json=REGISTRATION) as response:
            statuses.append(response.status)
    assert statuses == [201, 201, 201, 429, 429]
    assert [arrived.path for arrived in upstream.received] == [f"{prefix}/users" for prefix in prefixes[:3]]
    upstream.status = 200
    credentials = {"email": REGISTRATION["email"], "password": REGISTRATION["password"]}
    async with http.post(f"{gateway.url}/api/v2/auth/token", json=credentials) as response:
        assert response.status == 200  # sign-in has an allowance of its own


async def test_api4_an_open_circuit_answers_503_without_calling_the_upstream(
    gateway_before: StartGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.hang = True
    gateway = await gateway_before(
        UPSTREAM_TIMEOUT="0.5", CIRCUIT_FAILURE_THRESHOLD="2", CIRCUIT_OPEN_SECONDS="60"
    )
    for _ in range(2):
        async with http.post(f"{gateway.url}/api/v2/users", json=REGISTRATION) as response:
            assert response.status == 504
    async with http.post(f"{gateway.url}/api/v2/users", json=REGISTRATION) as response:
        assert response.status == 503
        assert response.content_type == "application/problem+json"
        assert int(response.headers["Retry-After"]) > 1
    assert len(upstream.received) == 2  # the third request never left the gateway
    async with http.get(f"{gateway.url}/readyz") as response:
        # Readiness reports it, but the gateway stays in rotation: an upstream's outage is every
        # replica's, and the routes of any other upstream are still served (gateway/app.py).
        assert response.status == 200
        assert (await response.json())["checks"] == {"users_service": "unavailable", "orders_service": "ok"}


async def test_api4_reads_are_retried_but_writes_never(
    stack: Stack, gateway_before: StartGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    user = await new_user(http, stack.url)  # a real token, signed by the stack's users_service
    upstream.status = 503
    gateway = await gateway_before(UPSTREAM_RETRIES="2", CIRCUIT_FAILURE_THRESHOLD="100")
    async with http.get(f"{gateway.url}/api/v2/users/me", headers=user.headers) as response:
        assert response.status == 503
    assert [arrived.method for arrived in upstream.received] == ["GET"] * 3
    async with http.post(f"{gateway.url}/api/v2/users", json=REGISTRATION) as response:
        assert response.status == 503
    assert [arrived.method for arrived in upstream.received] == ["GET"] * 3 + ["POST"]


async def test_api8_cors_off_by_default(stack: Stack, http: aiohttp.ClientSession) -> None:
    origin = {"Origin": "https://app.example.com"}
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    async with http.options(f"{stack.url}/api/v2/orders", headers=preflight) as response:
        assert not [name for name in response.headers if name.lower().startswith("access-control-")]
    async with http.get(f"{stack.url}/api/v2/orders", headers=origin) as response:
        assert not [name for name in response.headers if name.lower().startswith("access-control-")]


async def test_api8_cors_allows_only_listed_origins(
    gateway_before: StartGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    gateway = await gateway_before(CORS_ALLOWED_ORIGINS="https://app.example.com, https://admin.example.com")
    request = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    async with http.options(
        f"{gateway.url}/api/v2/orders", headers={"Origin": "https://app.example.com", **request}
    ) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        # An admin's page changes limits and products with PUT.
        assert "PUT" in response.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
        assert "Access-Control-Allow-Credentials" not in response.headers
    async with http.post(
        f"{gateway.url}/api/v2/users", json=REGISTRATION, headers={"Origin": "https://app.example.com"}
    ) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert "Origin" in response.headers.getall("Vary")

    for stranger in ("https://evil.example", "https://app.example.com.evil.example", "null"):
        async with http.options(
            f"{gateway.url}/api/v2/orders", headers={"Origin": stranger, **request}
        ) as response:
            assert response.status == 405
            assert "Access-Control-Allow-Origin" not in response.headers
        async with http.post(
            f"{gateway.url}/api/v2/users", json=REGISTRATION, headers={"Origin": stranger}
        ) as response:
            assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize(
    "smuggled",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        b"X-Note: a\rX-User-Id: 1\r\nContent-Length: 2\r\n\r\n{}",
        b"X-User-Id : 1\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=[
        "content-length-and-chunked",
        "two-content-lengths",
        "two-encodings",
        "bare-cr",
        "space-before-colon",
    ],
)
async def test_api8_header_smuggling_is_refused(
    gateway_before: StartGateway, upstream: FakeUpstream, smuggled: bytes
) -> None:
    gateway = await gateway_before()
    head = b"POST /api/v2/users HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
    status, _ = await raw_exchange(gateway.url, head + smuggled)
    assert 400 <= status < 500
    assert upstream.received == []
