"""What the clients did and what they were told: every operation, Jepsen-style, with its outcome.

An attempt's outcome is what the client can know from the answer alone:

    ok       a 2xx answer: the request took effect
    failed   a 4xx answer that means "not applied" (422, 409, 404, ...), or a connection refused
             before the request was sent: the request took no effect
    unknown  no answer (a timeout, a connection reset mid-request) or a 5xx (the gateway lost its
             upstream, which may or may not have committed): the request may have taken effect

An operation (one order placed, one cancel) is attempted until it is ok, definitely failed, or out of
time, always with the same Idempotency-Key for an order. Its outcome is ok if any attempt was ok,
else unknown if any attempt may have taken effect, else failed. After the drain each is held to it
(chaos/check.py): an ok operation's effect exists exactly once, an unknown one's at most once, a
failed one's not at all.
"""

import dataclasses
import enum
from typing import Any

import aiohttp


class Outcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"


class Kind(enum.StrEnum):
    PLACE = "place"
    CANCEL = "cancel"


@dataclasses.dataclass(frozen=True)
class Attempt:
    gateway: int  # which of the two gateways
    outcome: Outcome
    status: int | None  # the HTTP status, if an answer came
    error: str | None  # what went wrong, if no answer came
    retry: bool  # whether trying again may help: it was not a definite answer


def classify_answer(status: int) -> Attempt:
    """An HTTP answer's outcome (the gateway is filled in by the caller)."""
    if 200 <= status < 300:
        return Attempt(-1, Outcome.OK, status, None, retry=False)
    if status >= 500:
        return Attempt(-1, Outcome.UNKNOWN, status, None, retry=True)
    # Refused before any work was done: rate limited, or the body too slow to arrive.
    return Attempt(-1, Outcome.FAILED, status, None, retry=status in {408, 429})


def classify_error(error: BaseException) -> Attempt:
    """The outcome of an attempt that got no answer."""
    name = type(error).__name__
    if isinstance(error, aiohttp.ClientConnectorError):
        # No connection, so no request: nothing was sent that could take effect.
        return Attempt(-1, Outcome.FAILED, None, name, retry=True)
    # A timeout, or a connection lost once the request may have been on its way.
    return Attempt(-1, Outcome.UNKNOWN, None, name, retry=True)


@dataclasses.dataclass
class Operation:
    """One client operation and every attempt at it."""

    kind: Kind
    customer: int  # index into the run's customers
    # For an order, its Idempotency-Key, which its correlation id carries too (chaos-<key>): the order
    # it placed can be found in the database even when no answer said which it was.
    key: str
    started_at: float  # seconds into the run
    total_cents: int = 0  # what an order must come to: its product's price in the catalogue
    order_id: str | None = None  # the order placed (from an ok answer), or the one cancelled
    answer: dict[str, Any] | None = None  # the body of the ok answer
    finished_at: float | None = None  # seconds into the run when its outcome stood
    attempts: list[Attempt] = dataclasses.field(default_factory=list)

    @property
    def outcome(self) -> Outcome:
        outcomes = {attempt.outcome for attempt in self.attempts}
        if Outcome.OK in outcomes:
            return Outcome.OK
        if Outcome.UNKNOWN in outcomes:
            return Outcome.UNKNOWN
        return Outcome.FAILED
