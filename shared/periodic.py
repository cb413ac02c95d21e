"""Housekeeping that every replica runs now and then: a saga's deadline, retention, expired keys.

Each run does a bounded piece of work that is safe to do twice, or from several replicas at once
(rows claimed with FOR UPDATE SKIP LOCKED, or a change that is idempotent). A run that fails is
logged and tried again at the next one: nothing waits for it.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

log = structlog.get_logger("periodic")

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def periodically(
    name: str, every_seconds: float, run: Callable[[web.Application], Awaitable[None]]
) -> CleanupContext:
    """A cleanup context that calls `run(app)` every `every_seconds` while the app runs."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        async def forever() -> None:
            while True:
                await asyncio.sleep(every_seconds)
                try:
                    await run(app)
                except Exception as error:  # housekeeping: harmless to miss once, tried again soon
                    log.warning(f"{name} failed; trying again later", error=repr(error))

        task = asyncio.create_task(forever(), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context
