"""Protecting clients from a failing upstream, and the upstream from its clients' retries.

A circuit breaker per upstream: after `failure_threshold` consecutive failures it opens, and for
`open_seconds` every call is answered 503 at once, without waiting for a timeout and without adding
load to a service that is already failing. Then it lets one trial call through (half-open): its
success closes the circuit, its failure opens it again for another period.

Retries are for idempotent reads only, bounded, and spaced by exponential backoff with full jitter
(so that many gateways retrying at once do not hit the upstream in lockstep).
"""

import enum
import math
import random
import time

from shared.problems import Problem

# RFC 9110 section 9.2.2 also counts PUT and DELETE; the gateway routes neither.
RETRYABLE_METHODS = frozenset({"GET", "HEAD"})


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Per-process state: each gateway replica learns on its own that an upstream is down."""

    def __init__(self, name: str, *, failure_threshold: int, open_seconds: float) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return CircuitState.CLOSED
        if time.monotonic() - self._opened_at < self.open_seconds:
            return CircuitState.OPEN
        return CircuitState.HALF_OPEN

    def admit(self) -> None:
        """Let a call through, or refuse it with 503 while the circuit is open (or on trial)."""
        state = self.state
        if state is CircuitState.CLOSED:
            return
        if state is CircuitState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return
        raise Problem(
            503,
            f"{self.name} is unavailable.",
            title="Upstream unavailable",
            headers={"Retry-After": str(self.retry_after())},
        )

    def retry_after(self) -> int:
        if self._opened_at is None:
            return 1
        remaining = self.open_seconds - (time.monotonic() - self._opened_at)
        return max(1, math.ceil(remaining))

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def failed(self) -> None:
        self._failures += 1
        if self._trial_in_flight or self._failures >= self.failure_threshold:
            self._opened_at = time.monotonic()  # (re)open: a failed trial waits a whole period again
        self._trial_in_flight = False

    def abandoned(self) -> None:
        """The call ended with no verdict on the upstream (the client went away): free the trial."""
        self._trial_in_flight = False


def backoff_delay(retry: int, base: float) -> float:
    """Full jitter: a random delay up to base·2^retry (retry counts from 0)."""
    return random.uniform(0, base * 2**retry)
