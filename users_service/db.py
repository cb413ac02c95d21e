"""users_service's SQL: plain parameterised queries, nothing else."""

import uuid

import asyncpg

from shared.db import Executor

USER_COLUMNS = "id, email, name, credit_limit_cents, credit_used_cents, created_at"


async def insert_user(
    connection: Executor,
    *,
    user_id: uuid.UUID,
    email: str,
    name: str,
    password_hash: str,
    credit_limit_cents: int,
) -> asyncpg.Record:
    row = await connection.fetchrow(
        f"""
        INSERT INTO users (id, email, name, password_hash, credit_limit_cents)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING {USER_COLUMNS}
        """,
        user_id,
        email,
        name,
        password_hash,
        credit_limit_cents,
    )
    assert row is not None  # INSERT ... RETURNING always returns the row
    return row


async def fetch_user(connection: Executor, user_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await connection.fetchrow(
        f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id
    )
    return row


async def fetch_credentials(connection: Executor, email: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await connection.fetchrow(
        "SELECT id, password_hash FROM users WHERE email = $1", email
    )
    return row
