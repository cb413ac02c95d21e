"""The real processes, started as `make dev` starts them, reached only through the gateway over HTTP.

Each stack (devstack/stack.py) gets databases and a RabbitMQ virtual host of its own on the run's
servers, so stacks never see each other's rows or events. Fault tests stop, kill and restart its
processes.
"""

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import aiohttp
import pytest

from devstack.keys import KeyPair
from devstack.processes import ServiceProcess, service_process
from devstack.servers import Servers
from devstack.stack import Stack, running_stack

__all__ = ["ServiceProcess", "Stack", "StackFactory", "gateway_env", "start_gateway"]


def gateway_env(
    port: int, keys: KeyPair, users_url: str, orders_url: str, database_url: str, **extra: str
) -> dict[str, str]:
    """A gateway's whole environment, in front of the given upstreams (real ones or a test's fakes)."""
    return {
        "HTTP_PORT": str(port),
        "USERS_SERVICE_URL": users_url,
        "ORDERS_SERVICE_URL": orders_url,
        "DATABASE_URL": database_url,
        "JWT_PUBLIC_KEY_FILE": str(keys.public),
        "FLOW_ENABLED": "false",  # its tap would need a broker; the tests that want it say so
        **extra,
    }


async def start_gateway(
    name: str, env: Mapping[str, str], log_dir: Path, *, ready_path: str = "/readyz"
) -> ServiceProcess:
    """A gateway process of the test's own, started; ready, or only up (`ready_path="/healthz"`)
    for one whose upstream is down on purpose."""
    gateway = service_process(name, "gateway", env, log_dir)
    await gateway.start(ready_path=ready_path)
    return gateway


# The shared stack serves every test that only talks to the API, all from one address and within a few
# minutes: more registrations and sign-ins in a minute than the gateway lets one client make, and the
# more so as tests make their own admins and products. Those limits are not what these tests are
# about; they have tests of their own, each with a gateway of its own (tests/security, tests/abuse).
SHARED_STACK_GATEWAY = {
    "REGISTRATION_RATE_LIMIT_PER_MINUTE": "100000",
    "LOGIN_RATE_LIMIT_PER_MINUTE": "100000",
}


@pytest.fixture(scope="session")
async def stack(
    servers: Servers, key_pair: KeyPair, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """One stack shared by the tests that only talk to it through the API."""
    async with running_stack(
        servers, key_pair, tmp_path_factory.mktemp("e2e-logs"), {"gateway": SHARED_STACK_GATEWAY}
    ) as shared_stack:
        yield shared_stack


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def fresh_stack(servers: Servers, key_pair: KeyPair, tmp_path: Path) -> AsyncIterator[StackFactory]:
    """A stack of the test's own, for tests that break things: `await fresh_stack(orders_service={...})`."""
    async with contextlib.AsyncExitStack() as stacks:

        async def start(**service_env: Mapping[str, str]) -> Stack:
            return await stacks.enter_async_context(running_stack(servers, key_pair, tmp_path, service_env))

        yield start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
