"""orders_service's logic: placing, reading, listing and cancelling orders. No HTTP in here."""

import base64
import binascii
import dataclasses
import datetime
import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from orders_service import db, saga
from orders_service.metrics import SagaMetrics
from shared.db import Executor
from shared.envelope import Cause
from shared.events import OrderCreated
from shared.http import dumps
from shared.unit_of_work import Outbox, UnitOfWork, unit_of_work


class OrderNotFound(Exception):
    pass


class InvalidCursor(ValueError):
    pass


class IdempotencyKeyReused(Exception):
    """The idempotency key has already placed an order, from another request body."""


class ProductNotFound(Exception):
    pass


class UnacceptableItems(Exception):
    """Items the catalogue does not price as asked: each entry names one field (a JSON pointer into
    the request) and what is wrong with it."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__(f"{len(errors)} unacceptable items")
        self.errors = errors


@dataclasses.dataclass(frozen=True)
class Requested:
    """An item as the client asked for it. Version 2 names a sku and a quantity; version 1 also
    sends the price it expects, which must be the catalogue's."""

    sku: str
    quantity: int
    unit_price_cents: int | None = None

    def as_sent(self) -> dict[str, Any]:
        sent: dict[str, Any] = {"sku": self.sku, "quantity": self.quantity}
        if self.unit_price_cents is not None:
            sent["unit_price_cents"] = self.unit_price_cents
        return sent


@dataclasses.dataclass(frozen=True)
class Item:
    """An item as placed: priced by the catalogue when the order was placed."""

    sku: str
    quantity: int
    unit_price_cents: int


@dataclasses.dataclass(frozen=True)
class IdempotencyKey:
    """A client's key for one placement: retries with it place nothing new until `ttl` has passed."""

    value: str
    ttl: datetime.timedelta


@dataclasses.dataclass(frozen=True)
class Placed:
    """The order as placed; `replayed`: an earlier request with the same key placed it, and this is
    the order as that request's response showed it (its current state may have moved on)."""

    order: dict[str, Any]
    replayed: bool


@dataclasses.dataclass(frozen=True)
class Page:
    orders: list[dict[str, Any]]
    next_cursor: str | None


async def place_order(
    pool: asyncpg.Pool,
    outbox: Outbox,
    cause: Cause,
    *,
    user_id: uuid.UUID,
    requested: Sequence[Requested],
    idempotency_key: IdempotencyKey | None = None,
) -> Placed:
    """Price the items from the catalogue, store the order as PENDING and, in the same transaction,
    the event that starts the saga. Raises UnacceptableItems, naming each item the catalogue does
    not sell, or whose price the client expects wrongly.

    With an idempotency key, the key is claimed in that transaction too, before anything else: a
    retry of a committed placement gets that placement back (as priced then), and one with another
    body raises IdempotencyKeyReused; a concurrent retry waits for the first to commit or roll back.
    """
    order_id = uuid.uuid4()
    async with unit_of_work(pool, outbox, cause) as work:
        if idempotency_key is not None:
            fingerprint = request_fingerprint(requested)
            while not await db.claim_idempotency_key(
                work.connection,
                user_id=user_id,
                key=idempotency_key.value,
                request_sha256=fingerprint,
                order_id=order_id,
                ttl=idempotency_key.ttl,
            ):
                held = await db.fetch_idempotency_key(work.connection, user_id, idempotency_key.value)
                if held is None:
                    continue  # it expired and was deleted between the two statements: claim it now
                if held["request_sha256"] != fingerprint:
                    raise IdempotencyKeyReused
                return Placed(order=orjson.loads(held["placed_order"]), replayed=True)
        items = priced(requested, await db.fetch_prices(work.connection, [item.sku for item in requested]))
        total_cents = sum(item.quantity * item.unit_price_cents for item in items)
        order = await db.insert_order(
            work.connection,
            order_id=order_id,
            user_id=user_id,
            total_cents=total_cents,
            items=[(item.sku, item.quantity, item.unit_price_cents) for item in items],
            correlation_id=cause.correlation_id,
        )
        await work.emit(OrderCreated(order["id"], user_id, total_cents))
        placed = {**dict(order), "items": [dataclasses.asdict(item) for item in items]}
        if idempotency_key is not None:
            await db.record_placed_order(
                work.connection, user_id, idempotency_key.value, dumps(placed).decode()
            )
    return Placed(order=placed, replayed=False)


