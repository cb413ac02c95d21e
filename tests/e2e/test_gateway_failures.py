"""An upstream that is down, slow or broken: the client gets 503, 504 or 502 as problem+json."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from devstack.ports import free_port
from tests.e2e.conftest import ServiceProcess, Stack, gateway_env, start_gateway
from tests.support import serving

StartGateway = Callable[[str], Awaitable[ServiceProcess]]


@pytest.fixture
async def slow_upstream() -> AsyncIterator[str]:
    """An upstream that accepts requests and never answers them."""
    never = asyncio.Event()

    async def hang(_: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    async def ready(_: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_route("*", "/{tail:.*}", hang)
    async with serving(app) as url:
        yield url


@pytest.fixture
async def broken_upstream() -> AsyncIterator[str]:
    """An upstream that answers every request with something that is not HTTP."""

    async def babble(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"this is not HTTP\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(babble, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


@pytest.fixture
async def gateway_to(stack: Stack) -> AsyncIterator[StartGateway]:
    """Start extra gateways whose users_service upstream is the given URL (orders stays real)."""
    started: list[ServiceProcess] = []

    async def start(users_url: str) -> ServiceProcess:
        env = gateway_env(
            free_port(),
            stack.keys,
            users_url,
            stack.orders.url,
            stack.env["gateway"]["DATABASE_URL"],
            UPSTREAM_TIMEOUT="0.5",
        )
        # Up, not ready: its users_service upstream is dead, slow or broken on purpose.
        gateway = await start_gateway(f"gateway-{len(started)}", env, stack.log_dir, ready_path="/healthz")
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        assert await gateway.stop() == 0


REGISTRATION = {"email": "a@example.com", "name": "A", "password": "12345678"}


async def test_a_dead_upstream_is_503_and_readiness_says_which_but_stays_ready(
    gateway_to: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await gateway_to(f"http://127.0.0.1:{free_port()}")
    async with http.post(f"{gateway.url}/api/v2/users", json=REGISTRATION) as response:
        assert response.status == 503
        assert response.content_type == "application/problem+json"
        assert "Retry-After" in response.headers
    async with http.get(f"{gateway.url}/readyz") as response:
        # Not a reason to take the gateway out of rotation: orders_service's routes are served.
        assert response.status == 200
        assert (await response.json())["checks"] == {"users_service": "unavailable", "orders_service": "ok"}


async def test_a_slow_upstream_is_504(
    gateway_to: StartGateway, slow_upstream: str, http: aiohttp.ClientSession
) -> None:
    gateway = await gateway_to(slow_upstream)
    await gateway.wait_ready()
    async with http.post(f"{gateway.url}/api/v2/users", json=REGISTRATION) as response:
        assert response.status == 504
        problem = await response.json()
    assert problem["title"] == "Upstream timeout"
    assert "127.0.0.1" not in str(problem)  # no internal address leaks


async def test_a_broken_upstream_is_502(
    gateway_to: StartGateway, broken_upstream: str, http: aiohttp.ClientSession
) -> None:
    gateway = await gateway_to(broken_upstream)
    async with http.post(f"{gateway.url}/api/v2/users", json=REGISTRATION) as response:
        assert response.status == 502
        assert response.content_type == "application/problem+json"
