"""orders_service's SQL: plain parameterised queries, nothing else."""

import datetime
import uuid
from collections.abc import Sequence

import asyncpg

from shared.db import Connection, Executor

ORDER_COLUMNS = "id, user_id, status, rejection_reason, total_cents, created_at, updated_at"


async def insert_order(
    connection: Connection,
    *,
    order_id: uuid.UUID,
    user_id: uuid.UUID,
    total_cents: int,
    items: Sequence[tuple[str, int, int]],
    correlation_id: str,
) -> asyncpg.Record:
    order = await connection.fetchrow(
        f"""
        INSERT INTO orders (id, user_id, status, total_cents, correlation_id)
        VALUES ($1, $2, 'PENDING', $3, $4)
        RETURNING {ORDER_COLUMNS}
        """,
        order_id,
        user_id,
        total_cents,
        correlation_id,
    )
    assert order is not None  # INSERT ... RETURNING always returns the row
    await connection.executemany(
        """
        INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_cents)
        VALUES ($1, $2, $3, $4, $5)
        """,
        [(order_id, line_no, *item) for line_no, item in enumerate(items, start=1)],
    )
    return order


PRODUCT_COLUMNS = "sku, name, price_cents, active"


async def fetch_prices(connection: Executor, skus: Sequence[str]) -> dict[str, asyncpg.Record]:
    """The catalogue's rows for these skus (price and whether it is still sold), by sku."""
    rows = await connection.fetch(
        "SELECT sku, price_cents, active FROM products WHERE sku = ANY($1::text[])", list(set(skus))
    )
    return {row["sku"]: row for row in rows}


async def fetch_product(connection: Executor, sku: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await connection.fetchrow(
        f"SELECT {PRODUCT_COLUMNS} FROM products WHERE sku = $1", sku
    )
    return row


async def fetch_product_page(connection: Executor, *, after: str | None, limit: int) -> list[asyncpg.Record]:
    """The products on sale, by sku: keyset pagination, like the orders."""
    rows: list[asyncpg.Record] = await connection.fetch(
        f"""
        SELECT {PRODUCT_COLUMNS} FROM products
        WHERE active AND ($1::text IS NULL OR sku > $1)
        ORDER BY sku LIMIT $2
        """,
        after,
        limit,
    )
    return rows


async def put_product(
    connection: Executor, *, sku: str, name: str, price_cents: int, active: bool
) -> tuple[asyncpg.Record, bool]:
    """Create or replace a product; return it and whether it was created (xmax is 0 on a row that
    this statement inserted, and set on one it updated: a well-known Postgres idiom)."""
    row = await connection.fetchrow(
        f"""
        INSERT INTO products AS product (sku, name, price_cents, active) VALUES ($1, $2, $3, $4)
        ON CONFLICT (sku) DO UPDATE
            SET name = EXCLUDED.name, price_cents = EXCLUDED.price_cents, active = EXCLUDED.active,
                updated_at = now()
        RETURNING {PRODUCT_COLUMNS}, (xmax = 0) AS created
        """,
        sku,
        name,
        price_cents,
        active,
    )
    assert row is not None  # INSERT ... ON CONFLICT DO UPDATE ... RETURNING always returns the row
    return row, row["created"]


async def fetch_order(
    connection: Executor, order_id: uuid.UUID, user_id: uuid.UUID, *, for_update: bool = False
) -> asyncpg.Record | None:
    # The owner is part of the key: another user's order is indistinguishable from no order.
    lock = " FOR UPDATE" if for_update else ""
    row: asyncpg.Record | None = await connection.fetchrow(
        f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 AND user_id = $2{lock}", order_id, user_id
    )
    return row


async def fetch_items(connection: Executor, order_ids: Sequence[uuid.UUID]) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        """
        SELECT order_id, sku, quantity, unit_price_cents
        FROM order_items WHERE order_id = ANY($1::uuid[])
        ORDER BY order_id, line_no
        """,
        order_ids,
    )
    return rows


