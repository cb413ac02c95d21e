"""orders_service's API (version 2), in-process, against a real database.

Version 1's differences (a price in each item, checked against the catalogue) and the catalogue
itself are in test_catalogue.py.
"""

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from shared.app_keys import DB_POOL
from tests.integration.conftest import Client, new_product

TokenFor = Callable[[uuid.UUID], dict[str, str]]
Items = list[dict[str, Any]]


@pytest.fixture
async def book(orders_client: Client, admin_headers: dict[str, str]) -> Items:
    """The items of an order of two books, at 12.50 each: a product of the test's own."""
    return [{"sku": await new_product(orders_client, admin_headers, 1250), "quantity": 2}]


async def place(client: Client, headers: dict[str, str], items: Items) -> dict[str, Any]:
    response = await client.post("/api/v2/orders", json={"items": items}, headers=headers)
    assert response.status == 202, await response.text()
    order: dict[str, Any] = await response.json()
    assert response.headers["Location"] == f"/api/v2/orders/{order['id']}"
    return order


async def test_an_order_is_accepted_as_pending_with_its_total(
    orders_client: Client, token_for: TokenFor, admin_headers: dict[str, str], book: Items
) -> None:
    user_id = uuid.uuid4()
    pen = await new_product(orders_client, admin_headers, 99)
    order = await place(orders_client, token_for(user_id), [*book, {"sku": pen, "quantity": 3}])
    assert order["status"] == "PENDING"
    assert order["user_id"] == str(user_id)
    assert order["total_cents"] == 2 * 1250 + 3 * 99
    assert order["rejection_reason"] is None
    assert [(item["sku"], item["unit_price_cents"]) for item in order["items"]] == [
        (book[0]["sku"], 1250),
        (pen, 99),
    ]
    fetched = await orders_client.get(f"/api/v2/orders/{order['id']}", headers=token_for(user_id))
    assert await fetched.json() == order


async def test_another_users_order_is_not_found_for_reading_or_cancelling(
    orders_client: Client, token_for: TokenFor, book: Items
) -> None:
    order = await place(orders_client, token_for(uuid.uuid4()), book)
    stranger = token_for(uuid.uuid4())
    assert (await orders_client.get(f"/api/v2/orders/{order['id']}", headers=stranger)).status == 404
    assert (await orders_client.post(f"/api/v2/orders/{order['id']}/cancel", headers=stranger)).status == 404
    assert (await orders_client.get("/api/v2/orders", headers=stranger)).status == 200
    assert (await (await orders_client.get("/api/v2/orders", headers=stranger)).json())["items"] == []
    status = await orders_client.app[DB_POOL].fetchval(
        "SELECT status FROM orders WHERE id = $1", uuid.UUID(order["id"])
    )
    assert status == "PENDING"


async def test_unknown_and_malformed_ids_are_not_found(orders_client: Client, token_for: TokenFor) -> None:
    headers = token_for(uuid.uuid4())
    for order_id in (str(uuid.uuid4()), "42", "not-a-uuid"):
        assert (await orders_client.get(f"/api/v2/orders/{order_id}", headers=headers)).status == 404
        assert (await orders_client.post(f"/api/v2/orders/{order_id}/cancel", headers=headers)).status == 404


