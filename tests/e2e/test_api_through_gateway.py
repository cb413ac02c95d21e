"""Every row of the public API table (version 2), and every kind of bad input, through the gateway
over HTTP. What version 1 still does, and tells its clients, is tests/e2e/test_api_versions.py's."""

import uuid
from typing import Any

import aiohttp
import pytest

from devstack.waiting import eventually
from tests.e2e.api import PASSWORD, POLICY_CREDIT_LIMIT_CENTS
from tests.e2e.conftest import Stack


async def new_user(stack: Stack, http: aiohttp.ClientSession) -> tuple[dict[str, Any], dict[str, str]]:
    """Register a user with a unique email and sign in; return the user and its auth headers."""
    email = f"user-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "name": "Test User", "password": PASSWORD}
    async with http.post(f"{stack.url}/api/v2/users", json=body) as response:
        assert response.status == 201, await response.text()
        user: dict[str, Any] = await response.json()
        assert response.headers["Location"] == f"/api/v2/users/{user['id']}"
    assert user["credit_limit_cents"] == POLICY_CREDIT_LIMIT_CENTS  # the policy's: no client chooses it
    async with http.post(
        f"{stack.url}/api/v2/auth/token", json={"email": email, "password": PASSWORD}
    ) as response:
        assert response.status == 200
        token = (await response.json())["access_token"]
    return user, {"Authorization": f"Bearer {token}"}


async def test_the_walkthrough_register_sign_in_order_approved_list_cancel(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    registered, auth = await new_user(stack, http)
    # An admin gives the user a limit of their own; they see it as any other change to their record.
    async with http.put(
        f"{stack.url}/api/v2/users/{registered['id']}/credit-limit",
        json={"credit_limit_cents": 50_000},
        headers=stack.keys.admin_headers(),
    ) as response:
        assert response.status == 200, await response.text()
        user = await response.json()
    assert user == {**registered, "credit_limit_cents": 50_000}
    async with http.get(f"{stack.url}/api/v2/users/me", headers=auth) as response:
        assert response.status == 200
        assert await response.json() == user
    async with http.get(f"{stack.url}/api/v2/users/{user['id']}", headers=auth) as response:
        assert await response.json() == user

    async with http.get(f"{stack.url}/api/v2/products/BOOK-42") as response:  # public: no token
        assert response.status == 200
        book = await response.json()
    assert (book["price_cents"], book["active"]) == (1250, True)
    order_body = {"items": [{"sku": "BOOK-42", "quantity": 2}]}
    async with http.post(f"{stack.url}/api/v2/orders", json=order_body, headers=auth) as response:
        assert response.status == 202
        order = await response.json()
        assert response.headers["Location"] == f"/api/v2/orders/{order['id']}"
    assert (order["status"], order["total_cents"], order["user_id"]) == ("PENDING", 2500, user["id"])
    # Priced by the catalogue, and the price kept on the order.
    assert order["items"] == [{"sku": "BOOK-42", "quantity": 2, "unit_price_cents": 1250}]

    async def approved() -> dict[str, Any] | None:
        async with http.get(f"{stack.url}/api/v2/orders/{order['id']}", headers=auth) as response:
            current: dict[str, Any] = await response.json()
        return current if current["status"] == "APPROVED" else None

    approved_order = await eventually(approved, what="the saga approves the order")
    assert approved_order["updated_at"] > order["updated_at"]
    async with http.get(f"{stack.url}/api/v2/users/me", headers=auth) as response:
        assert (await response.json())["credit_used_cents"] == 2500

    async with http.get(f"{stack.url}/api/v2/orders?status=APPROVED&limit=10", headers=auth) as response:
        page = await response.json()
        assert [listed["id"] for listed in page["items"]] == [order["id"]]
        assert page["next_cursor"] is None
    async with http.post(f"{stack.url}/api/v2/orders/{order['id']}/cancel", headers=auth) as response:
        assert response.status == 202
        assert (await response.json())["status"] == "CANCELLED"
    async with http.post(f"{stack.url}/api/v2/orders/{order['id']}/cancel", headers=auth) as response:
        assert response.status == 200

    async def credit_released() -> bool:
        async with http.get(f"{stack.url}/api/v2/users/me", headers=auth) as response:
            return bool((await response.json())["credit_used_cents"] == 0)

    await eventually(credit_released, what="the cancel releases the reserved credit")


async def test_a_user_sees_and_cancels_only_their_own(stack: Stack, http: aiohttp.ClientSession) -> None:
    owner, owner_auth = await new_user(stack, http)
    _, stranger_auth = await new_user(stack, http)
    order_body = {"items": [{"sku": "TEA-01", "quantity": 1}]}
    async with http.post(f"{stack.url}/api/v2/orders", json=order_body, headers=owner_auth) as response:
        assert response.status == 202
        order = await response.json()
    for method, path in (
        ("GET", f"/api/v2/orders/{order['id']}"),
        ("POST", f"/api/v2/orders/{order['id']}/cancel"),
        ("GET", f"/api/v2/users/{owner['id']}"),
    ):
        async with http.request(method, f"{stack.url}{path}", headers=stranger_auth) as response:
            assert response.status == 404, path
            assert response.content_type == "application/problem+json"
    async with http.get(f"{stack.url}/api/v2/orders/{order['id']}", headers=owner_auth) as response:
        assert (await response.json())["status"] in {"PENDING", "APPROVED"}  # not cancelled


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("POST", "/api/v2/users", b"{oops", {"Content-Type": "application/json"}, 400),
        ("POST", "/api/v2/users", b'{"email": "a@b.c"}', {"Content-Type": "text/plain"}, 415),
        ("POST", "/api/v2/users", b'{"email": "a@b.c"}', {"Content-Type": "application/json"}, 422),
        ("POST", "/api/v2/auth/token", b'{"email": "nobody@example.com", "password": "whatever1"}', {}, 401),
        ("GET", "/api/v2/nowhere", None, {}, 404),
        ("GET", "/api/v2/orders/x/y/z", None, {}, 404),
        ("GET", "/api/v2/products/NO-SUCH-SKU", None, {}, 404),
        ("DELETE", "/api/v2/users/me", None, {}, 405),
        ("PUT", "/api/v2/orders", None, {}, 405),
        ("DELETE", "/api/v2/products/BOOK-42", None, {}, 405),
        ("GET", "/api/v2/users/me", None, {}, 401),
        ("GET", "/api/v2/orders", None, {"Authorization": "Bearer not-a-token"}, 401),
        ("GET", "/api/v2/orders", None, {"Authorization": "Basic dXNlcjpwYXNz"}, 401),
        ("PUT", "/api/v2/products/BOOK-42", b'{"name": "x", "price_cents": 1, "active": true}', {}, 401),
    ],
)
async def test_bad_requests_get_a_problem(
    stack: Stack,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
) -> None:
    headers = {"Content-Type": "application/json", **headers} if body is not None else headers
    async with http.request(method, f"{stack.url}{path}", data=body, headers=headers) as response:
        assert response.status == status
        assert response.content_type == "application/problem+json"
        problem = await response.json()
        assert problem["status"] == status
        assert {"type", "title", "status"} <= set(problem)
        if status == 405:
            assert "Allow" in response.headers


