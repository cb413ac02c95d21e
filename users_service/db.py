"""users_service's SQL: plain parameterised queries, nothing else."""

import uuid

import asyncpg

from shared.db import Connection, Executor
from users_service.saga import Account, Reservation, ReservationStatus

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
        "SELECT id, password_hash, roles FROM users WHERE email = $1", email
    )
    return row


async def lock_user(connection: Connection, user_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await connection.fetchrow(
        f"SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE", user_id
    )
    return row


async def set_credit_limit(
    connection: Connection, user_id: uuid.UUID, credit_limit_cents: int
) -> asyncpg.Record:
    row = await connection.fetchrow(
        f"UPDATE users SET credit_limit_cents = $2 WHERE id = $1 RETURNING {USER_COLUMNS}",
        user_id,
        credit_limit_cents,
    )
    assert row is not None  # the caller holds the row's lock, so it exists
    return row


async def set_role(connection: Executor, email: str, role: str, *, granted: bool) -> bool:
    """Grant or revoke `role` for the user of `email`; False if there is no such user."""
    status: str = await connection.execute(
        """
        UPDATE users SET roles = CASE WHEN $3 THEN array(SELECT DISTINCT unnest(roles || $2::text))
                                      ELSE array_remove(roles, $2::text) END
        WHERE email = $1
        """,
        email,
        role,
        granted,
    )
    return status != "UPDATE 0"


async def fetch_users_with_role(connection: Executor, role: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT id, email, name FROM users WHERE $1 = ANY(roles) ORDER BY email", role
    )
    return rows


async def lock_account(connection: Connection, user_id: uuid.UUID) -> Account | None:
    row = await connection.fetchrow(
        "SELECT id, credit_limit_cents, credit_used_cents FROM users WHERE id = $1 FOR UPDATE", user_id
    )
    return Account(row["id"], row["credit_limit_cents"], row["credit_used_cents"]) if row else None


async def lock_reservation(connection: Connection, order_id: uuid.UUID) -> Reservation | None:
    row = await connection.fetchrow(
        """
        SELECT order_id, user_id, amount_cents, status FROM credit_reservations
        WHERE order_id = $1 FOR UPDATE
        """,
        order_id,
    )
    if row is None:
        return None
    return Reservation(row["order_id"], row["user_id"], row["amount_cents"], ReservationStatus(row["status"]))


async def save_reservation(connection: Connection, reservation: Reservation) -> None:
    await connection.execute(
        """
        INSERT INTO credit_reservations (order_id, user_id, amount_cents, status)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (order_id) DO UPDATE
        SET amount_cents = EXCLUDED.amount_cents, status = EXCLUDED.status, updated_at = now()
        """,
        reservation.order_id,
        reservation.user_id,
        reservation.amount_cents,
        reservation.status.value,
    )


async def change_credit_used(connection: Connection, user_id: uuid.UUID, change_cents: int) -> None:
    # The table's CHECK keeps credit_used_cents within 0..credit_limit_cents whatever happens here.
    await connection.execute(
        "UPDATE users SET credit_used_cents = credit_used_cents + $2 WHERE id = $1", user_id, change_cents
    )


async def count_login_attempt(
    connection: Executor, email: str, client: str, *, window_seconds: int
) -> tuple[int, int]:
    """Count one sign-in attempt for `email` from `client`, atomically (concurrent attempts on any
    replica each get their own number): return the attempts in the current window, this one
    included, and the seconds left in that window. A window that has passed starts again here.
    """
    row = await connection.fetchrow(
        """
        INSERT INTO sign_in_attempts AS seen (email, client, attempts, window_started_at)
        VALUES ($1, $2, 1, now())
        ON CONFLICT (email, client) DO UPDATE SET
            attempts = CASE WHEN seen.window_started_at > now() - $3::int * interval '1 second'
                            THEN seen.attempts + 1 ELSE 1 END,
            window_started_at = CASE WHEN seen.window_started_at > now() - $3::int * interval '1 second'
                                     THEN seen.window_started_at ELSE now() END
        RETURNING attempts,
            ceil(extract(epoch FROM window_started_at + $3::int * interval '1 second' - now()))::int
                AS seconds_left
        """,
        email,
        client,
        window_seconds,
    )
    assert row is not None  # INSERT ... ON CONFLICT DO UPDATE ... RETURNING always returns the row
    return row["attempts"], row["seconds_left"]


async def forget_login_attempts(connection: Executor, email: str, client: str) -> None:
    await connection.execute("DELETE FROM sign_in_attempts WHERE email = $1 AND client = $2", email, client)


async def delete_ended_login_windows(connection: Executor, *, window_seconds: int, batch_size: int) -> int:
    """Delete up to `batch_size` counts whose window has ended; return how many went.

    Rows another transaction holds (a sign-in counting on one, another replica purging it) are
    skipped, not waited for: whoever holds them decides, and a later purge finds what is left.
    Deleting an ended window changes nothing a sign-in would see: it would start a new one anyway.
    """
    status = await connection.execute(
        """
        DELETE FROM sign_in_attempts
        WHERE (email, client) IN (
            SELECT email, client FROM sign_in_attempts
            WHERE window_started_at <= now() - $1::int * interval '1 second'
            ORDER BY window_started_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        """,
        window_seconds,
        batch_size,
    )
    return int(status.split()[-1])
