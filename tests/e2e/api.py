"""A small client of the public API (version 2), for tests that need users, products and orders
rather than HTTP details.

Version 2 leaves to an admin two things version 1 let any client choose: a user's credit limit (a
new user gets the policy's) and what an order costs (the catalogue prices it). A test that needs
either acts as an admin, with a token minted with its stack's key pair (`stack.keys.admin_headers()`,
devstack/keys.py): it sets the limit, or sells a product of its own at the total it needs.
"""

import dataclasses
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp

from devstack.waiting import eventually

PASSWORD = "correct-horse-battery"
FINAL = {"APPROVED", "REJECTED", "CANCELLED"}
# NEW_USER_CREDIT_LIMIT_CENTS's default, which every stack of the tests runs with.
POLICY_CREDIT_LIMIT_CENTS = 100_000

Headers = Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class User:
    id: str
    email: str
    headers: dict[str, str]


async def new_user(
    http: aiohttp.ClientSession,
    url: str,
    *,
    credit_limit_cents: int | None = None,
    admin: Headers | None = None,
) -> User:
    """Register a user with a unique email, and sign in. The user has the policy's credit limit,
    unless `credit_limit_cents` names another: `admin` (an admin's headers) then sets it."""
    if credit_limit_cents is not None and admin is None:
        raise TypeError("a credit limit is an admin's to set: pass `admin`")
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    body = {"email": email, "name": "Test User", "password": PASSWORD}
    async with http.post(f"{url}/api/v2/users", json=body) as response:
        assert response.status == 201, await response.text()
        user_id = (await response.json())["id"]
    async with http.post(f"{url}/api/v2/auth/token", json={"email": email, "password": PASSWORD}) as response:
        assert response.status == 200, await response.text()
        token = (await response.json())["access_token"]
    if credit_limit_cents is not None and admin is not None:
        await set_credit_limit(http, url, admin, user_id, credit_limit_cents)
    return User(user_id, email, {"Authorization": f"Bearer {token}"})


async def set_credit_limit(
    http: aiohttp.ClientSession, url: str, admin: Headers, user_id: str, credit_limit_cents: int
) -> dict[str, Any]:
    """As an admin: the user's credit limit, set; the user as the answer shows it."""
    async with http.put(
        f"{url}/api/v2/users/{user_id}/credit-limit",
        json={"credit_limit_cents": credit_limit_cents},
        headers=admin,
    ) as response:
        assert response.status == 200, await response.text()
        user: dict[str, Any] = await response.json()
    assert user["credit_limit_cents"] == credit_limit_cents, user
    return user


async def new_product(
    http: aiohttp.ClientSession, url: str, admin: Headers, price_cents: int, *, active: bool = True
) -> str:
    """As an admin: a product of the caller's own, at `price_cents`, under a sku nobody else uses
    (so that no other test's price change can touch it); its sku."""
    sku = f"TEST-{uuid.uuid4().hex[:12].upper()}"
    body = {"name": f"Test product at {price_cents} cents", "price_cents": price_cents, "active": active}
    async with http.put(f"{url}/api/v2/products/{sku}", json=body, headers=admin) as response:
        assert response.status == 201, await response.text()
    return sku


async def order_product(
    http: aiohttp.ClientSession, url: str, user: User, sku: str, quantity: int = 1
) -> dict[str, Any]:
    """Place an order of `quantity` of the product `sku`, priced by the catalogue."""
    body = {"items": [{"sku": sku, "quantity": quantity}]}
    async with http.post(f"{url}/api/v2/orders", json=body, headers=user.headers) as response:
        assert response.status == 202, await response.text()
        order: dict[str, Any] = await response.json()
        return order


async def place_order(
    http: aiohttp.ClientSession, url: str, user: User, total_cents: int, *, admin: Headers
) -> dict[str, Any]:
    """Place an order of `total_cents`: one of a product that `admin` sells at that price for it."""
    order = await order_product(http, url, user, await new_product(http, url, admin, total_cents))
    assert order["total_cents"] == total_cents, order
    return order


async def get_order(http: aiohttp.ClientSession, url: str, user: User, order_id: str) -> dict[str, Any]:
    async with http.get(f"{url}/api/v2/orders/{order_id}", headers=user.headers) as response:
        assert response.status == 200, await response.text()
        order: dict[str, Any] = await response.json()
        return order


async def me(http: aiohttp.ClientSession, url: str, user: User) -> dict[str, Any]:
    async with http.get(f"{url}/api/v2/users/me", headers=user.headers) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def final_order(
    http: aiohttp.ClientSession, url: str, user: User, order_id: str, within: float = 30.0
) -> dict[str, Any]:
    async def decided() -> dict[str, Any] | None:
        order = await get_order(http, url, user, order_id)
        return order if order["status"] in FINAL else None

    return await eventually(decided, within=within, what=f"order {order_id} decided")
