"""orders_service's logic: placing, reading, listing and cancelling orders. No HTTP in here."""

import base64
import binascii
import dataclasses
import datetime
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from orders_service import db, saga
from shared.db import Executor
from shared.events import Cause, OrderCreated
from shared.outbox import Outbox, unit_of_work


class OrderNotFound(Exception):
    pass


class InvalidCursor(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Item:
    sku: str
    quantity: int
    unit_price_cents: int


@dataclasses.dataclass(frozen=True)
class Page:
    orders: list[dict[str, Any]]
    next_cursor: str | None


async def place_order(
    pool: asyncpg.Pool, outbox: Outbox, cause: Cause, *, user_id: uuid.UUID, items: Sequence[Item]
) -> dict[str, Any]:
    """Store the order as PENDING and, in the same transaction, the event that starts the saga."""
    total_cents = sum(item.quantity * item.unit_price_cents for item in items)
    async with unit_of_work(pool, outbox, cause) as work:
        order = await db.insert_order(
            work.connection,
            order_id=uuid.uuid4(),
            user_id=user_id,
            total_cents=total_cents,
            items=[(item.sku, item.quantity, item.unit_price_cents) for item in items],
        )
        await work.emit(OrderCreated(order["id"], user_id, total_cents))
    return {**dict(order), "items": [dataclasses.asdict(item) for item in items]}


async def get_order(pool: asyncpg.Pool, *, user_id: uuid.UUID, order_id: uuid.UUID) -> dict[str, Any]:
    order = await db.fetch_order(pool, order_id, user_id)
    if order is None:
        raise OrderNotFound
    return (await _with_items(pool, [order]))[0]


async def list_orders(
    pool: asyncpg.Pool, *, user_id: uuid.UUID, status: str | None, limit: int, cursor: str | None
) -> Page:
    # One row more than asked tells whether another page exists without a COUNT.
    rows = await db.fetch_page(
        pool, user_id=user_id, status=status, after=decode_cursor(cursor) if cursor else None, limit=limit + 1
    )
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["id"]) if more else None
    return Page(orders=await _with_items(pool, page), next_cursor=next_cursor)


async def cancel_order(
    pool: asyncpg.Pool, outbox: Outbox, cause: Cause, *, user_id: uuid.UUID, order_id: uuid.UUID
) -> tuple[dict[str, Any], bool]:
    """Cancel an order; return it and whether this call changed it (False: it was already cancelled).

    Raises saga.NotCancellable for a rejected order.
    """
    async with unit_of_work(pool, outbox, cause) as work:
        # The row lock orders this cancel against a concurrent credit answer for the same order.
        order = await db.fetch_order(work.connection, order_id, user_id, for_update=True)
        if order is None:
            raise OrderNotFound
        transition = saga.cancel(order_id, user_id, saga.OrderStatus(order["status"]))
        if transition is not None:
            order = await db.set_status(work.connection, order_id, transition.status)
            await work.emit(transition.event)
        return (await _with_items(work.connection, [order]))[0], transition is not None


async def _with_items(connection: Executor, orders: Sequence[asyncpg.Record]) -> list[dict[str, Any]]:
    items: dict[uuid.UUID, list[dict[str, Any]]] = {order["id"]: [] for order in orders}
    if orders:
        for row in await db.fetch_items(connection, list(items)):
            items[row["order_id"]].append(
                {"sku": row["sku"], "quantity": row["quantity"], "unit_price_cents": row["unit_price_cents"]}
            )
    return [{**dict(order), "items": items[order["id"]]} for order in orders]


def encode_cursor(created_at: datetime.datetime, order_id: uuid.UUID) -> str:
    raw = orjson.dumps([created_at.isoformat(), str(order_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime.datetime, uuid.UUID]:
    """The position a cursor names; anything we did not issue is an InvalidCursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, order_id = orjson.loads(raw)
        position = datetime.datetime.fromisoformat(created_at), uuid.UUID(order_id)
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError):
        raise InvalidCursor(cursor) from None
    if position[0].tzinfo is None:
        raise InvalidCursor(cursor)
    return position
