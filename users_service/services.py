"""users_service's logic: registration, sign-in and reading a user. No HTTP in here."""

import uuid
from typing import Any

import asyncpg

from shared.events import Cause, UserRegistered
from shared.outbox import Outbox, unit_of_work
from users_service import db
from users_service.passwords import PasswordHasher
from users_service.tokens import TokenIssuer


class EmailTaken(Exception):
    pass


class InvalidCredentials(Exception):
    pass


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
    pool: asyncpg.Pool, hasher: PasswordHasher, issuer: TokenIssuer, *, email: str, password: str
) -> str:
    credentials = await db.fetch_credentials(pool, normalize_email(email))
    password_hash = credentials["password_hash"] if credentials else None
    if not await hasher.verify(password_hash, password) or credentials is None:
        raise InvalidCredentials
    return issuer.issue(credentials["id"])


async def get_user(pool: asyncpg.Pool, user_id: uuid.UUID) -> dict[str, Any] | None:
    row = await db.fetch_user(pool, user_id)
    return dict(row) if row else None
