"""The real processes, started as `make dev` starts them, reached only through the gateway over HTTP.

Each stack gets databases and a RabbitMQ virtual host of its own, so stacks never see each other's
rows or events. Fault tests stop, kill and restart its processes.
"""

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import isolated_vhost
from tests.support import KeyPair, drop_databases, dsn_for, eventually, free_port

ROOT = Path(__file__).resolve().parents[2]
STOP_DEADLINE = 20.0
MODULES = {"gateway": "gateway", "users_service": "users_service", "orders_service": "orders_service"}


@dataclasses.dataclass
class ServiceProcess:
    name: str
    url: str
    process: asyncio.subprocess.Process
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def stop(self) -> int:
        """SIGTERM, then wait for a clean exit; the exit code tells whether shutdown was graceful."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_DEADLINE)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
                raise AssertionError(f"{self.name} ignored SIGTERM for {STOP_DEADLINE} s") from None
        code = self.process.returncode
        assert code is not None
        return code

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no flush, no ack: a crash."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def start_process(name: str, module: str, env: Mapping[str, str], log_dir: Path) -> ServiceProcess:
    log = log_dir / f"{name}.log"
    port = env["HTTP_PORT"]
    with log.open("ab") as sink:  # a restarted process goes on with the same log
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            cwd=ROOT,
            env={**os.environ, "LOG_FORMAT": "console", **env},
            stdout=sink,
            stderr=asyncio.subprocess.STDOUT,
        )
    return ServiceProcess(name=name, url=f"http://127.0.0.1:{port}", process=process, log=log)


async def wait_ready(service: ServiceProcess, timeout: float = 30.0) -> None:
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            if service.process.returncode is not None:
                raise AssertionError(f"{service.name} exited early:\n{service.log_text()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{service.url}/readyz") as response:
                    return response.status == 200
            return False

        await eventually(ready, timeout=timeout, interval=0.1, what=f"{service.name} ready")


@dataclasses.dataclass
class Stack:
    keys: KeyPair
    log_dir: Path
    rabbitmq_url: str
    databases: dict[str, str]  # service name -> database name
    env: dict[str, dict[str, str]]  # service name -> its environment
    processes: dict[str, ServiceProcess]
    replica_of: dict[str, str] = dataclasses.field(default_factory=dict)  # replica name -> service

    @property
    def url(self) -> str:
        return self.processes["gateway"].url

    @property
    def gateway(self) -> ServiceProcess:
        return self.processes["gateway"]

    @property
    def users(self) -> ServiceProcess:
        return self.processes["users_service"]

    @property
    def orders(self) -> ServiceProcess:
        return self.processes["orders_service"]

    def admin_dsn(self, service: str) -> str:
        """A superuser connection to a service's database, for the tests' own checks."""
        return dsn_for(self.databases[service])

    async def start(self, name: str, **env_overrides: str) -> ServiceProcess:
        self.env[name] = {**self.env[name], **env_overrides}
        module = MODULES[self.replica_of.get(name, name)]
        process = await start_process(name, module, self.env[name], self.log_dir)
        self.processes[name] = process
        await wait_ready(process)
        return process

    async def start_replica(self, service: str, name: str, **env_overrides: str) -> ServiceProcess:
        """One more process of `service` under another name, on a port of its own but with the same
        databases and vhost: it competes with the others for the same queues and outbox rows."""
        self.replica_of[name] = service
        self.env[name] = {**self.env[service], "HTTP_PORT": str(free_port())}
        return await self.start(name, **env_overrides)

    async def restart(self, name: str, **env_overrides: str) -> ServiceProcess:
        assert await self.processes[name].stop() == 0
        return await self.start(name, **env_overrides)


async def create_service_databases(suffix: str) -> dict[str, str]:
    """Run the same script `make dev` and compose run, on databases of this test run's own."""
    names = {
        "USERS_DB_NAME": f"e2e_users_{suffix}",
        "ORDERS_DB_NAME": f"e2e_orders_{suffix}",
        "GATEWAY_DB_NAME": f"e2e_gateway_{suffix}",
    }
    script = await asyncio.create_subprocess_exec(
        "bash",
        str(ROOT / "deploy" / "postgres" / "create-databases.sh"),
        env={**os.environ, "PGHOST": "127.0.0.1", **names},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await script.communicate()
    assert script.returncode == 0, output.decode()
    return {
        "users_service": names["USERS_DB_NAME"],
        "orders_service": names["ORDERS_DB_NAME"],
        "gateway": names["GATEWAY_DB_NAME"],
    }


def gateway_env(
    port: int, keys: KeyPair, users_url: str, orders_url: str, database_url: str, **extra: str
) -> dict[str, str]:
    return {
        "HTTP_PORT": str(port),
        "USERS_SERVICE_URL": users_url,
        "ORDERS_SERVICE_URL": orders_url,
        "DATABASE_URL": database_url,
        "JWT_PUBLIC_KEY_FILE": str(keys.public),
        **extra,
    }


@contextlib.asynccontextmanager
async def running_stack(
    key_pair: KeyPair, log_dir: Path, service_env: Mapping[str, Mapping[str, str]] | None = None
) -> AsyncIterator[Stack]:
    """Databases, a vhost and the three processes; on exit every process must stop cleanly."""
    service_env = service_env or {}
    async with isolated_vhost() as rabbitmq_url:
        databases = await create_service_databases(uuid.uuid4().hex[:8])
        users_port, orders_port = free_port(), free_port()
        common = {"RABBITMQ_URL": rabbitmq_url, "JWT_PUBLIC_KEY_FILE": str(key_pair.public)}
        env = {
            "users_service": {
                **common,
                "HTTP_PORT": str(users_port),
                "DATABASE_URL": f"postgresql://users_svc:users_svc@127.0.0.1:5432/{databases['users_service']}",
                "JWT_PRIVATE_KEY_FILE": str(key_pair.private),
                **service_env.get("users_service", {}),
            },
            "orders_service": {
                **common,
                "HTTP_PORT": str(orders_port),
                "DATABASE_URL": f"postgresql://orders_svc:orders_svc@127.0.0.1:5432/{databases['orders_service']}",
                **service_env.get("orders_service", {}),
            },
            "gateway": {
                **gateway_env(
                    free_port(),
                    key_pair,
                    f"http://127.0.0.1:{users_port}",
                    f"http://127.0.0.1:{orders_port}",
                    f"postgresql://gateway_svc:gateway_svc@127.0.0.1:5432/{databases['gateway']}",
                    RABBITMQ_URL=rabbitmq_url,  # its flow page's tap, on the stack's own vhost
                ),
                **service_env.get("gateway", {}),
            },
        }
        stack = Stack(key_pair, log_dir, rabbitmq_url, databases, env, processes={})
        try:
            for name in ("users_service", "orders_service", "gateway"):
                await stack.start(name)
            yield stack
        finally:
            exit_codes = {name: await process.stop() for name, process in stack.processes.items()}
            await drop_databases(list(databases.values()))
        assert set(exit_codes.values()) == {0}, f"unclean shutdown: {exit_codes}"


@pytest.fixture(scope="session")
async def stack(key_pair: KeyPair, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One stack shared by the tests that only talk to it through the API."""
    async with running_stack(key_pair, tmp_path_factory.mktemp("e2e-logs")) as shared_stack:
        yield shared_stack


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def fresh_stack(key_pair: KeyPair, tmp_path: Path) -> AsyncIterator[StackFactory]:
    """A stack of the test's own, for tests that break things: `await fresh_stack(orders_service={...})`."""
    async with contextlib.AsyncExitStack() as stacks:

        async def start(**service_env: Mapping[str, str]) -> Stack:
            return await stacks.enter_async_context(running_stack(key_pair, tmp_path, service_env))

        yield start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
