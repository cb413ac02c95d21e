"""The system under benchmark, on devstack's servers (or its clusters): the same stack the end-to-end
tests run, set up as a benchmark wants it (quiet logs, no rate limits, no flow page), and fresh
databases for the raw comparisons, all removed at the end whatever happens."""

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from devstack.cluster import Clusters, started_clusters
from devstack.keys import KeyPair, make_key_pair
from devstack.processes import ServiceProcess
from devstack.servers import Servers, choose, started
from devstack.stack import Stack, running_stack
from shared.api_versions import CURRENT_PREFIX
from users_service.config import MAX_CREDIT_LIMIT_CENTS

__all__ = [
    "BENCH_PRICE_CENTS",
    "BENCH_SKU",
    "Customer",
    "Stack",
    "bench_clusters",
    "bench_servers",
    "bench_stack",
    "cheap_gateway",
    "databases",
    "register_customers",
    "stock_the_catalogue",
]

# Logging costs: a benchmark of a service that logs every request measures its logging.
QUIET = {"LOG_LEVEL": "WARNING", "LOG_FORMAT": "json", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}
# What every order of the benchmark buys, one of: a product of its own at a cent, so that no
# customer's credit (the largest limit there is) runs out however long the load lasts.
BENCH_SKU = "BENCH-1"
BENCH_PRICE_CENTS = 1
# Below users_service's PASSWORD_HASH_CONCURRENCY (4 by default), each registration being two hashes in
# turn (the registration's and the sign-in's).
HASHES_AT_ONCE = 2


@contextlib.asynccontextmanager
async def bench_servers() -> AsyncIterator[Servers]:
    """Postgres and RabbitMQ as devstack chooses them (DEVSTACK_SERVERS), durable as they ship: the
    raw figures the system is compared with come from the same servers."""
    async with started(await choose(), tuned_for_tests=False) as servers:
        yield servers


@contextlib.asynccontextmanager
async def bench_clusters() -> AsyncIterator[Clusters]:
    """The engines as clusters (devstack/cluster.py), durable as they ship, as bench_servers's are: a
    Postgres primary whose commits wait for a standby, and three RabbitMQ nodes behind HAProxy."""
    async with started_clusters(tuned_for_tests=False, synchronous=True) as clusters:
        yield clusters


@contextlib.asynccontextmanager
async def bench_stack(servers: Servers, work_dir: Path, *, jwt_ttl_seconds: int) -> AsyncIterator[Stack]:
    keys = make_key_pair(work_dir)
    service_env = {
        # Every customer gets the largest credit limit there is, by the policy new users get.
        "users_service": {
            **QUIET,
            "JWT_TTL_SECONDS": str(jwt_ttl_seconds),
            "NEW_USER_CREDIT_LIMIT_CENTS": str(MAX_CREDIT_LIMIT_CENTS),
        },
        "orders_service": QUIET,
        # nginx limits nothing here, so neither does the gateway; its flow page is development-only.
        "gateway": {**QUIET, "RATE_LIMIT_PER_SECOND": "0", "FLOW_ENABLED": "false"},
    }
    async with running_stack(servers, keys, work_dir, service_env, require_clean_exit=False) as stack:
        yield stack


CHEAP_GATEWAY = "gateway_cheap_upstream"


@contextlib.asynccontextmanager
async def cheap_gateway(stack: Stack, orders_url: str) -> AsyncIterator[ServiceProcess]:
    """A second gateway, configured as the first, whose orders_service is `orders_url` (the cheap
    upstream of R1's second half); stopped at the end, so that it weighs on no other section."""
    process = await stack.start_replica("gateway", CHEAP_GATEWAY, ORDERS_SERVICE_URL=orders_url)
    try:
        yield process
    finally:
        await process.stop()
        stack.processes.pop(CHEAP_GATEWAY, None)
        stack.replica_of.pop(CHEAP_GATEWAY, None)


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
    """Users, with the limit bench_stack's policy gives them (the largest), and their access tokens
    (signed in through the API)."""
    # No more at once than users_service hashes passwords at once: beyond that, on a busy machine, a
    # registration waits past its queue timeout for a slot and is refused (503, busy).
    hashing = asyncio.Semaphore(HASHES_AT_ONCE)

    async def one(index: int) -> Customer:
        async with hashing:
            return await register(index)

    async def register(index: int) -> Customer:
        email = f"bench-{index}-{uuid.uuid4().hex[:8]}@example.com"
        password = "bench-password"
        body = {"email": email, "name": f"Bench {index}", "password": password}
        async with session.post(f"{users_url}{CURRENT_PREFIX}/users", json=body) as response:
            if response.status != 201:
                raise RuntimeError(f"POST {CURRENT_PREFIX}/users: {response.status} {await response.text()}")
            user_id = (await response.json())["id"]
        async with session.post(
            f"{users_url}{CURRENT_PREFIX}/auth/token", json={"email": email, "password": password}
        ) as response:
            if response.status != 200:
                raise RuntimeError(
                    f"POST {CURRENT_PREFIX}/auth/token: {response.status} {await response.text()}"
                )
            token = (await response.json())["access_token"]
        return Customer(user_id, token)

    return list(await asyncio.gather(*(one(index) for index in range(count))))


async def stock_the_catalogue(session: aiohttp.ClientSession, orders_url: str, keys: KeyPair) -> None:
    """The benchmark's product (BENCH_SKU), put into orders_service's catalogue as an admin does:
    with a token of the stack's key pair that grants the role."""
    body = {"name": "The benchmark's product", "price_cents": BENCH_PRICE_CENTS, "active": True}
    path = f"{CURRENT_PREFIX}/products/{BENCH_SKU}"
    async with session.put(f"{orders_url}{path}", json=body, headers=keys.admin_headers()) as response:
        if response.status not in {200, 201}:
            raise RuntimeError(f"PUT {path}: {response.status} {await response.text()}")
