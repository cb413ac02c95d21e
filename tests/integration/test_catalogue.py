"""The catalogue (orders_service, version 2) and the prices of orders, in-process, against a real
database: anyone reads the products on sale; an admin alone changes them; every order is priced
from the catalogue when it is placed and keeps that price; a client of version 1 still sends a
price, which must be the catalogue's, and a request with another one stores nothing at all.
"""

import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from shared.app_keys import DB_POOL
from tests.integration.conftest import Client, new_product

TokenFor = Callable[[uuid.UUID], dict[str, str]]
AdminHeaders = dict[str, str]


async def product(client: Client, sku: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(f"/api/v2/products/{sku}")
    body: dict[str, Any] = await response.json()
    return response.status, body


async def place(
    client: Client, headers: dict[str, str], items: list[dict[str, Any]], api: str = "/api/v2"
) -> dict[str, Any]:
    response = await client.post(f"{api}/orders", json={"items": items}, headers=headers)
    assert response.status == 202, await response.text()
    order: dict[str, Any] = await response.json()
    assert response.headers["Location"] == f"{api}/orders/{order['id']}"
    return order


async def stored_orders(client: Client) -> dict[str, int]:
    """How many rows orders_service holds of what placing an order writes."""
    pool = client.app[DB_POOL]
    return {
        table: await pool.fetchval(f"SELECT count(*) FROM {table}")
        for table in ("orders", "order_items", "outbox", "idempotency_keys")
    }


async def refused(
    client: Client, headers: dict[str, str], body: dict[str, Any], api: str
) -> list[dict[str, str]]:
    """The 422's errors for `body`, sent with an Idempotency-Key, after checking that nothing was
    stored for it: not the order, not its event, not the key (a retry with a fixed body may use it)."""
    before = await stored_orders(client)
    response = await client.post(
        f"{api}/orders", json=body, headers={**headers, "Idempotency-Key": str(uuid.uuid4())}
    )
    assert response.status == 422, await response.text()
    assert response.content_type == "application/problem+json"
    assert await stored_orders(client) == before, "a refused order stored something"
    errors: list[dict[str, str]] = (await response.json())["errors"]
    return errors


# --- reading the catalogue ---------------------------------------------------------------------


async def test_the_catalogue_lists_the_products_on_sale_by_sku_a_page_at_a_time(
    orders_client: Client, admin_headers: AdminHeaders
) -> None:
    on_sale = [await new_product(orders_client, admin_headers, price) for price in (100, 200, 300)]
    withdrawn = await new_product(orders_client, admin_headers, 400, active=False)
    listed: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = f"?limit=3&cursor={cursor}" if cursor else "?limit=3"
        response = await orders_client.get(f"/api/v2/products{query}")  # no token: it is public
        assert response.status == 200, await response.text()
        page = await response.json()
        assert 1 <= len(page["items"]) <= 3
        listed.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    skus = [item["sku"] for item in listed]
    expected = await orders_client.app[DB_POOL].fetch("SELECT sku FROM products WHERE active ORDER BY sku")
    assert skus == [row["sku"] for row in expected]
    assert set(on_sale) <= set(skus)
    assert withdrawn not in skus
    assert "TYPEWRITER" not in skus  # the seeded catalogue's one product no longer sold
    assert all(item["active"] for item in listed)
    assert {item["sku"]: item["price_cents"] for item in listed if item["sku"] in on_sale} == dict(
        zip(on_sale, (100, 200, 300), strict=True)
    )


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "cursor=not%20a%20sku"])
async def test_bad_catalogue_queries_are_422(orders_client: Client, query: str) -> None:
    response = await orders_client.get(f"/api/v2/products?{query}")
    assert response.status == 422
    assert [entry["pointer"] for entry in (await response.json())["errors"]] == [
        f"#/query/{query.split('=')[0]}"
    ]


async def test_a_product_is_shown_on_sale_or_not_and_an_unknown_sku_is_404(
    orders_client: Client, admin_headers: AdminHeaders
) -> None:
    on_sale = await new_product(orders_client, admin_headers, 1250)
    withdrawn = await new_product(orders_client, admin_headers, 18900, active=False)
    assert await product(orders_client, on_sale) == (
        200,
        {"sku": on_sale, "name": "Test product at 1250 cents", "price_cents": 1250, "active": True},
    )
    status, shown = await product(orders_client, withdrawn)
    assert (status, shown["active"], shown["price_cents"]) == (200, False, 18900)
    status, problem = await product(orders_client, "NO-SUCH-THING")
    assert status == 404
    assert problem["status"] == 404


