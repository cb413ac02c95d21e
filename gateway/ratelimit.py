"""Rate limits that hold across any number of gateway replicas: token buckets kept in Postgres.

A bucket per client lives in the gateway's own database (gateway/migrations/), so two replicas
behind a load balancer share one limit rather than granting it twice. Asking Postgres on every
request would put a database round trip on the gateway's hot path, so each replica *leases* tokens
a few at a time and spends them locally:

    request ─▶ a leased token in memory? ── yes ─▶ pass (no database)
                      │ no
                      ▼
               take_tokens(bucket, lease) in Postgres, atomically ─▶ granted n: keep n - 1, pass
                                                                  └▶ none: 429, and refuse locally
                                                                     until the bucket has refilled

A client can therefore go over its limit by at most one unspent lease per replica, and a client
that is already refused costs no database call until it may try again. A lease of 1 (sign-in)
asks Postgres every time: exact, where exactness matters.

If the database cannot be reached, requests pass unlimited (and it is logged): the limiter protects
the services, and making its own outage a full outage would protect nothing.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import structlog
from aiohttp import web

from shared.app_keys import DB_POOL
from shared.db import DATABASE_NOT_ANSWERING

log = structlog.get_logger("ratelimit")

# The gateway's database holds nothing but the buckets.
MIGRATIONS = [Path(__file__).parent / "migrations"]
MAX_LOCAL_CLIENTS = 100_000  # past this, the local leases and refusals are forgotten (safe: see take)


class SharedTokenBuckets:
    """One limit (`rate` per second, `burst` at once) for every client, shared by all replicas."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        *,
        name: str,
        rate: float,
        burst: int,
        lease: int,
    ) -> None:
        self._pool = pool
        self.name = name
        self.rate = rate
        self.burst = burst
        self.lease = max(1, min(lease, burst))
        self._leased: dict[str, int] = {}
        self._refused_until: dict[str, float] = {}
        self._leasing: dict[str, asyncio.Future[bool]] = {}
        self._storage_down = False

    async def take(self, client: str) -> float:
        """Take one token for `client`: 0.0 if there was one, else the seconds until there is."""
        while True:
            now = time.monotonic()
            refused_until = self._refused_until.get(client, 0.0)
            if now < refused_until:
                return refused_until - now
            leased = self._leased.get(client, 0)
            if leased:
                self._leased[client] = leased - 1
                return 0.0
            # One lease at a time per client: fifty concurrent requests must not each lease a
            # handful of tokens, emptying the bucket for forty-five requests that never come.
            leasing = self._leasing.get(client)
            if leasing is None or leasing.done():
                leasing = self._leasing[client] = asyncio.ensure_future(self._lease(client))
            if not await asyncio.shield(leasing):  # shielded: a caller's cancel spares the others'
                return 0.0  # the storage could not be asked: not limiting (see the module's notes)

    async def _lease(self, client: str) -> bool:
        """Lease tokens for `client` (or note until when it is refused); False if storage is down."""
        try:
            granted, wait = await self._take_from_storage(client)
        except DATABASE_NOT_ANSWERING as error:  # slow storage too: limits fail open
            if not self._storage_down:
                log.warning("rate limits off: storage unavailable", limit=self.name, error=repr(error))
                self._storage_down = True
            return False
        finally:
            del self._leasing[client]
        if self._storage_down:
            log.info("rate limits on again: storage back", limit=self.name)
            self._storage_down = False
        if len(self._leased) + len(self._refused_until) >= MAX_LOCAL_CLIENTS:
            # Forgetting a lease loses a few tokens, forgetting a refusal costs one database call:
            # neither lets anyone past the shared limit.
            self._leased.clear()
            self._refused_until.clear()
        if granted:
            self._leased[client] = self._leased.get(client, 0) + granted
        else:
            self._refused_until[client] = time.monotonic() + wait
        return True

    async def _take_from_storage(self, client: str) -> tuple[int, float]:
        row = await self._pool().fetchrow(
            "SELECT granted, wait_seconds FROM take_tokens($1, $2, $3, $4)",
            f"{self.name}:{client}",
            self.lease,
            float(self.burst),
            self.rate,
        )
        assert row is not None
        return row["granted"], row["wait_seconds"]


async def forget_full_buckets(pool: asyncpg.Pool, *, older_than_seconds: float) -> int:
    """Delete buckets untouched for so long that they have refilled: a new one starts full anyway."""
    status = await pool.execute(
        "DELETE FROM rate_limit_buckets WHERE refilled_at < now() - make_interval(secs => $1)",
        older_than_seconds,
    )
    return int(status.split()[-1])


# A bucket untouched this long has refilled whatever its limit (the slowest refills in a minute).
FORGET_AFTER_SECONDS = 3600.0
FORGET_EVERY_SECONDS = 600.0


async def bucket_housekeeping(app: web.Application) -> AsyncIterator[None]:
    """Now and then, drop the buckets nobody has used for long; several replicas doing it is harmless."""

    async def forget_forever() -> None:
        while True:
            await asyncio.sleep(FORGET_EVERY_SECONDS)
            try:
                await forget_full_buckets(app[DB_POOL], older_than_seconds=FORGET_AFTER_SECONDS)
            except DATABASE_NOT_ANSWERING as error:
                log.warning("forgetting idle rate-limit buckets failed", error=repr(error))

    task = asyncio.create_task(forget_forever(), name="gateway rate-limit housekeeping")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
