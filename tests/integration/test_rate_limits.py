"""The gateway's rate limits in Postgres: one limit however many replicas enforce it."""

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from devstack.waiting import eventually
from gateway.ratelimit import MIGRATIONS, SharedTokenBuckets, forget_full_buckets
from shared.db import apply_migrations
from tests.conftest import CreateDatabase

NEVER_REFILLS = 1e-6  # tokens per second: within a test, a bucket only empties


@pytest.fixture
async def pool(create_database: CreateDatabase) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(await create_database("gateway"), min_size=1, max_size=4) as pool:
        await apply_migrations(pool, MIGRATIONS)
        yield pool


def replica(pool: asyncpg.Pool, *, burst: int, lease: int, rate: float = NEVER_REFILLS) -> SharedTokenBuckets:
    return SharedTokenBuckets(lambda: pool, name="requests", rate=rate, burst=burst, lease=lease)


async def passed(limiter: SharedTokenBuckets, client: str) -> bool:
    return await limiter.take(client) == 0.0


async def test_two_replicas_share_one_limit_rather_than_granting_it_twice(pool: asyncpg.Pool) -> None:
    first, second = replica(pool, burst=10, lease=3), replica(pool, burst=10, lease=3)
    passes = [await passed(limiter, "203.0.113.7") for _ in range(15) for limiter in (first, second)]
    # In-process buckets would let 10 through each replica; shared, the client gets 10 in all.
    assert passes.count(True) == 10
    assert passes[-4:] == [False] * 4
    # Another client has its own bucket.
    assert await passed(first, "198.51.100.1")


async def test_concurrent_requests_share_a_lease_rather_than_each_taking_one(pool: asyncpg.Pool) -> None:
    limiter = replica(pool, burst=200, lease=10)
    passes = await asyncio.gather(*(passed(limiter, "client") for _ in range(50)))
    assert all(passes)
    # Five leases of ten, one after the other: the bucket lost what was spent, not 50 leases.
    left = await pool.fetchval("SELECT tokens FROM rate_limit_buckets WHERE bucket = 'requests:client'")
    assert 150 <= left < 151


async def test_a_lease_of_one_is_exact_whatever_the_interleaving(pool: asyncpg.Pool) -> None:
    replicas = [replica(pool, burst=3, lease=1) for _ in range(3)]
    passes = [await passed(limiter, "client") for limiter in replicas for _ in range(2)]
    assert passes == [True, True, True, False, False, False]


async def test_a_refused_client_costs_no_database_call_until_it_may_try_again(pool: asyncpg.Pool) -> None:
    calls = 0

    def counting_pool() -> asyncpg.Pool:
        nonlocal calls
        calls += 1
        return pool

    limiter = SharedTokenBuckets(counting_pool, name="requests", rate=0.01, burst=1, lease=1)
    assert await limiter.take("client") == 0.0
    wait = await limiter.take("client")
    assert 90 < wait <= 100  # one token per 100 s
    calls_when_refused = calls
    for _ in range(50):
        assert await limiter.take("client") > 0
    assert calls == calls_when_refused


async def test_the_bucket_refills_at_its_rate(pool: asyncpg.Pool) -> None:
    limiter = replica(pool, burst=1, lease=1, rate=20.0)
    assert await passed(limiter, "client")
    assert 0 < await limiter.take("client") <= 0.05

    async def refilled() -> bool:
        return await passed(limiter, "client")

    await eventually(refilled, within=2.0, interval=0.01, what="a token after 1/20 s")


async def test_without_its_storage_the_limiter_lets_requests_through(pool: asyncpg.Pool) -> None:
    def unreachable() -> asyncpg.Pool:
        raise ConnectionRefusedError("the gateway's database is down")

    limiter = SharedTokenBuckets(unreachable, name="requests", rate=NEVER_REFILLS, burst=1, lease=1)
    assert [await passed(limiter, "client") for _ in range(5)] == [True] * 5


async def test_buckets_untouched_for_long_are_forgotten(pool: asyncpg.Pool) -> None:
    await passed(replica(pool, burst=5, lease=1), "old")
    await pool.execute("UPDATE rate_limit_buckets SET refilled_at = now() - interval '2 hours'")
    await passed(replica(pool, burst=5, lease=1), "recent")
    assert await forget_full_buckets(pool, older_than_seconds=3600) == 1
    assert await pool.fetchval("SELECT array_agg(bucket) FROM rate_limit_buckets") == ["requests:recent"]