# --- changing the catalogue --------------------------------------------------------------------


async def test_an_admin_creates_a_product_then_replaces_it(
    orders_client: Client, admin_headers: AdminHeaders
) -> None:
    mug = {"name": "Enamel mug", "price_cents": 900, "active": True}
    created = await orders_client.put("/api/v2/products/MUG-2", json=mug, headers=admin_headers)
    assert created.status == 201, await created.text()
    assert created.headers["Location"] == "/api/v2/products/MUG-2"
    assert await created.json() == {"sku": "MUG-2", **mug}

    dearer = {"name": "Enamel mug, blue", "price_cents": 950, "active": False}
    replaced = await orders_client.put("/api/v2/products/MUG-2", json=dearer, headers=admin_headers)
    assert replaced.status == 200, await replaced.text()
    assert "Location" not in replaced.headers
    assert await replaced.json() == {"sku": "MUG-2", **dearer}
    assert await product(orders_client, "MUG-2") == (200, {"sku": "MUG-2", **dearer})
    count = await orders_client.app[DB_POOL].fetchval("SELECT count(*) FROM products WHERE sku = 'MUG-2'")
    assert count == 1


async def test_only_an_admin_changes_the_catalogue(
    orders_client: Client, token_for: TokenFor, admin_headers: AdminHeaders
) -> None:
    mug = {"name": "Enamel mug", "price_cents": 1, "active": True}
    anonymous = await orders_client.put("/api/v2/products/MUG-01", json=mug)
    assert anonymous.status == 401
    customer = await orders_client.put("/api/v2/products/MUG-01", json=mug, headers=token_for(uuid.uuid4()))
    assert customer.status == 403
    problem = await customer.json()
    assert problem["type"] == "urn:eda-reference:problem:forbidden"
    assert "admin" in problem["detail"]
    status, seeded = await product(orders_client, "MUG-01")
    assert (status, seeded["price_cents"]) == (200, 900), "the seeded price is unchanged"
    # An admin's change is held to the contract too: the path's sku and the body alike.
    bad_sku = await orders_client.put("/api/v2/products/MUG%2001", json=mug, headers=admin_headers)
    assert bad_sku.status == 422
    assert [entry["pointer"] for entry in (await bad_sku.json())["errors"]] == ["#/path/sku"]
    dear = await orders_client.put(
        "/api/v2/products/MUG-01", json={**mug, "price_cents": 10_000_001}, headers=admin_headers
    )
    assert dear.status == 422
    assert [entry["pointer"] for entry in (await dear.json())["errors"]] == ["#/price_cents"]
    assert (await product(orders_client, "MUG-01"))[1]["price_cents"] == 900


# --- orders, priced by the catalogue -----------------------------------------------------------


async def test_a_version_2_order_is_priced_from_the_catalogue(
    orders_client: Client, token_for: TokenFor, admin_headers: AdminHeaders
) -> None:
    book = await new_product(orders_client, admin_headers, 1250)
    pen = await new_product(orders_client, admin_headers, 2450)
    order = await place(
        orders_client, token_for(uuid.uuid4()), [{"sku": book, "quantity": 2}, {"sku": pen, "quantity": 3}]
    )
    assert order["items"] == [
        {"sku": book, "quantity": 2, "unit_price_cents": 1250},
        {"sku": pen, "quantity": 3, "unit_price_cents": 2450},
    ]
    assert order["total_cents"] == 2 * 1250 + 3 * 2450
    # The saga reserves the total the catalogue made, as the event that starts it says.
    body = await orders_client.app[DB_POOL].fetchval(
        "SELECT body FROM outbox WHERE event_type = 'orders.order.created'"
    )
    assert orjson.loads(body)["data"]["total_cents"] == 2 * 1250 + 3 * 2450


