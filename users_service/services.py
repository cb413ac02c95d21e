"""users_service's logic: registration, sign-in and reading a user. No HTTP in here."""

import dataclasses
import uuid
from typing import Any

import asyncpg

from shared.envelope import Cause
from shared.events import CreditLimitChanged, UserRegistered
from shared.unit_of_work import Outbox, unit_of_work
from users_service import db
from users_service.passwords import PasswordHasher
from users_service.tokens import TokenIssuer


class EmailTaken(Exception):
    pass


class InvalidCredentials(Exception):
    pass


class UserNotFound(Exception):
    pass


class LimitBelowCreditInUse(Exception):
    """A credit limit below what the user's approved orders already hold: the database refuses it
    (credit_used_cents <= credit_limit_cents), and so does the API, saying why."""

    def __init__(self, credit_used_cents: int) -> None:
        super().__init__(f"{credit_used_cents} cents of credit are in use")
        self.credit_used_cents = credit_used_cents


class TooManySignIns(Exception):
    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(f"too many sign-in attempts; retry after {retry_after_seconds} s")
        self.retry_after_seconds = retry_after_seconds


@dataclasses.dataclass(frozen=True)
class LoginThrottle:
    """Per account (email) and client: after `max_failures` failed sign-ins from one client within
    `window_seconds` of the first, that client's every attempt for the account is refused, the right
    password included, until the window has passed. Other clients, the owner among them, are not:
    throttled per account alone, a stranger's failures would lock the owner out.
    """

    max_failures: int
    window_seconds: int


# Ended windows are deleted this many at a time (a short transaction each), and at most this many
# times per purge: a backlog larger than that waits for the next purge rather than holding one long.
PURGE_BATCH_SIZE = 1000
PURGE_MAX_BATCHES = 100


def normalize_email(email: str) -> str:
    return email.strip().lower()


async def register_user(
    pool: asyncpg.Pool,
    outbox: Outbox,
    hasher: PasswordHasher,
    cause: Cause,
    *,
    email: str,
    name: str,
    password: str,
    credit_limit_cents: int,
) -> dict[str, Any]:
    password_hash = await hasher.hash(password)
    try:
        async with unit_of_work(pool, outbox, cause) as work:
            row = await db.insert_user(
                work.connection,
                user_id=uuid.uuid4(),
                email=normalize_email(email),
                name=name,
                password_hash=password_hash,
                credit_limit_cents=credit_limit_cents,
            )
            await work.emit(UserRegistered(row["id"], row["name"], row["credit_limit_cents"]))
    except asyncpg.UniqueViolationError:
        # The constraint decides, not a prior SELECT: two concurrent sign-ups cannot both win.
        raise EmailTaken from None
    return dict(row)


async def sign_in(
    pool: asyncpg.Pool,
    hasher: PasswordHasher,
    issuer: TokenIssuer,
    throttle: LoginThrottle,
    *,
    email: str,
    password: str,
    client: str,
) -> str:
    """A token for the account of `email`, if `password` is its password. `client` is who asks (an
    address bucket: shared.http.address_bucket), which the throttle counts per account."""
    email = normalize_email(email)
    # The attempt is counted before the password is checked, not after it failed: concurrent
    # guesses cannot all slip in under the limit while the (slow) hashes are being checked.
    attempts, seconds_left = await db.count_login_attempt(
        pool, email, client, window_seconds=throttle.window_seconds
    )
    if attempts > throttle.max_failures:
        raise TooManySignIns(max(seconds_left, 1))
    credentials = await db.fetch_credentials(pool, email)
    password_hash = credentials["password_hash"] if credentials else None
    if not await hasher.verify(password_hash, password) or credentials is None:
        raise InvalidCredentials
    await db.forget_login_attempts(pool, email, client)
    return issuer.issue(credentials["id"], credentials["roles"])


async def purge_ended_login_windows(pool: asyncpg.Pool, throttle: LoginThrottle) -> int:
    """Delete the sign-in counts whose window has ended, a batch at a time; return how many went.
    Safe to run on every replica at once (see db.delete_ended_login_windows)."""
    deleted = 0
    for _ in range(PURGE_MAX_BATCHES):
        batch = await db.delete_ended_login_windows(
            pool, window_seconds=throttle.window_seconds, batch_size=PURGE_BATCH_SIZE
        )
        deleted += batch
        if batch < PURGE_BATCH_SIZE:
            break
    return deleted


async def change_credit_limit(
    pool: asyncpg.Pool, outbox: Outbox, cause: Cause, *, user_id: uuid.UUID, credit_limit_cents: int
) -> dict[str, Any]:
    """Set a user's credit limit, and announce the change in the same transaction. Setting the limit
    it already has changes nothing and announces nothing (a PUT repeated is a PUT done once).

    The row lock orders the change against a credit reservation for the same user in flight: that
    one is checked against either the old limit or the new one, never against a limit half-changed.
    """
    async with unit_of_work(pool, outbox, cause) as work:
        user = await db.lock_user(work.connection, user_id)
        if user is None:
            raise UserNotFound
        if credit_limit_cents < user["credit_used_cents"]:
            raise LimitBelowCreditInUse(user["credit_used_cents"])
        previous = user["credit_limit_cents"]
        if credit_limit_cents == previous:
            return dict(user)
        changed = await db.set_credit_limit(work.connection, user_id, credit_limit_cents)
        await work.emit(CreditLimitChanged(user_id, credit_limit_cents, previous))
    return dict(changed)


async def get_user(pool: asyncpg.Pool, user_id: uuid.UUID) -> dict[str, Any] | None:
    row = await db.fetch_user(pool, user_id)
    return dict(row) if row else None
