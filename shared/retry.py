"""Retrying a connection at start-up: Postgres and RabbitMQ may come up later than we do."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog

log = structlog.get_logger("startup")
T = TypeVar("T")

# Failures of a first connection that mean "not up yet": a refused or timed-out connection, a name that
# does not resolve yet, a Postgres still starting. Anything else (a wrong password, say) fails at once.
NOT_UP_YET = (OSError, TimeoutError, asyncpg.CannotConnectNowError)

# Soon after a first refusal (a server starting takes a moment), then every few seconds at most.
FIRST_DELAY = 0.2
MAX_DELAY = 3.0


async def retry_until_deadline(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    deadline_seconds: float,
    retrying: tuple[type[BaseException], ...] = NOT_UP_YET,
) -> T:
    """Call `attempt` until it succeeds, backing off exponentially, while it fails with one of
    `retrying`; give up after the deadline."""
    give_up_at = time.monotonic() + deadline_seconds
    delay = FIRST_DELAY
    while True:
        try:
            return await attempt()
        except retrying as error:
            remaining = give_up_at - time.monotonic()
            if remaining <= 0:
                log.error("dependency never became reachable", dependency=what, error=repr(error))
                raise
            log.warning(
                "waiting for dependency",
                dependency=what,
                error=str(error) or repr(error),
                retry_in=round(delay, 2),
            )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_DELAY)
