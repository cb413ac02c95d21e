"""Password hashing with argon2id, off the event loop, and within the memory the process has.

An argon2id hash is memory-hard on purpose: each one holds `memory_cost` (64 MiB by default) for
the tens of milliseconds it runs, whether it creates a hash (registration) or checks one (sign-in).
So the memory a burst of sign-ups or sign-ins takes is 64 MiB times the hashes running at once,
and that number must be chosen, not left to a thread pool sized to the machine's CPUs (Python's
default pool runs CPUs + 4 at once: on a 32-CPU node, 36 hashes, 2.3 GiB).

The hashes run in a thread pool of their own, `concurrency` threads. A hash that finds every thread
busy waits for one at most `queue_timeout` seconds, then is refused (HashingBusy: the route answers
503 with Retry-After), rather than queueing without bound behind a burst, with the client's
connection held open meanwhile and the answer coming after the client has given up.
"""

import asyncio
import concurrent.futures
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import argon2
from prometheus_client import CollectorRegistry, Counter, Gauge

T = TypeVar("T")


class HashingBusy(Exception):
    """Every hashing slot stayed taken for as long as a hash may wait for one."""

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(f"no password hashing slot free; retry after {retry_after_seconds} s")
        self.retry_after_seconds = retry_after_seconds


class HashingSlots:
    """At most `size` holders at once; a newcomer waits at most `queue_timeout` seconds for a slot."""

    def __init__(self, size: int, *, queue_timeout: float, registry: CollectorRegistry) -> None:
        if size < 1:
            raise ValueError("at least one password hash must be able to run")
        self.size = size
        self.queue_timeout = queue_timeout
        self._free = asyncio.Semaphore(size)
        self.in_use = 0
        self._in_use_gauge = Gauge(
            "password_hashes_running",
            "Password hashes (argon2id, 64 MiB each) running now; never more than PASSWORD_HASH_CONCURRENCY.",
            registry=registry,
        )
        self._refused = Counter(
            "password_hashes_refused",
            "Password hashes refused (503) because every slot stayed busy for PASSWORD_HASH_QUEUE_TIMEOUT.",
            registry=registry,
        )

    @contextlib.asynccontextmanager
    async def taken(self) -> AsyncIterator[None]:
        """Hold a slot for the duration of the block, or raise HashingBusy."""
        try:
            async with asyncio.timeout(self.queue_timeout):
                await self._free.acquire()
        except TimeoutError:
            self._refused.inc()
            raise HashingBusy(max(1, math.ceil(self.queue_timeout))) from None
        self.in_use += 1
        self._in_use_gauge.set(self.in_use)
        try:
            yield
        finally:
            self.in_use -= 1
            self._in_use_gauge.set(self.in_use)
            self._free.release()


class PasswordHasher:
    def __init__(self, *, concurrency: int, queue_timeout: float, registry: CollectorRegistry) -> None:
        self._argon = argon2.PasswordHasher()
        self.slots = HashingSlots(concurrency, queue_timeout=queue_timeout, registry=registry)
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="argon2id"
        )
        # Checking a password against this hash when the email is unknown makes "no such user"
        # take as long as "wrong password", so response times do not reveal who has an account.
        self._unknown_user_hash = self._argon.hash("no user has this password")

    async def hash(self, password: str) -> str:
        return await self._run(self._argon.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return (
                await self._run(self._argon.verify, password_hash or self._unknown_user_hash, password)
                and password_hash is not None
            )
        except argon2.exceptions.VerificationError:
            return False
        except argon2.exceptions.InvalidHashError:
            return False

    def close(self) -> None:
        """Take no more hashes; the threads end once the ones running have finished."""
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _run(self, work: Callable[..., T], *arguments: str) -> T:
        async with self.slots.taken():
            # The pool has as many threads as there are slots, so even a hash whose request was
            # cancelled (its slot freed while it still runs) never makes more run at once.
            return await asyncio.get_running_loop().run_in_executor(self._threads, work, *arguments)
