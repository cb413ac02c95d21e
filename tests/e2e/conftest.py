"""The real processes, started as `make dev` starts them, reached only through the gateway over HTTP."""

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.conftest import ADMIN_DSN, isolated_vhost
from tests.support import KeyPair, eventually, free_port

ROOT = Path(__file__).resolve().parents[2]
STOP_DEADLINE = 20.0


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


async def start_process(name: str, module: str, env: Mapping[str, str], log_dir: Path) -> ServiceProcess:
    log = log_dir / f"{name}.log"
    port = env["HTTP_PORT"]
    with log.open("wb") as sink:
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
    gateway: ServiceProcess
    users: ServiceProcess
    orders: ServiceProcess
    keys: KeyPair
    log_dir: Path

    @property
    def url(self) -> str:
        return self.gateway.url


async def create_service_databases(suffix: str) -> dict[str, str]:
    """Run the same script `make dev` and compose run, on databases of this test run's own."""
    names = {"USERS_DB_NAME": f"e2e_users_{suffix}", "ORDERS_DB_NAME": f"e2e_orders_{suffix}"}
    script = await asyncio.create_subprocess_exec(
        "bash",
        str(ROOT / "deploy" / "postgres" / "create-databases.sh"),
        env={**os.environ, "PGHOST": "127.0.0.1", **names},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await script.communicate()
    assert script.returncode == 0, output.decode()
    return names


async def drop_databases(names: list[str]) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def gateway_env(port: int, keys: KeyPair, users_url: str, orders_url: str, **extra: str) -> dict[str, str]:
    return {
        "HTTP_PORT": str(port),
        "USERS_SERVICE_URL": users_url,
        "ORDERS_SERVICE_URL": orders_url,
        "JWT_PUBLIC_KEY_FILE": str(keys.public),
        **extra,
    }


@pytest.fixture(scope="session")
async def stack(key_pair: KeyPair, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    log_dir = tmp_path_factory.mktemp("e2e-logs")
    async with isolated_vhost() as rabbitmq_url:
        async for stack in _started_stack(key_pair, log_dir, rabbitmq_url):
            yield stack


async def _started_stack(key_pair: KeyPair, log_dir: Path, rabbitmq_url: str) -> AsyncIterator[Stack]:
    databases = await create_service_databases(uuid.uuid4().hex[:8])
    users_port, orders_port, gateway_port = free_port(), free_port(), free_port()
    common = {"RABBITMQ_URL": rabbitmq_url, "JWT_PUBLIC_KEY_FILE": str(key_pair.public)}
    users = await start_process(
        "users_service",
        "users_service",
        {
            **common,
            "HTTP_PORT": str(users_port),
            "DATABASE_URL": f"postgresql://users_svc:users_svc@127.0.0.1:5432/{databases['USERS_DB_NAME']}",
            "JWT_PRIVATE_KEY_FILE": str(key_pair.private),
        },
        log_dir,
    )
    orders = await start_process(
        "orders_service",
        "orders_service",
        {
            **common,
            "HTTP_PORT": str(orders_port),
            "DATABASE_URL": f"postgresql://orders_svc:orders_svc@127.0.0.1:5432/{databases['ORDERS_DB_NAME']}",
        },
        log_dir,
    )
    gateway = await start_process(
        "gateway", "gateway", gateway_env(gateway_port, key_pair, users.url, orders.url), log_dir
    )
    started = [gateway, users, orders]
    try:
        for service in started:
            await wait_ready(service)
        yield Stack(gateway=gateway, users=users, orders=orders, keys=key_pair, log_dir=log_dir)
    finally:
        exit_codes = {service.name: await service.stop() for service in started}
        await drop_databases(list(databases.values()))
    assert exit_codes == {"gateway": 0, "users_service": 0, "orders_service": 0}, "unclean shutdown"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
