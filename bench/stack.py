"""The system under benchmark, on devstack's servers: the same stack the end-to-end tests run, set
up as a benchmark wants it (quiet logs, no rate limits, no flow page), and fresh databases for the
raw comparisons, all removed at the end whatever happens."""

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from devstack.keys import make_key_pair
from devstack.servers import Servers, choose, started
from devstack.stack import Stack, running_stack

__all__ = ["Customer", "Stack", "bench_servers", "bench_stack", "databases", "register_customers"]

# Logging costs: a benchmark of a service that logs every request measures its logging.
QUIET = {"LOG_LEVEL": "WARNING", "LOG_FORMAT": "json", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}


@contextlib.asynccontextmanager
async def bench_servers() -> AsyncIterator[Servers]:
    """Postgres and RabbitMQ as devstack chooses them (DEVSTACK_SERVERS), durable as they ship: the
    raw figures the system is compared with come from the same servers."""
    async with started(await choose(), tuned_for_tests=False) as servers:
        yield servers


@contextlib.asynccontextmanager
async def bench_stack(servers: Servers, work_dir: Path, *, jwt_ttl_seconds: int) -> AsyncIterator[Stack]:
    keys = make_key_pair(work_dir)
    service_env = {
        "users_service": {**QUIET, "JWT_TTL_SECONDS": str(jwt_ttl_seconds)},
        "orders_service": QUIET,
        # nginx limits nothing here, so neither does the gateway; its flow page is development-only.
        "gateway": {**QUIET, "RATE_LIMIT_PER_SECOND": "0", "FLOW_ENABLED": "false"},
    }
    async with running_stack(servers, keys, work_dir, service_env, require_clean_exit=False) as stack:
        yield stack


@contextlib.asynccontextmanager
async def databases(servers: Servers, *prefixes: str) -> AsyncIterator[dict[str, str]]:
    """Fresh, empty databases (prefix -> a superuser's DSN), dropped at the end."""
    created: dict[str, str] = {}
    try:
        for prefix in prefixes:
            created[prefix] = await servers.postgres.create_database(f"bench_{prefix}")
        yield dict(created)
    finally:
        names = [dsn.rpartition("/")[2] for dsn in created.values()]
        await asyncio.shield(servers.postgres.drop_databases(names))


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
