"""OWASP API1:2023 (broken object level authorization) and API3:2023 (broken object property level
authorization: mass assignment, excessive data exposure), through the gateway, on the real stack."""

import uuid

import aiohttp

from tests.e2e.api import final_order, me, new_user, place_order
from tests.e2e.conftest import Stack


async def test_api1_another_users_order_is_not_found_and_indistinguishable(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    owner, stranger = await new_user(http, stack.url), await new_user(http, stack.url)
    order = await place_order(http, stack.url, owner, 100, admin=stack.keys.admin_headers())
    answers = []
    for order_id in (order["id"], str(uuid.uuid4())):  # someone else's, and one that does not exist
        async with http.get(f"{stack.url}/api/v2/orders/{order_id}", headers=stranger.headers) as response:
            answers.append((response.status, (await response.json())["detail"]))
    # Same status, same words: guessing ids tells the stranger nothing about what exists.
    assert answers[0] == answers[1] == (404, "No order with that id is visible to you.")


async def test_api1_another_users_order_cannot_be_cancelled(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    owner, stranger = await new_user(http, stack.url), await new_user(http, stack.url)
    order = await place_order(http, stack.url, owner, 100, admin=stack.keys.admin_headers())
    async with http.post(
        f"{stack.url}/api/v2/orders/{order['id']}/cancel", headers=stranger.headers
    ) as response:
        assert response.status == 404
    assert (await final_order(http, stack.url, owner, order["id"]))["status"] == "APPROVED"


async def test_api1_another_users_record_is_not_found(stack: Stack, http: aiohttp.ClientSession) -> None:
    owner, stranger = await new_user(http, stack.url), await new_user(http, stack.url)
    async with http.get(f"{stack.url}/api/v2/users/{owner.id}", headers=stranger.headers) as response:
        assert response.status == 404


async def test_api3_mass_assignment_of_credit_or_status_is_refused(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    sneaky_user = {
        "email": f"sneaky-{uuid.uuid4().hex[:8]}@example.com",
        "name": "Sneaky",
        "password": "long enough",
        "credit_used_cents": -1_000_000,
        "credit_limit_cents": 10_000_000,  # an admin's to set, in version 2
        "id": str(uuid.uuid4()),
    }
    async with http.post(f"{stack.url}/api/v2/users", json=sneaky_user) as response:
        assert response.status == 422
        pointers = {entry["pointer"] for entry in (await response.json())["errors"]}
    assert pointers == {"#/credit_used_cents", "#/credit_limit_cents", "#/id"}

    user = await new_user(http, stack.url, credit_limit_cents=1_000, admin=stack.keys.admin_headers())
    sneaky_order = {
        # The catalogue's to set: a client's price is no longer taken (version 1's is checked).
        "items": [{"sku": "PIANO", "quantity": 1, "unit_price_cents": 1}],
        "status": "APPROVED",
        "user_id": str(uuid.uuid4()),
        "total_cents": 0,
    }
    async with http.post(f"{stack.url}/api/v2/orders", json=sneaky_order, headers=user.headers) as response:
        assert response.status == 422
        pointers = {entry["pointer"] for entry in (await response.json())["errors"]}
    assert pointers == {"#/items/0/unit_price_cents", "#/status", "#/user_id", "#/total_cents"}
    async with http.get(f"{stack.url}/api/v2/orders", headers=user.headers) as response:
        assert (await response.json())["items"] == []


async def test_api3_no_secret_ever_leaves_in_a_user(stack: Stack, http: aiohttp.ClientSession) -> None:
    user = await new_user(http, stack.url)
    record = await me(http, stack.url, user)
    assert set(record) == {"id", "email", "name", "credit_limit_cents", "credit_used_cents", "created_at"}
    assert "password" not in str(record)
    assert "argon2" not in str(record)


async def test_api3_a_version_1_price_is_checked_never_taken(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    # Version 1 still sends a price with each item: the piano at a cent is refused, and so is the
    # piano at the catalogue's price plus a cent, each naming the price it got wrong.
    user = await new_user(http, stack.url)
    for wrong in (1, 450_001):
        order = {"items": [{"sku": "PIANO", "quantity": 1, "unit_price_cents": wrong}]}
        async with http.post(f"{stack.url}/api/orders", json=order, headers=user.headers) as response:
            assert response.status == 422
            assert (await response.json())["errors"] == [
                {"pointer": "#/items/0/unit_price_cents", "detail": "must be the catalogue's price, 450000"}
            ]
    async with http.get(f"{stack.url}/api/v2/orders", headers=user.headers) as response:
        assert (await response.json())["items"] == []
    assert (await me(http, stack.url, user))["credit_used_cents"] == 0
