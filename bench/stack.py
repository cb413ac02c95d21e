"""The system under test, as local processes: users_service, orders_service and the gateway, each
started with `python -m <module>` on a free port, with fresh databases and a RabbitMQ virtual host
of its own (as tests/e2e does), removed again at the end whatever happens."""

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import aiohttp
import asyncpg
from yarl import URL

from gateway.config import GatewayConfig

# The same local-infrastructure helpers as the tests: one place knows where the local Postgres and
# RabbitMQ are and how to poll with a deadline.
from tests.support import ADMIN_DSN, RABBITMQ_URL, drop_databases, dsn_for, eventually, free_port
from users_service.keygen import ensure_keypair

ROOT = Path(__file__).resolve().parents[1]
STOP_DEADLINE = 20.0
T = TypeVar("T")


async def create_database(name: str) -> str:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return dsn_for(name)


@contextlib.asynccontextmanager
async def databases(*prefixes: str) -> AsyncIterator[dict[str, str]]:
    """Fresh, empty databases (prefix -> DSN), dropped at the end."""
    suffix = uuid.uuid4().hex[:8]
    names = {prefix: f"bench_{prefix}_{suffix}" for prefix in prefixes}
    created: list[str] = []
    try:
        for name in names.values():
            await create_database(name)
            created.append(name)
        yield {prefix: dsn_for(name) for prefix, name in names.items()}
    finally:
        await drop_databases(created)


async def rabbitmqctl(*arguments: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", *arguments, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(arguments)}: {output.decode()}")


@contextlib.asynccontextmanager
async def isolated_vhost() -> AsyncIterator[str]:
    base = URL(RABBITMQ_URL)
    name = f"bench-{uuid.uuid4().hex[:10]}"
    await rabbitmqctl("add_vhost", name)
    try:
        await rabbitmqctl("set_permissions", "-p", name, base.user or "guest", ".*", ".*", ".*")
        yield f"{str(base).rstrip('/')}/{name}"
    finally:
        # Shielded: on Ctrl-C the vhost still goes, or it would be left on a shared broker.
        await asyncio.shield(rabbitmqctl("delete_vhost", name))


@dataclasses.dataclass
class Service:
    name: str
    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None

    @property
    def port(self) -> int:
        return int(self.env["HTTP_PORT"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.returncode is None else None

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def log_text(self, since: int = 0) -> str:
        with self.log.open("rb") as handle:
            handle.seek(since)
            return handle.read().decode(errors="replace")

    async def start(self) -> None:
        with self.log.open("ab") as sink:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.name,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
            )
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                if self.process is None or self.process.returncode is not None:
                    raise RuntimeError(f"{self.name} exited at start:\n{self.log_text()[-4000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.url}/readyz") as response:
                        return response.status == 200
                return False

            await eventually(ready, timeout=60, what=f"{self.name} ready", interval=0.1)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_DEADLINE)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@dataclasses.dataclass
class Stack:
    users: Service
    orders: Service
    gateway: Service
    rabbitmq_url: str
    databases: dict[str, str]  # "users" / "orders" -> admin DSN of that database

    @property
    def services(self) -> list[Service]:
        return [self.users, self.orders, self.gateway]

    async def restart(self, service: Service, **env: str) -> None:
        await service.stop()
        service.env.update(env)
        await service.start()


@contextlib.asynccontextmanager
async def running_stack(work_dir: Path, *, jwt_ttl_seconds: int) -> AsyncIterator[Stack]:
    keys = work_dir / "keys"
    ensure_keypair(keys / "jwt-private.pem", keys / "jwt-public.pem")
    gateway_settings = {env: doc for env, _, doc in GatewayConfig.documented_settings()}
    # A gateway that keeps state in Postgres (shared rate limits) gets a fresh database of its own too.
    gateway_has_database = "DATABASE_URL" in gateway_settings
    # nginx limits nothing here, so neither does the gateway: off where the gateway documents a way
    # to turn limits off (a rate of 0), else so high that they never apply.
    can_turn_limits_off = "0 turns every limit off" in gateway_settings.get("RATE_LIMIT_PER_SECOND", "")
    rate_limits = (
        {"RATE_LIMIT_PER_SECOND": "0"}
        if can_turn_limits_off
        else {"RATE_LIMIT_PER_SECOND": "1000000000", "RATE_LIMIT_BURST": "1000000000"}
    )
    prefixes = ("users", "orders", "gateway") if gateway_has_database else ("users", "orders")
    async with isolated_vhost() as rabbitmq_url, databases(*prefixes) as dsns:
        common = {
            "RABBITMQ_URL": rabbitmq_url,
            "JWT_PUBLIC_KEY_FILE": str(keys / "jwt-public.pem"),
            # Logging costs: a benchmark of a service that logs every request measures its logging.
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "json",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        }
        users_port, orders_port = free_port(), free_port()
        users = Service(
            "users_service",
            {
                **common,
                "HTTP_PORT": str(users_port),
                "DATABASE_URL": dsns["users"],
                "JWT_PRIVATE_KEY_FILE": str(keys / "jwt-private.pem"),
                "JWT_TTL_SECONDS": str(jwt_ttl_seconds),
            },
            work_dir / "users_service.log",
        )
        orders = Service(
            "orders_service",
            {**common, "HTTP_PORT": str(orders_port), "DATABASE_URL": dsns["orders"]},
            work_dir / "orders_service.log",
        )
        gateway = Service(
            "gateway",
            {
                **common,
                "HTTP_PORT": str(free_port()),
                "USERS_SERVICE_URL": users.url,
                "ORDERS_SERVICE_URL": orders.url,
                **rate_limits,
                # Development-only page that reads every event from the broker: off, as in production.
                "FLOW_ENABLED": "false",
                **({"DATABASE_URL": dsns["gateway"]} if gateway_has_database else {}),
            },
            work_dir / "gateway.log",
        )
        stack = Stack(users, orders, gateway, rabbitmq_url, dsns)
        try:
            for service in stack.services:
                await service.start()
            yield stack
        finally:
            await asyncio.shield(asyncio.gather(*(service.stop() for service in stack.services)))


@dataclasses.dataclass(frozen=True)
class Customer:
    user_id: str
    token: str


async def register_customers(session: aiohttp.ClientSession, users_url: str, count: int) -> list[Customer]:
    """Users with the largest credit limit, and their access tokens (signed in through the API)."""

    async def one(index: int) -> Customer:
        email = f"bench-{index}-{uuid.uuid4().hex[:8]}@example.com"
        password = "bench-password"
        body = {
            "email": email,
            "name": f"Bench {index}",
            "password": password,
            "credit_limit_cents": 10_000_000,
        }
        async with session.post(f"{users_url}/api/users", json=body) as response:
            if response.status != 201:
                raise RuntimeError(f"POST /api/users: {response.status} {await response.text()}")
            user_id = (await response.json())["id"]
        async with session.post(
            f"{users_url}/api/auth/token", json={"email": email, "password": password}
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"POST /api/auth/token: {response.status} {await response.text()}")
            token = (await response.json())["access_token"]
        return Customer(user_id, token)

    return list(await asyncio.gather(*(one(index) for index in range(count))))