def priced(requested: Sequence[Requested], catalogue: dict[str, asyncpg.Record]) -> list[Item]:
    """The items at the catalogue's prices, or UnacceptableItems naming every item that is not sold
    or that expects another price (a version 1 client's price is checked, never taken)."""
    errors: list[dict[str, str]] = []
    for index, item in enumerate(requested):
        product = catalogue.get(item.sku)
        if product is None:
            errors.append({"pointer": f"#/items/{index}/sku", "detail": "is not in the catalogue"})
        elif not product["active"]:
            errors.append({"pointer": f"#/items/{index}/sku", "detail": "is no longer sold"})
        elif item.unit_price_cents is not None and item.unit_price_cents != product["price_cents"]:
            errors.append(
                {
                    "pointer": f"#/items/{index}/unit_price_cents",
                    "detail": f"must be the catalogue's price, {product['price_cents']}",
                }
            )
    if errors:
        raise UnacceptableItems(errors)
    return [Item(item.sku, item.quantity, catalogue[item.sku]["price_cents"]) for item in requested]


def request_fingerprint(requested: Sequence[Requested]) -> bytes:
    """sha256 of the request body as canonical JSON (sorted keys, no spaces): equal bodies, equal
    fingerprints, however the client spaced or ordered the fields."""
    body = {"items": [item.as_sent() for item in requested]}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()


async def delete_expired_idempotency_keys(pool: asyncpg.Pool, ttl: datetime.timedelta) -> int:
    """Forget keys older than `ttl` (matching already ignores them; this keeps the table small)."""
    return await db.delete_expired_idempotency_keys(pool, ttl)


async def get_product(pool: asyncpg.Pool, sku: str) -> dict[str, Any]:
    product = await db.fetch_product(pool, sku)
    if product is None:
        raise ProductNotFound
    return dict(product)


async def list_products(
    pool: asyncpg.Pool, *, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the products on sale, and the cursor of the next page (None: the last page). The
    cursor is the last sku of the page: skus are unique, ordered and already URL-safe."""
    rows = await db.fetch_product_page(pool, after=cursor, limit=limit + 1)
    page = [dict(row) for row in rows[:limit]]
    return page, page[-1]["sku"] if len(rows) > limit else None


async def put_product(
    pool: asyncpg.Pool, *, sku: str, name: str, price_cents: int, active: bool
) -> tuple[dict[str, Any], bool]:
    """Create or replace a product; return it and whether it was created. Orders already placed
    keep the prices they were placed at."""
    product, created = await db.put_product(pool, sku=sku, name=name, price_cents=price_cents, active=active)
    return {key: product[key] for key in ("sku", "name", "price_cents", "active")}, created


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
    pool: asyncpg.Pool,
    outbox: Outbox,
    saga_metrics: SagaMetrics,
    cause: Cause,
    *,
    user_id: uuid.UUID,
    order_id: uuid.UUID,
) -> tuple[dict[str, Any], bool]:
    """Cancel an order; return it and whether this call changed it (False: it was already cancelled).

    Raises saga.NotCancellable for a rejected order.
    """
    async with unit_of_work(pool, outbox, cause) as work:
        # The row lock orders this cancel against a concurrent credit answer for the same order.
        order = await db.fetch_order(work.connection, order_id, user_id, for_update=True)
        if order is None:
            raise OrderNotFound
        previous = saga.OrderStatus(order["status"])
        transition = saga.cancel(order_id, user_id, previous)
        order = await apply(saga_metrics, work, previous, order_id, transition) or order
        return (await _with_items(work.connection, [order]))[0], transition is not None


async def apply(
    metrics: SagaMetrics,
    work: UnitOfWork,
    previous: saga.OrderStatus,
    order_id: uuid.UUID,
    transition: saga.Transition | None,
) -> asyncpg.Record | None:
    """Store the saga's decision about an order the caller has locked, in the caller's unit of work:
    its status and the event that announces it. Returns the order as stored (None: no change)."""
    if transition is None:
        return None
    order = await db.set_status(
        work.connection,
        order_id,
        transition.status,
        rejection_reason=transition.rejection_reason,
        credit_settled=transition.credit_settled,
        cancelled_from=transition.cancelled_from,
    )
    await work.emit(transition.event)
    metrics.transitioned(work, previous, order)
    return order


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