async def test_a_duplicate_email_is_409_and_stores_nothing_new(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    user, auth = await new_user(stack, http)
    again = {"email": user["email"].upper(), "name": "Impostor", "password": "another-password"}
    async with http.post(f"{stack.url}/api/v2/users", json=again) as response:
        assert response.status == 409
    async with http.post(
        f"{stack.url}/api/v2/auth/token", json={"email": user["email"], "password": "another-password"}
    ) as response:
        assert response.status == 401  # the impostor's password was not stored
    async with http.get(f"{stack.url}/api/v2/users/me", headers=auth) as response:
        assert (await response.json())["name"] == "Test User"


async def test_validation_lists_every_bad_field(stack: Stack, http: aiohttp.ClientSession) -> None:
    _, auth = await new_user(stack, http)
    # A price is not the client's to send in version 2: the catalogue's is taken, always.
    body = {"items": [{"sku": "bad sku", "quantity": 0, "unit_price_cents": 1}], "user_id": str(uuid.uuid4())}
    async with http.post(f"{stack.url}/api/v2/orders", json=body, headers=auth) as response:
        assert response.status == 422
        errors = (await response.json())["errors"]
    assert {entry["pointer"] for entry in errors} == {
        "#/items/0/sku",
        "#/items/0/quantity",
        "#/items/0/unit_price_cents",
        "#/user_id",
    }
    async with http.get(f"{stack.url}/api/v2/orders", headers=auth) as response:
        assert (await response.json())["items"] == []


async def test_only_what_the_catalogue_sells_can_be_ordered_and_each_item_is_named(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    _, auth = await new_user(stack, http)
    body = {
        "items": [
            {"sku": "BOOK-42", "quantity": 1},
            {"sku": f"NOT-SOLD-{uuid.uuid4().hex[:8]}", "quantity": 1},
            {"sku": "TYPEWRITER", "quantity": 1},  # in the catalogue, no longer sold
        ]
    }
    async with http.post(f"{stack.url}/api/v2/orders", json=body, headers=auth) as response:
        assert response.status == 422
        assert response.content_type == "application/problem+json"
        errors = (await response.json())["errors"]
    assert errors == [
        {"pointer": "#/items/1/sku", "detail": "is not in the catalogue"},
        {"pointer": "#/items/2/sku", "detail": "is no longer sold"},
    ]
    async with http.get(f"{stack.url}/api/v2/orders", headers=auth) as response:
        assert (await response.json())["items"] == []  # nothing of it was placed, not even the book


async def test_registration_takes_no_credit_limit_in_version_2(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    email = f"limit-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "name": "Greedy", "password": PASSWORD, "credit_limit_cents": 10_000_000}
    async with http.post(f"{stack.url}/api/v2/users", json=body) as response:
        assert response.status == 422
        assert [entry["pointer"] for entry in (await response.json())["errors"]] == ["#/credit_limit_cents"]
    async with http.post(
        f"{stack.url}/api/v2/auth/token", json={"email": email, "password": PASSWORD}
    ) as response:
        assert response.status == 401  # refused whole: no user was made


async def test_the_catalogue_lists_the_products_on_sale_page_by_page(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    listed: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        async with http.get(f"{stack.url}/api/v2/products", params=query) as response:
            assert response.status == 200, await response.text()
            page = await response.json()
        assert len(page["items"]) <= 3
        listed += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    skus = [product["sku"] for product in listed]
    assert skus == sorted(skus)
    assert len(skus) == len(set(skus))
    assert all(product["active"] for product in listed)
    assert "TYPEWRITER" not in skus  # no longer sold: not listed, though it can still be read
    seeded = {"BOOK-42": 1250, "BOOK-1984": 999, "NOTEBOOK-A5": 1500, "PEN-01": 2450, "PIANO": 450000}
    assert {
        product["sku"]: product["price_cents"] for product in listed if product["sku"] in seeded
    } == seeded
    async with http.get(f"{stack.url}/api/v2/products/TYPEWRITER") as response:
        assert response.status == 200
        assert (await response.json())["active"] is False


async def test_an_oversized_body_is_413_declared_or_chunked(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    huge = b'{"email": "' + b"a" * 100_000 + b'"}'

    async def chunks() -> Any:
        for start in range(0, len(huge), 8192):
            yield huge[start : start + 8192]

    for data in (huge, chunks()):
        async with http.post(
            f"{stack.url}/api/v2/users", data=data, headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 413
            assert response.content_type == "application/problem+json"


async def test_request_ids_are_echoed_and_forwarded(stack: Stack, http: aiohttp.ClientSession) -> None:
    chosen = f"walkthrough-{uuid.uuid4().hex[:8]}"
    async with http.get(f"{stack.url}/api/v2/users/me", headers={"X-Request-ID": chosen}) as response:
        assert response.headers["X-Request-ID"] == chosen
    async with http.post(
        f"{stack.url}/api/v2/auth/token",
        json={"email": "x@example.com", "password": "whatever1"},
        headers={"X-Request-ID": chosen},
    ) as response:
        assert response.headers["X-Request-ID"] == chosen

    async def logged_by_users_service() -> bool:
        return f"corr={chosen}" in stack.users.log_text()

    await eventually(logged_by_users_service, what="the request id in users_service's log")

    async with http.get(
        f"{stack.url}/healthz", headers={"X-Request-ID": "spaces are not allowed"}
    ) as response:
        generated = response.headers["X-Request-ID"]
    assert generated != "spaces are not allowed"
    assert len(generated) == 16
    assert int(generated, 16) >= 0


async def test_gateway_readiness_reports_each_upstream(stack: Stack, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{stack.url}/readyz") as response:
        assert response.status == 200
        assert (await response.json())["checks"] == {"users_service": "ok", "orders_service": "ok"}
    async with http.get(f"{stack.url}/healthz") as response:
        assert response.status == 200


async def test_the_gateway_serves_the_public_contract_and_its_docs(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{stack.url}/openapi.json") as response:
        assert response.status == 200
        contract = await response.json()
    assert contract["openapi"] == "3.1.0"
    assert contract["info"]["version"] == "2.0.0"
    assert {
        "/api/v2/users",
        "/api/v2/auth/token",
        "/api/v2/users/{id}/credit-limit",
        "/api/v2/products",
        "/api/v2/products/{sku}",
        "/api/v2/orders",
        "/api/v2/orders/{id}/cancel",
        # Version 1, deprecated, still served and documented.
        "/api/users",
        "/api/auth/token",
        "/api/orders",
        "/api/orders/{id}/cancel",
    } <= set(contract["paths"])
    async with http.get(f"{stack.url}/docs") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
    # Everything the page loads comes from the gateway itself: it works offline, with no CDN.
    assets = ["/docs/swagger-ui/swagger-ui.css", "/docs/swagger-ui/swagger-ui-bundle.js", "/docs/docs.js"]
    for asset in assets:
        assert f'"{asset}"' in page
        async with http.get(f"{stack.url}{asset}") as response:
            assert response.status == 200, asset
    assert "http://" not in page
    assert "https://" not in page
