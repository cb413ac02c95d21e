"""Version 1 beside version 2, through the gateway, during version 1's deprecation window.

Every answer of a version 1 operation says that it is deprecated (RFC 9745's Deprecation, RFC
8594's Sunset, and a Link to the migration note), the gateway's own refusals as well as the
services' answers, and no answer of version 2 says so. Which operations are version 1's, the
public contract says (`deprecated: true`). A client written against the released version 1
contract (tests/e2e/legacy_client.py) still does all it did, end to end, and a price it holds
that the catalogue no longer charges is refused, pointing at that price.
"""

import dataclasses
import datetime
import email.utils
import re
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp

from devstack.waiting import eventually
from tests.e2e.api import PASSWORD, POLICY_CREDIT_LIMIT_CENTS, new_product, new_user, order_product
from tests.e2e.conftest import Stack
from tests.e2e.legacy_client import PRICE_LIST, LegacyClient

MIGRATION_NOTE = "/docs/migration-v2"
DEPRECATION_HEADERS = ("Deprecation", "Sunset")
Operation = tuple[str, str]  # (method, path template), as the contract names an operation


@dataclasses.dataclass(frozen=True)
class Call:
    """One request to make, and the status it must get."""

    path: str
    status: int
    json: Any = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


async def public_contract(http: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    async with http.get(f"{stack.url}/openapi.json") as response:
        assert response.status == 200
        contract: dict[str, Any] = await response.json()
        return contract


def operations(contract: dict[str, Any]) -> dict[Operation, dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in contract["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "responses" in operation
    }


def registration() -> dict[str, str]:
    return {"email": f"versions-{uuid.uuid4().hex[:10]}@example.com", "name": "V", "password": PASSWORD}


async def calls_for_every_operation(stack: Stack, http: aiohttp.ClientSession) -> dict[Operation, list[Call]]:
    """For each public operation, a request it serves and, where one is to be had, a request it
    refuses: without a token, which the gateway itself refuses (401), or else with a body or an id
    the service refuses."""
    admin = stack.keys.admin_headers()
    user = await new_user(http, stack.url)
    auth = user.headers
    credentials = {"email": user.email, "password": PASSWORD}
    # One order for each version's reads, and one for each version's cancel.
    read, cancel_1, cancel_2 = [await order_product(http, stack.url, user, "MUG-01") for _ in range(3)]
    nobody = str(uuid.uuid4())
    v1_order = {"items": [{"sku": "MUG-01", "quantity": 1, "unit_price_cents": PRICE_LIST["MUG-01"]}]}
    v2_order = {"items": [{"sku": "MUG-01", "quantity": 1}]}
    product = {"name": "Versions test product", "price_cents": 100, "active": False}
    limit = {"credit_limit_cents": POLICY_CREDIT_LIMIT_CENTS}
    return {
        ("POST", "/api/users"): [Call("/api/users", 201, registration()), Call("/api/users", 422, {})],
        ("POST", "/api/v2/users"): [
            Call("/api/v2/users", 201, registration()),
            Call("/api/v2/users", 422, {}),
        ],
        ("POST", "/api/auth/token"): [
            Call("/api/auth/token", 200, credentials),
            Call("/api/auth/token", 422, {}),
        ],
        ("POST", "/api/v2/auth/token"): [
            Call("/api/v2/auth/token", 200, credentials),
            Call("/api/v2/auth/token", 422, {}),
        ],
        ("GET", "/api/users/me"): [Call("/api/users/me", 200, headers=auth), Call("/api/users/me", 401)],
        ("GET", "/api/v2/users/me"): [
            Call("/api/v2/users/me", 200, headers=auth),
            Call("/api/v2/users/me", 401),
        ],
        ("GET", "/api/users/{id}"): [
            Call(f"/api/users/{user.id}", 200, headers=auth),
            Call(f"/api/users/{user.id}", 401),
            Call(f"/api/users/{nobody}", 404, headers=auth),
        ],
        ("GET", "/api/v2/users/{id}"): [
            Call(f"/api/v2/users/{user.id}", 200, headers=auth),
            Call(f"/api/v2/users/{user.id}", 401),
            Call(f"/api/v2/users/{nobody}", 404, headers=auth),
        ],
        ("PUT", "/api/v2/users/{id}/credit-limit"): [
            Call(f"/api/v2/users/{user.id}/credit-limit", 200, limit, admin),
            Call(f"/api/v2/users/{user.id}/credit-limit", 401, limit),
            Call(f"/api/v2/users/{user.id}/credit-limit", 403, limit, auth),
        ],
        ("GET", "/api/v2/products"): [Call("/api/v2/products", 200), Call("/api/v2/products?limit=0", 422)],
        ("GET", "/api/v2/products/{sku}"): [
            Call("/api/v2/products/BOOK-42", 200),
            Call("/api/v2/products/NO-SUCH-SKU", 404),
        ],
        ("PUT", "/api/v2/products/{sku}"): [
            Call(f"/api/v2/products/VERSIONS-{uuid.uuid4().hex[:8]}", 201, product, admin),
            Call("/api/v2/products/VERSIONS-REFUSED", 401, product),
            Call("/api/v2/products/VERSIONS-REFUSED", 403, product, auth),
        ],
        ("POST", "/api/orders"): [
            Call("/api/orders", 202, v1_order, auth),
            Call("/api/orders", 401, v1_order),
            Call("/api/orders", 422, v2_order, auth),  # version 1 asks for the price
        ],
        ("POST", "/api/v2/orders"): [
            Call("/api/v2/orders", 202, v2_order, auth),
            Call("/api/v2/orders", 401, v2_order),
            Call("/api/v2/orders", 422, v1_order, auth),  # version 2 takes no price
        ],
        ("GET", "/api/orders"): [Call("/api/orders", 200, headers=auth), Call("/api/orders", 401)],
        ("GET", "/api/v2/orders"): [Call("/api/v2/orders", 200, headers=auth), Call("/api/v2/orders", 401)],
        ("GET", "/api/orders/{id}"): [
            Call(f"/api/orders/{read['id']}", 200, headers=auth),
            Call(f"/api/orders/{read['id']}", 401),
            Call(f"/api/orders/{nobody}", 404, headers=auth),
        ],
        ("GET", "/api/v2/orders/{id}"): [
            Call(f"/api/v2/orders/{read['id']}", 200, headers=auth),
            Call(f"/api/v2/orders/{read['id']}", 401),
            Call(f"/api/v2/orders/{nobody}", 404, headers=auth),
        ],
        ("POST", "/api/orders/{id}/cancel"): [
            Call(f"/api/orders/{cancel_1['id']}/cancel", 202, headers=auth),
            Call(f"/api/orders/{cancel_1['id']}/cancel", 401),
        ],
        ("POST", "/api/v2/orders/{id}/cancel"): [
            Call(f"/api/v2/orders/{cancel_2['id']}/cancel", 202, headers=auth),
            Call(f"/api/v2/orders/{cancel_2['id']}/cancel", 401),
        ],
        ("GET", "/healthz"): [Call("/healthz", 200)],
        ("GET", "/readyz"): [Call("/readyz", 200)],
        ("GET", "/metrics"): [Call("/metrics", 200)],
    }


def assert_announces_deprecation(headers: Mapping[str, str], what: str) -> None:
    """RFC 9745's Deprecation (`@` and epoch seconds), RFC 8594's Sunset (an HTTP-date, after it),
    and a Link to the migration note with rel="deprecation"."""
    deprecation = re.fullmatch(r"@(\d+)", headers.get("Deprecation", ""))
    assert deprecation is not None, (what, headers.get("Deprecation"))
    deprecated_at = datetime.datetime.fromtimestamp(int(deprecation.group(1)), datetime.UTC)
    sunset = headers.get("Sunset", "")
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", sunset), (
        what,
        sunset,
    )
    assert email.utils.parsedate_to_datetime(sunset) > deprecated_at, (what, sunset)
    links = [link.strip() for link in headers.get("Link", "").split(",")]
    assert any(link.startswith(f"<{MIGRATION_NOTE}>") and 'rel="deprecation"' in link for link in links), (
        what,
        headers.get("Link"),
    )


def assert_silent_about_deprecation(headers: Mapping[str, str], what: str) -> None:
    for name in DEPRECATION_HEADERS:
        assert name not in headers, (what, name)
    assert 'rel="deprecation"' not in headers.get("Link", ""), what


async def test_every_version_1_answer_says_it_is_deprecated_and_no_version_2_answer_does(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    contract = await public_contract(http, stack)
    described = operations(contract)
    deprecated = {operation for operation, definition in described.items() if definition.get("deprecated")}
    # Version 1 is every operation under /api but not under /api/v2, and all of it is deprecated.
    assert deprecated == {
        (method, path)
        for method, path in described
        if path.startswith("/api/") and not path.startswith("/api/v2/")
    }
    assert len(deprecated) == 8
    calls = await calls_for_every_operation(stack, http)
    # A public operation without a row here is one this test would not check: a failure.
    assert set(calls) == set(described)

    for (method, template), requests in calls.items():
        for call in requests:
            what = f"{method} {call.path} ({call.status})"
            async with http.request(
                method, f"{stack.url}{call.path}", json=call.json, headers=call.headers
            ) as response:
                assert response.status == call.status, (what, await response.text())
                if (method, template) in deprecated:
                    assert_announces_deprecation(response.headers, what)
                else:
                    assert_silent_about_deprecation(response.headers, what)


async def test_the_migration_note_is_where_the_link_points(stack: Stack, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{stack.url}/api/orders") as response:  # 401: the gateway's own refusal
        assert response.status == 401
        assert_announces_deprecation(response.headers, "GET /api/orders without a token")
        target = re.search(r'<([^>]+)>;[^,]*rel="deprecation"', response.headers["Link"])
    assert target is not None
    async with http.get(f"{stack.url}{target.group(1)}") as response:
        assert response.status == 200
        assert response.content_type == "text/markdown"
        note = await response.text()
    assert "/api/v2/" in note
    assert_silent_about_deprecation(response.headers, "the migration note")


async def test_a_version_1_client_still_works_end_to_end_and_is_told_on_every_answer(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    client = LegacyClient(http, stack.url)
    email_address = f"legacy-{uuid.uuid4().hex[:10]}@example.com"
    # Version 1 let a client ask for its own credit limit: still accepted, and ignored.
    registered = await client.register(email_address, PASSWORD, credit_limit_cents=50_000)
    assert registered.status == 201
    assert registered.body["credit_limit_cents"] == POLICY_CREDIT_LIMIT_CENTS
    assert registered.headers["Location"] == f"/api/users/{registered.body['id']}"
    assert (await client.sign_in(email_address, PASSWORD)).status == 200

    placed = await client.place_order({"BOOK-42": 2})
    assert placed.status == 202
    order = placed.body
    assert placed.headers["Location"] == f"/api/orders/{order['id']}"  # in the version it asked
    assert (order["status"], order["total_cents"]) == ("PENDING", 2 * PRICE_LIST["BOOK-42"])
    assert order["items"] == [{"sku": "BOOK-42", "quantity": 2, "unit_price_cents": PRICE_LIST["BOOK-42"]}]

    async def approved() -> dict[str, Any] | None:
        current = await client.order(order["id"])
        assert current.status == 200
        return current.body if current.body["status"] == "APPROVED" else None

    await eventually(approved, what="the saga approves the version 1 client's order")
    assert (await client.me()).body["credit_used_cents"] == 2 * PRICE_LIST["BOOK-42"]
    listed = await client.orders(status="APPROVED", limit=10)
    assert [entry["id"] for entry in listed.body["items"]] == [order["id"]]
    cancelled = await client.cancel(order["id"])
    assert (cancelled.status, cancelled.body["status"]) == (202, "CANCELLED")
    assert (await client.cancel(order["id"])).status == 200

    async def credit_released() -> bool:
        return bool((await client.me()).body["credit_used_cents"] == 0)

    await eventually(credit_released, what="the cancel releases the version 1 client's credit")
    assert len(client.answers) >= 10
    for answer in client.answers:
        assert_announces_deprecation(answer.headers, f"an answer {answer.status} to the version 1 client")


async def test_a_version_1_client_with_a_stale_price_is_refused_at_that_price(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    # A product of the test's own, which the client wrote down at its price, and which an admin
    # then reprices: the client's records are stale.
    admin = stack.keys.admin_headers()
    sku = await new_product(http, stack.url, admin, 700)
    async with http.put(
        f"{stack.url}/api/v2/products/{sku}",
        json={"name": "Repriced", "price_cents": 800, "active": True},
        headers=admin,
    ) as response:
        assert response.status == 200, await response.text()
    user = await new_user(http, stack.url)
    client = LegacyClient(http, stack.url)
    assert (await client.sign_in(user.email, PASSWORD)).status == 200

    refused = await client.place_order({sku: 1}, prices={sku: 700})
    assert refused.status == 422
    assert refused.body["errors"] == [
        {"pointer": "#/items/0/unit_price_cents", "detail": "must be the catalogue's price, 800"}
    ]
    assert_announces_deprecation(refused.headers, "the stale price's 422")
    assert (await client.orders()).body["items"] == []  # nothing was placed
    # With the catalogue's price, the same order goes through.
    assert (await client.place_order({sku: 1}, prices={sku: 800})).status == 202
