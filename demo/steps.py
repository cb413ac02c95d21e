"""Running the scenario's steps: each is timed, and printed as a row of the table once it completes.

A step either completes with the outcome the scenario expects, or fails with the outcome it got
instead; the first failure ends the demo (the later steps build on the earlier ones).
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from demo.table import Column, Table

T = TypeVar("T")

COLUMNS = (
    Column("#", 2, align_right=True),
    Column("step", 32),
    # The longest request: PUT /api/v2/users/{id}/credit-limit, python -m users_service.admin grant.
    Column("request", 36),
    Column("outcome", None),
    Column("ms", 5, align_right=True),
)
OUTCOME_COLUMN = 3


class StepFailed(Exception):
    """The step's outcome is not the one the scenario expects; the message says what it was."""


class DemoFailed(Exception):
    def __init__(self, number: int, what: str, outcome: str) -> None:
        super().__init__(f"step {number} ({what}): {outcome}")
        self.number = number
        self.what = what
        self.outcome = outcome


class Step:
    def __init__(self) -> None:
        self.outcome = ""


class Steps:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.count = 0

    @contextlib.contextmanager
    def step(self, what: str, request: str) -> Iterator[Step]:
        """Time the block, which sets `outcome`; print the row; turn any failure into DemoFailed."""
        self.count += 1
        if self.count == 1:
            self.table.print_header()
        step = Step()
        started = time.monotonic()
        try:
            yield step
        except StepFailed as failure:
            self._fail(what, request, str(failure), started)
        except Exception as error:
            # Connection refused, a timeout, a broker or JSON error: whatever went wrong, the user
            # gets the step it happened in and the error, not a traceback.
            self._fail(what, request, _describe(error), started)
        self.table.print_row([str(self.count), what, request, step.outcome, _elapsed_ms(started)])

    def _fail(self, what: str, request: str, outcome: str, started: float) -> None:
        self.table.print_row([str(self.count), what, request, outcome, _elapsed_ms(started)], failed=True)
        raise DemoFailed(self.count, what, outcome)


def _elapsed_ms(started: float) -> str:
    return str(round((time.monotonic() - started) * 1000))


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def wait_for(
    probe: Callable[[], Awaitable[T | None]],
    *,
    within: float,
    interval: float,
    on_timeout: Callable[[], str],
) -> T:
    """Poll `probe` until it returns something other than None; past the deadline the step fails,
    with `on_timeout()` as its outcome (what was seen last)."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise StepFailed(on_timeout())
        await asyncio.sleep(interval)