async def test_a_price_changed_after_placement_does_not_change_the_placed_order(
    orders_client: Client, token_for: TokenFor, admin_headers: AdminHeaders
) -> None:
    headers = token_for(uuid.uuid4())
    lamp = await new_product(orders_client, admin_headers, 3999)
    placed = await place(orders_client, headers, [{"sku": lamp, "quantity": 2}])
    change = {"name": "Desk lamp", "price_cents": 4999, "active": True}
    changed = await orders_client.put(f"/api/v2/products/{lamp}", json=change, headers=admin_headers)
    assert changed.status == 200, await changed.text()

    fetched = await orders_client.get(f"/api/v2/orders/{placed['id']}", headers=headers)
    assert await fetched.json() == placed
    assert (placed["total_cents"], placed["items"][0]["unit_price_cents"]) == (2 * 3999, 3999)
    later = await place(orders_client, headers, [{"sku": lamp, "quantity": 2}])
    assert (later["total_cents"], later["items"][0]["unit_price_cents"]) == (2 * 4999, 4999)


async def test_unknown_and_withdrawn_skus_are_422_naming_each_item(
    orders_client: Client, token_for: TokenFor, admin_headers: AdminHeaders
) -> None:
    sold = await new_product(orders_client, admin_headers, 500)
    withdrawn = await new_product(orders_client, admin_headers, 500, active=False)
    items = [
        {"sku": sold, "quantity": 1},
        {"sku": "NO-SUCH-THING", "quantity": 1},
        {"sku": withdrawn, "quantity": 1},
        {"sku": "TYPEWRITER", "quantity": 1},  # seeded, and no longer sold
    ]
    assert await refused(orders_client, token_for(uuid.uuid4()), {"items": items}, "/api/v2") == [
        {"pointer": "#/items/1/sku", "detail": "is not in the catalogue"},
        {"pointer": "#/items/2/sku", "detail": "is no longer sold"},
        {"pointer": "#/items/3/sku", "detail": "is no longer sold"},
    ]


async def test_version_2_takes_no_price_from_the_client(
    orders_client: Client, token_for: TokenFor, admin_headers: AdminHeaders
) -> None:
    sku = await new_product(orders_client, admin_headers, 500)
    # Not even the right one: the field is not version 2's.
    body = {"items": [{"sku": sku, "quantity": 1, "unit_price_cents": 500}]}
    assert await refused(orders_client, token_for(uuid.uuid4()), body, "/api/v2") == [
        {"pointer": "#/items/0/unit_price_cents", "detail": "is not an accepted field"}
    ]


async def test_version_1_with_the_catalogue_s_price_is_accepted(
    orders_client: Client, token_for: TokenFor, admin_headers: AdminHeaders
) -> None:
    sku = await new_product(orders_client, admin_headers, 650)
    order = await place(
        orders_client,
        token_for(uuid.uuid4()),
        [{"sku": sku, "quantity": 3, "unit_price_cents": 650}],
        api="/api",
    )
    assert order["items"] == [{"sku": sku, "quantity": 3, "unit_price_cents": 650}]
    assert (order["status"], order["total_cents"]) == ("PENDING", 3 * 650)


@pytest.mark.parametrize(
    "items",
    [
        # The issue's: a thousand pianos, for nothing.
        [{"sku": "PIANO", "quantity": 1000, "unit_price_cents": 0}],
        # A price above the catalogue's is not taken either: the catalogue prices, never the client.
        [{"sku": "PIANO", "quantity": 1, "unit_price_cents": 450_001}],
    ],
    ids=["below", "above"],
)
async def test_version_1_with_another_price_is_422_and_stores_nothing(
    orders_client: Client, token_for: TokenFor, items: list[dict[str, Any]]
) -> None:
    assert await refused(orders_client, token_for(uuid.uuid4()), {"items": items}, "/api") == [
        {"pointer": "#/items/0/unit_price_cents", "detail": "must be the catalogue's price, 450000"}
    ]
    assert set((await stored_orders(orders_client)).values()) == {0}


async def test_a_refused_order_leaves_its_idempotency_key_free_for_the_corrected_one(
    orders_client: Client, token_for: TokenFor
) -> None:
    headers = {**token_for(uuid.uuid4()), "Idempotency-Key": "the-piano"}
    wrong = {"items": [{"sku": "PIANO", "quantity": 1, "unit_price_cents": 0}]}
    assert (await orders_client.post("/api/orders", json=wrong, headers=headers)).status == 422
    right = {"items": [{"sku": "PIANO", "quantity": 1, "unit_price_cents": 450_000}]}
    placed = await orders_client.post("/api/orders", json=right, headers=headers)
    assert placed.status == 202, await placed.text()
    assert "Idempotent-Replayed" not in placed.headers