async def fetch_page(
    connection: Executor,
    *,
    user_id: uuid.UUID,
    status: str | None,
    after: tuple[datetime.datetime, uuid.UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Keyset pagination, newest first: stable under concurrent inserts, unlike OFFSET."""
    after_created_at, after_id = after if after else (None, None)
    rows: list[asyncpg.Record] = await connection.fetch(
        f"""
        SELECT {ORDER_COLUMNS} FROM orders
        WHERE user_id = $1
          AND ($2::text IS NULL OR status = $2)
          AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
        ORDER BY created_at DESC, id DESC
        LIMIT $5
        """,
        user_id,
        status,
        after_created_at,
        after_id,
        limit,
    )
    return rows


async def lock_status(connection: Connection, order_id: uuid.UUID) -> str | None:
    status: str | None = await connection.fetchval(
        "SELECT status FROM orders WHERE id = $1 FOR UPDATE", order_id
    )
    return status


async def set_status(
    connection: Connection,
    order_id: uuid.UUID,
    status: str,
    *,
    rejection_reason: str | None = None,
    credit_settled: bool,
    cancelled_from: str | None = None,
) -> asyncpg.Record:
    """Change the status of an order the caller has already locked (so it exists). An order whose
    credit is not settled by this change waits for users_service's word, its end announced now."""
    row = await connection.fetchrow(
        f"""
        UPDATE orders SET status = $2, rejection_reason = $3, cancelled_from = $5, updated_at = now(),
            credit_settled_at = CASE WHEN $4 THEN now() END,
            announced_at = CASE WHEN $4 THEN NULL ELSE now() END
        WHERE id = $1 RETURNING {ORDER_COLUMNS}
        """,
        order_id,
        status,
        rejection_reason,
        credit_settled,
        cancelled_from,
    )
    assert row is not None
    return row


async def note_credit_settled(connection: Connection, order_id: uuid.UUID) -> None:
    """users_service holds no credit for this order any more (or has answered for it before)."""
    await connection.execute(
        "UPDATE orders SET credit_settled_at = now() WHERE id = $1 AND credit_settled_at IS NULL", order_id
    )


async def overdue(executor: Executor, deadline: datetime.timedelta, limit: int) -> list[asyncpg.Record]:
    """PENDING orders older than `deadline`, oldest first (not locked: each is locked, and looked at
    again, when it is decided)."""
    rows: list[asyncpg.Record] = await executor.fetch(
        """
        SELECT id, user_id, correlation_id FROM orders
        WHERE status = 'PENDING' AND created_at < now() - $1::interval
        ORDER BY created_at LIMIT $2
        """,
        deadline,
        limit,
    )
    return rows


async def unsettled(executor: Executor, wait: datetime.timedelta, limit: int) -> list[asyncpg.Record]:
    """Ended orders whose credit users_service has not confirmed settled `wait` after their end was
    last announced (not locked: see `lock_unsettled`)."""
    rows: list[asyncpg.Record] = await executor.fetch(
        """
        SELECT id, user_id, correlation_id FROM orders
        WHERE credit_settled_at IS NULL AND status IN ('CANCELLED', 'REJECTED')
          AND announced_at < now() - $1::interval
        ORDER BY announced_at LIMIT $2
        """,
        wait,
        limit,
    )
    return rows


async def lock_if_free(connection: Connection, order_id: uuid.UUID) -> str | None:
    """The order's status, its row locked; None if another transaction holds it (a replica deciding
    it, or a credit answer): that one decides it."""
    status: str | None = await connection.fetchval(
        "SELECT status FROM orders WHERE id = $1 FOR UPDATE SKIP LOCKED", order_id
    )
    return status


async def lock_unsettled(
    connection: Connection, order_id: uuid.UUID, wait: datetime.timedelta
) -> asyncpg.Record | None:
    """The order, its row locked, if it is still ended, unsettled and due to be announced again."""
    row: asyncpg.Record | None = await connection.fetchrow(
        """
        SELECT status, rejection_reason, cancelled_from FROM orders
        WHERE id = $1 AND credit_settled_at IS NULL AND status IN ('CANCELLED', 'REJECTED')
          AND announced_at < now() - $2::interval
        FOR UPDATE SKIP LOCKED
        """,
        order_id,
        wait,
    )
    return row


async def note_announced(connection: Connection, order_id: uuid.UUID) -> None:
    await connection.execute("UPDATE orders SET announced_at = now() WHERE id = $1", order_id)


async def count_overdue(executor: Executor, deadline: datetime.timedelta) -> int:
    count: int = await executor.fetchval(
        "SELECT count(*) FROM orders WHERE status = 'PENDING' AND created_at < now() - $1::interval", deadline
    )
    return count


async def claim_idempotency_key(
    connection: Connection,
    *,
    user_id: uuid.UUID,
    key: str,
    request_sha256: bytes,
    order_id: uuid.UUID,
    ttl: datetime.timedelta,
) -> bool:
    """Claim (user_id, key) for a new order; False if a live claim already holds it.

    A claim held by a transaction still in flight makes this wait for it to end: then the claim is
    either committed (False) or gone (True). An expired claim is taken over in the same statement,
    so an expired key is a new key, whether or not the periodic delete has removed it yet.
    """
    claimed: bool | None = await connection.fetchval(
        """
        INSERT INTO idempotency_keys AS held (user_id, key, request_sha256, order_id)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (user_id, key) DO UPDATE
            SET request_sha256 = EXCLUDED.request_sha256,
                order_id = EXCLUDED.order_id,
                placed_order = NULL,
                created_at = now()
            WHERE held.created_at < now() - $5::interval
        RETURNING true
        """,
        user_id,
        key,
        request_sha256,
        order_id,
        ttl,
    )
    return bool(claimed)


async def fetch_idempotency_key(
    connection: Connection, user_id: uuid.UUID, key: str
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await connection.fetchrow(
        "SELECT request_sha256, order_id, placed_order FROM idempotency_keys WHERE user_id = $1 AND key = $2",
        user_id,
        key,
    )
    return row


async def record_placed_order(
    connection: Connection, user_id: uuid.UUID, key: str, placed_order: str
) -> None:
    await connection.execute(
        "UPDATE idempotency_keys SET placed_order = $3::jsonb WHERE user_id = $1 AND key = $2",
        user_id,
        key,
        placed_order,
    )


async def delete_expired_idempotency_keys(connection: Executor, ttl: datetime.timedelta) -> int:
    status: str = await connection.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval", ttl
    )
    return int(status.rsplit(" ", 1)[1])  # "DELETE <count>"