async def test_listing_pages_through_every_order_newest_first(
    orders_client: Client, token_for: TokenFor, book: Items
) -> None:
    headers = token_for(uuid.uuid4())
    placed = [await place(orders_client, headers, book) for _ in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
        page = await (await orders_client.get(f"/api/v2/orders{query}", headers=headers)).json()
        pages += 1
        seen.extend(order["id"] for order in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [order["id"] for order in reversed(placed)]


async def test_listing_filters_by_status(orders_client: Client, token_for: TokenFor, book: Items) -> None:
    headers = token_for(uuid.uuid4())
    kept, cancelled = await place(orders_client, headers, book), await place(orders_client, headers, book)
    assert (
        await orders_client.post(f"/api/v2/orders/{cancelled['id']}/cancel", headers=headers)
    ).status == 202
    for status, expected in (("PENDING", kept), ("CANCELLED", cancelled)):
        page = await (await orders_client.get(f"/api/v2/orders?status={status}", headers=headers)).json()
        assert [order["id"] for order in page["items"]] == [expected["id"]]
    assert (await (await orders_client.get("/api/v2/orders?status=APPROVED", headers=headers)).json())[
        "items"
    ] == []


@pytest.mark.parametrize(
    ("query", "pointer"),
    [
        ("limit=0", "#/query/limit"),
        ("limit=101", "#/query/limit"),
        ("limit=ten", "#/query/limit"),
        ("status=SHIPPED", "#/query/status"),
        ("cursor=not-one-of-ours", "#/query/cursor"),
    ],
)
async def test_bad_list_queries_are_422(
    orders_client: Client, token_for: TokenFor, query: str, pointer: str
) -> None:
    response = await orders_client.get(f"/api/v2/orders?{query}", headers=token_for(uuid.uuid4()))
    assert response.status == 422
    assert [entry["pointer"] for entry in (await response.json())["errors"]] == [pointer]


async def test_cancelling_twice_is_202_then_200(
    orders_client: Client, token_for: TokenFor, book: Items
) -> None:
    headers = token_for(uuid.uuid4())
    order = await place(orders_client, headers, book)
    first = await orders_client.post(f"/api/v2/orders/{order['id']}/cancel", headers=headers)
    assert first.status == 202
    assert (await first.json())["status"] == "CANCELLED"
    again = await orders_client.post(f"/api/v2/orders/{order['id']}/cancel", headers=headers)
    assert again.status == 200
    assert (await again.json())["updated_at"] == (await first.json())["updated_at"]


@pytest.mark.parametrize(("status", "answer"), [("APPROVED", 202), ("REJECTED", 409)])
async def test_an_approved_order_can_be_cancelled_and_a_rejected_one_cannot(
    orders_client: Client, token_for: TokenFor, book: Items, status: str, answer: int
) -> None:
    headers = token_for(uuid.uuid4())
    order = await place(orders_client, headers, book)
    # The saga decides these states; here the test puts the order in them directly.
    await orders_client.app[DB_POOL].execute(
        "UPDATE orders SET status = $2 WHERE id = $1", uuid.UUID(order["id"]), status
    )
    response = await orders_client.post(f"/api/v2/orders/{order['id']}/cancel", headers=headers)
    assert response.status == answer
    final = await (await orders_client.get(f"/api/v2/orders/{order['id']}", headers=headers)).json()
    assert final["status"] == ("CANCELLED" if answer == 202 else "REJECTED")


async def test_invalid_orders_store_nothing(orders_client: Client, token_for: TokenFor, book: Items) -> None:
    headers = token_for(uuid.uuid4())
    invalid: list[dict[str, Any]] = [
        {},
        {"items": []},
        {"items": [{**book[0], "quantity": 0}]},
        {"items": book, "status": "APPROVED"},  # mass assignment: the client cannot set the status
        {"items": [{**book[0], "unit_price_cents": 1}]},  # nor the price: the catalogue sets it
    ]
    for body in invalid:
        response = await orders_client.post("/api/v2/orders", json=body, headers=headers)
        assert response.status == 422, body
    unauthenticated = await orders_client.post("/api/v2/orders", json={"items": book})
    assert unauthenticated.status == 401
    assert await orders_client.app[DB_POOL].fetchval("SELECT count(*) FROM orders") == 0


async def test_both_versions_serve_the_same_orders(
    orders_client: Client, token_for: TokenFor, book: Items
) -> None:
    headers = token_for(uuid.uuid4())
    current = await place(orders_client, headers, book)
    # Version 1 sends the price too, which must be the catalogue's; its Location stays in version 1.
    response = await orders_client.post(
        "/api/orders", json={"items": [{**book[0], "unit_price_cents": 1250}]}, headers=headers
    )
    assert response.status == 202, await response.text()
    deprecated = await response.json()
    assert response.headers["Location"] == f"/api/orders/{deprecated['id']}"
    assert (deprecated["items"], deprecated["total_cents"]) == (current["items"], current["total_cents"])
    for api in ("/api", "/api/v2"):
        page = await (await orders_client.get(f"{api}/orders", headers=headers)).json()
        assert [order["id"] for order in page["items"]] == [deprecated["id"], current["id"]], api
        fetched = await orders_client.get(f"{api}/orders/{current['id']}", headers=headers)
        assert await fetched.json() == current, api
    cancelled = await orders_client.post(f"/api/v2/orders/{deprecated['id']}/cancel", headers=headers)
    assert cancelled.status == 202
    again = await orders_client.post(f"/api/orders/{deprecated['id']}/cancel", headers=headers)
    assert again.status == 200
    assert await again.json() == await cancelled.json()
